//! W3: pooled bags (4,096 bags x 32 ids, per-sample weights) over a 10% cache.

use hotrow::{reference, Embeddings, EvictionPolicy, GpuContext, HostTable, Pooling};

use crate::gen::{Rng, ZipfIds};
use crate::harness::{self, Args, Report, Result, S};

pub fn run(
    ctx: &GpuContext,
    a: &Args,
    rep: &mut Report,
    table: HostTable<'static>,
) -> Result<HostTable<'static>> {
    let (n, _, d) = harness::cached_shapes(a);
    let (bags, l) = if a.small { (256, 32) } else { (4096, 32) };
    let zipf = ZipfIds::new(n, S, 32);
    let mut rng = Rng::new(33);
    let sets: Vec<Vec<u32>> = (0..8).map(|_| zipf.batch(bags * l, &mut rng)).collect();
    let offsets: Vec<u32> = (0..bags as u32).map(|b| b * l as u32).collect();
    let w: Vec<f32> = (0..bags * l).map(|_| rng.unit() as f32).collect();
    let mut cache = harness::tenth_cache(ctx, a, table, n, EvictionPolicy::Clock)?;
    let mut out = Embeddings::new(ctx, bags, d)?;
    let modes = [(0u32, Pooling::Sum), (1, Pooling::Mean), (2, Pooling::Max)];
    for (mode, pooling) in modes {
        let weights = (mode != 2).then_some(&w[..]);
        cache.lookup_bags_into(&sets[0], &offsets, pooling, weights, &mut out)?;
        let stored = harness::stored_rows(
            cache.source().data().expect("an f32 table"),
            cache.layout(),
            &sets[0],
        );
        let positions: Vec<u32> = (0..sets[0].len() as u32).collect();
        let want = reference::bags(&stored, d, &positions, &offsets, mode, weights);
        harness::verify_close(&format!("w3 {pooling:?}"), &out, &want)?;
    }
    let timing = ctx.enable_timing(16 * a.batches as u32 + 4096);
    for (mode, pooling) in modes {
        let weights = (mode != 2).then_some(&w[..]);
        // (Time inside the calls, summed: with the wall per call it says whether the stream
        // is bound by the host's work or by the GPU.)
        let in_calls = std::cell::Cell::new(std::time::Duration::ZERO);
        let cpu_in_calls = std::cell::Cell::new(std::time::Duration::ZERO);
        // (The cache's staging-wait and submit totals, read before and after the stream
        // only: on the GPU-driven path `stats()` waits for the GPU's counters.)
        let totals = |s: hotrow::CacheStats| (s.staging_wait_time, s.submit_time, s.copy_time);
        let cache = std::cell::RefCell::new(&mut cache);
        let mut op = |k: usize| {
            let t = std::time::Instant::now();
            let c = harness::process_cpu();
            let r = cache.borrow_mut().lookup_bags_into(
                &sets[k % sets.len()],
                &offsets,
                pooling,
                weights,
                &mut out,
            );
            in_calls.set(in_calls.get() + t.elapsed());
            cpu_in_calls.set(cpu_in_calls.get() + (harness::process_cpu() - c));
            r
        };
        harness::warm_up(ctx, a, 8, &mut op)?;
        in_calls.set(std::time::Duration::ZERO);
        cpu_in_calls.set(std::time::Duration::ZERO);
        let reps = a.batches.min(100);
        let before = totals(cache.borrow().stats());
        let (wall, times) = harness::stream(ctx, reps, &mut op)?;
        let after = totals(cache.borrow().stats());
        let name = format!("{pooling:?}").to_lowercase();
        // Of the time in the calls: waiting for a staging entry (the GPU behind), and
        // submitting; the rest is the host's own work.
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e3 / reps as f64;
        rep.insert(
            format!("W3_hotrow_{name}_staging_wait_ms"),
            per(after.0 - before.0),
        );
        rep.insert(
            format!("W3_hotrow_{name}_submit_ms"),
            per(after.1 - before.1),
        );
        // (writing the passes' staging and recording them)
        rep.insert(format!("W3_hotrow_{name}_copy_ms"), per(after.2 - before.2));
        rep.insert(format!("W3_hotrow_{name}_wall_ms"), wall);
        let call_ms = in_calls.get().as_secs_f64() * 1e3 / reps as f64;
        rep.insert(format!("W3_hotrow_{name}_in_call_ms"), call_ms);
        // (the process's CPU time in the calls, any thread: host work, not waiting)
        rep.insert(
            format!("W3_hotrow_{name}_in_call_cpu_ms"),
            cpu_in_calls.get().as_secs_f64() * 1e3 / reps as f64,
        );
        let mut sync = Vec::new();
        for k in 0..20 {
            let t = std::time::Instant::now();
            op(k)?;
            ctx.wait_idle()?;
            sync.push(t.elapsed().as_secs_f64() * 1e3);
        }
        rep.insert(
            format!("W3_hotrow_{name}_sync_median_ms"),
            harness::median(&mut sync),
        );
        if timing {
            let g = harness::gpu_median(&times, "bag");
            rep.insert(format!("W3_hotrow_{name}_gpu_bag_ms"), g);
            // bytes the kernel must move: every id's row read once (no L2 reuse) + output
            rep.insert(
                format!("W3_hotrow_{name}_GBps_nominal"),
                ((bags * l * d * 4) + bags * d * 4) as f64 / g / 1e6,
            );
            // The GPU-driven path's phases (absent on the host path), per call.
            let calls = times.iter().filter(|t| t.label == "bag").count().max(1) as f64;
            for phase in ["find", "tally", "plan", "evict", "fetch", "position"] {
                let ms = harness::gpu_sum(&times, phase, calls);
                if ms > 0.0 {
                    rep.insert(format!("W3_hotrow_{name}_gpu_{phase}_ms"), ms);
                }
            }
            let (span, idle) = harness::gpu_span(&times, "find");
            if span > 0.0 {
                rep.insert(format!("W3_hotrow_{name}_gpu_span_ms"), span);
                rep.insert(format!("W3_hotrow_{name}_gpu_idle_ms"), idle);
            }
            let iso = harness::isolated_gpu_ms(ctx, "bag", 30, || op(1))?;
            rep.insert(format!("W3_hotrow_{name}_gpu_bag_isolated_ms"), iso);
        }
    }
    let st = cache.stats();
    rep.insert("W3_unique_row_hit_rate".into(), st.hit_rate());
    let calls = st.batches.max(1) as f64;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3 / calls;
    rep.insert("W3_host_resolve_ms".into(), ms(st.resolve_time));
    rep.insert("W3_host_probe_round_trip_ms".into(), ms(st.probe_time));
    rep.insert("W3_host_submit_ms".into(), ms(st.submit_time));
    rep.insert(
        "W3_device_resolved_frac".into(),
        st.device_passes as f64 / st.passes.max(1) as f64,
    );
    ctx.disable_timing();
    Ok(cache.into_source())
}

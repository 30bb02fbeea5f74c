//! W2: cached stream, table in host memory (or, with `--table npy`, a `.npy` file read
//! through the page cache), 10% of rows cached on the GPU.

use std::time::{Duration, Instant};

use hotrow::half::f16;
use hotrow::{
    EmbeddingCache, Embeddings, FileTable, GpuContext, HostTable, Resolution, RowFormat, RowSource,
};
use rayon::prelude::*;

use crate::gen::{Rng, ZipfIds};
use crate::harness::{self, Args, Report, Result, TableKind, S};

pub fn run(
    ctx: &GpuContext,
    a: &Args,
    rep: &mut Report,
    table: HostTable<'static>,
) -> Result<HostTable<'static>> {
    match a.table {
        TableKind::Host => return run_on(ctx, a, rep, table, None),
        TableKind::HostF16 => {
            // The same rows in half precision; the check reads them as f16 slots store them
            // (the same conversion), so this point needs `--row-format f16`.
            if a.row_format != RowFormat::F16 {
                eprintln!("w2 --table f16 needs --row-format f16");
                std::process::exit(2);
            }
            let data = table.data().expect("an f32 table");
            let t = Instant::now();
            let halves: Vec<f16> = data.par_iter().map(|&v| f16::from_f32(v)).collect();
            let f16_table = HostTable::owned_f16(halves, table.dim())?;
            rep.insert("W2_f16_table_build_s".into(), t.elapsed().as_secs_f64());
            run_on(ctx, a, rep, f16_table, Some(&table))?;
            return Ok(table);
        }
        TableKind::Npy => {}
    }
    // The same rows in a .npy file, written now (so the page cache holds it, as for a table
    // read before), then served through a memory-mapped FileTable.
    let dir = std::env::temp_dir().join(format!("hotrow-w2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| hotrow::HotrowError::RowSource(e.to_string()))?;
    let path = dir.join("w2.npy");
    let t = Instant::now();
    table.save_npy(&path)?;
    rep.insert("W2_npy_write_s".into(), t.elapsed().as_secs_f64());
    let t = Instant::now();
    let file = FileTable::open_npy(&path)?;
    rep.insert("W2_npy_open_ms".into(), t.elapsed().as_secs_f64() * 1e3);
    run_on(ctx, a, rep, file, Some(&table))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(table)
}

/// W2 over `source`; `reference` holds the same rows when `source` is not that table.
fn run_on<T: RowSource + 'static>(
    ctx: &GpuContext,
    a: &Args,
    rep: &mut Report,
    source: T,
    reference: Option<&HostTable<'static>>,
) -> Result<T> {
    let (n, b, d) = harness::cached_shapes(a);
    let zipf = ZipfIds::new(n, S, 22);
    let mut rng = Rng::new(23);
    let batches = a.batches.max(40);
    let stream: Vec<Vec<u32>> = (0..batches).map(|_| zipf.batch(b, &mut rng)).collect();
    let t = Instant::now();
    let mut cache = harness::tenth_cache(ctx, a, source, n, a.policy)?;
    rep.insert("W2_cache_new_ms".into(), t.elapsed().as_secs_f64() * 1e3);
    let mut out = Embeddings::new(ctx, b, d)?;
    let check = |cache: &EmbeddingCache<T>, ids: &[u32], out: &Embeddings| {
        let rows = match reference {
            Some(table) => table.data(),
            None => (cache.source() as &dyn std::any::Any)
                .downcast_ref::<HostTable<'static>>()
                .and_then(HostTable::data),
        };
        let rows = rows.expect("the f32 rows of the table");
        harness::verify_gather("w2", out, rows, cache.layout(), ids)
    };
    let timing = ctx.enable_timing(8 * batches as u32 + 64);
    // Cold start: batch by batch, each waited for; the first ones checked.
    let warm = 20.min(batches / 2);
    let mut cold_ms = Vec::new();
    for ids in &stream[..warm] {
        let t = Instant::now();
        cache.lookup_into(ids, &mut out)?;
        let submitted = t.elapsed();
        ctx.wait_idle()?;
        cold_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if cold_ms.len() == 1 {
            // Where the first batch's time goes (host stages of the call, then the wait).
            let st = cache.stats();
            let mut f = |name: &str, d: Duration| {
                rep.insert(format!("W2_cold_first_{name}_ms"), d.as_secs_f64() * 1e3)
            };
            f("resolve", st.resolve_time);
            f("staging_wait_alloc", st.staging_wait_time);
            f("row_copy", st.copy_time);
            f("submit", st.submit_time);
            f("probe_round_trip", st.probe_time);
            f("call", submitted);
            f("wait_gpu", t.elapsed() - submitted);
        }
        if cold_ms.len() <= 3 {
            check(&cache, ids, &out)?;
        }
    }
    let _ = ctx.take_timings()?;
    // GPU clocks up (no cache calls: replaying batches would inflate the hit rate), then
    // steady state, pipelined: the host works on batch k + 1 while the GPU runs batch k.
    let steady = &stream[warm..];
    harness::warm_up(ctx, a, 0, |_| Ok(()))?;
    cache.reset_stats();
    let faults = harness::minor_faults();
    if let Some(first) = steady.first().filter(|_| a.prefetch) {
        cache.prefetch(first)?;
    }
    // (the process's CPU time in each kind of call: the host work of the stream, on any thread)
    let (mut lookup_cpu, mut prefetch_cpu) = (Duration::ZERO, Duration::ZERO);
    let (stream_ms, times) = harness::stream(ctx, steady.len(), |k| {
        let t = harness::process_cpu();
        cache.lookup_into(&steady[k], &mut out)?;
        lookup_cpu += harness::process_cpu() - t;
        if let Some(next) = steady.get(k + 1).filter(|_| a.prefetch) {
            let t = harness::process_cpu();
            cache.prefetch(next)?;
            prefetch_cpu += harness::process_cpu() - t;
        }
        Ok(())
    })?;
    harness::print_timeline("W2", &times);
    rep.insert(
        "W2_minor_page_faults_per_batch".into(),
        (harness::minor_faults() - faults) as f64 / steady.len() as f64,
    );
    check(&cache, &stream[batches - 1], &out)?;
    let st = cache.stats();
    let per = steady.len() as f64;
    // Synchronous: each batch waited for (latency of one batch end to end).
    let mut sync_ms = Vec::new();
    for ids in steady.iter().take(30) {
        let t = Instant::now();
        cache.lookup_into(ids, &mut out)?;
        ctx.wait_idle()?;
        sync_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let ms = |x: Duration| x.as_secs_f64() * 1e3 / per;
    rep.insert("W2_hotrow_stream_ms_per_batch".into(), stream_ms);
    rep.insert("W2_host_lookup_cpu_ms".into(), ms(lookup_cpu));
    if a.prefetch {
        rep.insert("W2_host_prefetch_cpu_ms".into(), ms(prefetch_cpu));
    }
    if a.prefetch {
        // Untimed: the rows the lookups themselves missed, over a few more batches.
        let mut missed = 0;
        let more = &stream[..warm.min(10)];
        if let Some(first) = more.first() {
            cache.prefetch(first)?;
        }
        for (k, ids) in more.iter().enumerate() {
            let before = cache.stats().misses;
            cache.lookup_into(ids, &mut out)?;
            missed += cache.stats().misses - before;
            if let Some(next) = more.get(k + 1) {
                cache.prefetch(next)?;
            }
        }
        rep.insert("W2_prefetch_lookup_misses".into(), missed as f64);
        if missed > 0 {
            eprintln!("w2: WRONG RESULT: {missed} rows missed by lookups after their prefetch");
            std::process::exit(1);
        }
    }
    rep.insert("W2_batch".into(), b as f64);
    rep.insert(
        "W2_host_threads".into(),
        rayon::current_num_threads() as f64,
    );
    rep.insert(
        "W2_hotrow_sync_median_ms".into(),
        harness::median(&mut sync_ms),
    );
    rep.insert("W2_hotrow_cold_first_batch_ms".into(), cold_ms[0]);
    rep.insert(
        "W2_hotrow_cold_mean_first20_ms".into(),
        cold_ms.iter().sum::<f64>() / cold_ms.len() as f64,
    );
    rep.insert("W2_unique_row_hit_rate".into(), st.hit_rate());
    rep.insert(
        "W2_slot_map_partitions".into(),
        cache.config().partitions as f64,
    );
    rep.insert(
        "W2_unique_frac".into(),
        st.distinct as f64 / st.requests as f64,
    );
    rep.insert(
        "W2_bytes_uploaded_per_batch".into(),
        st.bytes_uploaded as f64 / per,
    );
    rep.insert("W2_misses_per_batch".into(), st.misses as f64 / per);
    rep.insert("W2_refused_per_batch".into(), st.refused as f64 / per);
    rep.insert("W2_transient_per_batch".into(), st.transient as f64 / per);
    if a.policy == hotrow::EvictionPolicy::TinyLfu {
        if let Ok(Some(s)) = cache.driven_state() {
            // (the GPU's admission window at the end of the run, per mille of victims)
            rep.insert("W2_admission_window".into(), f64::from(s.window));
        }
    }
    rep.insert("W2_host_resolve_ms".into(), ms(st.resolve_time));
    rep.insert("W2_host_row_copy_ms".into(), ms(st.copy_time));
    rep.insert(
        "W2_host_resolve_copy_thread_ms".into(),
        ms(st.resolve_copy_thread_time),
    );
    rep.insert("W2_host_staging_wait_ms".into(), ms(st.staging_wait_time));
    rep.insert("W2_host_submit_ms".into(), ms(st.submit_time));
    rep.insert("W2_host_probe_round_trip_ms".into(), ms(st.probe_time));
    rep.insert(
        "W2_device_resolved_frac".into(),
        st.device_passes as f64 / st.passes.max(1) as f64,
    );
    rep.insert(
        "W2_resolution_device".into(),
        f64::from(u8::from(cache.config().resolution == Resolution::Device)),
    );
    rep.insert(
        "W2_path_gpu".into(),
        f64::from(u8::from(cache.config().path == hotrow::BatchPath::Gpu)),
    );
    rep.insert(
        "W2_host_import".into(),
        f64::from(u8::from(ctx.adapter().host_memory_import)),
    );
    rep.insert("W2_evictions_per_batch".into(), st.evictions as f64 / per);
    if timing {
        for phase in [
            "find", "tally", "plan", "evict", "fetch", "position", "touch",
        ] {
            let ms = harness::gpu_sum(&times, phase, per);
            if ms > 0.0 {
                rep.insert(format!("W2_gpu_{phase}_ms"), ms);
            }
        }
        let (span, idle) = harness::gpu_span(&times, "find");
        if span > 0.0 {
            rep.insert("W2_gpu_span_ms".into(), span);
            rep.insert("W2_gpu_idle_ms".into(), idle);
        }
        rep.insert(
            "W2_gpu_scatter_ms".into(),
            harness::gpu_sum(&times, "scatter_rows", per),
        );
        rep.insert(
            "W2_gpu_gather_ms".into(),
            harness::gpu_sum(&times, "gather", per),
        );
    }
    let mem = cache.memory();
    rep.insert("W2_gpu_bytes_cache_total".into(), mem.total() as f64);
    rep.insert("W2_gpu_bytes_slots".into(), mem.slots as f64);
    rep.insert(
        "W2_gpu_bytes_frac_of_table".into(),
        mem.total() as f64 / (n * d * 4) as f64,
    );
    rep.insert("W2_gpu_bytes_output".into(), (b * d * 4) as f64);
    rep.insert("W2_row_bytes".into(), cache.layout().row_bytes() as f64);
    rep.insert(
        "W2_anon_huge_pages_mb".into(),
        harness::anon_huge_pages_mb(),
    );
    ctx.disable_timing();
    Ok(cache.into_source())
}

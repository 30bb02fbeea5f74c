//! Benchmark program for the workloads of the project's WORKLOADS.md (W1 now; later issues
//! add W2-W5). Prints a table and writes JSON.
//!
//!     cargo run --release --example bench -- [--small] [--workloads w1] [--batches 200] [--json out.json]
//!
//! `--small` runs the CI shapes (N / 64, B / 16, 20 batches): a check that the benchmark runs
//! and its results are right, never a speed figure.

use std::collections::BTreeMap;
use std::time::Instant;

use hotrow::workload::{random_values, Rng, ZipfIds};
use hotrow::{
    reference, CacheConfig, Capacity, EmbeddingCache, Embeddings, EvictionPolicy, GpuContext,
    HostTable, Pooling, Queries, RowBuffer,
};

const S: f64 = 1.05;

struct Args {
    small: bool,
    workloads: Vec<String>,
    batches: usize,
    json: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        small: false,
        workloads: vec!["w1".into()],
        batches: 0,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--small" => a.small = true,
            "--workloads" => {
                a.workloads = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_lowercase)
                    .collect()
            }
            "--batches" => a.batches = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--json" => a.json = it.next(),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if a.batches == 0 {
        a.batches = if a.small { 20 } else { 200 };
    }
    a
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

type Report = BTreeMap<String, f64>;

/// W1: gather from a table resident on the GPU.
fn w1(ctx: &GpuContext, a: &Args, rep: &mut Report) -> Result<(), hotrow::HotrowError> {
    let (n, b, d) = if a.small {
        (1 << 14, 4096, 128)
    } else {
        (1 << 20, 65_536, 128)
    };
    let t0 = Instant::now();
    let table = random_values(n * d, 11);
    let gpu = RowBuffer::from_host(ctx, &table, d)?;
    let zipf = ZipfIds::new(n, S, 12);
    let mut rng = Rng::new(13);
    let sets: Vec<Vec<u32>> = (0..16).map(|_| zipf.batch(b, &mut rng)).collect();
    ctx.wait_idle()?;
    eprintln!("w1: setup {:.1} s", t0.elapsed().as_secs_f64());
    let uniq: f64 = sets
        .iter()
        .map(|s| hotrow::CompactBatch::new(s).distinct().len() as f64 / b as f64)
        .sum::<f64>()
        / sets.len() as f64;

    let mut out = Embeddings::new(ctx, b, d)?;
    // Correctness first: every distinct batch checked against the reference.
    for s in &sets {
        out.fill(f32::NAN)?;
        gpu.gather_into(s, &mut out)?;
        let got = out.to_host()?;
        let want = reference::gather(&table, d, s);
        if got
            .iter()
            .zip(&want)
            .any(|(x, y)| x.to_bits() != y.to_bits())
        {
            eprintln!("w1: WRONG RESULT");
            std::process::exit(1);
        }
    }
    drop(table);
    let timing = ctx.enable_timing(4 * a.batches as u32);
    for s in sets.iter().cycle().take(10) {
        gpu.gather_into(s, &mut out)?;
    }
    ctx.wait_idle()?;
    let _ = ctx.take_timings()?;
    // Stream: submit every batch without waiting, wait once at the end.
    let t = Instant::now();
    for s in sets.iter().cycle().take(a.batches) {
        gpu.gather_into(s, &mut out)?;
    }
    ctx.wait_idle()?;
    let wall_ms = t.elapsed().as_secs_f64() * 1e3 / a.batches as f64;
    let (times, _) = ctx.take_timings()?;
    let mut gpu_ms: Vec<f64> = times
        .iter()
        .filter(|t| t.label == "gather")
        .map(|t| t.nanos / 1e6)
        .collect();
    let gpu_ms = if timing {
        median(&mut gpu_ms)
    } else {
        f64::NAN
    };
    let bytes = 2.0 * b as f64 * d as f64 * 4.0;
    rep.insert("W1_hotrow_gpu_ms".into(), gpu_ms);
    rep.insert("W1_hotrow_wall_ms".into(), wall_ms);
    if timing {
        let mut k = 0;
        let iso = isolated_gpu_ms(ctx, "gather", 30, || {
            k += 1;
            gpu.gather_into(&sets[k % sets.len()], &mut out)
        })?;
        rep.insert("W1_hotrow_gpu_isolated_ms".into(), iso);
    }
    rep.insert("W1_hotrow_GBps_rw".into(), bytes / gpu_ms / 1e6);
    rep.insert("W1_unique_frac".into(), uniq);

    // The copy ceiling as wgpu sees it: gather of every row in order (a plain 2 x 512 MiB copy).
    let all: Vec<u32> = (0..n as u32).collect();
    let mut big = Embeddings::new(ctx, n, d)?;
    for _ in 0..3 {
        gpu.gather_into(&all, &mut big)?;
    }
    ctx.wait_idle()?;
    let _ = ctx.take_timings()?;
    for _ in 0..10 {
        gpu.gather_into(&all, &mut big)?;
    }
    ctx.wait_idle()?;
    let (times, _) = ctx.take_timings()?;
    let mut copy_ms: Vec<f64> = times.iter().map(|t| t.nanos / 1e6).collect();
    let copy_ms = median(&mut copy_ms);
    rep.insert(
        "wgpu_sequential_gather_GBps_rw".into(),
        2.0 * n as f64 * d as f64 * 4.0 / copy_ms / 1e6,
    );
    ctx.disable_timing();
    Ok(())
}

/// Shapes of the cached workloads (W2, W5): full, or the CI "small" scale (N / 64, B / 16).
fn cached_shapes(a: &Args) -> (usize, usize, usize) {
    if a.small {
        ((8 << 20) / 64, 65_536 / 16, 128)
    } else {
        (8 << 20, 65_536, 128)
    }
}

fn host_table(n: usize, d: usize) -> HostTable<'static> {
    let t = Instant::now();
    let table = HostTable::owned(random_values(n * d, 21), d).expect("table");
    eprintln!("host table {n} x {d}: {:.1} s", t.elapsed().as_secs_f64());
    table
}

/// The workloads' cache: 10% of the `n` rows on the GPU, default settings otherwise.
fn tenth_cache(
    ctx: &GpuContext,
    table: HostTable<'static>,
    n: usize,
    policy: EvictionPolicy,
) -> Result<EmbeddingCache<HostTable<'static>>, hotrow::HotrowError> {
    let config = CacheConfig {
        capacity: Capacity::Rows(n / 10),
        policy,
        ..Default::default()
    };
    EmbeddingCache::new(ctx, table, config)
}

/// W2: cached stream, table in host memory, 10% of rows cached on the GPU.
fn w2(
    ctx: &GpuContext,
    a: &Args,
    rep: &mut Report,
    table: HostTable<'static>,
) -> Result<HostTable<'static>, hotrow::HotrowError> {
    let (n, b, d) = cached_shapes(a);
    let zipf = ZipfIds::new(n, S, 22);
    let mut rng = Rng::new(23);
    let batches = a.batches.max(40);
    let stream: Vec<Vec<u32>> = (0..batches).map(|_| zipf.batch(b, &mut rng)).collect();
    let mut cache = tenth_cache(ctx, table, n, EvictionPolicy::Clock)?;
    let mut out = Embeddings::new(ctx, b, d)?;
    // Correctness: the first batches and the last one are checked against the reference.
    let check = |cache: &EmbeddingCache<HostTable<'static>>,
                 ids: &[u32],
                 out: &Embeddings|
     -> Result<(), hotrow::HotrowError> {
        let got = out.to_host()?;
        let want = reference::gather(cache.source().data(), d, ids);
        if got
            .iter()
            .zip(&want)
            .any(|(x, y)| x.to_bits() != y.to_bits())
        {
            eprintln!("w2: WRONG RESULT");
            std::process::exit(1);
        }
        Ok(())
    };
    let timing = ctx.enable_timing(8 * batches as u32 + 64);
    // Cold start: batch by batch, each waited for.
    let warm = 20.min(batches / 2);
    let mut cold_ms = Vec::new();
    for ids in &stream[..warm] {
        let t = Instant::now();
        cache.lookup_into(ids, &mut out)?;
        ctx.wait_idle()?;
        cold_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if cold_ms.len() <= 3 {
            check(&cache, ids, &out)?;
        }
    }
    let _ = ctx.take_timings()?;
    cache.reset_stats();
    // Steady state, pipelined: submit every batch, wait at the end (the host works on batch
    // k + 1 while the GPU runs batch k).
    let mut gaps = Vec::new();
    let t0 = Instant::now();
    let mut last = t0;
    for ids in &stream[warm..] {
        cache.lookup_into(ids, &mut out)?;
        let now = Instant::now();
        gaps.push((now - last).as_secs_f64() * 1e3);
        last = now;
    }
    ctx.wait_idle()?;
    let steady = (batches - warm) as f64;
    let stream_ms = t0.elapsed().as_secs_f64() * 1e3 / steady;
    check(&cache, &stream[batches - 1], &out)?;
    let st = cache.stats().clone();
    let (times, _) = ctx.take_timings()?;
    let gpu_sum = |label: &str| {
        times
            .iter()
            .filter(|t| t.label == label)
            .map(|t| t.nanos)
            .sum::<f64>()
            / 1e6
            / steady
    };
    // Synchronous: each batch waited for (latency of one batch end to end).
    let mut sync_ms = Vec::new();
    for ids in stream[warm..].iter().take(30) {
        let t = Instant::now();
        cache.lookup_into(ids, &mut out)?;
        ctx.wait_idle()?;
        sync_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let ms = |x: std::time::Duration| x.as_secs_f64() * 1e3 / steady;
    rep.insert("W2_hotrow_stream_ms_per_batch".into(), stream_ms);
    rep.insert("W2_hotrow_median_gap_ms".into(), median(&mut gaps));
    rep.insert("W2_hotrow_sync_median_ms".into(), median(&mut sync_ms));
    rep.insert("W2_hotrow_cold_first_batch_ms".into(), cold_ms[0]);
    rep.insert(
        "W2_hotrow_cold_mean_first20_ms".into(),
        cold_ms.iter().sum::<f64>() / cold_ms.len() as f64,
    );
    rep.insert("W2_unique_row_hit_rate".into(), st.hit_rate());
    rep.insert(
        "W2_slot_map_partitions".into(),
        cache.slot_map().partitions() as f64,
    );
    rep.insert(
        "W2_unique_frac".into(),
        st.distinct as f64 / st.requests as f64,
    );
    rep.insert(
        "W2_bytes_uploaded_per_batch".into(),
        st.bytes_uploaded as f64 / steady,
    );
    rep.insert("W2_misses_per_batch".into(), st.misses as f64 / steady);
    rep.insert("W2_host_resolve_ms".into(), ms(st.resolve_time));
    rep.insert("W2_host_row_copy_ms".into(), ms(st.copy_time));
    rep.insert("W2_host_staging_wait_ms".into(), ms(st.staging_wait_time));
    rep.insert("W2_host_submit_ms".into(), ms(st.submit_time));
    if timing {
        rep.insert("W2_gpu_scatter_ms".into(), gpu_sum("scatter_rows"));
        rep.insert("W2_gpu_gather_ms".into(), gpu_sum("gather"));
    }
    let mem = cache.memory();
    rep.insert("W2_gpu_bytes_cache_total".into(), mem.total() as f64);
    rep.insert("W2_gpu_bytes_slots".into(), mem.slots as f64);
    rep.insert(
        "W2_gpu_bytes_frac_of_table".into(),
        mem.total() as f64 / (n * d * 4) as f64,
    );
    rep.insert("W2_gpu_bytes_output".into(), (b * d * 4) as f64);
    ctx.disable_timing();
    Ok(cache.into_source())
}

/// W5: as W2, but the rank-to-id permutation is redrawn every 50 batches; hit rate per
/// eviction policy.
fn w5(
    ctx: &GpuContext,
    a: &Args,
    rep: &mut Report,
    mut table: HostTable<'static>,
) -> Result<HostTable<'static>, hotrow::HotrowError> {
    let (n, b, _) = cached_shapes(a);
    let batches = a.batches.max(100);
    for policy in [EvictionPolicy::Clock, EvictionPolicy::Lru] {
        let mut zipf = ZipfIds::new(n, S, 52);
        let mut rng = Rng::new(53);
        let mut cache = tenth_cache(ctx, table, n, policy)?;
        let mut out = Embeddings::new(ctx, b, cache.dim())?;
        let mut first_after_shift = Vec::new();
        for k in 0..batches {
            if k > 0 && k % 50 == 0 {
                zipf.reshuffle(54 + k as u64);
            }
            let ids = zipf.batch(b, &mut rng);
            let before = cache.stats().clone();
            cache.lookup_into(&ids, &mut out)?;
            let s = cache.stats();
            if k >= 50 && k % 50 == 0 {
                first_after_shift
                    .push((s.hits - before.hits) as f64 / (s.distinct - before.distinct) as f64);
            }
        }
        ctx.wait_idle()?;
        let p = format!("{policy:?}").to_lowercase();
        rep.insert(
            format!("W5_{p}_unique_row_hit_rate"),
            cache.stats().hit_rate(),
        );
        rep.insert(
            format!("W5_{p}_hit_rate_first_batch_after_shift"),
            first_after_shift.iter().sum::<f64>() / first_after_shift.len().max(1) as f64,
        );
        table = cache.into_source();
    }
    Ok(table)
}

fn gpu_median(times: &[hotrow::PassTiming], label: &str) -> f64 {
    let mut v: Vec<f64> = times
        .iter()
        .filter(|t| t.label == label)
        .map(|t| t.nanos / 1e6)
        .collect();
    median(&mut v)
}

/// GPU time of one op run alone: each call is waited for before the next, so the pass's
/// timestamps cannot include time spent queued behind earlier work. Median over `reps`.
fn isolated_gpu_ms(
    ctx: &GpuContext,
    label: &str,
    reps: usize,
    mut op: impl FnMut() -> Result<(), hotrow::HotrowError>,
) -> Result<f64, hotrow::HotrowError> {
    let mut v = Vec::new();
    for _ in 0..reps {
        op()?;
        ctx.wait_idle()?;
        let (times, _) = ctx.take_timings()?;
        v.extend(
            times
                .iter()
                .filter(|t| t.label == label)
                .map(|t| t.nanos / 1e6),
        );
    }
    Ok(median(&mut v))
}

/// Relative error of a GPU result against an f64 reference; exits on failure.
fn verify(what: &str, got: &Embeddings, want: &[f64]) -> Result<(), hotrow::HotrowError> {
    let err = reference::relative_error(&got.to_host()?, want);
    if err.is_nan() || err >= 1e-5 {
        eprintln!("{what}: WRONG RESULT (relative error {err:e})");
        std::process::exit(1);
    }
    Ok(())
}

/// W3: pooled bags (4,096 bags x 32 ids, per-sample weights) over a 10% cache.
fn w3(
    ctx: &GpuContext,
    a: &Args,
    rep: &mut Report,
    table: HostTable<'static>,
) -> Result<HostTable<'static>, hotrow::HotrowError> {
    let (n, _, d) = cached_shapes(a);
    let (bags, l) = if a.small { (256, 32) } else { (4096, 32) };
    let zipf = ZipfIds::new(n, S, 32);
    let mut rng = Rng::new(33);
    let sets: Vec<Vec<u32>> = (0..8).map(|_| zipf.batch(bags * l, &mut rng)).collect();
    let offsets: Vec<u32> = (0..bags as u32).map(|b| b * l as u32).collect();
    let w: Vec<f32> = (0..bags * l).map(|_| rng.unit() as f32).collect();
    let mut cache = tenth_cache(ctx, table, n, EvictionPolicy::Clock)?;
    let mut out = Embeddings::new(ctx, bags, d)?;
    for (mode, pooling) in [(0u32, Pooling::Sum), (1, Pooling::Mean), (2, Pooling::Max)] {
        let weights = (mode != 2).then_some(&w[..]);
        cache.lookup_bags_into(&sets[0], &offsets, pooling, weights, &mut out)?;
        let want = reference::bags(cache.source().data(), d, &sets[0], &offsets, mode, weights);
        verify(&format!("w3 {pooling:?}"), &out, &want)?;
    }
    let timing = ctx.enable_timing(16 * a.batches as u32 + 64);
    for (mode, pooling) in [(0u32, Pooling::Sum), (1, Pooling::Mean), (2, Pooling::Max)] {
        let weights = (mode != 2).then_some(&w[..]);
        for s in sets.iter().cycle().take(8) {
            cache.lookup_bags_into(s, &offsets, pooling, weights, &mut out)?;
        }
        ctx.wait_idle()?;
        let _ = ctx.take_timings()?;
        let reps = a.batches.min(100);
        let t = Instant::now();
        for s in sets.iter().cycle().take(reps) {
            cache.lookup_bags_into(s, &offsets, pooling, weights, &mut out)?;
        }
        ctx.wait_idle()?;
        let wall = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let (times, _) = ctx.take_timings()?;
        let name = format!("{pooling:?}").to_lowercase();
        if timing {
            let g = gpu_median(&times, "bag");
            rep.insert(format!("W3_hotrow_{name}_gpu_bag_ms"), g);
            // bytes the kernel must move: every id's row read once (no L2 reuse assumed) + output
            rep.insert(
                format!("W3_hotrow_{name}_GBps_nominal"),
                ((bags * l * d * 4) + bags * d * 4) as f64 / g / 1e6,
            );
        }
        rep.insert(format!("W3_hotrow_{name}_wall_ms"), wall);
        if timing {
            let iso = isolated_gpu_ms(ctx, "bag", 30, || {
                cache.lookup_bags_into(&sets[1], &offsets, pooling, weights, &mut out)
            })?;
            rep.insert(format!("W3_hotrow_{name}_gpu_bag_isolated_ms"), iso);
        }
    }
    let st = cache.stats();
    rep.insert("W3_unique_row_hit_rate".into(), st.hit_rate());
    ctx.disable_timing();
    Ok(cache.into_source())
}

/// W4: scores of 256 queries against 16,384 distinct candidates, through a 10% cache.
fn w4(
    ctx: &GpuContext,
    a: &Args,
    rep: &mut Report,
    table: HostTable<'static>,
) -> Result<HostTable<'static>, hotrow::HotrowError> {
    let (n, _, d) = cached_shapes(a);
    let (m, c) = if a.small { (64, 1024) } else { (256, 16_384) };
    let mut rng = Rng::new(43);
    let q = random_values(m * d, 44);
    // distinct candidates: a partial shuffle
    let cands: Vec<Vec<u32>> = (0..4)
        .map(|_| {
            let mut seen = std::collections::HashSet::new();
            let mut v = Vec::with_capacity(c);
            while v.len() < c {
                let id = rng.below(n as u64) as u32;
                if seen.insert(id) {
                    v.push(id);
                }
            }
            v
        })
        .collect();
    let mut cache = tenth_cache(ctx, table, n, EvictionPolicy::Clock)?;
    let mut out = Embeddings::new(ctx, m, c)?;
    cache.scores_into(Queries::Host { data: &q, dim: d }, &cands[0], &mut out)?;
    verify(
        "w4 scores",
        &out,
        &reference::scores(cache.source().data(), d, &q, &cands[0]),
    )?;
    let qg = RowBuffer::from_host(ctx, &q, d)?.gather(&(0..m as u32).collect::<Vec<_>>())?;
    let timing = ctx.enable_timing(4 * a.batches as u32 + 64);
    for s in cands.iter().cycle().take(8) {
        cache.scores_into(Queries::Gpu(&qg), s, &mut out)?;
    }
    ctx.wait_idle()?;
    let _ = ctx.take_timings()?;
    let reps = a.batches.min(100);
    let t = Instant::now();
    for s in cands.iter().cycle().take(reps) {
        cache.scores_into(Queries::Gpu(&qg), s, &mut out)?;
    }
    ctx.wait_idle()?;
    let wall = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    let (times, _) = ctx.take_timings()?;
    if timing {
        let g = gpu_median(&times, "block_matmul");
        rep.insert("W4_hotrow_gpu_matmul_ms".into(), g);
        rep.insert(
            "W4_hotrow_GFLOPs".into(),
            2.0 * (m * c * d) as f64 / g / 1e6,
        );
        rep.insert(
            "W4_hotrow_GBps_min_bytes".into(),
            ((c * d + m * d + m * c) * 4) as f64 / g / 1e6,
        );
    }
    rep.insert("W4_hotrow_wall_ms".into(), wall);
    if timing {
        let iso = isolated_gpu_ms(ctx, "block_matmul", 30, || {
            cache.scores_into(Queries::Gpu(&qg), &cands[1], &mut out)
        })?;
        rep.insert("W4_hotrow_gpu_matmul_isolated_ms".into(), iso);
    }
    ctx.disable_timing();
    Ok(cache.into_source())
}

fn main() -> Result<(), hotrow::HotrowError> {
    env_logger::init();
    let a = args();
    let ctx = GpuContext::new()?;
    println!("adapter: {}", ctx.adapter());
    let mut rep = Report::new();
    let mut table: Option<HostTable<'static>> = None;
    for w in &a.workloads {
        let needs_table = matches!(w.as_str(), "w2" | "w3" | "w4" | "w5");
        if needs_table && table.is_none() {
            let (n, _, d) = cached_shapes(&a);
            table = Some(host_table(n, d));
        }
        let t = Instant::now();
        // A workload named twice reports its second run under keys ending in "#2".
        let mut part = Report::new();
        match w.as_str() {
            "w1" => w1(&ctx, &a, &mut part)?,
            "w2" => table = Some(w2(&ctx, &a, &mut part, table.take().expect("table"))?),
            "w3" => table = Some(w3(&ctx, &a, &mut part, table.take().expect("table"))?),
            "w4" => table = Some(w4(&ctx, &a, &mut part, table.take().expect("table"))?),
            "w5" => table = Some(w5(&ctx, &a, &mut part, table.take().expect("table"))?),
            other => {
                eprintln!("unknown workload {other}");
                std::process::exit(2);
            }
        }
        for (k, v) in part {
            let key = if rep.contains_key(&k) {
                format!("{k}#2")
            } else {
                k
            };
            rep.insert(key, v);
        }
        eprintln!("{w}: {:.1} s", t.elapsed().as_secs_f64());
    }
    for (k, v) in &rep {
        println!("{k:40} {v:>12.4}");
    }
    if let Some(path) = &a.json {
        let body: Vec<String> = rep
            .iter()
            .map(|(k, v)| {
                format!(
                    "  \"{k}\": {}",
                    if v.is_finite() {
                        v.to_string()
                    } else {
                        "null".into()
                    }
                )
            })
            .collect();
        let adapter = ctx.adapter().to_string().replace('"', "'");
        let text = format!(
            "{{\n  \"adapter\": \"{adapter}\",\n{}\n}}\n",
            body.join(",\n")
        );
        std::fs::write(path, text).expect("write json");
    }
    Ok(())
}

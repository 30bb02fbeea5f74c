//! W6: 26 tables (dim 64; 4 of 4M rows, 6 of 1M, 8 of 100K, 8 of 10K), one step = 2,048
//! bags of 8 ids per table (sum), served by one TableBatchedCache holding 10% of all rows
//! (one pool shared by every table: they have one width).

use std::time::Instant;

use hotrow::{
    reference, CacheConfig, Capacity, Embeddings, GpuContext, HostTable, Pooling, TableBags,
    TableBatchedCache,
};

use crate::gen::{Rng, ZipfIds};
use crate::harness::{self, Args, Report, Result, S};

/// W6's table sizes and step shape (bags per table, ids per bag).
pub fn shapes(a: &Args) -> (Vec<usize>, usize, usize, usize) {
    let (div_rows, div_bags) = if a.small { (64, 16) } else { (1, 1) };
    let rows: Vec<usize> = [(4, 4_000_000), (6, 1_000_000), (8, 100_000), (8, 10_000)]
        .iter()
        .flat_map(|&(k, n)| std::iter::repeat_n((n / div_rows).max(64), k))
        .collect();
    (rows, 64, 2048 / div_bags, 8)
}

/// Each table's ids: its own Zipf(1.05) over its own permutation (the same streams for
/// `run` and `pools`).
pub fn id_streams(rows: &[usize]) -> Vec<ZipfIds> {
    rows.iter()
        .enumerate()
        .map(|(k, &n)| ZipfIds::new(n, S, 700 + k as u64))
        .collect()
}

/// One shared pool (10% of all rows) against one pool per table (10% of each), by hit rate
/// on W6's id streams: the slot maps alone, on the host (no GPU involved: what each design
/// would keep resident). Hits and misses summed over passes, after `warm` steps.
pub fn pools(a: &Args, rep: &mut Report) -> Result<()> {
    use hotrow::{EvictionPolicy, PartitionedSlotMap, PassPlan};
    let (rows, _, bags, per_bag) = shapes(a);
    let zipf = id_streams(&rows);
    let mut rng = Rng::new(61);
    let (steps, warm) = (80, 20);
    let total: usize = rows.iter().sum();
    let mut bases = vec![0u32];
    for &n in &rows {
        bases.push(bases.last().copied().unwrap_or(0) + n as u32);
    }
    let parts = rayon::current_num_threads();
    let mut shared = PartitionedSlotMap::new(total, total / 10, EvictionPolicy::Clock, parts);
    let mut own: Vec<PartitionedSlotMap> = rows
        .iter()
        .map(|&n| PartitionedSlotMap::new(n, n.div_ceil(10), EvictionPolicy::Clock, parts))
        .collect();
    let mut plan = PassPlan::default();
    let (mut shared_hd, mut own_hd) = ((0u64, 0u64), (0u64, 0u64));
    let mut serve =
        |map: &mut PartitionedSlotMap, ids: &[u32], count: bool, hd: &mut (u64, u64)| {
            let mut start = 0;
            while start < ids.len() {
                start += map.resolve(&ids[start..], &mut plan);
                if count {
                    hd.0 += plan.hits;
                    hd.1 += plan.distinct();
                }
            }
        };
    // Host cost of the shared pool's resolution alone (no row copy, no GPU), per step.
    let mut resolve_ms = Vec::new();
    let mut global = Vec::new();
    for step in 0..steps {
        let ids: Vec<Vec<u32>> = zipf
            .iter()
            .map(|z| z.batch(bags * per_bag, &mut rng))
            .collect();
        let count = step >= warm;
        global.clear();
        for (t, ids) in ids.iter().enumerate() {
            global.extend(ids.iter().map(|&id| bases[t] + id));
            serve(&mut own[t], ids, count, &mut own_hd);
        }
        let t = std::time::Instant::now();
        serve(&mut shared, &global, count, &mut shared_hd);
        if count {
            resolve_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    rep.insert(
        "W6_sim_shared_resolve_median_ms".into(),
        harness::median(&mut resolve_ms),
    );
    let rate = |hd: (u64, u64)| hd.0 as f64 / hd.1.max(1) as f64;
    rep.insert("W6_sim_hit_rate_shared_pool".into(), rate(shared_hd));
    rep.insert("W6_sim_hit_rate_per_table_pools".into(), rate(own_hd));
    Ok(())
}

pub fn run(ctx: &GpuContext, a: &Args, rep: &mut Report) -> Result<()> {
    let (rows, dim, bags, per_bag) = shapes(a);
    let t = Instant::now();
    let data: Vec<Vec<f32>> = rows
        .iter()
        .enumerate()
        .map(|(k, &n)| harness::table_values(n * dim, 600 + k as u64))
        .collect();
    rep.insert("W6_table_build_s".into(), t.elapsed().as_secs_f64());
    let tables: Vec<HostTable<'_>> = data
        .iter()
        .map(|v| HostTable::borrowed(v, dim))
        .collect::<Result<_>>()?;
    let config = CacheConfig::default()
        .capacity(Capacity::Fraction(0.1))
        .resolution(a.resolution)
        .row_format(a.row_format)
        .path(a.path);
    let mut cache = TableBatchedCache::new(ctx, tables, a.with_knobs(config))?;
    let zipf = id_streams(&rows);
    let mut rng = Rng::new(61);
    let steps = if a.small { 30 } else { 80 };
    let ids: Vec<Vec<Vec<u32>>> = (0..steps)
        .map(|_| {
            zipf.iter()
                .map(|z| z.batch(bags * per_bag, &mut rng))
                .collect()
        })
        .collect();
    let offsets: Vec<u32> = (0..bags as u32).map(|b| b * per_bag as u32).collect();
    let parts = |k: usize| -> Vec<TableBags<'_>> {
        ids[k]
            .iter()
            .map(|ids| TableBags {
                ids,
                offsets: &offsets,
                weights: None,
            })
            .collect()
    };
    let mut out = Embeddings::new(ctx, bags, cache.width())?;
    // The first step checked against the CPU, table by table.
    cache.lookup_bags_into(&parts(0), Pooling::Sum, &mut out)?;
    let got = out.to_host()?;
    let width = cache.width();
    let layout = hotrow::RowLayout::new(dim, a.row_format)?;
    for (t, table) in data.iter().enumerate() {
        // The reference reads the rows as the slots store them.
        let stored = harness::stored_rows(table, layout, &ids[0][t]);
        let positions: Vec<u32> = (0..ids[0][t].len() as u32).collect();
        let want = reference::bags(&stored, dim, &positions, &offsets, 0, None);
        let col = cache.column(t).expect("a table");
        let mine: Vec<f32> = (0..bags)
            .flat_map(|b| got[b * width + col..b * width + col + dim].iter().copied())
            .collect();
        let err = reference::relative_error(&mine, &want);
        if err.is_nan() || err >= 1e-5 {
            eprintln!("w6 table {t}: WRONG RESULT (relative error {err:e})");
            std::process::exit(1);
        }
    }
    // 20 warm-up steps (after the GPU is warmed up), then steps each waited for (median),
    // then the same steps pipelined.
    let warm = 20.min(steps / 2);
    harness::warm_up(ctx, a, 0, |_| Ok(()))?;
    for k in 1..warm {
        cache.lookup_bags_into(&parts(k), Pooling::Sum, &mut out)?;
    }
    ctx.wait_idle()?;
    let before = cache.stats();
    let mut waited = Vec::new();
    for k in warm..steps {
        let t = Instant::now();
        cache.lookup_bags_into(&parts(k), Pooling::Sum, &mut out)?;
        ctx.wait_idle()?;
        waited.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let after = cache.stats();
    let (stream, _) = harness::stream(ctx, steps - warm, |k| {
        cache.lookup_bags_into(&parts(warm + k), Pooling::Sum, &mut out)
    })?;
    let timed = (steps - warm) as f64;
    rep.insert(
        "W6_hotrow_step_waited_median_ms".into(),
        harness::median(&mut waited),
    );
    rep.insert("W6_hotrow_step_stream_ms".into(), stream);
    let hits = (after.hits - before.hits) as f64;
    let distinct = (after.distinct - before.distinct) as f64;
    rep.insert("W6_unique_row_hit_rate".into(), hits / distinct.max(1.0));
    rep.insert(
        "W6_bytes_uploaded_per_step".into(),
        (after.bytes_uploaded - before.bytes_uploaded) as f64 / timed,
    );
    rep.insert(
        "W6_submissions_per_step".into(),
        (after.submissions - before.submissions) as f64 / timed,
    );
    rep.insert(
        "W6_host_resolve_copy_thread_ms".into(),
        (after.resolve_copy_thread_time - before.resolve_copy_thread_time).as_secs_f64() * 1e3
            / timed,
    );
    // Where a waited-for step's host time goes (the rest of the step is the caller-side
    // checks and batching, the GPU, and the wait for it).
    let per_step = |d: std::time::Duration| d.as_secs_f64() * 1e3 / timed;
    for (key, a, b) in [
        (
            "W6_host_resolve_ms",
            after.resolve_time,
            before.resolve_time,
        ),
        ("W6_host_copy_ms", after.copy_time, before.copy_time),
        (
            "W6_host_staging_wait_ms",
            after.staging_wait_time,
            before.staging_wait_time,
        ),
        ("W6_host_submit_ms", after.submit_time, before.submit_time),
        (
            "W6_host_probe_round_trip_ms",
            after.probe_time,
            before.probe_time,
        ),
    ] {
        rep.insert(key.into(), per_step(a - b));
    }
    let mem = cache.memory();
    let table_bytes: usize = rows.iter().map(|n| n * dim * 4).sum();
    rep.insert("W6_gpu_bytes_cache_total".into(), mem.total() as f64);
    rep.insert(
        "W6_gpu_bytes_frac_of_tables".into(),
        mem.total() as f64 / table_bytes as f64,
    );
    rep.insert("W6_total_rows".into(), rows.iter().sum::<usize>() as f64);
    rep.insert(
        "W6_anon_huge_pages_mb".into(),
        harness::anon_huge_pages_mb(),
    );
    Ok(())
}

/// The floor of a W6 step's row copy, measured apart from the cache: 32,768 random rows of
/// 64 f32 (a step's ~32,000 missed rows) out of W6's 5.9 GB of rows (one allocation of
/// 22.9M rows), copied by the rayon pool in tasks of 128 rows, into a host `Vec` or into
/// a mapped staging buffer (`MAP_WRITE | COPY_SRC`, as the cache's staging ring makes
/// them), prefetching 0 to 64 cache lines ahead, directly or through a 32 KiB per-task
/// bounce buffer (random reads into cached memory, then one sequential copy into staging);
/// and the library's own `HostTable::read_rows`. Also the sequential write and read speed
/// of the mapped staging memory (a read far slower than a write says write-combined).
pub fn copy_floor(ctx: &GpuContext, a: &Args, rep: &mut Report) -> Result<()> {
    use hotrow::RowSource;
    use rayon::prelude::*;
    let (shapes, dim, _, _) = shapes(a);
    let rows: usize = shapes.iter().sum();
    let n = if a.small { 2048 } else { 32_768 };
    let t = Instant::now();
    let table = harness::table_values(rows * dim, 600);
    rep.insert("W6copy_table_build_s".into(), t.elapsed().as_secs_f64());
    let host = HostTable::borrowed(&table, dim)?;
    let mut rng = Rng::new(77);
    let sets: Vec<Vec<u32>> = (0..8)
        .map(|_| (0..n).map(|_| rng.below(rows as u64) as u32).collect())
        .collect();
    let bytes = (n * dim * 4) as u64;
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("w6copy staging"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: true,
    });
    let mut view = staging
        .slice(..)
        .get_mapped_range_mut()
        .map_err(|e| hotrow::HotrowError::Map(e.to_string()))?;
    let mut w = view.slice(..);
    let mut ptr = w.as_raw_ptr();
    // SAFETY: the pointer covers the mapped range of `view`, which stays mapped and ours
    // until `view` drops; wgpu zero-fills new mappings, so the memory is initialised.
    let staged: &mut [f32] = bytemuck::cast_slice_mut(unsafe { ptr.as_mut() });
    let mut plain = vec![0f32; n * dim];
    const TASK: usize = 128;
    let copy = |ids: &[u32], dst: &mut [f32], lines: usize, bounce: bool, task: usize| {
        let ahead = lines * 64 / (dim * 4);
        ids.par_chunks(task)
            .zip(dst.par_chunks_mut(task * dim))
            .for_each(|(ids, dst)| {
                let mut local = [0f32; TASK * 64];
                let local = &mut local[..ids.len() * dim];
                let out: &mut [f32] = if bounce { local } else { dst };
                for (k, (&id, o)) in ids.iter().zip(out.chunks_exact_mut(dim)).enumerate() {
                    if ahead > 0 {
                        if let Some(&later) = ids.get(k + ahead) {
                            let r = later as usize * dim;
                            for line in (0..dim).step_by(16) {
                                prefetch(&table[r + line]);
                            }
                        }
                    }
                    let r = id as usize * dim;
                    o.copy_from_slice(&table[r..r + dim]);
                }
                if bounce {
                    dst.copy_from_slice(&local[..]);
                }
            });
    };
    // (name, destination is staging, prefetch lines or None for the library, bounce, rows
    // per task)
    let mut variants: Vec<(String, bool, Option<usize>, bool, usize)> = Vec::new();
    for staging in [false, true] {
        let dst = if staging { "staging" } else { "vec" };
        variants.push((format!("lib_{dst}"), staging, None, false, 0));
        // the library's task size (64 rows) in this loop
        variants.push((format!("pf32_t64_{dst}"), staging, Some(32), false, 64));
        for lines in [0usize, 16, 32, 64] {
            variants.push((
                format!("pf{lines}_{dst}"),
                staging,
                Some(lines),
                false,
                TASK,
            ));
            if staging {
                variants.push((
                    format!("pf{lines}_bounce_{dst}"),
                    staging,
                    Some(lines),
                    true,
                    TASK,
                ));
            }
        }
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let reps = if a.small { 3 } else { 40 };
    for r in 0..reps + 2 {
        for (v, (_, to_staging, lines, bounce, task)) in variants.iter().enumerate() {
            let ids = &sets[(r + v) % sets.len()];
            let dst: &mut [f32] = if *to_staging { staged } else { &mut plain };
            let t = Instant::now();
            match lines {
                None => host.read_rows(ids, dst)?,
                Some(l) => copy(ids, dst, *l, *bounce, *task),
            }
            if r >= 2 {
                times[v].push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    for ((name, ..), t) in variants.iter().zip(&mut times) {
        rep.insert(format!("W6copy_{name}_us"), harness::median(t));
    }
    // Sequential speed of the staging memory: a parallel write of all of it, one thread's
    // read of all of it.
    let mut w = Vec::new();
    let mut rd = Vec::new();
    let mut sink = 0f32;
    for _ in 0..if a.small { 2 } else { 10 } {
        let t = Instant::now();
        staged
            .par_chunks_mut(16 * 1024)
            .zip(plain.par_chunks(16 * 1024))
            .for_each(|(d, s)| d.copy_from_slice(s));
        w.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = Instant::now();
        sink += staged.iter().step_by(16).sum::<f32>();
        rd.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    rep.insert(
        "W6copy_staging_parallel_write_GBps".into(),
        harness::median(&mut w),
    );
    rep.insert(
        "W6copy_staging_one_thread_read_GBps".into(),
        harness::median(&mut rd),
    );
    std::hint::black_box(sink);
    rep.insert("W6copy_rows".into(), n as f64);
    rep.insert("W6copy_threads".into(), rayon::current_num_threads() as f64);
    drop(view);
    staging.unmap();
    Ok(())
}

/// A hint to bring the cache line holding `p` closer (as the library's row loop does).
#[inline(always)]
fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const T as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

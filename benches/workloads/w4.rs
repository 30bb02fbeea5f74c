//! W4: scores of 256 queries against 16,384 distinct candidates, through a 10% cache.

use hotrow::{reference, Embeddings, EvictionPolicy, GpuContext, HostTable, Queries, RowBuffer};

use crate::gen::{random_values, Rng};
use crate::harness::{self, Args, Report, Result};

pub fn run(
    ctx: &GpuContext,
    a: &Args,
    rep: &mut Report,
    table: HostTable<'static>,
) -> Result<HostTable<'static>> {
    let (n, _, d) = harness::cached_shapes(a);
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
    let mut cache = harness::tenth_cache(ctx, a, table, n, EvictionPolicy::Clock)?;
    let mut out = Embeddings::new(ctx, m, c)?;
    cache.scores_into(Queries::Host { data: &q, dim: d }, &cands[0], &mut out)?;
    let stored = harness::stored_rows(
        cache.source().data().expect("an f32 table"),
        cache.layout(),
        &cands[0],
    );
    let positions: Vec<u32> = (0..cands[0].len() as u32).collect();
    let want = reference::scores(&stored, d, &q, &positions);
    harness::verify_close("w4 scores", &out, &want)?;
    let qg = RowBuffer::from_host(ctx, &q, d)?.gather(&(0..m as u32).collect::<Vec<_>>())?;
    let timing = ctx.enable_timing(4 * a.batches as u32 + 4096);
    let mut op = |k: usize| cache.scores_into(Queries::Gpu(&qg), &cands[k % cands.len()], &mut out);
    harness::warm_up(ctx, a, 8, &mut op)?;
    let (wall, times) = harness::stream(ctx, a.batches.min(100), &mut op)?;
    rep.insert("W4_hotrow_wall_ms".into(), wall);
    if timing {
        let g = harness::gpu_median(&times, "block_matmul");
        rep.insert("W4_hotrow_gpu_matmul_ms".into(), g);
        rep.insert(
            "W4_hotrow_GFLOPs".into(),
            2.0 * (m * c * d) as f64 / g / 1e6,
        );
        rep.insert(
            "W4_hotrow_GBps_min_bytes".into(),
            ((c * d + m * d + m * c) * 4) as f64 / g / 1e6,
        );
        let iso = harness::isolated_gpu_ms(ctx, "block_matmul", 30, || op(1))?;
        rep.insert("W4_hotrow_gpu_matmul_isolated_ms".into(), iso);
    }
    ctx.disable_timing();
    Ok(cache.into_source())
}

//! W5: as W2, but the rank-to-id permutation is redrawn every 50 batches; hit rate per
//! eviction policy.

use hotrow::{Embeddings, EvictionPolicy, GpuContext, HostTable};

use crate::gen::{Rng, ZipfIds};
use crate::harness::{self, Args, Report, Result, S};

pub fn run(
    ctx: &GpuContext,
    a: &Args,
    rep: &mut Report,
    mut table: HostTable<'static>,
) -> Result<HostTable<'static>> {
    let (n, b, _) = harness::cached_shapes(a);
    let batches = a.batches.max(100);
    for policy in [
        EvictionPolicy::Clock,
        EvictionPolicy::Lru,
        EvictionPolicy::TinyLfu,
    ] {
        let mut zipf = ZipfIds::new(n, S, 52);
        let mut rng = Rng::new(53);
        let mut cache = harness::tenth_cache(ctx, a, table, n, policy)?;
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

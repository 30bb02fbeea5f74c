//! Sizing a cache from its traffic: the online miss-ratio curve
//! (`CacheConfig::miss_ratio_curve`, `CacheStats::miss_ratio_curve`) against an exact LRU
//! simulation of the same batches and against the hit rate caches of those sizes really
//! had, on both paths.

mod common;

use common::seed;
use common::workload::{random_values, Rng, ZipfIds};
use hotrow::{CacheConfig, Capacity, EmbeddingCache, HostTable};

/// The exact unique-row hit rate of an LRU cache of `cap` rows over `batches` updated
/// batch by batch, as the cache counts hits (`hotrow::reference::batch_lru_hits`).
fn lru_hit_rate(batches: &[Vec<u32>], cap: usize) -> f64 {
    let (hits, refs) = hotrow::reference::batch_lru_hits(batches, cap);
    hits as f64 / refs as f64
}

/// A Zipf stream (W2's shape scaled down: batches far smaller than the caches) through a
/// cache with the curve on: the curve at 1%, 5%, 10% and 20% of the table within 2 points
/// of an exact LRU over the same batches, and within 3 points of the hit rate a cache of
/// that size measured (CLOCK, which is not exactly LRU); the curve rises with the capacity;
/// `reset_stats` empties it; off by default.
#[test]
fn the_online_curve_matches_exact_lru_and_real_caches() {
    let _serial = common::serial();
    let (rows, dim) = (1_000_000usize, 4usize);
    let data = random_values(rows * dim, seed("sizing_table"));
    let zipf = ZipfIds::new(rows, 1.05, seed("sizing_zipf"));
    let mut rng = Rng::new(seed("sizing_ids"));
    let batches: Vec<Vec<u32>> = (0..100).map(|_| zipf.batch(4_096, &mut rng)).collect();
    for (ctx, path) in common::paths() {
        let mut measured = Vec::new();
        let mut curve = None;
        for frac in [0.01, 0.05, 0.1, 0.2] {
            let config = CacheConfig::default()
                .capacity(Capacity::Fraction(frac))
                .path(path)
                .miss_ratio_curve(true);
            let table = HostTable::borrowed(&data, dim).unwrap();
            let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
            for b in &batches {
                cache.preload(b).unwrap();
            }
            let s = cache.stats();
            measured.push((frac, s.hit_rate()));
            curve = s.miss_ratio_curve;
            cache.reset_stats();
            assert!(cache.stats().miss_ratio_curve.unwrap().samples() == 0);
        }
        let curve = curve.expect("the curve is on");
        assert!(
            curve.samples() > 1_000,
            "{path:?}: {} samples",
            curve.samples()
        );
        let mut last = 0.0;
        for (frac, real) in measured {
            let cap = (rows as f64 * frac) as u64;
            let est = curve.hit_rate(cap);
            let exact = lru_hit_rate(&batches, cap as usize);
            eprintln!("{path:?} {frac}: curve {est:.4}, exact LRU {exact:.4}, cache {real:.4}");
            assert!(
                (est - exact).abs() < 0.02,
                "{path:?} {frac}: {est} vs LRU {exact}"
            );
            assert!(
                (est - real).abs() < 0.03,
                "{path:?} {frac}: {est} vs cache {real}"
            );
            assert!(est >= last, "the curve falls at {frac}");
            last = est;
        }
    }
    // off by default
    let table = HostTable::borrowed(&data, dim).unwrap();
    let mut cache = EmbeddingCache::new(common::ctx(), table, CacheConfig::default()).unwrap();
    cache.preload(&batches[0]).unwrap();
    assert!(cache.stats().miss_ratio_curve.is_none());
}

//! Lookahead (`EmbeddingCache::prefetch`): the next batch's rows uploaded ahead, then its
//! lookup all hits and right, on both paths; the prefetched rows held against the batch in
//! between (both paths); bad ids refused with nothing changed.

mod common;

use common::seed;
use common::workload::{random_values, Rng, ZipfIds};
use hotrow::reference::gather;
use hotrow::{BatchPath, CacheConfig, Capacity, EmbeddingCache, HostTable, HotrowError};

#[test]
fn a_prefetched_batch_is_all_hits_and_right() {
    let _serial = common::serial();
    let (rows, dim) = (5_000usize, 4usize);
    let data = random_values(rows * dim, seed("prefetch_table"));
    let zipf = ZipfIds::new(rows, 1.05, seed("prefetch_zipf"));
    let mut rng = Rng::new(seed("prefetch_ids"));
    let batches: Vec<Vec<u32>> = (0..30).map(|_| zipf.batch(300, &mut rng)).collect();
    for (ctx, path) in common::paths() {
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(600))
            .path(path);
        let table = HostTable::borrowed(&data, dim).unwrap();
        let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
        assert_eq!(cache.config().path, path);
        // lookup(k), then prefetch(k + 1) while the GPU runs k
        cache.prefetch(&batches[0]).unwrap();
        for k in 0..batches.len() {
            let before = cache.stats().misses;
            let out = cache.lookup(&batches[k]).unwrap().to_host().unwrap();
            assert_eq!(cache.stats().misses, before, "{path:?} batch {k}: missed");
            assert_eq!(out, gather(&data, dim, &batches[k]), "{path:?} batch {k}");
            if let Some(next) = batches.get(k + 1) {
                cache.prefetch(next).unwrap();
            }
        }
        // bad ids change nothing; empty ids do nothing
        let before = cache.stats();
        let err = cache.prefetch(&[1, rows as u32, 2]).unwrap_err();
        assert!(
            matches!(err, HotrowError::IdOutOfRange { position: 1, .. }),
            "{err:?}"
        );
        cache.prefetch(&[]).unwrap();
        let after = cache.stats();
        assert_eq!(
            (after.batches, after.misses),
            (before.batches, before.misses)
        );
    }
}

/// On both paths the prefetch may come first: the current batch, looked up after it,
/// cannot evict the prefetched rows while both fit, so the next lookup is all hits.
#[test]
fn a_prefetch_is_held_through_the_batch_before() {
    let _serial = common::serial();
    let (rows, dim) = (4_000usize, 4usize);
    let data = random_values(rows * dim, seed("prefetch_hold_table"));
    let mut rng = Rng::new(seed("prefetch_hold_ids"));
    // Both host-path policies; CLOCK on the GPU-driven path too (its sweep takes a held
    // prefetch's slots last).
    let mut runs: Vec<_> = [hotrow::EvictionPolicy::Clock, hotrow::EvictionPolicy::Lru]
        .map(|policy| (common::ctx(), BatchPath::Host, policy))
        .to_vec();
    if let Some(ctx) = common::host_storage_ctx() {
        runs.push((ctx, BatchPath::Gpu, hotrow::EvictionPolicy::Clock));
    }
    for (ctx, path, policy) in runs {
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(200))
            .policy(policy)
            .path(path);
        let table = HostTable::borrowed(&data, dim).unwrap();
        let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
        assert_eq!(cache.config().path, path);
        for k in 0..20 {
            // fresh rows each time: without the hold the current batch's 100 misses
            // would evict the prefetched ones (CLOCK and LRU take the oldest first)
            let cur: Vec<u32> = (0..100).map(|_| rng.below(rows as u64) as u32).collect();
            let next: Vec<u32> = (0..90).map(|_| rng.below(rows as u64) as u32).collect();
            cache.prefetch(&next).unwrap();
            let out = cache.lookup(&cur).unwrap().to_host().unwrap();
            assert_eq!(out, gather(&data, dim, &cur));
            let before = cache.stats().misses;
            let out = cache.lookup(&next).unwrap().to_host().unwrap();
            assert_eq!(
                cache.stats().misses,
                before,
                "{path:?} {policy:?} step {k}: missed"
            );
            assert_eq!(out, gather(&data, dim, &next));
        }
    }
}

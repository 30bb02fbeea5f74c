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

/// On both paths the lookup of the ids just prefetched is served through the prefetch's
/// slot list: no second pass (the counters say so; on the GPU-driven path the GPU still
/// counts its hits), every output right; any call in between (another lookup, a preload,
/// a bag op, a batch bigger than the cache) makes the lookup resolve again, still right.
#[test]
fn a_prefetched_lookup_is_not_resolved_again() {
    let _serial = common::serial();
    let (rows, dim) = (3_000usize, 3usize);
    let data = random_values(rows * dim, seed("prefetch_reuse_table"));
    let zipf = ZipfIds::new(rows, 1.05, seed("prefetch_reuse_zipf"));
    let mut rng = Rng::new(seed("prefetch_reuse_ids"));
    let mut runs = vec![(common::ctx(), BatchPath::Host)];
    if let Some(ctx) = common::host_storage_ctx() {
        runs.push((ctx, BatchPath::Gpu));
    }
    for (ctx, path) in runs {
        reuse_run(ctx, path, &data, dim, &zipf, &mut rng);
    }
}

fn reuse_run(
    ctx: &hotrow::GpuContext,
    path: BatchPath,
    data: &[f32],
    dim: usize,
    zipf: &ZipfIds,
    rng: &mut Rng,
) {
    let rows = data.len() / dim;
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(400))
        .path(path);
    let table = HostTable::borrowed(data, dim).unwrap();
    let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
    assert_eq!(cache.config().path, path);
    for k in 0..24 {
        let ids = zipf.batch(200, rng);
        let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len() as u64;
        cache.prefetch(&ids).unwrap();
        let before = cache.stats();
        match k % 6 {
            1 => {
                let other = zipf.batch(150, rng);
                let out = cache.lookup(&other).unwrap().to_host().unwrap();
                assert_eq!(out, gather(data, dim, &other));
            }
            2 => cache.preload(&zipf.batch(100, rng)).unwrap(),
            3 => {
                let bag_ids = zipf.batch(40, rng);
                cache
                    .lookup_bags(&bag_ids, &[0, 10, 25], hotrow::Pooling::Sum, None)
                    .unwrap();
            }
            4 => {
                // more distinct rows than the cache: the prefetched rows' room is needed
                let big: Vec<u32> = (0..900).map(|_| rng.below(rows as u64) as u32).collect();
                let out = cache.lookup(&big).unwrap().to_host().unwrap();
                assert_eq!(out, gather(data, dim, &big));
            }
            _ => {}
        }
        let between = cache.stats();
        let mut out = common::poisoned(ctx, ids.len(), dim);
        cache.lookup_into(&ids, &mut out).unwrap();
        let what = format!("{path:?} step {k}");
        assert_eq!(out.to_host().unwrap(), gather(data, dim, &ids), "{what}");
        let after = cache.stats();
        assert_eq!(after.batches, between.batches + 1, "{what}");
        if k % 6 == 0 || k % 6 == 5 {
            // served through the kept list: no pass, every distinct row a hit
            assert_eq!(after.passes, before.passes, "{what}: resolved again");
            assert_eq!(after.hits - before.hits, distinct, "{what}");
            assert_eq!(after.distinct - before.distinct, distinct, "{what}");
            assert_eq!(after.rows_uploaded, before.rows_uploaded, "{what}");
        } else {
            assert!(after.passes > between.passes, "{what}: not resolved again");
        }
        assert_eq!(after.hits + after.misses, after.distinct, "{what}");
    }
}

/// A prefetch one batch ahead uploads what the plain stream would: the prefetch and its
/// lookup are one use of the batch, so the rows the prefetch loaded get no reference bit
/// from the lookup (were `touch` to set it on the GPU path, every row loaded once would
/// get a second chance: ~5% more uploads here). Both paths, CLOCK; the plain and
/// the prefetched stream's uploads within 1% (the GPU's slot order varies run to run).
#[test]
fn a_prefetched_stream_misses_what_a_plain_one_does() {
    let _serial = common::serial();
    let (rows, dim) = (20_000usize, 4usize);
    let data = random_values(rows * dim, seed("prefetch_misses_table"));
    let zipf = ZipfIds::new(rows, 1.05, seed("prefetch_misses_zipf"));
    let mut rng = Rng::new(seed("prefetch_misses_ids"));
    let batches: Vec<Vec<u32>> = (0..60).map(|_| zipf.batch(1_000, &mut rng)).collect();
    for (ctx, path) in common::paths() {
        let misses = |prefetch: bool| {
            let config = CacheConfig::default()
                .capacity(Capacity::Rows(1_000))
                .path(path);
            let table = HostTable::borrowed(&data, dim).unwrap();
            let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
            if prefetch {
                cache.prefetch(&batches[0]).unwrap();
            }
            for k in 0..batches.len() {
                cache.lookup(&batches[k]).unwrap();
                if let (true, Some(next)) = (prefetch, batches.get(k + 1)) {
                    cache.prefetch(next).unwrap();
                }
            }
            cache.stats().misses as f64
        };
        let (plain, ahead) = (misses(false), misses(true));
        assert!(
            (ahead - plain).abs() <= 0.01 * plain,
            "{path:?}: {ahead} rows uploaded with prefetch, {plain} without"
        );
    }
}

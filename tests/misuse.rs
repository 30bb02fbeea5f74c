//! Misuse and awkward use, through the public API: buffers of another context, row sources
//! that panic, batches bigger than the cache, zero-width queries, an op that fails after
//! its pass was held. (Limits: `limits.rs`; allocation: `resources.rs`; devices:
//! `device.rs`.)

mod common;

use std::sync::atomic::Ordering;

use common::workload::{random_values, Rng};
use common::{assert_rows_eq, ctx, seed};
use hotrow::{
    reference, BatchPath, CacheConfig, Capacity, EmbeddingCache, Embeddings, GpuContext, HostTable,
    HotrowError, Pooling, Queries, RowBuffer,
};

#[test]
fn buffers_of_another_context_are_refused_and_change_nothing() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("misuse_foreign"));
    let other = GpuContext::new().unwrap();
    assert!(!ctx().same_as(&other) && ctx().same_as(&ctx().clone()));
    let (rows, dim) = (200, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let table = RowBuffer::from_host(ctx(), &data, dim).unwrap();
    let config = CacheConfig::default().capacity(Capacity::Rows(50));
    let mut cache =
        EmbeddingCache::new(ctx(), HostTable::borrowed(&data, dim).unwrap(), config).unwrap();
    let ids = common::uniform_ids(&mut rng, 30, rows);
    cache.lookup(&ids).unwrap();
    let stats = cache.stats().clone();
    let resident = cache.slot_map().resident();
    let foreign = |e: hotrow::Result<()>, what: &str| match e {
        Err(HotrowError::ForeignContext { .. }) => {}
        other => panic!("{what}: expected ForeignContext, got {other:?}"),
    };

    let mut out = common::poisoned(&other, 30, dim);
    foreign(table.gather_into(&ids, &mut out), "gather_into");
    foreign(cache.lookup_into(&ids, &mut out), "lookup_into");
    foreign(
        cache.lookup_bags_into(&ids, &[0, 10], Pooling::Sum, None, &mut out),
        "lookup_bags_into",
    );
    let q = random_values(3 * dim, rng.next_u64());
    foreign(
        cache.scores_into(Queries::Host { data: &q, dim }, &ids, &mut out),
        "scores_into",
    );
    foreign(
        cache.combine_into(&q[..2 * 4], &ids[..4], &mut out),
        "combine_into",
    );
    let q_other = common::poisoned(&other, 3, dim);
    foreign(
        cache.scores(Queries::Gpu(&q_other), &ids).map(|_| ()),
        "scores with GPU queries",
    );
    let mut mine = common::poisoned(ctx(), 3, ids.len());
    foreign(
        cache.scores_into(Queries::Gpu(&q_other), &ids, &mut mine),
        "scores_into with GPU queries",
    );
    assert!(
        common::all_nan(&out),
        "nothing written to the foreign output"
    );
    assert!(
        common::all_nan(&mine),
        "nothing written to the caller's output"
    );
    assert_eq!(cache.stats(), stats, "counters unchanged");
    assert_eq!(cache.slot_map().resident(), resident, "residency unchanged");
    // The same calls on the right context still work.
    let mut out = common::poisoned(ctx(), 30, dim);
    cache.lookup_into(&ids, &mut out).unwrap();
    assert_rows_eq(
        &out.to_host().unwrap(),
        &reference::gather(&data, dim, &ids),
        dim,
        "after refusals",
    );
}

fn check_cache(
    cache: &mut EmbeddingCache<common::Flaky<'_>>,
    data: &[f32],
    ids: &[u32],
    what: &str,
) {
    let dim = cache.dim();
    let mut out = common::poisoned(cache.context(), ids.len(), dim);
    cache.lookup_into(ids, &mut out).unwrap();
    assert_rows_eq(
        &out.to_host().unwrap(),
        &reference::gather(data, dim, ids),
        dim,
        what,
    );
    let s = cache.stats();
    assert_eq!(s.hits + s.misses, s.distinct, "{what}: {s:?}");
    assert_eq!(
        s.rows_uploaded - s.evictions,
        cache.slot_map().len() as u64,
        "{what}: uploads - evictions = resident: {s:?}"
    );
    cache.slot_map().check_invariants().unwrap();
}

#[test]
fn a_panicking_row_source_leaves_no_phantom_rows() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("misuse_panic"));
    let (rows, dim) = (500, 4);
    let data = random_values(rows * dim, rng.next_u64());
    // Order 1: the very first batch panics (cold cache), then the same ids are looked up.
    // Order 2: rows are resident first, then a batch that evicts some of them panics, then
    // both the old and the new ids are looked up.
    for order in 0..2 {
        // (mode 2: the source panics)
        let src = common::Flaky::new(HostTable::borrowed(&data, dim).unwrap());
        let config = CacheConfig::default()
            .path(BatchPath::Host)
            .capacity(Capacity::Rows(60));
        let mut cache = EmbeddingCache::new(ctx(), src, config).unwrap();
        let old = common::uniform_ids(&mut rng, 80, rows / 2); // ids below rows / 2
        if order == 1 {
            check_cache(&mut cache, &data, &old, "before the panic");
        }
        let new: Vec<u32> = common::uniform_ids(&mut rng, 80, rows / 2)
            .into_iter()
            .map(|id| id + (rows / 2) as u32) // ids the cache has never seen
            .collect();
        cache.source().mode.store(2, Ordering::Relaxed);
        let mut out = common::poisoned(ctx(), new.len(), dim);
        match cache.lookup_into(&new, &mut out) {
            Err(HotrowError::RowSourcePanicked(msg)) => {
                assert!(msg.contains("exploded"), "{msg}")
            }
            other => panic!("order {order}: expected RowSourcePanicked, got {other:?}"),
        }
        cache.slot_map().check_invariants().unwrap();
        for id in &new {
            assert!(
                cache.slot_map().slot_of(*id).is_none(),
                "order {order}: id {id} resident though never uploaded"
            );
        }
        let s = cache.stats();
        assert_eq!(
            s.rows_uploaded - s.evictions,
            cache.slot_map().len() as u64,
            "order {order}: evictions of the failed pass counted: {s:?}"
        );
        cache.source().mode.store(0, Ordering::Relaxed);
        check_cache(&mut cache, &data, &new, &format!("order {order}: new ids"));
        check_cache(&mut cache, &data, &old, &format!("order {order}: old ids"));
        // The ops resolve through the same path.
        cache.source().mode.store(2, Ordering::Relaxed);
        let fresh: Vec<u32> = (0..40).map(|k| (k * 7 + 3) as u32 % rows as u32).collect();
        assert!(matches!(
            cache.lookup_bags(&fresh, &[0, 20], Pooling::Mean, None),
            Err(HotrowError::RowSourcePanicked(_))
        ));
        cache.source().mode.store(0, Ordering::Relaxed);
        let bags = cache
            .lookup_bags(&fresh, &[0, 20], Pooling::Mean, None)
            .unwrap();
        common::check_close(
            &bags,
            common::bags_ref(&data, dim, &fresh, &[0, 20], 1, None),
            "bags after a panic",
        );
    }
}

#[test]
fn stats_count_distinct_ids_per_batch_even_across_passes() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("misuse_stats"));
    let (rows, dim) = (3000, 4);
    let data = random_values(rows * dim, rng.next_u64());
    // (The host path: the GPU-driven one counts a row its batch evicted and missed again
    // twice; documented at `CacheStats`.)
    let config = CacheConfig::default()
        .path(BatchPath::Host)
        .capacity(Capacity::Rows(64));
    let mut cache =
        EmbeddingCache::new(ctx(), HostTable::borrowed(&data, dim).unwrap(), config).unwrap();
    let mut perm: Vec<u32> = (0..rows as u32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    // 1,000 distinct ids, each twice, far apart: many passes, and the second occurrence of
    // an id may find its row evicted by the batch's own passes.
    let mut ids: Vec<u32> = perm[..1000].to_vec();
    ids.extend_from_slice(&perm[..1000]);
    let out = cache.lookup(&ids).unwrap();
    assert_rows_eq(
        &out.to_host().unwrap(),
        &reference::gather(&data, dim, &ids),
        dim,
        "two passes over 1,000 ids",
    );
    let s = cache.stats().clone();
    assert!(s.passes > 20, "{s:?}");
    assert_eq!(
        (s.batches, s.requests, s.distinct),
        (1, 2000, 1000),
        "{s:?}"
    );
    assert_eq!(
        (s.hits, s.misses),
        (0, 1000),
        "cold cache: every id missed once"
    );
    assert!(s.rows_uploaded >= 1000, "{s:?}");
    assert_eq!(s.hit_rate(), 0.0);
    // A batch of resident rows: all hits.
    let hot: Vec<u32> = cache.slot_map().resident()[..32].to_vec();
    cache.reset_stats();
    cache.lookup(&hot).unwrap();
    let s = cache.stats();
    assert_eq!(
        (s.distinct, s.hits, s.misses, s.rows_uploaded),
        (32, 32, 0, 0)
    );
}

#[test]
fn zero_width_queries_name_the_dim() {
    let _serial = common::serial();
    let data = random_values(100 * 4, 9);
    let mut cache = EmbeddingCache::new(
        ctx(),
        HostTable::borrowed(&data, 4).unwrap(),
        CacheConfig::default(),
    )
    .unwrap();
    for q in [&[][..], &[1.0, 2.0][..]] {
        match cache.scores(Queries::Host { data: q, dim: 0 }, &[1, 2]) {
            Err(HotrowError::DimMismatch {
                expected: 4,
                got: 0,
                ..
            }) => {}
            other => panic!("expected DimMismatch, got {other:?}"),
        }
    }
    let q0 = Embeddings::new(ctx(), 2, 3).unwrap();
    assert!(matches!(
        cache.scores(Queries::Gpu(&q0), &[1]),
        Err(HotrowError::DimMismatch {
            expected: 4,
            got: 3,
            ..
        })
    ));
}

/// An op that fails after its rows were resolved (here: the context's memory budget runs out
/// for the op's own input, the bags' weights or the scores' queries) takes its pass back:
/// no row it missed is kept, none it evicted is lost, the counters stay, and the next calls
/// are right. The budget is the memory the same calls took on an unbudgeted context, less
/// one byte: the call's last allocation (the op's input buffer, after its pass) fails.
#[test]
fn an_op_failing_after_its_pass_changes_nothing() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("misuse_op_budget"));
    let (rows, dim) = (4000, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let warm = common::uniform_ids(&mut rng, 600, rows);
    // 120,000 ids over 400 rows (one pass, most not resident), in two weighted bags; 20,000
    // queries against 300 candidates.
    let pool = common::uniform_ids(&mut rng, 400, rows);
    let big: Vec<u32> = (0..120_000)
        .map(|_| pool[rng.below(pool.len() as u64) as usize])
        .collect();
    let weights: Vec<f32> = (0..big.len()).map(|_| rng.unit() as f32 - 0.4).collect();
    let offsets = [0u32, 60_000];
    let queries = random_values(20_000 * dim, rng.next_u64());
    let cand = common::uniform_ids(&mut rng, 300, rows);
    let config = CacheConfig::default().capacity(Capacity::Rows(1000));
    for op in ["bags", "scores"] {
        // The op's call on `ctx` after a warm-up; returns the cache, its output, 4 MB of
        // ballast (dropped after the failure, so that the next calls have room), the
        // counters and rows before the call, and its result.
        let attempt = |ctx: &GpuContext| {
            let table = HostTable::borrowed(&data, dim).unwrap();
            let mut cache = EmbeddingCache::new(ctx, table, config.clone()).unwrap();
            let ballast = Embeddings::new(ctx, 1 << 17, 8).unwrap();
            cache
                .lookup_bags(&warm, &[0, 300], Pooling::Sum, None)
                .unwrap();
            let (m, width) = if op == "bags" {
                (2, dim)
            } else {
                (20_000, cand.len())
            };
            let mut out = Embeddings::new(ctx, m, width).unwrap();
            let before = (cache.stats().clone(), common::held(cache.slot_map()));
            let result = if op == "bags" {
                cache.lookup_bags_into(&big, &offsets, Pooling::Sum, Some(&weights), &mut out)
            } else {
                let q = Queries::Host {
                    data: &queries,
                    dim,
                };
                cache.scores_into(q, &cand, &mut out)
            };
            (cache, out, ballast, before, result)
        };
        let free = GpuContext::new().unwrap();
        let (cache, out, ballast, _, result) = attempt(&free);
        result.unwrap();
        let need = free.memory_stats().bytes;
        drop((cache, out, ballast));
        let tight = GpuContext::with_options(hotrow::GpuOptions {
            memory_budget: Some(need - 1),
            ..Default::default()
        })
        .unwrap();
        let (mut cache, mut out, ballast, (stats, resident), result) = attempt(&tight);
        assert!(
            matches!(&result, Err(HotrowError::ExceedsLimit { limit_name, .. }) if *limit_name == "GpuOptions::memory_budget"),
            "{op}: {result:?}"
        );
        let after = cache.stats();
        assert_eq!(
            (
                after.rows_uploaded,
                after.evictions,
                after.hits,
                after.misses,
                after.batches
            ),
            (
                stats.rows_uploaded,
                stats.evictions,
                stats.hits,
                stats.misses,
                stats.batches
            ),
            "{op}: the failed call changed the counters"
        );
        assert_eq!(
            common::held(cache.slot_map()),
            resident,
            "{op}: the failed call changed the slots"
        );
        // The next calls (smaller inputs) are served, and right.
        drop(ballast);
        for k in 0..3 {
            let ids = &big[k * 1000..(k + 1) * 1000];
            let w = &weights[..1000];
            cache
                .lookup_bags_into(ids, &[0, 500], Pooling::Sum, Some(w), &mut out)
                .unwrap();
            let want = common::bags_ref(&data, dim, ids, &[0, 500], 0, Some(w));
            common::check_close(&out, want, &format!("{op}: bags after, {k}"));
            let q = &queries[..16 * dim];
            let s = cache.scores(Queries::Host { data: q, dim }, &cand).unwrap();
            common::check_close(
                &s,
                common::scores_ref(&data, dim, q, &cand),
                &format!("{op}: scores after, {k}"),
            );
        }
    }
}

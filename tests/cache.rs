//! EmbeddingCache end to end on this machine's adapter: streams through a cache much smaller
//! than the table, compared with the CPU reference gather on the full table.

mod common;

use common::workload::{random_values, Rng, ZipfIds};
use common::{assert_rows_eq, ctx, seed};
use hotrow::{
    reference, BatchPath, CacheConfig, Capacity, EmbeddingCache, Embeddings, GpuContext,
    GpuOptions, HostTable, HotrowError, RowBufferOptions, RowSource,
};

fn check_counters(c: &EmbeddingCache<impl RowSource>) {
    let s = c.stats();
    assert_eq!(
        s.hits + s.misses,
        s.distinct,
        "hits + misses = distinct: {s:?}"
    );
    assert_eq!(
        s.bytes_uploaded,
        s.rows_uploaded * c.dim() as u64 * 4,
        "bytes uploaded: {s:?}"
    );
    assert!(s.rows_uploaded >= s.misses, "{s:?}");
    assert_eq!(
        s.rows_uploaded - s.evictions,
        common::resident(c).len() as u64,
        "uploads - evictions = resident rows: {s:?}"
    );
    assert!(s.distinct <= s.requests);
}

fn lookup_checked(cache: &mut EmbeddingCache<HostTable<'_>>, ids: &[u32], what: &str) {
    let dim = cache.dim();
    let mut out = Embeddings::new(ctx(), ids.len(), dim).unwrap();
    out.fill(f32::NAN).unwrap();
    cache.lookup_into(ids, &mut out).unwrap();
    let want = reference::gather(cache.source().data().expect("an f32 table"), dim, ids);
    assert_rows_eq(&out.to_host().unwrap(), &want, dim, what);
    check_counters(cache);
}

#[test]
fn zipf_stream_through_a_small_cache() {
    let _serial = common::serial();
    let s = seed("cache_stream");
    let mut rng = Rng::new(s);
    for &dim in &[3usize, 16] {
        let rows = 4000;
        let data = random_values(rows * dim, rng.next_u64());
        let table = HostTable::borrowed(&data, dim).unwrap();
        let config = CacheConfig::default().capacity(Capacity::Rows(400));
        let mut cache = EmbeddingCache::new(ctx(), table, config).unwrap();
        let mut zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
        let mut outs = Vec::new();
        for b in 0..30 {
            if b == 15 {
                zipf.reshuffle(rng.next_u64()); // the hot set moves: reloads happen
            }
            let ids = zipf.batch(300 + rng.below(300) as usize, &mut rng);
            let out = cache.lookup(&ids).unwrap();
            outs.push((ids, out)); // read back later: outputs must survive later batches
        }
        for (k, (ids, out)) in outs.iter().enumerate() {
            let want = reference::gather(&data, dim, ids);
            assert_rows_eq(
                &out.to_host().unwrap(),
                &want,
                dim,
                &format!("dim {dim} batch {k}"),
            );
        }
        check_counters(&cache);
        let st = cache.stats().clone();
        assert!(st.evictions > 0, "stream must evict: {st:?}");
        assert!(st.hits > 0 && st.misses > 0);
        assert_eq!(st.batches, 30);
        assert!(cache.slot_map().len() <= 400);
    }
}

#[test]
fn repeats_all_distinct_and_bigger_than_capacity() {
    let _serial = common::serial();
    let s = seed("cache_shapes");
    let mut rng = Rng::new(s);
    let (rows, dim) = (2000, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let table = HostTable::borrowed(&data, dim).unwrap();
    let mut cache = EmbeddingCache::new(
        ctx(),
        table,
        CacheConfig::default().capacity(Capacity::Rows(64)),
    )
    .unwrap();
    // one id a thousand times
    let id = rng.below(rows as u64) as u32;
    lookup_checked(&mut cache, &vec![id; 1000], "one id repeated");
    assert_eq!(cache.stats().distinct, 1);
    // all distinct, within capacity
    let mut perm: Vec<u32> = (0..rows as u32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    lookup_checked(&mut cache, &perm[..64], "all distinct");
    // far bigger than the cache: 1,500 distinct ids with repeats, served in passes
    let passes_before = cache.stats().passes;
    let mut big: Vec<u32> = perm[..1500].to_vec();
    big.extend((0..500).map(|_| perm[rng.below(1500) as usize]));
    for i in (1..big.len()).rev() {
        big.swap(i, rng.below(i as u64 + 1) as usize);
    }
    lookup_checked(&mut cache, &big, "bigger than capacity");
    assert!(
        cache.stats().passes - passes_before >= 1500 / 64,
        "served in passes"
    );
    // and a small upload cap forces passes too
    let table = HostTable::borrowed(&data, dim).unwrap();
    let mut capped = EmbeddingCache::new(
        ctx(),
        table,
        CacheConfig::default()
            .path(BatchPath::Host)
            .capacity(Capacity::Rows(1000))
            .max_upload_bytes_per_pass(10 * dim as u64 * 4),
    )
    .unwrap();
    lookup_checked(&mut capped, &big, "upload cap");
    assert!(capped.stats().passes >= 150);
}

#[test]
fn sharded_slots_and_preload() {
    let _serial = common::serial();
    let s = seed("cache_sharded");
    let mut rng = Rng::new(s);
    let (rows, dim) = (3000, 12);
    let data = random_values(rows * dim, rng.next_u64());
    let table = HostTable::borrowed(&data, dim).unwrap();
    let mut cache = EmbeddingCache::new(
        ctx(),
        table,
        CacheConfig::default()
            .capacity(Capacity::Bytes(500 * dim as u64 * 4))
            .slot_buffer(RowBufferOptions {
                max_shard_bytes: Some(90 * dim as u64 * 4),
            }),
    )
    .unwrap();
    assert_eq!(cache.capacity(), 500);
    assert!(cache.slots().shards().len() >= 5);
    let hot: Vec<u32> = (0..200).map(|_| rng.below(rows as u64) as u32).collect();
    cache.preload(&hot).unwrap();
    check_counters(&cache);
    let misses = cache.stats().misses;
    lookup_checked(&mut cache, &hot, "after preload");
    assert_eq!(cache.stats().misses, misses, "preloaded rows must hit");
    let zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
    for k in 0..10 {
        let ids = zipf.batch(700, &mut rng);
        lookup_checked(&mut cache, &ids, &format!("sharded batch {k}"));
    }
    // the slots themselves hold the right rows
    let slots = cache.slots().read_rows(0, cache.capacity()).unwrap();
    for id in cache.slot_map().resident() {
        let s = cache.slot_map().slot_of(id).unwrap() as usize;
        assert_rows_eq(
            &slots[s * dim..(s + 1) * dim],
            &data[id as usize * dim..(id as usize + 1) * dim],
            dim,
            "slot",
        );
    }
}

#[test]
fn bad_ids_change_nothing() {
    let _serial = common::serial();
    let s = seed("cache_bad");
    let mut rng = Rng::new(s);
    let (rows, dim) = (500, 4);
    let data = random_values(rows * dim, rng.next_u64());
    let table = HostTable::borrowed(&data, dim).unwrap();
    let mut cache = EmbeddingCache::new(ctx(), table, CacheConfig::default()).unwrap();
    assert_eq!(cache.capacity(), 50); // default: 10% of rows
    lookup_checked(&mut cache, &[1, 2, 3, 2], "warm");
    let before_stats = cache.stats().clone();
    let before_order = cache.slot_map().resident();
    let mut out = Embeddings::new(ctx(), 4, dim).unwrap();
    out.fill(f32::NAN).unwrap();
    match cache.lookup_into(&[7, 8, 500, 9], &mut out) {
        Err(HotrowError::IdOutOfRange { id, position, rows }) => {
            assert_eq!((id, position, rows), (500, 2, 500))
        }
        other => panic!("expected IdOutOfRange, got {other:?}"),
    }
    assert!(matches!(
        cache.preload(&[u32::MAX]),
        Err(HotrowError::IdOutOfRange { position: 0, .. })
    ));
    assert!(matches!(
        cache.lookup(&[0, 1_000_000]),
        Err(HotrowError::IdOutOfRange { position: 1, .. })
    ));
    assert_eq!(cache.stats(), before_stats, "counters unchanged");
    assert_eq!(
        cache.slot_map().resident(),
        before_order,
        "residency unchanged"
    );
    assert!(
        out.to_host().unwrap().iter().all(|v| v.is_nan()),
        "nothing written"
    );
    // empty batch: empty result, nothing counted
    let empty = cache.lookup(&[]).unwrap();
    assert_eq!(empty.rows(), 0);
    assert!(empty.to_host().unwrap().is_empty());
    assert_eq!(cache.stats(), before_stats);
}

/// A full cache (host resolution, both policies, one and several partitions) whose row
/// source fails or panics on a batch of new rows: the batch is an error and changes
/// nothing (the rows it would have evicted are still resident, in their slots, and served
/// without being uploaded again).
#[test]
fn a_failing_row_source_changes_nothing_in_a_full_cache() {
    use hotrow::EvictionPolicy;
    use std::sync::atomic::Ordering::Relaxed;
    let _serial = common::serial();
    let mut rng = Rng::new(seed("cache_full_flaky"));
    let (rows, dim, cap) = (3000, 8, 256);
    let data = random_values(rows * dim, rng.next_u64());
    for (policy, parts) in [(EvictionPolicy::Clock, 1), (EvictionPolicy::Lru, 4)] {
        let src = Faulty::working(&data, dim);
        let config = CacheConfig::default()
            .path(BatchPath::Host)
            .capacity(Capacity::Rows(cap))
            .partitions(parts)
            .policy(policy);
        let mut cache = EmbeddingCache::new(ctx(), src, config).unwrap();
        for _ in 0..6 {
            let ids: Vec<u32> = (0..cap).map(|_| rng.below(rows as u64) as u32).collect();
            cache.lookup(&ids).unwrap();
        }
        let fresh = |cache: &EmbeddingCache<Faulty<'_>>| -> Vec<u32> {
            (0..rows as u32)
                .filter(|id| cache.slot_map().slot_of(*id).is_none())
                .take(cap / 2)
                .collect()
        };
        for mode in [1u8, 2] {
            let before = common::held(cache.slot_map());
            assert_eq!(before.len(), cap, "{policy:?}: the cache is full");
            let stats = cache.stats().clone();
            let new_rows = fresh(&cache);
            cache.source().mode.store(mode, Relaxed);
            let r = cache.lookup(&new_rows);
            cache.source().mode.store(0, Relaxed);
            assert!(
                matches!(
                    r,
                    Err(HotrowError::RowSource(_) | HotrowError::RowSourcePanicked(_))
                ),
                "{r:?}"
            );
            let after = common::held(cache.slot_map());
            assert!(after == before, "{policy:?} mode {mode}: the cache changed");
            cache.slot_map().check_invariants().unwrap();
            assert_eq!(cache.stats().rows_uploaded, stats.rows_uploaded);
            assert_eq!(cache.stats().evictions, stats.evictions);
            // the rows it held are still right, and still resident (no upload)
            let ids: Vec<u32> = before.iter().map(|&(id, _)| id).collect();
            let out = cache.lookup(&ids).unwrap();
            assert_rows_eq(
                &out.to_host().unwrap(),
                &reference::gather(&data, dim, &ids),
                dim,
                "held rows after the failure",
            );
            assert_eq!(cache.stats().rows_uploaded, stats.rows_uploaded);
        }
        // Again after many batches of resident rows only: the cache expects few misses, so
        // a batch of many new rows overflows its staging room and reads them after
        // resolving (the serial path); the failure there changes nothing either.
        let before = common::held(cache.slot_map());
        let some: Vec<u32> = before.iter().take(32).map(|&(id, _)| id).collect();
        for _ in 0..80 {
            cache.lookup(&some).unwrap();
        }
        let new_rows = fresh(&cache);
        let uploaded = cache.stats().rows_uploaded;
        cache.source().mode.store(1, Relaxed);
        assert!(cache.lookup(&new_rows).is_err());
        cache.source().mode.store(0, Relaxed);
        let after = common::held(cache.slot_map());
        assert!(
            after == before,
            "{policy:?}: the serial path's failure changed the cache"
        );
        assert_eq!(cache.stats().rows_uploaded, uploaded);
    }
}

#[test]
fn failing_row_source_leaves_no_phantom_rows() {
    let _serial = common::serial();
    let s = seed("cache_flaky");
    let mut rng = Rng::new(s);
    let (rows, dim) = (300, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let src = Faulty {
        inner: HostTable::borrowed(&data, dim).unwrap(),
        mode: 1.into(), // fails
    };
    let mut cache = EmbeddingCache::new(
        ctx(),
        src,
        CacheConfig::default()
            .path(BatchPath::Host)
            .capacity(Capacity::Rows(40)),
    )
    .unwrap();
    assert!(matches!(
        cache.lookup(&[5, 6, 7]),
        Err(HotrowError::RowSource(_))
    ));
    assert_eq!(cache.slot_map().len(), 0);
    cache.slot_map().check_invariants().unwrap();
    cache
        .source()
        .mode
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let out = cache.lookup(&[5, 6, 7, 5]).unwrap();
    assert_rows_eq(
        &out.to_host().unwrap(),
        &reference::gather(&data, dim, &[5, 6, 7, 5]),
        dim,
        "after failure",
    );
}

#[test]
fn bad_capacities_are_clear_errors() {
    let _serial = common::serial();
    let data = random_values(100 * 4, 3);
    let t = || HostTable::borrowed(&data, 4).unwrap();
    for cap in [
        Capacity::Rows(0),
        Capacity::Bytes(15),
        Capacity::Fraction(0.0),
        Capacity::Fraction(f64::NAN),
    ] {
        let r = EmbeddingCache::new(ctx(), t(), CacheConfig::default().capacity(cap));
        assert!(
            matches!(r, Err(HotrowError::InvalidArgument(_))),
            "{cap:?}: {r:?}"
        );
    }
    // Larger than the adapter may allocate (here: a context with a 64 KiB budget).
    let small = GpuContext::with_options(GpuOptions {
        memory_budget: Some(64 << 10),
        ..Default::default()
    })
    .unwrap();
    let big = random_values(100_000 * 4, 4);
    let r = EmbeddingCache::new(
        &small,
        HostTable::borrowed(&big, 4).unwrap(),
        CacheConfig::default().capacity(Capacity::Rows(50_000)),
    );
    assert!(matches!(r, Err(HotrowError::ExceedsLimit { .. })), "{r:?}");
    // Bigger than the table: clamped to the table.
    let c = EmbeddingCache::new(
        ctx(),
        t(),
        CacheConfig::default().capacity(Capacity::Rows(1 << 20)),
    )
    .unwrap();
    assert_eq!(c.capacity(), 100);
    assert_eq!(c.config().capacity, Capacity::Rows(100), "effective config");
    assert!(c.config().partitions >= 1 && c.config().staging_buffers >= 1);
}

#[test]
fn partitioned_slot_map_end_to_end() {
    let _serial = common::serial();
    let s = seed("cache_partitioned");
    let mut rng = Rng::new(s);
    let (rows, dim) = (60_000, 4);
    let data = random_values(rows * dim, rng.next_u64());
    let table = HostTable::borrowed(&data, dim).unwrap();
    let mut cache = EmbeddingCache::new(
        ctx(),
        table,
        CacheConfig::default()
            .capacity(Capacity::Rows(6_000))
            .partitions(4),
    )
    .unwrap();
    assert_eq!(cache.slot_map().partitions(), 4);
    assert_eq!(cache.config().partitions, 4, "effective config");
    let zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
    for k in 0..8 {
        // 5,000-25,000 ids: the parallel path, and batches past the capacity
        let ids = zipf.batch(5_000 + rng.below(20_000) as usize, &mut rng);
        lookup_checked(&mut cache, &ids, &format!("partitioned batch {k}"));
    }
    let st = cache.stats();
    assert!(st.evictions > 0 && st.hits > 0);
}

/// A row source that, while `mode` says so, fails (1) or panics (2): the cache must report
/// it and keep its map consistent.
struct Faulty<'a> {
    inner: HostTable<'a>,
    mode: std::sync::atomic::AtomicU8,
}

impl<'a> Faulty<'a> {
    /// Over `data` (rows of `dim`), not failing yet.
    fn working(data: &'a [f32], dim: usize) -> Self {
        Faulty {
            inner: HostTable::borrowed(data, dim).unwrap(),
            mode: 0.into(),
        }
    }
}

impl RowSource for Faulty<'_> {
    fn rows(&self) -> usize {
        self.inner.rows()
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> hotrow::Result<()> {
        match self.mode.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Err(HotrowError::RowSource("tier unreachable".into())),
            2 => panic!("tier exploded"),
            _ => self.inner.read_rows(ids, out),
        }
    }
}

/// Device resolution (the GPU finds the hits) through a stream with evictions, a moving hot
/// set, batches bigger than the cache, preloads, bags and scores, and a row source that
/// fails and panics mid-stream: every output equals the CPU reference, the counters hold,
/// and the GPU's slot index agrees with the slot map after every batch.
#[test]
fn device_resolution_stream_matches_reference() {
    use hotrow::{EvictionPolicy, Pooling, Queries, Resolution};
    use std::sync::atomic::Ordering::Relaxed;
    let _serial = common::serial();
    let s = seed("cache_device");
    let mut rng = Rng::new(s);
    for (dim, rows, cap, parts, policy) in [
        (3, 6_000, 500, 1, EvictionPolicy::Clock),
        (16, 40_000, 4_096, 4, EvictionPolicy::Clock),
        (8, 20_000, 2_048, 2, EvictionPolicy::Lru),
    ] {
        let what = format!("dim {dim}, {parts} partitions, {policy:?}");
        let data = random_values(rows * dim, rng.next_u64());
        let src = Faulty::working(&data, dim);
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(cap))
            .partitions(parts)
            .policy(policy)
            .resolution(Resolution::Device);
        let mut cache = EmbeddingCache::new(ctx(), src, config).unwrap();
        assert_eq!(cache.config().resolution, Resolution::Device);
        let mut zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
        let mut out = Embeddings::new(ctx(), 1, dim).unwrap();
        for b in 0..36 {
            let what = format!("{what}, batch {b}");
            if b == 18 {
                zipf.reshuffle(rng.next_u64());
            }
            let ids = match b % 9 {
                // far more distinct ids than slots: served in host passes
                4 => (0..3 * cap)
                    .map(|_| rng.below(rows as u64) as u32)
                    .collect(),
                _ => zipf.batch(100 + rng.below(3 * cap as u64) as usize, &mut rng),
            };
            match b % 12 {
                5 | 11 => {
                    // the row source fails (5) or panics (11): nothing may stick
                    let mode = if b % 12 == 5 { 1 } else { 2 };
                    cache.source().mode.store(mode, Relaxed);
                    let before = common::held(cache.slot_map());
                    let uploaded = cache.stats().rows_uploaded;
                    let uniform: Vec<u32> = (0..cap / 2)
                        .map(|_| rng.below(rows as u64) as u32)
                        .collect();
                    let r = cache.lookup_into(&uniform, &mut out);
                    assert!(
                        matches!(
                            r,
                            Err(HotrowError::RowSource(_) | HotrowError::RowSourcePanicked(_))
                        ),
                        "{what}: {r:?}"
                    );
                    cache.source().mode.store(0, Relaxed);
                    // The batch changed nothing: the same rows in the same slots (its
                    // evictions undone: its rows never reached the GPU), nothing counted.
                    let after = common::held(cache.slot_map());
                    assert!(
                        after == before,
                        "{what}: the failed batch changed the cache"
                    );
                    assert_eq!(cache.stats().rows_uploaded, uploaded, "{what}");
                }
                7 => cache.preload(&ids[..ids.len() / 2]).unwrap(),
                _ => {}
            }
            out.fill(f32::NAN).unwrap();
            cache.lookup_into(&ids, &mut out).unwrap();
            let want = reference::gather(&data, dim, &ids);
            assert_rows_eq(&out.to_host().unwrap(), &want, dim, &what);
            if b % 6 == 2 {
                // bags and scores read the slots through the GPU's slot list
                let n = ids.len().min(cap / 2);
                let ids = &ids[..n];
                let offsets: Vec<u32> = (0..n as u32).step_by(7).collect();
                let w: Vec<f32> = (0..n).map(|_| rng.unit() as f32 - 0.3).collect();
                let bags = cache
                    .lookup_bags(ids, &offsets, Pooling::Sum, Some(&w))
                    .unwrap();
                let (want, scale) = common::bags_ref(&data, dim, ids, &offsets, 0, Some(&w));
                common::assert_close(&bags, &want, &scale, &format!("{what}: bags"));
                let q = random_values(2 * dim, rng.next_u64());
                let scores = cache.scores(Queries::Host { data: &q, dim }, ids).unwrap();
                let (want, scale) = common::scores_ref(&data, dim, &q, ids);
                common::assert_close(&scores, &want, &scale, &format!("{what}: scores"));
            }
            check_counters(&cache);
            if let Err(e) = cache.check_device_table() {
                panic!("{what}: {e}");
            }
        }
        let st = cache.stats();
        assert!(st.evictions > 0 && st.hits > 0, "{what}: {st:?}");
        assert!(st.device_passes > 0, "{what}: the GPU resolved: {st:?}");
        assert!(st.passes > st.device_passes, "{what}: and the host: {st:?}");
    }
}

#[test]
fn resolution_default_and_device_table_memory() {
    use hotrow::Resolution;
    let _serial = common::serial();
    let (rows, dim) = (500, 16);
    let data = random_values(rows * dim, 9);
    let t = || HostTable::borrowed(&data, dim).unwrap();
    let host =
        EmbeddingCache::new(ctx(), t(), CacheConfig::default().path(BatchPath::Host)).unwrap();
    assert_eq!(host.config().resolution, Resolution::Host);
    let config = CacheConfig::default().resolution(Resolution::Device);
    let device = EmbeddingCache::new(ctx(), t(), config).unwrap();
    assert_eq!(device.config().resolution, Resolution::Device);
    // the GPU's table is counted as scratch: 4 bytes per row
    assert!(device.memory().scratch >= host.memory().scratch + rows as u64 * 4);
}

/// A call runs its host work on a thread of the caller's rayon pool (or the global pool):
/// the same results from the test thread, from inside one- and three-thread pools (the
/// call then runs inline on the pool's worker), and from a task of a scope in such a pool.
#[test]
fn calls_from_inside_and_outside_rayon_pools_agree() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("cache_pools"));
    let (rows, dim) = (20_000, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(4_000))
        .partitions(4);
    let mut cache =
        EmbeddingCache::new(ctx(), HostTable::borrowed(&data, dim).unwrap(), config).unwrap();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for k in 0..4 {
            // Batches long enough for the parallel paths (bucketing, partitions in parallel).
            let ids = zipf.batch(20_000 + rng.below(5_000) as usize, &mut rng);
            let what = format!("{threads} threads, batch {k}");
            match k {
                0 => lookup_checked(&mut cache, &ids, &what),
                1 => pool.install(|| lookup_checked(&mut cache, &ids, &what)),
                2 => pool.scope(|s| s.spawn(|_| lookup_checked(&mut cache, &ids, &what))),
                _ => std::thread::scope(|s| {
                    s.spawn(|| lookup_checked(&mut cache, &ids, &what));
                }),
            }
        }
    }
}

//! Misuse and awkward use, through the public API: buffers of another context, row sources
//! that panic, batches bigger than the cache, zero-width queries, many async readbacks, a
//! device with the downlevel limits, and a steady stream that must allocate nothing.

mod common;

use std::sync::atomic::Ordering;

use common::workload::{random_values, Rng, ZipfIds};
use common::{assert_rows_eq, ctx, seed};
use hotrow::{
    reference, CacheConfig, Capacity, EmbeddingCache, Embeddings, GpuContext, HostTable,
    HotrowError, Pooling, Queries, RowBuffer,
};

fn random_ids(rng: &mut Rng, n: usize, rows: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(rows as u64) as u32).collect()
}

fn poisoned(ctx: &GpuContext, rows: usize, dim: usize) -> Embeddings {
    let e = Embeddings::new(ctx, rows, dim).unwrap();
    e.fill(f32::NAN).unwrap();
    e
}

fn all_nan(e: &Embeddings) -> bool {
    e.to_host().unwrap().iter().all(|v| v.is_nan())
}

fn check_close(got: &Embeddings, (want, scale): (Vec<f64>, Vec<f64>), what: &str) {
    common::assert_close(got, &want, &scale, what);
}

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
    let ids = random_ids(&mut rng, 30, rows);
    cache.lookup(&ids).unwrap();
    let stats = cache.stats().clone();
    let resident = cache.slot_map().resident();
    let foreign = |e: hotrow::Result<()>, what: &str| match e {
        Err(HotrowError::ForeignContext { .. }) => {}
        other => panic!("{what}: expected ForeignContext, got {other:?}"),
    };

    let mut out = poisoned(&other, 30, dim);
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
    let q_other = poisoned(&other, 3, dim);
    foreign(
        cache.scores(Queries::Gpu(&q_other), &ids).map(|_| ()),
        "scores with GPU queries",
    );
    let mut mine = poisoned(ctx(), 3, ids.len());
    foreign(
        cache.scores_into(Queries::Gpu(&q_other), &ids, &mut mine),
        "scores_into with GPU queries",
    );
    assert!(all_nan(&out), "nothing written to the foreign output");
    assert!(all_nan(&mine), "nothing written to the caller's output");
    assert_eq!(cache.stats(), &stats, "counters unchanged");
    assert_eq!(cache.slot_map().resident(), resident, "residency unchanged");
    // The same calls on the right context still work.
    let mut out = poisoned(ctx(), 30, dim);
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
    let mut out = poisoned(cache.context(), ids.len(), dim);
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
        let config = CacheConfig::default().capacity(Capacity::Rows(60));
        let mut cache = EmbeddingCache::new(ctx(), src, config).unwrap();
        let old = random_ids(&mut rng, 80, rows / 2); // ids below rows / 2
        if order == 1 {
            check_cache(&mut cache, &data, &old, "before the panic");
        }
        let new: Vec<u32> = random_ids(&mut rng, 80, rows / 2)
            .into_iter()
            .map(|id| id + (rows / 2) as u32) // ids the cache has never seen
            .collect();
        cache.source().mode.store(2, Ordering::Relaxed);
        let mut out = poisoned(ctx(), new.len(), dim);
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
        check_close(
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
    let config = CacheConfig::default().capacity(Capacity::Rows(64));
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

fn poll_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim() == "hotrow-poll")
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn many_async_readbacks_share_one_poll_thread() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("misuse_async"));
    let own = GpuContext::new().unwrap();
    let before = poll_threads();
    let dim = 8;
    let data = random_values(100 * dim, rng.next_u64());
    let table = RowBuffer::from_host(&own, &data, dim).unwrap();
    let batches: Vec<Vec<u32>> = (0..48).map(|_| random_ids(&mut rng, 20, 100)).collect();
    let outs: Vec<Embeddings> = batches
        .iter()
        .map(|ids| table.gather(ids).unwrap())
        .collect();
    let futures: Vec<_> = outs.iter().map(|o| o.to_host_async()).collect();
    let results = pollster::block_on(futures::future::join_all(futures));
    for (ids, got) in batches.iter().zip(results) {
        assert_rows_eq(
            &got.unwrap(),
            &reference::gather(&data, dim, ids),
            dim,
            "async",
        );
    }
    if cfg!(target_os = "linux") {
        assert!(
            poll_threads() <= before + 1,
            "one poll thread per context, not one per read"
        );
    }
    drop(outs);
    drop(table);
    drop(own); // ends its poll thread
}

#[test]
fn a_steady_stream_through_every_into_call_allocates_nothing() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("misuse_alloc"));
    let own = GpuContext::new().unwrap();
    let (rows, dim, b) = (4000, 8, 256);
    let data = random_values(rows * dim, rng.next_u64());
    let table = RowBuffer::from_host(&own, &data, dim).unwrap();
    let config = CacheConfig::default().capacity(Capacity::Rows(400));
    let mut cache =
        EmbeddingCache::new(&own, HostTable::borrowed(&data, dim).unwrap(), config).unwrap();
    let zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
    let (n_bags, m) = (16, 4);
    let offsets: Vec<u32> = (0..n_bags as u32)
        .map(|k| k * (b / n_bags) as u32)
        .collect();
    // lookup, gather, bags, scores, scores with GPU queries, combine
    let mut outs: Vec<Embeddings> = [(b, dim), (b, dim), (n_bags, dim), (m, b), (m, b), (m, dim)]
        .iter()
        .map(|&(r, c)| Embeddings::new(&own, r, c).unwrap())
        .collect();
    let q_gpu = table.gather(&[1, 2, 3, 4]).unwrap();
    let step = |rng: &mut Rng,
                cache: &mut EmbeddingCache<HostTable<'_>>,
                outs: &mut [Embeddings]|
     -> (Vec<u32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let ids = zipf.batch(b, rng);
        let w: Vec<f32> = (0..b).map(|_| rng.unit() as f32 + 0.5).collect();
        let q = random_values(m * dim, rng.next_u64());
        let x = random_values(m * b, rng.next_u64());
        let [o_lookup, o_gather, o_bags, o_scores, o_gpu_scores, o_combine] = outs else {
            unreachable!()
        };
        cache.lookup_into(&ids, o_lookup).unwrap();
        table.gather_into(&ids, o_gather).unwrap();
        cache
            .lookup_bags_into(&ids, &offsets, Pooling::Sum, Some(&w), o_bags)
            .unwrap();
        cache
            .scores_into(Queries::Host { data: &q, dim }, &ids, o_scores)
            .unwrap();
        cache
            .scores_into(Queries::Gpu(&q_gpu), &ids, o_gpu_scores)
            .unwrap();
        cache.combine_into(&x, &ids, o_combine).unwrap();
        (ids, w, q, x)
    };
    // The first batches size every buffer (the cold first batch has the most misses; each
    // staging buffer of a ring is made at its first use, so one batch per buffer); one
    // readback of each output sizes the readback pool.
    for _ in 0..4 {
        step(&mut rng, &mut cache, &mut outs);
    }
    for o in &outs {
        o.to_host().unwrap();
    }
    let before = own.memory_stats();
    let mut last = None;
    for _ in 0..200 {
        last = Some(step(&mut rng, &mut cache, &mut outs));
    }
    let (ids, w, q, x) = last.unwrap();
    let gathered = reference::gather(&data, dim, &ids);
    assert_rows_eq(&outs[0].to_host().unwrap(), &gathered, dim, "lookup");
    assert_rows_eq(&outs[1].to_host().unwrap(), &gathered, dim, "gather");
    check_close(
        &outs[2],
        common::bags_ref(&data, dim, &ids, &offsets, 0, Some(&w)),
        "bags",
    );
    check_close(&outs[3], common::scores_ref(&data, dim, &q, &ids), "scores");
    let qg = reference::gather(&data, dim, &[1, 2, 3, 4]);
    check_close(
        &outs[4],
        common::scores_ref(&data, dim, &qg, &ids),
        "GPU-query scores",
    );
    check_close(
        &outs[5],
        common::combine_ref(&data, dim, &x, &ids),
        "combine",
    );
    let after = own.memory_stats();
    assert_eq!(
        after.buffers_created, before.buffers_created,
        "buffers made during 200 steady batches: {before:?} -> {after:?}"
    );
    assert_eq!(after.bytes, before.bytes);
    assert!(cache.memory().total() <= after.bytes);
}

/// The adapter the shared context runs on, with a device of the given limits.
fn device_with_limits(limits: wgpu::Limits) -> Option<GpuContext> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let adapter = adapters.into_iter().find(|a| {
        a.get_info().name == ctx().adapter().name && a.get_info().backend == ctx().adapter().backend
    })?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        ..Default::default()
    }))
    .ok()?;
    device.on_uncaptured_error(std::sync::Arc::new(|e| panic!("wgpu error: {e}")));
    Some(GpuContext::from_device(&adapter, device, queue))
}

/// Table-batched bags whose offsets and weights would not fit one binding are refused
/// before any work, as a single table's are.
#[test]
fn table_batched_bags_past_one_binding_are_refused() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("misuse_batched_binding"));
    let tiny_binding = wgpu::Limits {
        max_storage_buffer_binding_size: 4096,
        ..wgpu::Limits::downlevel_defaults()
    };
    let Some(small) = device_with_limits(tiny_binding) else {
        panic!("the adapter refused a 4 KiB binding limit");
    };
    let data: Vec<Vec<f32>> = (0..2)
        .map(|_| random_values(200 * 4, rng.next_u64()))
        .collect();
    let tables: Vec<HostTable<'_>> = data
        .iter()
        .map(|v| HostTable::borrowed(v, 4).unwrap())
        .collect();
    let mut cache = hotrow::TableBatchedCache::new(&small, tables, CacheConfig::default()).unwrap();
    let part = |ids: &'static [u32], offsets: &'static [u32]| hotrow::TableBags {
        ids,
        offsets,
        weights: None,
    };
    cache
        .lookup_bags(&[part(&[1, 2], &[0, 1]), part(&[3], &[0, 1])], Pooling::Sum)
        .unwrap();
    let stats = cache.stats();
    // 64 bags per table (the output fits: 64 x 8 floats) of 1,000 weighted ids in all: the
    // two tables' offsets and weights (8 KB) do not fit one binding.
    let ids: Vec<u32> = (0..1000).map(|_| rng.below(200) as u32).collect();
    let offsets: Vec<u32> = (0..64).map(|b| b * 15).collect();
    let w = vec![0.5f32; 1000];
    let big = hotrow::TableBags {
        ids: &ids,
        offsets: &offsets,
        weights: Some(&w),
    };
    match cache.lookup_bags(&[big, big], Pooling::Sum) {
        Err(HotrowError::ExceedsLimit {
            what, limit_name, ..
        }) => {
            assert_eq!(limit_name, "max_storage_buffer_binding_size");
            assert!(what.contains("offsets and weights"), "{what}");
        }
        other => panic!("expected ExceedsLimit, got {other:?}"),
    }
    assert_eq!(cache.stats(), stats, "nothing changed");
}

#[test]
fn every_op_runs_within_the_downlevel_limits() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("misuse_limits"));
    let low = wgpu::Limits {
        max_storage_buffers_per_shader_stage: 4,
        ..wgpu::Limits::downlevel_defaults()
    };
    let Some(small) = device_with_limits(low) else {
        panic!("the adapter refused the downlevel limits");
    };
    assert_eq!(small.adapter().max_storage_buffers_per_shader_stage, 4);
    for dim in [6usize, 8] {
        let rows = 300;
        let data = random_values(rows * dim, rng.next_u64());
        let config = CacheConfig::default().capacity(Capacity::Rows(100));
        let mut cache =
            EmbeddingCache::new(&small, HostTable::borrowed(&data, dim).unwrap(), config).unwrap();
        let ids = random_ids(&mut rng, 90, rows);
        let out = cache.lookup(&ids).unwrap();
        assert_rows_eq(
            &out.to_host().unwrap(),
            &reference::gather(&data, dim, &ids),
            dim,
            "lookup",
        );
        let w: Vec<f32> = (0..90).map(|_| rng.unit() as f32).collect();
        let bags = cache
            .lookup_bags(&ids, &[0, 30, 30, 61], Pooling::Sum, Some(&w))
            .unwrap();
        check_close(
            &bags,
            common::bags_ref(&data, dim, &ids, &[0, 30, 30, 61], 0, Some(&w)),
            "bags",
        );
        let q = random_values(5 * dim, rng.next_u64());
        let s = cache.scores(Queries::Host { data: &q, dim }, &ids).unwrap();
        check_close(&s, common::scores_ref(&data, dim, &q, &ids), "scores");
        let x = random_values(3 * 90, rng.next_u64());
        let c = cache.combine(&x, &ids).unwrap();
        check_close(&c, common::combine_ref(&data, dim, &x, &ids), "combine");
    }
    // Below what the kernels need: a typed error naming the limit, never a panic.
    let lower = wgpu::Limits {
        max_storage_buffers_per_shader_stage: 3,
        ..wgpu::Limits::downlevel_defaults()
    };
    let Some(tiny) = device_with_limits(lower) else {
        return; // an adapter may refuse limits below the downlevel minimum
    };
    let data = random_values(50 * 4, 5);
    let mut cache = EmbeddingCache::new(
        &tiny,
        HostTable::borrowed(&data, 4).unwrap(),
        CacheConfig::default(),
    )
    .unwrap();
    match cache.lookup_bags(&[1, 2, 3], &[0], Pooling::Sum, None) {
        Err(HotrowError::ExceedsLimit { limit_name, .. }) => {
            assert_eq!(limit_name, "max_storage_buffers_per_shader_stage")
        }
        other => panic!("expected ExceedsLimit, got {other:?}"),
    }
}

#[test]
fn inputs_past_one_binding_are_refused_before_any_work() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("misuse_binding"));
    let tiny_binding = wgpu::Limits {
        max_storage_buffer_binding_size: 4096,
        ..wgpu::Limits::downlevel_defaults()
    };
    let Some(small) = device_with_limits(tiny_binding) else {
        panic!("the adapter refused a 4 KiB binding limit");
    };
    let (rows, dim) = (2000, 4);
    let data = random_values(rows * dim, rng.next_u64());
    // 1,000 slots of 16 bytes: the slots are split over four 4 KiB shards.
    let config = CacheConfig::default().capacity(Capacity::Rows(1000));
    let mut cache =
        EmbeddingCache::new(&small, HostTable::borrowed(&data, dim).unwrap(), config).unwrap();
    assert_eq!(cache.slots().shards().len(), 4);
    let ids = random_ids(&mut rng, 200, rows);
    let out = cache.lookup(&ids).unwrap();
    assert_rows_eq(
        &out.to_host().unwrap(),
        &reference::gather(&data, dim, &ids),
        dim,
        "lookup over sharded slots",
    );
    let offsets = [0, 50, 120];
    let bags = cache
        .lookup_bags(&ids, &offsets, Pooling::Mean, None)
        .unwrap();
    check_close(
        &bags,
        common::bags_ref(&data, dim, &ids, &offsets, 1, None),
        "bags over sharded slots",
    );
    let stats = cache.stats().clone();
    let resident = cache.slot_map().resident();
    // 1,100 ids with weights: offsets and weights need more than one 4 KiB binding.
    let many = random_ids(&mut rng, 1100, rows);
    let w = vec![0.5f32; 1100];
    match cache.lookup_bags(&many, &[0, 600], Pooling::Sum, Some(&w)) {
        Err(HotrowError::ExceedsLimit { limit_name, .. }) => {
            assert_eq!(limit_name, "max_storage_buffer_binding_size")
        }
        other => panic!("expected ExceedsLimit, got {other:?}"),
    }
    // Rows of a batch bigger than the cache that would not fit one binding when gathered.
    match cache.scores(
        Queries::Host {
            data: &[0.5; 4],
            dim,
        },
        &many,
    ) {
        Err(HotrowError::ExceedsLimit { .. }) => {}
        other => panic!("expected ExceedsLimit, got {other:?}"),
    }
    let x = vec![1.0f32; 1100];
    assert!(matches!(
        cache.combine(&x, &many),
        Err(HotrowError::ExceedsLimit { .. })
    ));
    assert_eq!(cache.stats(), &stats, "counters unchanged");
    assert_eq!(cache.slot_map().resident(), resident, "residency unchanged");
    // Device resolution needs the id -> slot table (2,000 rows x 4 bytes) in one binding.
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(100))
        .resolution(hotrow::Resolution::Device);
    match EmbeddingCache::new(&small, HostTable::borrowed(&data, dim).unwrap(), config) {
        Err(HotrowError::ExceedsLimit { limit_name, .. }) => {
            assert_eq!(limit_name, "max_storage_buffer_binding_size")
        }
        other => panic!("expected ExceedsLimit, got {other:?}"),
    }
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
    let warm = random_ids(&mut rng, 600, rows);
    // 120,000 ids over 400 rows (one pass, most not resident), in two weighted bags; 20,000
    // queries against 300 candidates.
    let pool = random_ids(&mut rng, 400, rows);
    let big: Vec<u32> = (0..120_000)
        .map(|_| pool[rng.below(pool.len() as u64) as usize])
        .collect();
    let weights: Vec<f32> = (0..big.len()).map(|_| rng.unit() as f32 - 0.4).collect();
    let offsets = [0u32, 60_000];
    let queries = random_values(20_000 * dim, rng.next_u64());
    let cand = random_ids(&mut rng, 300, rows);
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
            check_close(&out, want, &format!("{op}: bags after, {k}"));
            let q = &queries[..16 * dim];
            let s = cache.scores(Queries::Host { data: q, dim }, &cand).unwrap();
            check_close(
                &s,
                common::scores_ref(&data, dim, q, &cand),
                &format!("{op}: scores after, {k}"),
            );
        }
    }
}

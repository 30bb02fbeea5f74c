//! The GPU-driven path (`BatchPath::Gpu`): the GPU finds, evicts and fetches rows from the
//! table in host memory. On an adapter with host-visible storage (lavapipe, Vulkan/Metal/DX12
//! GPUs) every output is checked against the CPU after every batch, and the GPU's id -> slot
//! state against a host model of it; elsewhere (GL) the path is refused with a typed error and
//! `Auto` falls back to the host path.

mod common;

use std::collections::HashSet;

use common::workload::{random_values, Rng, ZipfIds};
use common::{assert_rows_decoded, assert_rows_eq, poisoned, seed, stored};
use hotrow::{
    BatchPath, CacheConfig, Capacity, DrivenState, EmbeddingCache, EvictionPolicy, GpuContext,
    HostTable, HotrowError, Pooling, Queries, Resolution, RowFormat,
};

/// A cache on the GPU-driven path over `data` (`dim` values a row), `capacity` slots
/// stored as `format`.
fn gpu_cache<'d>(
    ctx: &GpuContext,
    data: &'d [f32],
    dim: usize,
    capacity: usize,
    format: RowFormat,
) -> EmbeddingCache<HostTable<'d>> {
    let table = HostTable::borrowed(data, dim).unwrap();
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(capacity))
        .row_format(format)
        .path(BatchPath::Gpu);
    let cache = EmbeddingCache::new(ctx, table, config).unwrap();
    assert_eq!(cache.config().path, BatchPath::Gpu);
    cache
}

/// The ids the GPU's state holds (checked by `common::driven_resident`).
fn check_state(s: &DrivenState, capacity: usize) -> HashSet<u32> {
    assert_eq!(s.id_of.len(), capacity);
    common::driven_resident(s)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn a_stream_through_the_gpu_matches_the_cpu_and_the_model() {
    let _serial = common::serial();
    let Some(ctx) = common::host_storage_ctx() else {
        return;
    };
    let mut rng = Rng::new(seed("driven_stream"));
    for (format, dim) in [
        (RowFormat::F32, 8),
        (RowFormat::F32, 3),
        (RowFormat::F16, 6),
        (RowFormat::Int8, 16),
    ] {
        let rows = 2_000;
        let capacity = 150 + rng.below(100) as usize;
        let data = random_values(rows * dim, rng.next_u64());
        let (want_rows, _) = stored(&data, dim, format);
        let mut cache = gpu_cache(ctx, &data, dim, capacity, format);
        let zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
        let mut resident: HashSet<u32> = HashSet::new();
        let (mut distinct, mut hits, mut evictions_floor) = (0u64, 0u64, 0u64);
        for batch in 0..40 {
            // a moving hot set, repeats, now and then a batch longer than the cache
            let n = match batch % 10 {
                9 => capacity + 1 + rng.below(3 * capacity as u64) as usize,
                _ => 1 + rng.below(capacity as u64) as usize,
            };
            let shift = (batch / 8) * 300;
            let ids: Vec<u32> = (0..n)
                .map(|_| ((zipf.sample(&mut rng) as usize + shift) % rows) as u32)
                .collect();
            let mut out = poisoned(ctx, n, dim);
            cache.lookup_into(&ids, &mut out).unwrap();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&id| want_rows[id as usize * dim..][..dim].to_vec())
                .collect();
            let what = format!("{format:?} dim {dim} batch {batch} ({n} ids)");
            assert_rows_decoded(&out.to_host().unwrap(), &want, dim, format, &what);
            let state = cache.driven_state().unwrap().expect("GPU-driven");
            let now = check_state(&state, capacity);
            let set: HashSet<u32> = ids.iter().copied().collect();
            if n <= capacity {
                // one pass: every id resident now, the misses exactly those not resident
                // before, and the rows that left were not in the batch
                assert!(
                    set.iter().all(|id| now.contains(id)),
                    "{what}: ids not resident"
                );
                let batch_hits = set.iter().filter(|id| resident.contains(id)).count() as u64;
                hits += batch_hits;
                distinct += set.len() as u64;
                let left: Vec<_> = resident.difference(&now).collect();
                assert!(
                    left.iter().all(|id| !set.contains(id)),
                    "{what}: evicted a row in use"
                );
                evictions_floor += left.len() as u64;
                let s = cache.stats();
                assert_eq!(s.hits, hits, "{what}: hits");
                assert_eq!(s.distinct, distinct, "{what}: distinct");
                assert_eq!(s.misses, distinct - hits, "{what}: misses");
                assert_eq!(
                    s.rows_uploaded - s.evictions,
                    now.len() as u64,
                    "{what}: resident count"
                );
            } else {
                // several passes, counted per pass: resync the model's counters
                let s = cache.stats();
                hits = s.hits;
                distinct = s.distinct;
                assert_eq!(
                    s.rows_uploaded - s.evictions,
                    now.len() as u64,
                    "{what}: resident count"
                );
            }
            resident = now;
        }
        let s = cache.stats();
        assert!(s.evictions >= evictions_floor);
        assert_eq!(s.batches, 40);
        assert!(s.hits > 0 && s.evictions > 0, "{format:?}: {s:?}");
    }
}

/// The host model of one GPU-driven pass (evict.wgsl's parallel CLOCK, serially): from
/// the state before the pass and its ids (at most the slots), the state after, except
/// which miss went to which victim slot (the GPU pairs them in the order its find phase
/// listed them, which varies). Slots stamped `held` (a held prefetch's epoch; 0: none)
/// are taken last. Returns the victim slots, in sweep order.
fn model_pass(s: &mut DrivenState, ids: &[u32], epoch: u32, held: u32) -> Vec<usize> {
    const REF: u32 = 1 << 31;
    let cap = s.id_of.len();
    let mut misses = Vec::new();
    let mut seen = HashSet::new();
    for &id in ids {
        if !seen.insert(id) {
            continue;
        }
        match s.slot_of[id as usize] {
            0 => misses.push(id),
            v => s.stamps[v as usize - 1] = epoch | REF,
        }
    }
    let order: Vec<usize> = (0..cap).map(|p| (s.hand as usize + p) % cap).collect();
    let is_held =
        |stamps: &[u32], slot: usize| held != 0 && stamps[slot] & !REF == held && held != epoch;
    let free = |stamps: &[u32], slot: usize| stamps[slot] & !REF != epoch && !is_held(stamps, slot);
    let a: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&x| free(&s.stamps, x) && s.stamps[x] & REF == 0)
        .collect();
    let b: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&x| free(&s.stamps, x) && s.stamps[x] & REF != 0)
        .collect();
    let c: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&x| is_held(&s.stamps, x))
        .collect();
    let m = misses.len();
    let mut victims: Vec<usize> = a.iter().copied().take(m).collect();
    victims.extend(b.iter().copied().take(m - victims.len()));
    victims.extend(c.iter().copied().take(m - victims.len()));
    assert_eq!(victims.len(), m, "the model found too few slots");
    if let Some(&last) = victims.last() {
        let last_pos = order.iter().position(|&x| x == last).unwrap();
        for (pos, &slot) in order.iter().enumerate() {
            let passed = m > a.len() || pos < last_pos;
            if passed
                && free(&s.stamps, slot)
                && s.stamps[slot] & REF != 0
                && !victims.contains(&slot)
            {
                s.stamps[slot] &= !REF;
            }
        }
        s.hand = ((last + 1) % cap) as u32;
    }
    for (&slot, &id) in victims.iter().zip(&misses) {
        let old = s.id_of[slot];
        if old != 0 {
            s.slot_of[old as usize - 1] = 0;
        }
        s.id_of[slot] = id + 1;
        s.slot_of[id as usize] = slot as u32 + 1;
        s.stamps[slot] = epoch;
    }
    victims
}

/// The GPU's state after every pass equals the host model's (up to which miss went to which
/// victim slot): the same victim slots, stamps, reference bits and hand; a third of the
/// batches are prefetches, whose rows the next batch's sweep takes last.
#[test]
fn the_gpu_state_follows_the_host_model_of_clock() {
    let _serial = common::serial();
    let Some(ctx) = common::host_storage_ctx() else {
        return;
    };
    let mut rng = Rng::new(seed("driven_model"));
    let (rows, dim) = (3_000, 4);
    for capacity in [1usize, 37, 1024, 1500] {
        let data = random_values(rows * dim, rng.next_u64());
        let mut cache = gpu_cache(ctx, &data, dim, capacity, RowFormat::F32);
        let zipf = ZipfIds::new(rows, 1.1, rng.next_u64());
        let mut model = cache.driven_state().unwrap().unwrap();
        // a prefetch's epoch, held through the batch after it
        let mut held = 0;
        for batch in 0..40 {
            let n = 1 + rng.below(capacity as u64) as usize;
            let ids: Vec<u32> = if batch % 5 == 4 {
                (0..n).map(|_| rng.below(rows as u64) as u32).collect()
            } else {
                zipf.batch(n, &mut rng)
            };
            let prefetch = rng.below(3) == 0;
            if prefetch {
                cache.prefetch(&ids).unwrap();
            } else {
                cache.preload(&ids).unwrap();
            }
            let epoch = cache.stats().passes as u32;
            let victims = model_pass(&mut model, &ids, epoch, held);
            held = if prefetch { epoch } else { 0 };
            let gpu = cache.driven_state().unwrap().unwrap();
            let what = format!(
                "capacity {capacity} batch {batch} ({n} ids, {} misses)",
                victims.len()
            );
            assert_eq!(gpu.fault, 0, "{what}");
            assert_eq!(
                gpu.stamps, model.stamps,
                "{what}: stamps and reference bits"
            );
            assert_eq!(gpu.hand, model.hand, "{what}: hand");
            // the same rows resident, in the same slots but for the victims' pairing
            let victim_set: HashSet<usize> = victims.iter().copied().collect();
            for slot in 0..capacity {
                if !victim_set.contains(&slot) {
                    assert_eq!(gpu.id_of[slot], model.id_of[slot], "{what}: slot {slot}");
                }
            }
            let got: HashSet<u32> = victims.iter().map(|&x| gpu.id_of[x]).collect();
            let want: HashSet<u32> = victims.iter().map(|&x| model.id_of[x]).collect();
            assert_eq!(got, want, "{what}: the misses' rows");
            check_state(&gpu, capacity);
            model = gpu;
        }
    }
}

#[test]
fn ops_on_the_gpu_path_match_the_cpu() {
    let _serial = common::serial();
    let Some(ctx) = common::host_storage_ctx() else {
        return;
    };
    let mut rng = Rng::new(seed("driven_ops"));
    let (rows, dim, capacity) = (1_500, 8, 200);
    let data = random_values(rows * dim, rng.next_u64());
    let mut cache = gpu_cache(ctx, &data, dim, capacity, RowFormat::F32);
    for round in 0..6 {
        // bags with repeats; every third round more ids than slots
        let bags = 1 + rng.below(40) as usize;
        let mut offsets = vec![0u32];
        let mut ids = Vec::new();
        for _ in 0..bags {
            let len = rng.below(if round % 3 == 2 { 30 } else { 6 }) as usize;
            ids.extend((0..len).map(|_| rng.below(rows as u64 / 3) as u32));
            offsets.push(ids.len() as u32);
        }
        for (code, mode) in [(0, Pooling::Sum), (1, Pooling::Mean), (2, Pooling::Max)] {
            let got = cache.lookup_bags(&ids, &offsets, mode, None).unwrap();
            let want = common::bags_ref(&data, dim, &ids, &offsets, code, None);
            common::check_close(&got, want, &format!("round {round} {mode:?} bags"));
        }
        let q = random_values(3 * dim, rng.next_u64());
        let cand: Vec<u32> = (0..1 + rng.below(300))
            .map(|_| rng.below(rows as u64) as u32)
            .collect();
        let got = cache
            .scores(Queries::Host { data: &q, dim }, &cand)
            .unwrap();
        common::check_close(
            &got,
            common::scores_ref(&data, dim, &q, &cand),
            &format!("round {round} scores"),
        );
        let x = random_values(2 * cand.len(), rng.next_u64());
        let got = cache.combine(&x, &cand).unwrap();
        common::check_close(
            &got,
            common::combine_ref(&data, dim, &x, &cand),
            &format!("round {round} combine"),
        );
        let state = cache.driven_state().unwrap().unwrap();
        check_state(&state, capacity);
    }
}

#[test]
fn the_choice_of_path_and_its_refusals() {
    let _serial = common::serial();
    let data = vec![0.5f32; 100 * 4];
    let plain = common::ctx();
    let table = || HostTable::borrowed(&data, 4).unwrap();
    let rows = Capacity::Rows(10);
    if !plain.adapter().host_visible_storage {
        // Auto on a context without host-visible storage: the host path, and why
        let cache =
            EmbeddingCache::new(plain, table(), CacheConfig::default().capacity(rows)).unwrap();
        assert_eq!(cache.config().path, BatchPath::Host);
        assert!(
            cache.config().path_reason.contains("host-visible"),
            "{}",
            cache.config().path_reason
        );
        assert_eq!(cache.memory().host_table, 0);
        let before = plain.allocated_bytes();
        let err = EmbeddingCache::new(
            plain,
            table(),
            CacheConfig::default().capacity(rows).path(BatchPath::Gpu),
        )
        .unwrap_err();
        assert!(matches!(err, HotrowError::Unsupported { .. }), "{err:?}");
        assert_eq!(plain.allocated_bytes(), before, "nothing left allocated");
    }
    let Some(ctx) = common::host_storage_ctx() else {
        return;
    };
    let auto = EmbeddingCache::new(ctx, table(), CacheConfig::default().capacity(rows)).unwrap();
    assert_eq!(
        auto.config().path,
        BatchPath::Gpu,
        "{}",
        auto.config().path_reason
    );
    // hotrow's own imported memory comes in whole 2 MiB huge pages; wgpu's buffers in 16 bytes
    let host_table = if ctx.adapter().host_memory_import {
        2 << 20
    } else {
        100 * 16
    };
    assert_eq!(auto.memory().host_table, host_table);
    // settings only the host path has: Auto takes the host path, Gpu is refused
    for config in [
        CacheConfig::default().policy(EvictionPolicy::Lru),
        CacheConfig::default().resolution(Resolution::Device),
    ] {
        let config = config.capacity(rows);
        let cache = EmbeddingCache::new(ctx, table(), config.clone()).unwrap();
        assert_eq!(cache.config().path, BatchPath::Host);
        let err = EmbeddingCache::new(ctx, table(), config.path(BatchPath::Gpu)).unwrap_err();
        assert!(matches!(err, HotrowError::InvalidArgument(_)), "{err:?}");
    }
    // Host asked for on a context that could do either
    let host = EmbeddingCache::new(
        ctx,
        table(),
        CacheConfig::default().capacity(rows).path(BatchPath::Host),
    )
    .unwrap();
    assert_eq!(host.config().path, BatchPath::Host);
}

/// A device with host-visible storage but fewer storage buffers per shader stage than the
/// fetch binds (6): Auto takes the host path and says why, Gpu is a typed error naming the
/// limit, and the host path serves.
#[test]
fn too_few_storage_bindings_take_the_host_path() {
    let _serial = common::serial();
    let Some(ctx) = common::host_storage_ctx() else {
        return;
    };
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let adapter = adapters
        .into_iter()
        .find(|a| {
            a.get_info().name == ctx.adapter().name && a.get_info().backend == ctx.adapter().backend
        })
        .expect("same adapter visible");
    let limits = wgpu::Limits {
        max_storage_buffers_per_shader_stage: 5,
        ..adapter.limits()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: wgpu::Features::MAPPABLE_PRIMARY_BUFFERS,
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap();
    let small = GpuContext::from_device(&adapter, device, queue);
    assert!(small.adapter().host_visible_storage);
    let data: Vec<f32> = (0..100 * 4).map(|v| v as f32).collect();
    let table = || HostTable::borrowed(&data, 4).unwrap();
    let config = CacheConfig::default().capacity(Capacity::Rows(10));
    let mut auto = EmbeddingCache::new(&small, table(), config.clone()).unwrap();
    assert_eq!(auto.config().path, BatchPath::Host);
    assert!(
        auto.config().path_reason.contains("storage buffers"),
        "{}",
        auto.config().path_reason
    );
    let out = auto.lookup(&[3, 99, 3]).unwrap().to_host().unwrap();
    assert_eq!(&out[4..8], &data[99 * 4..100 * 4]);
    let err = EmbeddingCache::new(&small, table(), config.path(BatchPath::Gpu)).unwrap_err();
    assert!(
        matches!(
            err,
            HotrowError::ExceedsLimit {
                limit_name: "max_storage_buffers_per_shader_stage",
                limit: 5,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bad_input_changes_nothing_on_the_gpu_path() {
    let _serial = common::serial();
    let Some(ctx) = common::host_storage_ctx() else {
        return;
    };
    let mut rng = Rng::new(seed("driven_misuse"));
    let (rows, dim) = (500, 4);
    let data = random_values(rows * dim, rng.next_u64());
    let mut cache = gpu_cache(ctx, &data, dim, 50, RowFormat::F32);
    let ids: Vec<u32> = (0..40).map(|_| rng.below(rows as u64) as u32).collect();
    cache.lookup(&ids).unwrap();
    let (stats, state) = (cache.stats(), cache.driven_state().unwrap().unwrap());
    let bad = [3, rows as u32, 7];
    assert!(matches!(
        cache.lookup(&bad),
        Err(HotrowError::IdOutOfRange { .. })
    ));
    assert!(cache
        .lookup_bags(&bad, &[0, 3], Pooling::Sum, None)
        .is_err());
    assert!(
        cache.combine(&[1.0; 3], &[1, 2]).is_err(),
        "x of the wrong length"
    );
    assert_eq!(cache.stats(), stats, "counters unchanged");
    let after = cache.driven_state().unwrap().unwrap();
    assert_eq!(
        (after.slot_of, after.id_of, after.hand),
        (state.slot_of, state.id_of, state.hand)
    );
    // empty batches are served
    assert_eq!(cache.lookup(&[]).unwrap().rows(), 0);
    cache.preload(&[]).unwrap();
    // preload makes rows resident with no output
    cache.preload(&[11, 12, 11]).unwrap();
    let s = cache.driven_state().unwrap().unwrap();
    assert!(s.slot_of[11] != 0 && s.slot_of[12] != 0);
}

/// Replicated and partitioned caches over two devices, each on the GPU-driven path (two
/// devices of the tests' adapter): every device serves its share with no host work per row.
#[test]
fn multi_gpu_caches_on_the_gpu_path_match_the_cpu() {
    let _serial = common::serial();
    let Some(first) = common::host_storage_ctx() else {
        return;
    };
    let second = common::host_storage_ctx_with(false);
    let devices = [first.clone(), second];
    let mut rng = Rng::new(seed("driven_multi"));
    let (rows, dim) = (1_200, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let config = CacheConfig::default().capacity(Capacity::Fraction(0.1));
    let mut rep = hotrow::ReplicatedCache::new(
        &devices,
        HostTable::borrowed(&data, dim).unwrap(),
        config.clone(),
    )
    .unwrap();
    let mut part =
        hotrow::PartitionedCache::new(&devices, HostTable::borrowed(&data, dim).unwrap(), config)
            .unwrap();
    for d in 0..2 {
        assert_eq!(rep.cache(d).unwrap().config().path, BatchPath::Gpu);
        assert_eq!(part.cache(d).unwrap().config().path, BatchPath::Gpu);
    }
    for round in 0..5 {
        let n = 1 + rng.below(400) as usize;
        let ids: Vec<u32> = (0..n).map(|_| rng.below(rows as u64 / 2) as u32).collect();
        let want = hotrow::reference::gather(&data, dim, &ids);
        let parts = rep.lookup(&ids).unwrap();
        let got = hotrow::ReplicatedCache::<HostTable<'_>>::to_host(&parts).unwrap();
        assert_rows_eq(&got, &want, dim, &format!("replicated round {round}"));
        let on = round % 2;
        let got = part.lookup(&ids, on).unwrap().to_host().unwrap();
        assert_rows_eq(&got, &want, dim, &format!("partitioned round {round}"));
    }
    let s = rep.stats();
    assert_eq!(s.hits + s.misses, s.distinct);
    assert!(s.hits > 0, "{s:?}");
}

/// A table over several storage bindings (lavapipe's 128 MiB) and a cache of more than 256
/// sweep blocks (the plan phase's scan goes round in chunks).
#[test]
fn a_sharded_table_and_a_large_cache() {
    let _serial = common::serial();
    let Some(ctx) = common::host_storage_ctx() else {
        return;
    };
    let mut rng = Rng::new(seed("driven_large"));
    let dim = 64;
    let rows = (ctx.adapter().max_storage_buffer_binding_size as usize / (dim * 4)) * 3 / 2;
    let rows = rows.min(1_200_000);
    let data = random_values(rows * dim, rng.next_u64());
    let mut cache = gpu_cache(ctx, &data, dim, 300_000.min(rows / 2), RowFormat::F32);
    let zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
    for batch in 0..4 {
        let ids = zipf.batch(20_000, &mut rng);
        let out = cache.lookup(&ids).unwrap();
        let want = hotrow::reference::gather(&data, dim, &ids);
        assert_rows_eq(
            &out.to_host().unwrap(),
            &want,
            dim,
            &format!("batch {batch}"),
        );
    }
    common::resident(&cache);
}

/// A table in 14 shards (the fetch binds four at a time: groups of 4, 4, 4 and 2) and slots
/// in 3: every batch of a stream with evictions equal to the CPU, every row format.
#[test]
fn a_table_in_many_shards_is_fetched_in_groups() {
    let _serial = common::serial();
    let Some(ctx) = common::host_storage_ctx() else {
        return;
    };
    let mut rng = Rng::new(seed("driven_groups"));
    let (rows, dim, capacity) = (2000, 12, 300);
    let data = random_values(rows * dim, rng.next_u64());
    for format in [RowFormat::F32, RowFormat::F16, RowFormat::Int8] {
        let layout = hotrow::RowLayout::new(dim, format).unwrap();
        let shard = |n: usize| hotrow::RowBufferOptions {
            max_shard_bytes: Some((n * layout.row_bytes() as usize) as u64),
        };
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(capacity))
            .row_format(format)
            .path(BatchPath::Gpu)
            .slot_buffer(shard(128))
            .table_buffer(shard(150));
        let table = HostTable::borrowed(&data, dim).unwrap();
        let Ok(mut cache) = EmbeddingCache::new(ctx, table, config) else {
            assert_ne!(format, RowFormat::F32, "f32 rows are always served");
            continue;
        };
        let (back, _) = stored(&data, dim, format);
        let zipf = ZipfIds::new(rows, 0.9, rng.next_u64());
        for batch in 0..8 {
            let ids = zipf.batch(if batch == 5 { 900 } else { 250 }, &mut rng);
            let out = cache.lookup(&ids).unwrap().to_host().unwrap();
            let want = hotrow::reference::gather(&back, dim, &ids);
            assert_rows_decoded(
                &out,
                &want,
                dim,
                format,
                &format!("{format:?} batch {batch}"),
            );
        }
        let s = cache.stats();
        assert!(s.evictions > 0 && s.hits > 0, "{s:?}");
    }
}

/// The table in hotrow's own imported huge-page memory (the default where the adapter has
/// `VK_EXT_external_memory_host`) and in wgpu's mappable buffers: both serve a stream with
/// evictions, sharded, equal to the CPU; the context says which it took.
#[test]
fn both_kinds_of_host_memory_serve_the_stream() {
    let _serial = common::serial();
    if common::host_storage_ctx().is_none() {
        return;
    }
    let mut rng = Rng::new(seed("driven_host_memory"));
    let (rows, dim) = (3_000, 12);
    let data = random_values(rows * dim, rng.next_u64());
    for import in [true, false] {
        let ctx = common::host_storage_ctx_with(import);
        if !import {
            assert!(
                !ctx.adapter().host_memory_import,
                "import off, yet imported"
            );
        } else if ctx.adapter().backend == wgpu::Backend::Vulkan && ctx.adapter().software {
            // lavapipe (CI) has VK_EXT_external_memory_host: the import must take there
            assert!(ctx.adapter().host_memory_import, "{}", ctx.adapter());
        }
        eprintln!("import asked {import}: {}", ctx.adapter());
        // rows in host memory, sharded at 40 KiB (48-byte rows: 853 a shard, 4 shards),
        // written by the queue and gathered across the shards
        let table = hotrow::RowBuffer::in_host_memory(
            &ctx,
            rows,
            dim,
            hotrow::RowBufferOptions {
                max_shard_bytes: Some(40 << 10),
            },
        )
        .unwrap();
        assert_eq!(table.shards().len(), 4);
        // each shard's buffer is the size asked for (imported memory is whole 2 MiB pages,
        // but a binding of the buffer must stay within the limit it was sharded for)
        for shard in table.shards() {
            assert!(
                shard.size() <= 40 << 10,
                "a shard of {} bytes",
                shard.size()
            );
        }
        table.write_rows(0, &data).unwrap();
        let ids: Vec<u32> = (0..500).map(|_| rng.below(rows as u64) as u32).collect();
        let got = table.gather(&ids).unwrap().to_host().unwrap();
        let want = hotrow::reference::gather(&data, dim, &ids);
        assert_rows_eq(
            &got,
            &want,
            dim,
            &format!("import {import}: sharded host rows"),
        );
        let mut cache = gpu_cache(&ctx, &data, dim, 200, RowFormat::F32);
        let zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
        for batch in 0..12 {
            let n = 1 + rng.below(600) as usize;
            let ids: Vec<u32> = (0..n).map(|_| zipf.sample(&mut rng)).collect();
            let mut out = poisoned(&ctx, n, dim);
            cache.lookup_into(&ids, &mut out).unwrap();
            let want = hotrow::reference::gather(&data, dim, &ids);
            let what = format!("import {import} batch {batch}");
            assert_rows_eq(&out.to_host().unwrap(), &want, dim, &what);
        }
        let s = cache.stats();
        assert!(
            s.evictions > 0,
            "import {import}: the stream evicted nothing"
        );
        let expected = if ctx.adapter().host_memory_import {
            ((rows * dim * 4) as u64).next_multiple_of(2 << 20)
        } else {
            (rows * dim * 4) as u64
        };
        assert_eq!(cache.memory().host_table, expected, "import {import}");
    }
}

/// The GPU-driven path's eviction against its CPU twin (`hotrow::sizing::GpuSweep`) on the
/// same stream: the GPU pairs a pass's misses with its victims in its threads' order (the
/// twin in batch order), so rows land in other slots and later sweeps part ways; the hit
/// rates agree within a point under CLOCK and a point and a half under TinyLFU, whose
/// refusals agree within 2% on a steady stream. Under a hot set that moves, the hit rates
/// still agree (the sketch itself is held exactly: the next test).
#[test]
fn the_gpu_path_matches_its_cpu_twin() {
    let _serial = common::serial();
    let Some(ctx) = common::host_storage_ctx() else {
        return;
    };
    let (rows, dim) = (20_000usize, 2usize);
    let data = random_values(rows * dim, seed("twin_table"));
    let zipf = ZipfIds::new(rows, 1.05, seed("twin_zipf"));
    let mut rng = Rng::new(seed("twin_ids"));
    let cap = 700;
    let steady: Vec<Vec<u32>> = (0..60)
        .map(|k| zipf.batch(if k % 13 == 12 { 2 * cap + 5 } else { 500 }, &mut rng))
        .collect();
    // a hot set that moves at once every 15 batches (the ranks redrawn): the sketch is
    // forgotten after each move, on the GPU by its `forget` kernel
    let moving: Vec<Vec<u32>> = (0..60u64)
        .map(|k| {
            let zipf = ZipfIds::new(rows, 1.05, seed("twin_moving") ^ (k / 15));
            zipf.batch(500, &mut rng)
        })
        .collect();
    let runs = [EvictionPolicy::Clock, EvictionPolicy::TinyLfu]
        .into_iter()
        .map(|p| (p, "steady", &steady))
        .chain([(EvictionPolicy::TinyLfu, "moving", &moving)]);
    for (policy, name, stream) in runs {
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(cap))
            .policy(policy)
            .path(BatchPath::Gpu);
        let table = HostTable::borrowed(&data, dim).unwrap();
        let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
        let mut twin = hotrow::sizing::GpuSweep::new(rows, cap, policy == EvictionPolicy::TinyLfu);
        for (k, ids) in stream.iter().enumerate() {
            cache.lookup(ids).unwrap();
            twin.batch(ids);
            if k == 0 {
                // one pass from empty: the same rows, whatever the pairing
                let state = cache.driven_state().unwrap().expect("GPU-driven");
                let gpu: Vec<u32> = common::driven_resident(&state)
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                assert_eq!(
                    gpu,
                    twin.resident(),
                    "{policy:?} {name}: the first batch's rows"
                );
            }
        }
        let s = cache.stats();
        let (distinct, hits, refused) = twin.counts();
        let (gpu, cpu) = (
            s.hits as f64 / s.distinct as f64,
            hits as f64 / distinct as f64,
        );
        eprintln!(
            "{policy:?} {name}: GPU hit rate {gpu:.4} ({} refused), twin {cpu:.4} ({refused})",
            s.refused
        );
        let within = if policy == EvictionPolicy::Clock {
            0.01
        } else {
            0.015
        };
        assert!(
            (gpu - cpu).abs() < within,
            "{policy:?} {name}: GPU {gpu} vs twin {cpu}"
        );
        // (After a move the window's tuning turns on counts a pass or two apart, which the
        // pairing shifts: there the refusals part ways by up to a third while the hit
        // rates stay together. On the steady stream they agree within ~10 on most seeds;
        // on some the window's tuning steps once apart for a sample (seed
        // 1796785397684241978: 5,362 against 5,246, 2.2%). A window opened for good, the
        // bug this guards against, refuses ~1,000 against ~5,370.)
        assert!(
            name == "moving" || s.refused.abs_diff(refused) <= refused / 20 + 10,
            "{policy:?} {name}: refused {} on the GPU, {refused} by the twin",
            s.refused
        );
    }
}

/// A hot set that moves at once (the next batches name other rows only): the batch that
/// sees its hits collapse opens the admission window whole, and the pass after it starts
/// by forgetting the frequency sketch (`forget` in evict.wgsl), so the old rows' counts do
/// not keep the new ones out. The sketch is held exactly to the twin's (counts do not
/// depend on which slot a row takes), and after the move it holds only the batches
/// counted since.
#[test]
fn a_hot_set_that_moves_is_let_in_and_the_sketch_forgotten() {
    let _serial = common::serial();
    let Some(ctx) = common::host_storage_ctx() else {
        return;
    };
    let (rows, dim, cap) = (20_000usize, 2usize, 700usize);
    let data = random_values(rows * dim, seed("move_table"));
    let zipf = ZipfIds::new(rows / 2, 1.05, seed("move_zipf"));
    let mut rng = Rng::new(seed("move_ids"));
    // 30 batches over the first half of the rows, then 3 over the second half only
    // (15,000 + 1,500 positions: short of the first halving, due at 25 x 700)
    let stream: Vec<Vec<u32>> = (0..33)
        .map(|k| {
            let shift = if k < 30 { 0 } else { (rows / 2) as u32 };
            zipf.batch(500, &mut rng)
                .into_iter()
                .map(|id| id + shift)
                .collect()
        })
        .collect();
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(cap))
        .policy(EvictionPolicy::TinyLfu)
        .path(BatchPath::Gpu);
    let table = HostTable::borrowed(&data, dim).unwrap();
    let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
    let mut twin = hotrow::sizing::GpuSweep::new(rows, cap, true);
    for (k, ids) in stream.iter().enumerate() {
        let out = cache.lookup(ids).unwrap().to_host().unwrap();
        let want = hotrow::reference::gather(&data, dim, ids);
        assert_rows_eq(&out, &want, dim, &format!("batch {k}"));
        twin.batch(ids);
        let state = cache.driven_state().unwrap().expect("GPU-driven");
        let differ = state
            .sketch
            .iter()
            .zip(twin.sketch())
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            differ == 0 && state.sketch.len() == twin.sketch().len(),
            "batch {k}: {differ} of {} counters differ from the twin's (window {})",
            state.sketch.len(),
            state.window
        );
        if k == 30 {
            assert_eq!(state.window, 1000, "the move opens the window whole");
        }
    }
    let state = cache.driven_state().unwrap().expect("GPU-driven");
    let width = state.sketch.len() / 4;
    let distinct = |ids: &Vec<u32>| ids.iter().collect::<HashSet<_>>().len() as u64;
    // each of the 4 rows counts every distinct id of every batch since the forgetting
    // (batches 31 and 32) once, unless a counter saturates (none does this early)
    let since: u64 = stream[31..].iter().map(distinct).sum();
    for r in 0..4 {
        let sum: u64 = state.sketch[r * width..][..width]
            .iter()
            .map(|&c| u64::from(c))
            .sum();
        assert_eq!(sum, since, "sketch row {r}: only what came after the move");
    }
}

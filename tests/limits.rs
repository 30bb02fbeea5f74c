//! Adapter limits: tables past the binding and buffer limits refused by name, every op on
//! a device with the downlevel (WebGPU) limits, inputs past one binding refused before any
//! work.

mod common;

use common::workload::{random_values, Rng};
use common::{assert_rows_eq, ctx, seed};
use hotrow::{
    reference, CacheConfig, Capacity, EmbeddingCache, GpuContext, GpuOptions, HostTable,
    HotrowError, Pooling, Queries, RowBuffer,
};

#[test]
fn tables_beyond_the_adapter_limits_are_refused_by_name() {
    let _serial = common::serial();
    // One row wider than the largest storage binding: cannot be split, must name the limit.
    let max = ctx()
        .adapter()
        .max_storage_buffer_binding_size
        .min(ctx().adapter().max_buffer_size);
    let dim = (max / 4 + 1) as usize;
    match RowBuffer::new(ctx(), 1, dim) {
        Err(HotrowError::ExceedsLimit {
            limit_name, limit, ..
        }) => {
            assert!(limit_name.starts_with("max_"), "{limit_name}");
            assert!(limit <= max);
        }
        other => panic!("expected ExceedsLimit, got {other:?}"),
    }
    // More rows than u32 slots can address.
    assert!(matches!(
        RowBuffer::new(ctx(), u32::MAX as usize + 1, 1),
        Err(HotrowError::ExceedsLimit { .. })
    ));
    // A table over the context's memory budget fails before allocating.
    let small = GpuContext::with_options(GpuOptions {
        memory_budget: Some(1 << 20),
        ..Default::default()
    })
    .unwrap();
    match RowBuffer::new(&small, 1 << 20, 4) {
        Err(HotrowError::ExceedsLimit { limit_name, .. }) => {
            assert_eq!(limit_name, "GpuOptions::memory_budget")
        }
        other => panic!("expected budget error, got {other:?}"),
    }
    assert_eq!(small.allocated_bytes(), 0);
    // Within budget works, and is counted.
    let t = RowBuffer::new(&small, 1000, 4).unwrap();
    assert_eq!(small.allocated_bytes(), 16_000);
    drop(t);
    assert_eq!(small.allocated_bytes(), 0);
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
        let ids = common::uniform_ids(&mut rng, 90, rows);
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
        common::check_close(
            &bags,
            common::bags_ref(&data, dim, &ids, &[0, 30, 30, 61], 0, Some(&w)),
            "bags",
        );
        let q = random_values(5 * dim, rng.next_u64());
        let s = cache.scores(Queries::Host { data: &q, dim }, &ids).unwrap();
        common::check_close(&s, common::scores_ref(&data, dim, &q, &ids), "scores");
        let x = random_values(3 * 90, rng.next_u64());
        let c = cache.combine(&x, &ids).unwrap();
        common::check_close(&c, common::combine_ref(&data, dim, &x, &ids), "combine");
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
    let ids = common::uniform_ids(&mut rng, 200, rows);
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
    common::check_close(
        &bags,
        common::bags_ref(&data, dim, &ids, &offsets, 1, None),
        "bags over sharded slots",
    );
    let stats = cache.stats().clone();
    let resident = cache.slot_map().resident();
    // 1,100 ids with weights: offsets and weights need more than one 4 KiB binding.
    let many = common::uniform_ids(&mut rng, 1100, rows);
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
    assert_eq!(cache.stats(), stats, "counters unchanged");
    assert_eq!(cache.slot_map().resident(), resident, "residency unchanged");
    // Resolution on the GPU needs the slot index (2,000 rows x 4 bytes) in one binding.
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

//! Gather on the adapter of this machine vs the CPU reference, on fresh random data.

mod common;

use common::workload::{random_values, Rng};
use common::{assert_rows_eq, ctx, seed};
use hotrow::{
    reference, Embeddings, GpuContext, GpuOptions, HotrowError, RowBuffer, RowBufferOptions,
};

fn random_ids(rng: &mut Rng, n: usize, rows: usize) -> Vec<u32> {
    // Half the ids from a small hot set, so repeats are certain.
    let hot: Vec<u32> = (0..8).map(|_| rng.below(rows as u64) as u32).collect();
    (0..n)
        .map(|_| {
            if rng.below(2) == 0 {
                hot[rng.below(8) as usize]
            } else {
                rng.below(rows as u64) as u32
            }
        })
        .collect()
}

#[test]
fn gather_matches_reference_across_dims() {
    let _serial = common::serial();
    let s = seed("gather_dims");
    let mut rng = Rng::new(s);
    for &dim in &[1usize, 3, 4, 64, 128, 257] {
        let rows = 50 + rng.below(400) as usize;
        let table = random_values(rows * dim, rng.next_u64());
        let gpu = RowBuffer::from_host(ctx(), &table, dim).unwrap();
        let n = 1 + rng.below(1500) as usize;
        let ids = random_ids(&mut rng, n, rows);
        let mut out = Embeddings::new(ctx(), n, dim).unwrap();
        out.fill(f32::NAN).unwrap();
        gpu.gather_into(&ids, &mut out).unwrap();
        assert_eq!((out.rows(), out.dim()), (n, dim));
        let want = reference::gather(&table, dim, &ids);
        assert_rows_eq(&out.to_host().unwrap(), &want, dim, &format!("dim {dim}"));
    }
}

#[test]
fn gather_across_shards() {
    let _serial = common::serial();
    let s = seed("gather_shards");
    let mut rng = Rng::new(s);
    for &dim in &[3usize, 8] {
        let rows = 1000;
        let table = random_values(rows * dim, rng.next_u64());
        // ~97 rows per shard: 11 shards.
        let gpu = RowBuffer::with_options(
            ctx(),
            rows,
            dim,
            RowBufferOptions {
                max_shard_bytes: Some(97 * dim as u64 * 4 + 5),
            },
        )
        .unwrap();
        assert!(
            gpu.shards().len() > 5,
            "expected many shards, got {}",
            gpu.shards().len()
        );
        gpu.write_rows(0, &table).unwrap();
        assert_rows_eq(&gpu.read_rows(0, rows).unwrap(), &table, dim, "read back");
        let ids = random_ids(&mut rng, 3000, rows);
        let mut out = Embeddings::new(ctx(), ids.len(), dim).unwrap();
        out.fill(f32::NAN).unwrap();
        gpu.gather_into(&ids, &mut out).unwrap();
        assert_rows_eq(
            &out.to_host().unwrap(),
            &reference::gather(&table, dim, &ids),
            dim,
            "sharded",
        );
    }
}

#[test]
fn gather_past_65535_workgroups_uses_2d_grid() {
    let _serial = common::serial();
    // dim 1: one thread per id; 65,535 x 256 + 4,321 ids needs a second grid row.
    let s = seed("gather_2d");
    let mut rng = Rng::new(s);
    let rows = 5000;
    let table = random_values(rows, rng.next_u64());
    let gpu = RowBuffer::from_host(ctx(), &table, 1).unwrap();
    let n = 65_535 * 256 + 4_321;
    let ids: Vec<u32> = (0..n).map(|_| rng.below(rows as u64) as u32).collect();
    let mut out = Embeddings::new(ctx(), n, 1).unwrap();
    out.fill(f32::NAN).unwrap();
    gpu.gather_into(&ids, &mut out).unwrap();
    assert_rows_eq(
        &out.to_host().unwrap(),
        &reference::gather(&table, 1, &ids),
        1,
        "2d",
    );
}

#[test]
fn empty_batch_and_async_readback() {
    let _serial = common::serial();
    let s = seed("gather_async");
    let mut rng = Rng::new(s);
    let dim = 16;
    let table = random_values(40 * dim, rng.next_u64());
    let gpu = RowBuffer::from_host(ctx(), &table, dim).unwrap();
    let empty = gpu.gather(&[]).unwrap();
    assert_eq!(empty.rows(), 0);
    assert!(empty.to_host().unwrap().is_empty());
    assert!(pollster::block_on(empty.to_host_async())
        .unwrap()
        .is_empty());
    let ids = random_ids(&mut rng, 77, 40);
    let out = gpu.gather(&ids).unwrap();
    let got = pollster::block_on(out.to_host_async()).unwrap();
    assert_rows_eq(&got, &reference::gather(&table, dim, &ids), dim, "async");
}

#[test]
fn bad_input_is_a_typed_error_and_writes_nothing() {
    let _serial = common::serial();
    let s = seed("gather_bad");
    let mut rng = Rng::new(s);
    let dim = 5;
    let table = random_values(30 * dim, rng.next_u64());
    let gpu = RowBuffer::from_host(ctx(), &table, dim).unwrap();
    let mut out = Embeddings::new(ctx(), 4, dim).unwrap();
    out.fill(f32::NAN).unwrap();
    match gpu.gather_into(&[1, 2, 30, 4], &mut out) {
        Err(HotrowError::IdOutOfRange { id, position, rows }) => {
            assert_eq!((id, position, rows), (30, 2, 30));
        }
        other => panic!("expected IdOutOfRange, got {other:?}"),
    }
    assert!(
        out.to_host().unwrap().iter().all(|v| v.is_nan()),
        "nothing may be written"
    );

    assert!(matches!(
        RowBuffer::from_host(ctx(), &table[..7], dim),
        Err(HotrowError::LengthMismatch { .. })
    ));
    assert!(matches!(
        gpu.write_rows(0, &table[..dim + 1]),
        Err(HotrowError::LengthMismatch { .. })
    ));
    assert!(matches!(
        gpu.write_rows(29, &table[..2 * dim]),
        Err(HotrowError::RowRange {
            first: 29,
            count: 2,
            rows: 30
        })
    ));
    assert!(matches!(
        gpu.read_rows(usize::MAX, 2),
        Err(HotrowError::RowRange { .. })
    ));
    assert!(matches!(
        RowBuffer::new(ctx(), 10, 0),
        Err(HotrowError::InvalidArgument(_))
    ));
    assert!(matches!(
        RowBuffer::new(ctx(), 0, 4),
        Err(HotrowError::InvalidArgument(_))
    ));
}

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

#[test]
fn shares_an_application_device() {
    let _serial = common::serial();
    let s = seed("gather_shared");
    let mut rng = Rng::new(s);
    // The application's own device, on the adapter hotrow picked.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let name = &ctx().adapter().name;
    let adapter = adapters
        .into_iter()
        .find(|a| &a.get_info().name == name && a.get_info().backend == ctx().adapter().backend)
        .expect("same adapter visible");
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let shared = GpuContext::from_device(&adapter, device.clone(), queue);
    assert_eq!(&shared.adapter().name, name);
    assert!(shared.device() == &device);
    let dim = 12;
    let table = random_values(64 * dim, rng.next_u64());
    let gpu = RowBuffer::from_host(&shared, &table, dim).unwrap();
    let ids = random_ids(&mut rng, 100, 64);
    let out = gpu.gather(&ids).unwrap();
    assert_rows_eq(
        &out.to_host().unwrap(),
        &reference::gather(&table, dim, &ids),
        dim,
        "shared device",
    );
}

/// The application's own device on the adapter hotrow's shared context picked.
fn app_device() -> (wgpu::Adapter, wgpu::Device, wgpu::Queue) {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let adapter = adapters
        .into_iter()
        .find(|a| {
            a.get_info().name == ctx().adapter().name
                && a.get_info().backend == ctx().adapter().backend
        })
        .expect("same adapter visible");
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    (adapter, device, queue)
}

#[test]
fn from_device_leaves_the_apps_callback_and_takes_forwarded_loss() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let _serial = common::serial();
    let s = seed("gather_app_callbacks");
    let mut rng = Rng::new(s);
    let (adapter, device, queue) = app_device();
    // The application's callback, set before hotrow sees the device.
    let first = Arc::new(AtomicUsize::new(0));
    let f = first.clone();
    device.set_device_lost_callback(move |_, _| {
        f.fetch_add(1, Ordering::SeqCst);
    });
    let shared = GpuContext::from_device(&adapter, device.clone(), queue);
    let dim = 6;
    let table = random_values(40 * dim, rng.next_u64());
    let rows = RowBuffer::from_host(&shared, &table, dim).unwrap();
    // The application replaces its callback (forwarding loss to hotrow, as documented):
    // hotrow keeps working, and its results stay right.
    let second = Arc::new(AtomicUsize::new(0));
    let (g, forward) = (second.clone(), shared.clone());
    device.set_device_lost_callback(move |reason, msg| {
        g.fetch_add(1, Ordering::SeqCst);
        forward.device_lost(format!("{reason:?}: {msg}"));
    });
    for _ in 0..3 {
        let ids = random_ids(&mut rng, 50, 40);
        let out = rows.gather(&ids).unwrap();
        assert_rows_eq(
            &out.to_host().unwrap(),
            &reference::gather(&table, dim, &ids),
            dim,
            "after the app replaced its callback",
        );
    }
    shared.check().unwrap();
    device.destroy();
    let _ = device.poll(wgpu::PollType::Poll);
    assert_eq!(second.load(Ordering::SeqCst), 1, "the app's callback ran");
    assert_eq!(
        first.load(Ordering::SeqCst),
        0,
        "replaced by the app, not by hotrow"
    );
    match rows.gather(&[0, 1]) {
        Err(HotrowError::DeviceLost(_)) => {}
        other => panic!("expected DeviceLost, got {other:?}"),
    }
    assert!(matches!(
        RowBuffer::new(&shared, 4, 4),
        Err(HotrowError::DeviceLost(_))
    ));
}

#[test]
fn from_device_does_not_replace_the_apps_callback() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let _serial = common::serial();
    let (adapter, device, queue) = app_device();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    device.set_device_lost_callback(move |_, _| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    let shared = GpuContext::from_device(&adapter, device.clone(), queue);
    let t = RowBuffer::from_host(&shared, &[1.0, 2.0, 3.0, 4.0], 2).unwrap();
    assert_eq!(
        t.gather(&[1, 0]).unwrap().to_host().unwrap(),
        [3.0, 4.0, 1.0, 2.0]
    );
    device.destroy();
    let _ = device.poll(wgpu::PollType::Poll);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the app's own callback still runs"
    );
}

#[test]
fn a_shared_device_destroyed_without_forwarding_is_a_typed_error() {
    let _serial = common::serial();
    // The application installs no error handler (wgpu's default one panics) and does not
    // forward the loss: hotrow's calls run in error scopes and report it themselves.
    let (adapter, device, queue) = app_device();
    let shared = GpuContext::from_device(&adapter, device.clone(), queue);
    let table = RowBuffer::from_host(&shared, &[1.0, 2.0, 3.0, 4.0], 2).unwrap();
    let data = vec![0.25f32; 40 * 4];
    let mut cache = hotrow::EmbeddingCache::new(
        &shared,
        hotrow::HostTable::borrowed(&data, 4).unwrap(),
        hotrow::CacheConfig::default(),
    )
    .unwrap();
    assert_eq!(cache.lookup(&[3]).unwrap().to_host().unwrap(), [0.25; 4]);
    device.destroy();
    let _ = device.poll(wgpu::PollType::Poll);
    let lost = |r: hotrow::Result<()>, what: &str| match r {
        Err(HotrowError::DeviceLost(_)) => {}
        other => panic!("{what}: expected DeviceLost, got {other:?}"),
    };
    lost(table.gather(&[0, 1]).map(|_| ()), "gather");
    lost(cache.lookup(&[5, 6]).map(|_| ()), "lookup");
    lost(RowBuffer::new(&shared, 4, 4).map(|_| ()), "allocation");
    assert!(matches!(shared.check(), Err(HotrowError::DeviceLost(_))));
}

#[test]
fn a_lost_device_is_a_typed_error() {
    let _serial = common::serial();
    // A context that owns its device takes its loss itself.
    let own = GpuContext::new().unwrap();
    let table = RowBuffer::from_host(&own, &[1.0, 2.0, 3.0, 4.0], 2).unwrap();
    own.device().destroy();
    let _ = own.device().poll(wgpu::PollType::Poll);
    match table.gather(&[0, 1]) {
        Err(HotrowError::DeviceLost(_)) => {}
        other => panic!("expected DeviceLost, got {other:?}"),
    }
    assert!(matches!(
        RowBuffer::new(&own, 4, 4),
        Err(HotrowError::DeviceLost(_))
    ));
    assert!(matches!(own.wait_idle(), Err(HotrowError::DeviceLost(_))));
}

//! The device under the library: sharing an application's device (`from_device`), its
//! lost-device callback and error handler left alone, a device lost or destroyed under a
//! call, as a typed error.

mod common;

use common::workload::{random_values, Rng};
use common::{assert_rows_eq, ctx, seed};
use hotrow::{reference, GpuContext, HotrowError, RowBuffer};

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
    let ids = common::repeating_ids(&mut rng, 100, 64);
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
        let ids = common::repeating_ids(&mut rng, 50, 40);
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

//! Rows in host memory read by kernels directly (`RowBuffer::in_host_memory`): on a context
//! that asked for host-visible storage on an adapter that has it (lavapipe, Vulkan/Metal/DX12
//! GPUs) they gather exactly like rows in GPU memory, across shards; elsewhere (not asked
//! for, or GL) the call is a typed error that allocates nothing.

mod common;

use common::workload::{random_values, Rng};
use common::{assert_rows_eq, ctx, seed};
use hotrow::{
    reference, GpuContext, GpuOptions, HotrowError, Placement, RowBuffer, RowBufferOptions,
};

fn unsupported<T: std::fmt::Debug>(made: hotrow::Result<T>) -> bool {
    matches!(made, Err(HotrowError::Unsupported { feature, .. }) if feature == "MAPPABLE_PRIMARY_BUFFERS")
}

#[test]
fn rows_in_host_memory_gather_like_rows_in_gpu_memory() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("host_memory"));
    let (rows, dim) = (3000, 12);
    // Not asked for: refused, whatever the adapter.
    let plain = GpuContext::with_options(GpuOptions {
        backends: Some(ctx().adapter().backend.into()),
        adapter_name: Some(ctx().adapter().name.clone()),
        ..Default::default()
    })
    .unwrap();
    assert!(!plain.adapter().host_visible_storage);
    let before = plain.allocated_bytes();
    assert!(unsupported(RowBuffer::in_host_memory(
        &plain,
        rows,
        dim,
        Default::default()
    )));
    assert_eq!(plain.allocated_bytes(), before, "nothing allocated");
    // Asked for (on the adapter the other tests use).
    let asked = GpuContext::with_options(GpuOptions {
        backends: Some(ctx().adapter().backend.into()),
        adapter_name: Some(ctx().adapter().name.clone()),
        host_visible_storage: true,
        ..Default::default()
    })
    .unwrap();
    let ctx = || &asked;
    let supported = ctx().adapter().host_visible_storage;
    eprintln!("host-visible storage: {supported}");
    let before = ctx().allocated_bytes();
    // shards of 700 rows: every op dispatches over several host-memory buffers
    let options = RowBufferOptions {
        max_shard_bytes: Some(700 * dim as u64 * 4),
    };
    let made = RowBuffer::in_host_memory(ctx(), rows, dim, options);
    if !supported {
        assert!(unsupported(made));
        assert_eq!(ctx().allocated_bytes(), before, "nothing allocated");
        eprintln!("skipped the gathers: this adapter has no host-visible storage");
        return;
    }
    let table = made.unwrap();
    assert_eq!(table.placement(), Placement::Host);
    assert_eq!(table.shards().len(), 5);
    assert_eq!(ctx().allocated_bytes() - before, table.bytes());
    let mut data = random_values(rows * dim, rng.next_u64());
    table.write_rows(0, &data).unwrap();
    for n in [1usize, 17, 500, 4096] {
        let ids = common::repeating_ids(&mut rng, n, rows);
        let mut out = common::poisoned(ctx(), n, dim);
        table.gather_into(&ids, &mut out).unwrap();
        let got = out.to_host().unwrap();
        assert_rows_eq(&got, &reference::gather(&data, dim, &ids), dim, "host rows");
    }
    // rows rewritten in place are read as they are now
    let fresh = random_values(100 * dim, rng.next_u64());
    table.write_rows(1450, &fresh).unwrap();
    data[1450 * dim..1550 * dim].copy_from_slice(&fresh);
    let ids: Vec<u32> = (1440..1560).chain([0, 2999]).collect();
    let got = table.gather(&ids).unwrap().to_host().unwrap();
    assert_rows_eq(
        &got,
        &reference::gather(&data, dim, &ids),
        dim,
        "rewritten rows",
    );
    assert_eq!(
        table.read_rows(1400, 200).unwrap(),
        data[1400 * dim..1600 * dim]
    );
    // bad input as for rows in GPU memory
    assert!(matches!(
        table.gather(&[3000]),
        Err(HotrowError::IdOutOfRange { .. })
    ));
    assert!(RowBuffer::in_host_memory(ctx(), 0, dim, Default::default()).is_err());
    assert!(RowBuffer::in_host_memory(ctx(), 10, 0, Default::default()).is_err());
    let device = RowBuffer::new(ctx(), 4, dim).unwrap();
    assert_eq!(device.placement(), Placement::Device);
}

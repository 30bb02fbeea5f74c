//! Gather on the adapter of this machine vs the CPU reference, on fresh random data.

mod common;

use common::workload::{random_values, Rng};
use common::{assert_rows_eq, ctx, seed};
use hotrow::{reference, Embeddings, HotrowError, RowBuffer, RowBufferOptions};

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
        let ids = common::repeating_ids(&mut rng, n, rows);
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
        let ids = common::repeating_ids(&mut rng, 3000, rows);
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
    let ids = common::repeating_ids(&mut rng, 77, 40);
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

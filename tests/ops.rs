//! Pooled bags and block-wise products over a cache smaller than the table, against the
//! f64 CPU reference on fresh random data; outputs poisoned before each run.

mod common;

use common::workload::{random_values, Rng};
use common::{ctx, seed};
use hotrow::{
    CacheConfig, Capacity, EmbeddingCache, Embeddings, HostTable, HotrowError, Pooling, Queries,
    RowBufferOptions,
};

fn cache<'a>(data: &'a [f32], dim: usize, cap: usize) -> EmbeddingCache<HostTable<'a>> {
    EmbeddingCache::new(
        ctx(),
        HostTable::borrowed(data, dim).unwrap(),
        CacheConfig::default().capacity(Capacity::Rows(cap)),
    )
    .unwrap()
}

fn check(got: &Embeddings, (want, scale): (Vec<f64>, Vec<f64>), what: &str) {
    common::assert_close(got, &want, &scale, what);
}

/// Random bag lengths, including 0, 1 and 1,000.
fn random_bags(rng: &mut Rng, n_bags: usize, rows: usize, hot: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut ids = Vec::new();
    let mut offsets = Vec::new();
    for b in 0..n_bags {
        offsets.push(ids.len() as u32);
        let len = match b % 7 {
            0 => 0,
            1 => 1,
            2 if b < 14 => 1000,
            _ => rng.below(40) as usize,
        };
        for _ in 0..len {
            ids.push(if rng.below(2) == 0 {
                hot[rng.below(hot.len() as u64) as usize]
            } else {
                rng.below(rows as u64) as u32
            });
        }
    }
    (ids, offsets)
}

#[test]
fn bags_match_reference() {
    let _serial = common::serial();
    let s = seed("bags");
    let mut rng = Rng::new(s);
    for &dim in &[1usize, 3, 128, 257] {
        let rows = 3000;
        let data = random_values(rows * dim, rng.next_u64());
        let hot: Vec<u32> = (0..20).map(|_| rng.below(rows as u64) as u32).collect();
        // capacity above the distinct ids of one call: the slot path
        let mut c = cache(&data, dim, 2500);
        for (mode, pooling) in [(0, Pooling::Sum), (1, Pooling::Mean), (2, Pooling::Max)] {
            let (ids, offsets) = random_bags(&mut rng, 30, rows, &hot);
            let w: Vec<f32> = (0..ids.len()).map(|_| rng.value() * 2.0).collect();
            let weights = (mode != 2).then_some(&w[..]);
            let mut out = common::poisoned(ctx(), 30, dim);
            c.lookup_bags_into(&ids, &offsets, pooling, weights, &mut out)
                .unwrap();
            assert_eq!((out.rows(), out.dim()), (30, dim));
            let want = common::bags_ref(&data, dim, &ids, &offsets, mode, weights);
            check(&out, want, &format!("dim {dim} {pooling:?} weighted"));
            let mut out = common::poisoned(ctx(), 30, dim);
            c.lookup_bags_into(&ids, &offsets, pooling, None, &mut out)
                .unwrap();
            check(
                &out,
                common::bags_ref(&data, dim, &ids, &offsets, mode, None),
                &format!("dim {dim} {pooling:?}"),
            );
        }
        let st = c.stats();
        assert_eq!(st.hits + st.misses, st.distinct);
    }
}

#[test]
fn bags_through_passes_and_shards() {
    let _serial = common::serial();
    let s = seed("bags_passes");
    let mut rng = Rng::new(s);
    let (rows, dim) = (2000, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let hot: Vec<u32> = (0..10).map(|_| rng.below(rows as u64) as u32).collect();
    let (ids, offsets) = random_bags(&mut rng, 40, rows, &hot);
    let w: Vec<f32> = (0..ids.len()).map(|_| rng.value()).collect();
    let want = common::bags_ref(&data, dim, &ids, &offsets, 0, Some(&w));
    // far fewer slots than distinct ids: served in passes, through a gathered buffer
    let mut small = cache(&data, dim, 37);
    let mut out = common::poisoned(ctx(), offsets.len(), dim);
    small
        .lookup_bags_into(&ids, &offsets, Pooling::Sum, Some(&w), &mut out)
        .unwrap();
    check(&out, want.clone(), "passes");
    assert!(small.stats().passes > 2);
    // a sharded slot buffer
    let mut sharded = EmbeddingCache::new(
        ctx(),
        HostTable::borrowed(&data, dim).unwrap(),
        CacheConfig::default()
            .capacity(Capacity::Rows(1500))
            .slot_buffer(RowBufferOptions {
                max_shard_bytes: Some(200 * dim as u64 * 4),
            }),
    )
    .unwrap();
    check(
        &sharded
            .lookup_bags(&ids, &offsets, Pooling::Sum, Some(&w))
            .unwrap(),
        want,
        "sharded",
    );
    // no ids at all: every bag empty, zeros
    let mut z = common::poisoned(ctx(), 3, dim);
    sharded
        .lookup_bags_into(&[], &[0, 0, 0], Pooling::Max, None, &mut z)
        .unwrap();
    assert_eq!(z.to_host().unwrap(), vec![0.0; 3 * dim]);
    assert_eq!(
        sharded
            .lookup_bags(&[], &[], Pooling::Sum, None)
            .unwrap()
            .rows(),
        0
    );
}

#[test]
fn scores_and_combine_match_reference() {
    let _serial = common::serial();
    let s = seed("matmul");
    let mut rng = Rng::new(s);
    for &dim in &[1usize, 3, 128, 257] {
        let rows = 4000;
        let data = random_values(rows * dim, rng.next_u64());
        let mut c = cache(&data, dim, 1200);
        for &(m, n_cand) in &[(1usize, 1usize), (1, 100), (5, 65), (70, 129), (130, 1000)] {
            let q = random_values(m * dim, rng.next_u64());
            let cand: Vec<u32> = (0..n_cand).map(|_| rng.below(rows as u64) as u32).collect();
            let mut out = common::poisoned(ctx(), m, n_cand);
            c.scores_into(Queries::Host { data: &q, dim }, &cand, &mut out)
                .unwrap();
            assert_eq!((out.rows(), out.dim()), (m, n_cand));
            check(
                &out,
                common::scores_ref(&data, dim, &q, &cand),
                &format!("scores dim {dim} m {m} c {n_cand}"),
            );
            // queries already on the GPU
            let qg = c.lookup(&cand[..m.min(n_cand)]).unwrap();
            let qh = qg.to_host().unwrap();
            let mut out = common::poisoned(ctx(), m.min(n_cand), n_cand);
            c.scores_into(Queries::Gpu(&qg), &cand, &mut out).unwrap();
            check(
                &out,
                common::scores_ref(&data, dim, &qh, &cand),
                "scores from GPU queries",
            );
            // combine: m x k weights over k = n_cand rows
            let x = random_values(m * n_cand, rng.next_u64());
            let mut out = common::poisoned(ctx(), m, dim);
            c.combine_into(&x, &cand, &mut out).unwrap();
            assert_eq!((out.rows(), out.dim()), (m, dim));
            check(
                &out,
                common::combine_ref(&data, dim, &x, &cand),
                &format!("combine dim {dim} m {m} k {n_cand}"),
            );
        }
    }
    // more candidates than slots: served through passes
    let dim = 16;
    let data = random_values(3000 * dim, rng.next_u64());
    let mut small = cache(&data, dim, 100);
    let cand: Vec<u32> = (0..777).map(|_| rng.below(3000) as u32).collect();
    let q = random_values(9 * dim, rng.next_u64());
    check(
        &small
            .scores(Queries::Host { data: &q, dim }, &cand)
            .unwrap(),
        common::scores_ref(&data, dim, &q, &cand),
        "scores in passes",
    );
    let x = random_values(3 * cand.len(), rng.next_u64());
    check(
        &small.combine(&x, &cand).unwrap(),
        common::combine_ref(&data, dim, &x, &cand),
        "combine in passes",
    );
}

#[test]
fn bad_op_input_is_refused_before_work() {
    let _serial = common::serial();
    let s = seed("ops_bad");
    let mut rng = Rng::new(s);
    let (rows, dim) = (100, 4);
    let data = random_values(rows * dim, rng.next_u64());
    let mut c = cache(&data, dim, 50);
    let ids = [1u32, 2, 3, 4];
    let bad = |r: hotrow::Result<Embeddings>| r.expect_err("must be refused");
    assert!(matches!(
        bad(c.lookup_bags(&ids, &[1, 2], Pooling::Sum, None)),
        HotrowError::BadOffsets { position: 0, .. }
    ));
    assert!(matches!(
        bad(c.lookup_bags(&ids, &[0, 3, 2], Pooling::Sum, None)),
        HotrowError::BadOffsets { position: 2, .. }
    ));
    assert!(matches!(
        bad(c.lookup_bags(&ids, &[0, 5], Pooling::Sum, None)),
        HotrowError::BadOffsets { position: 1, .. }
    ));
    assert!(matches!(
        bad(c.lookup_bags(&ids, &[], Pooling::Sum, None)),
        HotrowError::BadOffsets { .. }
    ));
    assert!(matches!(
        bad(c.lookup_bags(&ids, &[0], Pooling::Sum, Some(&[1.0; 3]))),
        HotrowError::LengthMismatch { .. }
    ));
    assert!(matches!(
        bad(c.lookup_bags(&ids, &[0], Pooling::Mean, Some(&[1.0, 2.0, f32::NAN, 1.0]))),
        HotrowError::NonFinite {
            what: "weights",
            position: 2,
            ..
        }
    ));
    assert!(matches!(
        bad(c.lookup_bags(
            &ids,
            &[0],
            Pooling::Sum,
            Some(&[1.0, f32::INFINITY, 0.0, 1.0])
        )),
        HotrowError::NonFinite { position: 1, .. }
    ));
    assert!(matches!(
        bad(c.lookup_bags(&ids, &[0], Pooling::Max, Some(&[1.0; 4]))),
        HotrowError::WeightsUnsupported { mode: "max" }
    ));
    assert!(matches!(
        bad(c.lookup_bags(&[1, 100], &[0], Pooling::Sum, None)),
        HotrowError::IdOutOfRange { position: 1, .. }
    ));
    let q = [0.5f32; 8];
    assert!(matches!(
        bad(c.scores(Queries::Host { data: &q, dim: 8 }, &ids)),
        HotrowError::DimMismatch { .. }
    ));
    assert!(matches!(
        bad(c.scores(
            Queries::Host {
                data: &q[..6],
                dim: 4
            },
            &ids
        )),
        HotrowError::LengthMismatch { .. }
    ));
    assert!(matches!(
        bad(c.scores(Queries::Host { data: &q, dim: 4 }, &[])),
        HotrowError::EmptyCandidates
    ));
    assert!(matches!(
        bad(c.scores(Queries::Host { data: &q, dim: 4 }, &[0, 100])),
        HotrowError::IdOutOfRange { id: 100, .. }
    ));
    let wide = c.lookup(&[1]).unwrap();
    let other_data = random_values(10 * 8, 1);
    let mut other = cache(&other_data, 8, 5);
    assert!(matches!(
        bad(other.scores(Queries::Gpu(&wide), &[0])),
        HotrowError::DimMismatch {
            expected: 8,
            got: 4,
            ..
        }
    ));
    assert!(matches!(
        bad(c.combine(&[1.0; 5], &ids)),
        HotrowError::LengthMismatch { .. }
    ));
    assert!(matches!(
        bad(c.combine(&[1.0; 4], &[])),
        HotrowError::InvalidArgument(_)
    ));
    assert!(matches!(
        bad(c.combine(&[1.0, f32::NAN, 0.0, 0.0], &ids)),
        HotrowError::NonFinite {
            what: "x",
            position: 1,
            ..
        }
    ));
    // nothing was served by any refused call
    assert_eq!(c.stats().batches, 1); // only the lookup above
                                      // zero queries: an empty result, not an error
    assert_eq!(
        c.scores(Queries::Host { data: &[], dim: 4 }, &ids)
            .unwrap()
            .rows(),
        0
    );
}

//! Several GPUs in one process (ReplicatedCache, PartitionedCache) on two real adapters
//! (lavapipe and llvmpipe-GL on CI; two devices of one adapter where only one exists):
//! the same random streams as one device, every result against the CPU reference with
//! outputs poisoned; bad input refused before any device runs; a device lost mid-batch is
//! an error naming it, never a wrong answer.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::workload::{random_values, Rng, ZipfIds};
use common::{assert_close_host, assert_rows_eq, open_two, seed, two};
use hotrow::{
    reference, CacheConfig, Capacity, Embeddings, GpuContext, HostTable, HotrowError,
    PartitionedCache, Pooling, ReplicatedCache, Resolution, RowSource,
};

/// Bags of 0-6 Zipf ids each; weights when asked.
fn bags(
    rng: &mut Rng,
    z: &ZipfIds,
    n: usize,
    weighted: bool,
) -> (Vec<u32>, Vec<u32>, Option<Vec<f32>>) {
    let (mut ids, mut offsets) = (Vec::new(), Vec::new());
    for _ in 0..n {
        offsets.push(ids.len() as u32);
        let k = rng.below(7) as usize;
        ids.extend(z.batch(k, rng));
    }
    let w = weighted.then(|| (0..ids.len()).map(|_| rng.unit() as f32 - 0.4).collect());
    (ids, offsets, w)
}

#[test]
fn replicated_matches_the_reference() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("group replicated"));
    let (rows, dim) = (3000, 12);
    let data = random_values(rows * dim, rng.next_u64());
    for resolution in [Resolution::Host, Resolution::Device] {
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(150))
            .resolution(resolution);
        let table = HostTable::borrowed(&data, dim).unwrap();
        let mut cache = ReplicatedCache::new(two(), table, config).unwrap();
        assert_eq!(cache.devices(), 2);
        let z = ZipfIds::new(rows, 1.05, rng.next_u64());
        for k in 0..8 {
            // lookups, some bigger than one device's cache, one empty
            let n = [0, 1, 7, 400, 90, 1200, 33, 256][k];
            let ids = z.batch(n, &mut rng);
            let mut outs: Vec<Embeddings> =
                two().iter().map(|c| common::poisoned(c, 4, 4)).collect();
            cache.lookup_into(&ids, &mut outs).unwrap();
            for (d, r) in cache.split(n).into_iter().enumerate() {
                assert_eq!(outs[d].rows(), r.len());
                assert!(
                    outs[d].context().same_as(&two()[d]),
                    "part {d} on its device"
                );
            }
            let got = ReplicatedCache::<HostTable>::to_host(&outs).unwrap();
            assert_rows_eq(
                &got,
                &reference::gather(&data, dim, &ids),
                dim,
                "replicated lookup",
            );
            // bags, every pooling
            let (mode, pooling) =
                [(0u32, Pooling::Sum), (1, Pooling::Mean), (2, Pooling::Max)][k % 3];
            let nb = 1 + rng.below(90) as usize;
            let (ids, offsets, w) = bags(&mut rng, &z, nb, mode != 2);
            let parts = cache
                .lookup_bags(&ids, &offsets, pooling, w.as_deref())
                .unwrap();
            let got = ReplicatedCache::<HostTable>::to_host(&parts).unwrap();
            let (want, scale) = common::bags_ref(&data, dim, &ids, &offsets, mode, w.as_deref());
            assert_close_host(&got, &want, &scale, &format!("replicated bags {pooling:?}"));
        }
        // scores: candidate columns split over the devices
        let q: Vec<f32> = (0..3 * dim).map(|_| rng.value()).collect();
        let cand = z.batch(77, &mut rng);
        let mut outs = cache.outputs().unwrap();
        cache.scores_into(&q, &cand, &mut outs).unwrap();
        let (want, scale) = common::scores_ref(&data, dim, &q, &cand);
        let split = cache.split(cand.len());
        for i in 0..3 {
            for (d, r) in split.iter().enumerate() {
                let part = outs[d].to_host().unwrap();
                let c = r.len();
                let got = &part[i * c..(i + 1) * c];
                let w = &want[i * 77 + r.start..i * 77 + r.end];
                let s = &scale[i * 77 + r.start..i * 77 + r.end];
                assert_close_host(got, w, s, "replicated scores");
            }
        }
        // combine: rows of x split over the devices
        let ids = z.batch(40, &mut rng);
        let x: Vec<f32> = (0..5 * 40).map(|_| rng.value()).collect();
        let mut outs = cache.outputs().unwrap();
        cache.combine_into(&x, &ids, &mut outs).unwrap();
        let got = ReplicatedCache::<HostTable>::to_host(&outs).unwrap();
        let (want, scale) = common::combine_ref(&data, dim, &x, &ids);
        assert_close_host(&got, &want, &scale, "replicated combine");
        // the allocating twins: the same parts as the `_into` calls, each on its device
        let parts = cache.combine(&x, &ids).unwrap();
        assert_eq!(parts.len(), 2);
        let got = ReplicatedCache::<HostTable>::to_host(&parts).unwrap();
        assert_close_host(&got, &want, &scale, "replicated combine (allocating)");
        let parts = cache.scores(&q, &cand).unwrap();
        let (want, scale) = common::scores_ref(&data, dim, &q, &cand);
        for (d, r) in split.iter().enumerate() {
            assert!(
                parts[d].context().same_as(&two()[d]),
                "scores part {d} on its device"
            );
            assert_eq!((parts[d].rows(), parts[d].dim()), (3, r.len()));
            let part = parts[d].to_host().unwrap();
            for i in 0..3 {
                let got = &part[i * r.len()..(i + 1) * r.len()];
                let w = &want[i * 77 + r.start..i * 77 + r.end];
                let s = &scale[i * 77 + r.start..i * 77 + r.end];
                assert_close_host(got, w, s, "replicated scores (allocating)");
            }
        }
        assert!(matches!(
            cache.scores(&q, &[]),
            Err(hotrow::HotrowError::EmptyCandidates)
        ));
        assert!(
            cache.combine(&x[..7], &ids).is_err(),
            "x not whole rows of one weight per id"
        );
        let s = cache.stats();
        assert!(s.hits > 0 && s.evictions > 0, "{s:?}");
        for d in 0..2 {
            cache.cache(d).unwrap().check_device_table().unwrap();
        }
    }
}

#[test]
fn partitioned_matches_the_reference() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("group partitioned"));
    let (rows, dim) = (2500, 8);
    let data = random_values(rows * dim, rng.next_u64());
    for resolution in [Resolution::Host, Resolution::Device] {
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(120))
            .resolution(resolution);
        let table = HostTable::borrowed(&data, dim).unwrap();
        let mut cache = PartitionedCache::new(two(), table, config).unwrap();
        let z = ZipfIds::new(rows, 1.05, rng.next_u64());
        let mut out: Vec<Embeddings> = two().iter().map(|c| common::poisoned(c, 4, 4)).collect();
        for k in 0..8 {
            let on = k % 2;
            let n = [0, 1, 9, 500, 64, 1000, 17, 300][k];
            let ids = z.batch(n, &mut rng);
            out[on].fill(f32::NAN).unwrap();
            let before = cache.traffic();
            cache.lookup_into(&ids, on, &mut out[on]).unwrap();
            assert_eq!((out[on].rows(), out[on].dim()), (n, dim));
            // Only the rows the other device owns cross the host (down, then up to `on`,
            // with every position's place: 4 bytes each).
            let others = ids.iter().filter(|&&id| cache.owner(id) != on).count() as u64;
            let after = cache.traffic();
            assert_eq!(
                (
                    after.bytes_to_host - before.bytes_to_host,
                    after.bytes_from_host - before.bytes_from_host
                ),
                (
                    others * dim as u64 * 4,
                    others * dim as u64 * 4 + n as u64 * 4
                ),
                "lookup {k} on {on}: host traffic"
            );
            assert_rows_eq(
                &out[on].to_host().unwrap(),
                &reference::gather(&data, dim, &ids),
                dim,
                "partitioned lookup",
            );
            let (mode, pooling) =
                [(0u32, Pooling::Sum), (1, Pooling::Mean), (2, Pooling::Max)][k % 3];
            let nb = 1 + rng.below(90) as usize;
            let (ids, offsets, w) = bags(&mut rng, &z, nb, mode != 2);
            out[on].fill(f32::NAN).unwrap();
            cache
                .lookup_bags_into(&ids, &offsets, pooling, w.as_deref(), on, &mut out[on])
                .unwrap();
            let (want, scale) = common::bags_ref(&data, dim, &ids, &offsets, mode, w.as_deref());
            common::assert_close(
                &out[on],
                &want,
                &scale,
                &format!("partitioned bags {pooling:?}"),
            );
            // each device caches only the rows it owns, numbered id / 2
            for d in 0..2 {
                let own = cache.cache(d).unwrap();
                assert_eq!(own.rows(), (rows + 1 - d) / 2);
                assert_eq!(own.source().rows(), (rows + 1 - d) / 2);
                for local in own.slot_map().resident() {
                    let id = own.source().table_id(local);
                    assert_eq!((cache.owner(id), id / 2), (d, local));
                }
            }
        }
        let q: Vec<f32> = (0..5 * dim).map(|_| rng.value()).collect();
        let cand = z.batch(61, &mut rng);
        let s = cache.scores(&q, &cand, 1).unwrap();
        assert!(s.context().same_as(&two()[1]));
        let (want, scale) = common::scores_ref(&data, dim, &q, &cand);
        common::assert_close(&s, &want, &scale, "partitioned scores");
        let ids = z.batch(45, &mut rng);
        let x: Vec<f32> = (0..3 * 45).map(|_| rng.value()).collect();
        let c = cache.combine(&x, &ids, 0).unwrap();
        assert!(c.context().same_as(&two()[0]));
        let (want, scale) = common::combine_ref(&data, dim, &x, &ids);
        common::assert_close(&c, &want, &scale, "partitioned combine");
        assert!(matches!(
            cache.combine(&x[1..], &ids, 0),
            Err(HotrowError::LengthMismatch { .. })
        ));
        let t = cache.traffic();
        assert!(
            t.bytes_to_host > 0 && t.bytes_from_host > 0 && t.calls == 18,
            "{t:?}"
        );
        for d in 0..2 {
            cache.cache(d).unwrap().check_device_table().unwrap();
        }
    }
}

#[test]
fn bad_input_is_refused_before_any_device_runs() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("group misuse"));
    let (rows, dim) = (500, 4);
    let data = random_values(rows * dim, rng.next_u64());
    let config = CacheConfig::default().capacity(Capacity::Rows(50));
    let mut rep = ReplicatedCache::new(
        two(),
        HostTable::borrowed(&data, dim).unwrap(),
        config.clone(),
    )
    .unwrap();
    let mut part = PartitionedCache::new(
        two(),
        HostTable::borrowed(&data, dim).unwrap(),
        config.clone(),
    )
    .unwrap();
    rep.lookup(&[1, 2, 3, 4]).unwrap();
    part.lookup(&[1, 2, 3, 4], 0).unwrap();
    let (rs, ps) = (rep.stats(), part.stats());
    // an id out of range: the plain error, nothing looked up anywhere
    let bad = [3, 7, rows as u32, 9];
    assert!(matches!(
        rep.lookup(&bad),
        Err(HotrowError::IdOutOfRange { .. })
    ));
    assert!(matches!(
        part.lookup(&bad, 1),
        Err(HotrowError::IdOutOfRange { .. })
    ));
    // bad offsets, NaN weights
    assert!(matches!(
        rep.lookup_bags(&[1, 2], &[0, 3], Pooling::Sum, None),
        Err(HotrowError::BadOffsets { .. })
    ));
    assert!(matches!(
        part.lookup_bags(&[1, 2], &[0, 1], Pooling::Sum, Some(&[1.0, f32::NAN]), 0),
        Err(HotrowError::NonFinite { .. })
    ));
    // no such device; outputs of the wrong device or count
    assert!(matches!(
        part.lookup(&[1], 2),
        Err(HotrowError::InvalidArgument(_))
    ));
    let mut wrong = Embeddings::new(&two()[0], 1, dim).unwrap();
    assert!(matches!(
        part.lookup_into(&[1, 2], 1, &mut wrong),
        Err(HotrowError::ForeignContext { .. })
    ));
    let mut swapped: Vec<Embeddings> = rep.outputs().unwrap().into_iter().rev().collect();
    assert!(matches!(
        rep.lookup_into(&[1, 2], &mut swapped),
        Err(HotrowError::ForeignContext { .. })
    ));
    let mut one = vec![Embeddings::new(&two()[0], 1, dim).unwrap()];
    assert!(matches!(
        rep.lookup_into(&[1, 2], &mut one),
        Err(HotrowError::LengthMismatch { .. })
    ));
    // non-finite queries
    assert!(part
        .scores(&[1.0, f32::INFINITY, 0.0, 0.0], &[1], 0)
        .is_err());
    assert_eq!(rep.stats(), rs, "nothing changed");
    assert_eq!(part.stats(), ps, "nothing changed");
    // the same device twice, or none
    let same = [two()[0].clone(), two()[0].clone()];
    assert!(matches!(
        ReplicatedCache::new(
            &same,
            HostTable::borrowed(&data, dim).unwrap(),
            config.clone()
        ),
        Err(HotrowError::InvalidArgument(_))
    ));
    assert!(matches!(
        PartitionedCache::new(&[], HostTable::borrowed(&data, dim).unwrap(), config),
        Err(HotrowError::InvalidArgument(_))
    ));
    // empty input is served
    assert_eq!(part.lookup(&[], 1).unwrap().rows(), 0);
    assert_eq!(
        part.lookup_bags(&[], &[0, 0], Pooling::Max, None, 0)
            .unwrap()
            .to_host()
            .unwrap(),
        vec![0.0; 2 * dim]
    );
    assert!(rep.lookup(&[]).unwrap().iter().all(|e| e.rows() == 0));
}

/// A table that, on its `at`-th read, reports device `lost`'s loss to hotrow (as an
/// application forwarding wgpu's callback does), or fails.
struct Sabotaged<'a> {
    table: HostTable<'a>,
    reads: AtomicUsize,
    at: usize,
    lose: Option<GpuContext>,
}

impl RowSource for Sabotaged<'_> {
    fn rows(&self) -> usize {
        self.table.rows()
    }
    fn dim(&self) -> usize {
        self.table.dim()
    }
    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> hotrow::Result<()> {
        if self.reads.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            match &self.lose {
                Some(ctx) => ctx.device_lost("test: lost in the middle of a batch"),
                None => return Err(HotrowError::RowSource("test: the source failed".into())),
            }
        }
        self.table.read_rows(ids, out)
    }
}

#[test]
fn a_device_lost_mid_batch_is_an_error_naming_it() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("group lost"));
    let (rows, dim) = (2000, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let z = ZipfIds::new(rows, 1.05, rng.next_u64());
    for partitioned in [false, true] {
        // fresh devices: this test loses one
        let ctxs = open_two();
        let source = Sabotaged {
            table: HostTable::borrowed(&data, dim).unwrap(),
            reads: AtomicUsize::new(0),
            at: 5,
            lose: Some(ctxs[1].clone()),
        };
        let config = CacheConfig::default().capacity(Capacity::Rows(100));
        let (mut rep, mut part) = (None, None);
        if partitioned {
            part = Some(PartitionedCache::new(&ctxs, source, config).unwrap());
        } else {
            rep = Some(ReplicatedCache::new(&ctxs, source, config).unwrap());
        }
        let mut errors = 0;
        for _ in 0..8 {
            let ids = z.batch(300, &mut rng);
            let got = match (&mut rep, &mut part) {
                (Some(c), _) => c
                    .lookup(&ids)
                    .and_then(|p| ReplicatedCache::<HostTable>::to_host(&p)),
                (_, Some(c)) => c.lookup(&ids, 0).and_then(|e| e.to_host()),
                _ => unreachable!(),
            };
            match got {
                Ok(v) => {
                    assert_eq!(errors, 0, "served after the loss");
                    assert_rows_eq(
                        &v,
                        &reference::gather(&data, dim, &ids),
                        dim,
                        "before the loss",
                    )
                }
                Err(HotrowError::OnDevice { device, source, .. }) => {
                    assert_eq!(device, 1, "the lost device is named");
                    assert!(matches!(*source, HotrowError::DeviceLost(_)), "{source:?}");
                    errors += 1;
                }
                Err(e) => panic!("expected OnDevice(1, DeviceLost), got {e:?}"),
            }
        }
        assert!(errors >= 3, "the loss was reported ({errors} errors)");
    }
}

#[test]
fn a_failing_source_fails_the_call_and_keeps_no_phantom_rows() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("group failing source"));
    let (rows, dim) = (1500, 4);
    let data = random_values(rows * dim, rng.next_u64());
    let source = Arc::new(Sabotaged {
        table: HostTable::borrowed(&data, dim).unwrap(),
        reads: AtomicUsize::new(0),
        at: 3,
        lose: None,
    });
    let config = CacheConfig::default().capacity(Capacity::Rows(80));
    let mut cache = PartitionedCache::new(two(), source.clone(), config).unwrap();
    let z = ZipfIds::new(rows, 1.05, rng.next_u64());
    let mut failed = false;
    for _ in 0..6 {
        let ids = z.batch(200, &mut rng);
        match cache.lookup(&ids, 1) {
            Ok(e) => assert_rows_eq(
                &e.to_host().unwrap(),
                &reference::gather(&data, dim, &ids),
                dim,
                "lookup",
            ),
            Err(HotrowError::OnDevice { source, .. }) => {
                assert!(matches!(*source, HotrowError::RowSource(_)), "{source:?}");
                failed = true;
            }
            Err(e) => panic!("{e:?}"),
        }
        for d in 0..2 {
            cache.cache(d).unwrap().check_device_table().unwrap();
        }
    }
    assert!(failed, "the source's failure was reported");
}

#[test]
fn a_table_smaller_than_the_group_is_served() {
    let _serial = common::serial();
    let data = [0.5f32, -1.5, 2.25];
    let table = HostTable::borrowed(&data, 3).unwrap();
    let mut part = PartitionedCache::new(two(), table, CacheConfig::default()).unwrap();
    let out = part.lookup(&[0, 0], 1).unwrap().to_host().unwrap();
    assert_eq!(out, [0.5, -1.5, 2.25, 0.5, -1.5, 2.25]);
    let bags = part
        .lookup_bags(&[0, 0], &[0, 1], Pooling::Mean, None, 0)
        .unwrap();
    assert_eq!(bags.to_host().unwrap(), [0.5, -1.5, 2.25, 0.5, -1.5, 2.25]);
    let mut rep = ReplicatedCache::new(
        two(),
        HostTable::borrowed(&data, 3).unwrap(),
        CacheConfig::default(),
    )
    .unwrap();
    let got = ReplicatedCache::<HostTable>::to_host(&rep.lookup(&[0]).unwrap()).unwrap();
    assert_eq!(got, [0.5, -1.5, 2.25]);
}

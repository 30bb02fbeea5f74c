//! Host work of one cached batch at W2 shapes (CPU only, no GPU): slot resolution (dedup,
//! LRU, eviction) and the copy of missed rows, beside the `lru` crate as the naive peer and
//! the hash-based CompactBatch.
//!
//!     cargo bench --bench host_path

use hotrow_workloads as workload;

use criterion::{criterion_group, criterion_main, Criterion};
use hotrow::{
    CompactBatch, EvictionPolicy, HostTable, PartitionedSlotMap, PassPlan, RowSource, SlotMap,
};
use workload::{random_values, Rng, ZipfIds};

const N: usize = 8 << 20;
const B: usize = 65_536;
const D: usize = 128;

fn stream(count: usize) -> Vec<Vec<u32>> {
    let z = ZipfIds::new(N, 1.05, 22);
    let mut rng = Rng::new(23);
    (0..count).map(|_| z.batch(B, &mut rng)).collect()
}

fn bench(c: &mut Criterion) {
    let batches = stream(64);
    let mut g = c.benchmark_group("w2_host");
    g.sample_size(20);

    let mut k = 0;
    for policy in [
        EvictionPolicy::Clock,
        EvictionPolicy::Lru,
        EvictionPolicy::TinyLfu,
    ] {
        let mut map = SlotMap::new(N, N / 10, policy);
        let mut plan = PassPlan::default();
        for ids in &batches {
            map.resolve(ids, &mut plan); // warm the cache to steady state
        }
        g.bench_function(format!("slot_map_resolve_batch_{policy:?}"), |b| {
            b.iter(|| {
                k = (k + 1) % batches.len();
                map.resolve(&batches[k], &mut plan)
            })
        });
    }

    // (64 partitions is what a W2 cache on a many-core host takes; TinyLFU beside CLOCK
    // there is issue 21's admission cost, 1.31x on the H100's 16 cores.)
    let split = [
        (EvictionPolicy::Clock, 2usize),
        (EvictionPolicy::Clock, 16),
        (EvictionPolicy::Clock, 64),
        (EvictionPolicy::TinyLfu, 64),
    ];
    for (policy, parts) in split {
        let mut map = PartitionedSlotMap::new(N, N / 10, policy, parts);
        let mut plan = PassPlan::default();
        for ids in &batches {
            map.resolve(ids, &mut plan);
        }
        g.bench_function(
            format!(
                "partitioned_resolve_batch_{policy:?}_{}_parts",
                map.partitions()
            ),
            |b| {
                b.iter(|| {
                    k = (k + 1) % batches.len();
                    map.resolve(&batches[k], &mut plan)
                })
            },
        );
    }

    let mut cb = CompactBatch::default();
    g.bench_function("compact_batch_dedup", |b| {
        b.iter(|| {
            k = (k + 1) % batches.len();
            cb.build(&batches[k]);
            cb.distinct().len()
        })
    });

    let mut model = lru::LruCache::<u32, u32>::new(std::num::NonZeroUsize::new(N / 10).unwrap());
    g.bench_function("lru_crate_per_batch", |b| {
        b.iter(|| {
            k = (k + 1) % batches.len();
            cb.build(&batches[k]);
            for &id in cb.distinct() {
                if model.get(&id).is_none() {
                    model.put(id, id);
                }
            }
        })
    });

    // Row copy: ~13,000 random rows out of a 4 GiB table (the W2 misses per batch).
    let table = HostTable::owned(random_values(N * D, 5), D).unwrap();
    let mut rng = Rng::new(9);
    let misses: Vec<Vec<u32>> = (0..16)
        .map(|_| (0..13_000).map(|_| rng.below(N as u64) as u32).collect())
        .collect();
    let mut dst = vec![0f32; 13_000 * D];
    g.bench_function("row_copy_13000_rows", |b| {
        b.iter(|| {
            k = (k + 1) % misses.len();
            table.read_rows(&misses[k], &mut dst).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

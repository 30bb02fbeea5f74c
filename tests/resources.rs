//! Resources a stream holds: async readbacks share one poll thread, and a steady stream
//! through every `*_into` call allocates no GPU buffer after its first call.

mod common;

use common::workload::{random_values, Rng, ZipfIds};
use common::{assert_rows_eq, seed};
use hotrow::{
    reference, CacheConfig, Capacity, EmbeddingCache, Embeddings, GpuContext, HostTable, Pooling,
    Queries, RowBuffer,
};

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
    let batches: Vec<Vec<u32>> = (0..48)
        .map(|_| common::uniform_ids(&mut rng, 20, 100))
        .collect();
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
    common::check_close(
        &outs[2],
        common::bags_ref(&data, dim, &ids, &offsets, 0, Some(&w)),
        "bags",
    );
    common::check_close(&outs[3], common::scores_ref(&data, dim, &q, &ids), "scores");
    let qg = reference::gather(&data, dim, &[1, 2, 3, 4]);
    common::check_close(
        &outs[4],
        common::scores_ref(&data, dim, &qg, &ids),
        "GPU-query scores",
    );
    common::check_close(
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

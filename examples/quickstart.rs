//! Quickstart: a random table in host memory, a Zipf stream of batches through a GPU cache
//! holding 10% of its rows, every batch checked against the CPU reference; prints the hit
//! rate and what the cache saved. Finishes in seconds even on a software adapter.
//!
//!     cargo run --release --example quickstart

use std::time::Instant;

use hotrow::{reference, CacheConfig, Capacity, EmbeddingCache, Embeddings, GpuContext, HostTable};
// The workloads' seeded RNG and bounded-Zipf id sampler (hot rows scattered over the table).
use hotrow_workloads::{random_values, Rng, ZipfIds};

fn main() -> Result<(), hotrow::HotrowError> {
    env_logger::init();
    let ctx = GpuContext::new()?;
    println!("adapter: {}", ctx.adapter());

    let (rows, dim, batch, batches) = (100_000usize, 64usize, 8_192usize, 20usize);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let data = random_values(rows * dim, seed);
    let table = HostTable::borrowed(&data, dim)?;
    let config = CacheConfig::default().capacity(Capacity::Fraction(0.1));
    let mut cache = EmbeddingCache::new(&ctx, table, config)?;

    // Zipf(1.05) ids over the table: a few rows are hot, most are rarely touched.
    let zipf = ZipfIds::new(rows, 1.05, seed ^ 1);
    let mut rng = Rng::new(seed ^ 2);
    let mut out = Embeddings::new(&ctx, batch, dim)?;
    let mut wrong = 0;
    let t = Instant::now();
    for _ in 0..batches {
        let ids = zipf.batch(batch, &mut rng);
        out.fill(f32::NAN)?; // poisoned: every row must be written
        cache.lookup_into(&ids, &mut out)?;
        let got = out.to_host()?;
        let want = reference::gather(&data, dim, &ids);
        wrong += got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
    }
    let secs = t.elapsed().as_secs_f64();

    let st = cache.stats();
    let naive = (batches * batch * dim * 4) as f64;
    println!(
        "table {rows} x {dim} f32 in host memory, cache {} slots ({:.1} MB on the GPU)",
        cache.capacity(),
        cache.memory().total() as f64 / 1e6
    );
    println!(
        "{batches} batches of {batch} ids: {:.1}% distinct, hit rate {:.1}%, {:.1} MB uploaded \
         vs {:.1} MB copying every looked-up row ({:.1}x less); {:.1} ms per batch incl. checks",
        100.0 * st.distinct as f64 / st.requests as f64,
        100.0 * st.hit_rate(),
        st.bytes_uploaded as f64 / 1e6,
        naive / 1e6,
        naive / st.bytes_uploaded.max(1) as f64,
        secs * 1e3 / batches as f64
    );
    println!("mismatches vs CPU reference: {wrong}");
    if wrong != 0 {
        eprintln!("ERROR: GPU result differs from the CPU reference");
        std::process::exit(1);
    }
    println!("ok");
    Ok(())
}

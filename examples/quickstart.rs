//! Quickstart: a random table on the GPU, one Zipf batch looked up, checked against the CPU
//! reference. Finishes in seconds even on a software adapter.
//!
//!     cargo run --release --example quickstart

use std::time::Instant;

use hotrow::workload::{random_values, Rng, ZipfIds};
use hotrow::{reference, GpuContext, RowBuffer};

fn main() -> Result<(), hotrow::HotrowError> {
    env_logger::init();
    let ctx = GpuContext::new()?;
    println!("adapter: {}", ctx.adapter());

    let (rows, dim, batch) = (65_536usize, 64usize, 16_384usize);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let table = random_values(rows * dim, seed);
    let gpu = RowBuffer::from_host(&ctx, &table, dim)?;

    // Zipf(1.05) ids over the table, hot rows scattered by a random permutation.
    let zipf = ZipfIds::new(rows, 1.05, seed ^ 1);
    let mut rng = Rng::new(seed ^ 2);
    let ids = zipf.batch(batch, &mut rng);
    let distinct = hotrow::CompactBatch::new(&ids).distinct().len();

    let mut out = gpu.gather(&ids)?; // warm-up: compiles the pipeline
    ctx.wait_idle()?;
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        gpu.gather_into(&ids, &mut out)?;
    }
    ctx.wait_idle()?;
    let secs = t.elapsed().as_secs_f64() / reps as f64;

    let got = out.to_host()?;
    let want = reference::gather(&table, dim, &ids);
    let wrong = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let checksum: f64 = got.iter().map(|&v| v as f64).sum();
    println!(
        "table {rows} x {dim} f32, batch {batch} ids ({distinct} distinct): {:.3} ms per batch, {:.2} M rows/s",
        secs * 1e3,
        batch as f64 / secs / 1e6
    );
    println!("checksum {checksum:.6}; mismatches vs CPU reference: {wrong}");
    if wrong != 0 {
        eprintln!("ERROR: GPU result differs from the CPU reference");
        std::process::exit(1);
    }
    println!("ok");
    Ok(())
}

//! W1: gather from a table resident on the GPU.

use std::time::Instant;

use hotrow::{CompactBatch, Embeddings, GpuContext, RowBuffer};

use crate::gen::{random_values, Rng, ZipfIds};
use crate::harness::{self, Args, Report, Result, S};

pub fn run(ctx: &GpuContext, a: &Args, rep: &mut Report) -> Result<()> {
    let (n, b, d) = if a.small {
        (1 << 14, 4096, 128)
    } else {
        (1 << 20, 65_536, 128)
    };
    let t0 = Instant::now();
    let table = random_values(n * d, 11);
    let gpu = RowBuffer::from_host(ctx, &table, d)?;
    let zipf = ZipfIds::new(n, S, 12);
    let mut rng = Rng::new(13);
    let sets: Vec<Vec<u32>> = (0..16).map(|_| zipf.batch(b, &mut rng)).collect();
    ctx.wait_idle()?;
    eprintln!("w1: setup {:.1} s", t0.elapsed().as_secs_f64());
    let uniq: f64 = sets
        .iter()
        .map(|s| CompactBatch::new(s).distinct().len() as f64 / b as f64)
        .sum::<f64>()
        / sets.len() as f64;

    let mut out = Embeddings::new(ctx, b, d)?;
    // Correctness first: every distinct batch checked against the reference.
    for s in &sets {
        out.fill(f32::NAN)?;
        gpu.gather_into(s, &mut out)?;
        harness::verify_gather("w1", &out, &table, hotrow::RowLayout::f32(d)?, s)?;
    }
    drop(table);
    let timing = ctx.enable_timing(4 * a.batches as u32 + 1024);
    let mut op = |k: usize| gpu.gather_into(&sets[k % sets.len()], &mut out);
    harness::warm_up(ctx, a, 10, &mut op)?;
    // Stream: submit every batch without waiting, wait once at the end.
    let (wall_ms, times) = harness::stream(ctx, a.batches, &mut op)?;
    let gpu_ms = if timing {
        harness::gpu_median(&times, "gather")
    } else {
        f64::NAN
    };
    rep.insert("W1_hotrow_gpu_ms".into(), gpu_ms);
    rep.insert("W1_hotrow_wall_ms".into(), wall_ms);
    if timing {
        let mut k = 0;
        let iso = harness::isolated_gpu_ms(ctx, "gather", 30, || {
            k += 1;
            op(k)
        })?;
        rep.insert("W1_hotrow_gpu_isolated_ms".into(), iso);
    }
    let bytes = 2.0 * b as f64 * d as f64 * 4.0;
    rep.insert("W1_hotrow_GBps_rw".into(), bytes / gpu_ms / 1e6);
    rep.insert("W1_unique_frac".into(), uniq);

    // The copy ceiling as wgpu sees it: gather of every row in order (a plain 2 x 512 MiB copy).
    let all: Vec<u32> = (0..n as u32).collect();
    let mut big = Embeddings::new(ctx, n, d)?;
    let mut copy = |_| gpu.gather_into(&all, &mut big);
    harness::warm_up(ctx, a, 3, &mut copy)?;
    let (_, times) = harness::stream(ctx, 10, &mut copy)?;
    let copy_ms = harness::gpu_median(&times, "gather");
    rep.insert(
        "wgpu_sequential_gather_GBps_rw".into(),
        2.0 * n as f64 * d as f64 * 4.0 / copy_ms / 1e6,
    );
    ctx.disable_timing();
    Ok(())
}

//! The workloads of the project's WORKLOADS.md (W1-W6) on this machine's adapter: each is
//! checked against the CPU reference, then timed; prints a table and writes JSON.
//!
//!     cargo bench --bench workloads -- [--small] [--workloads w1,w2] [--batches 200]
//!                                      [--batch 65536] [--warmup-secs 1] [--json out.json]
//!
//! Host threads: `RAYON_NUM_THREADS` (slot-map partitions and row copies use rayon's pool).
//!
//! `--small` runs the CI shapes (N / 64, B / 16, 20 batches, no warm-up): a check that the
//! benchmark runs and its results are right, never a speed figure.

use hotrow_workloads as gen;
mod harness;
mod w1;
mod w2;
mod w2multi;
#[cfg(feature = "redis")]
mod w2redis;
mod w2zc;
mod w3;
mod w4;
mod w5;
mod w6;
mod w6train;
mod w7;

use std::time::Instant;

use harness::{Args, Report};
use hotrow::{GpuContext, HostTable};

fn main() -> Result<(), hotrow::HotrowError> {
    env_logger::init();
    let mut a = Args::parse();
    // Storage in host memory only for the workload that reads it (wgpu warns against the
    // feature on a discrete GPU otherwise).
    let ctx = GpuContext::with_options(hotrow::GpuOptions {
        host_visible_storage: a.workloads.iter().any(|w| w == "w2zc")
            || a.path != hotrow::BatchPath::Host,
        host_memory_import: a.host_import,
        ..Default::default()
    })?;
    println!("adapter: {}", ctx.adapter());
    if a.warmup_secs > 0.0 {
        a.heater = Some(harness::Heater::new(&ctx)?);
    }
    let mut rep = Report::new();
    let mut table: Option<HostTable<'static>> = None;
    for w in &a.workloads {
        let own_tables = ["w1", "w6", "w6pools", "w6copy", "w6train"];
        if !own_tables.contains(&w.as_str()) && table.is_none() {
            let (n, _, d) = harness::cached_shapes(&a);
            table = Some(harness::host_table(n, d));
        }
        let t = Instant::now();
        let mut part = Report::new();
        let mut take = || table.take().expect("host table");
        let back = match w.as_str() {
            "w1" => w1::run(&ctx, &a, &mut part).map(|_| None)?,
            "w2" => Some(w2::run(&ctx, &a, &mut part, take())?),
            "w2multi" => Some(w2multi::run(&a, &mut part, take())?),
            "w2zc" => Some(w2zc::run(&ctx, &a, &mut part, take())?),
            #[cfg(feature = "redis")]
            "w2redis" => Some(w2redis::run(&ctx, &a, &mut part, take())?),
            "w3" => Some(w3::run(&ctx, &a, &mut part, take())?),
            "w4" => Some(w4::run(&ctx, &a, &mut part, take())?),
            "w5" => Some(w5::run(&ctx, &a, &mut part, take())?),
            "w6" => w6::run(&ctx, &a, &mut part).map(|_| None)?,
            "w6pools" => w6::pools(&a, &mut part).map(|_| None)?,
            "w6copy" => w6::copy_floor(&ctx, &a, &mut part).map(|_| None)?,
            "w6train" => w6train::run(&ctx, &a, &mut part).map(|_| None)?,
            "w7" => Some(w7::run(&ctx, &a, &mut part, take())?),
            other => {
                eprintln!("unknown workload {other} (w1-w7, w2multi, w2zc, w2redis with --features redis, w6pools, w6copy, w6train)");
                std::process::exit(2);
            }
        };
        if back.is_some() {
            table = back;
        }
        harness::merge(&mut rep, part);
        eprintln!("{w}: {:.1} s", t.elapsed().as_secs_f64());
    }
    for (k, v) in &rep {
        println!("{k:44} {v:>12.4}");
    }
    if let Some(path) = &a.json {
        harness::write_json(path, &ctx, &rep);
    }
    Ok(())
}

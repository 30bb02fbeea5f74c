//! Benchmark program for the workloads of the project's WORKLOADS.md (W1 now; later issues
//! add W2-W5). Prints a table and writes JSON.
//!
//!     cargo run --release --example bench -- [--small] [--workloads w1] [--batches 200] [--json out.json]
//!
//! `--small` runs the CI shapes (N / 64, B / 16, 20 batches): a check that the benchmark runs
//! and its results are right, never a speed figure.

use std::collections::BTreeMap;
use std::time::Instant;

use hotrow::workload::{random_values, Rng, ZipfIds};
use hotrow::{reference, Embeddings, GpuContext, RowBuffer};

const S: f64 = 1.05;

struct Args {
    small: bool,
    workloads: Vec<String>,
    batches: usize,
    json: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        small: false,
        workloads: vec!["w1".into()],
        batches: 0,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--small" => a.small = true,
            "--workloads" => {
                a.workloads = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_lowercase)
                    .collect()
            }
            "--batches" => a.batches = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--json" => a.json = it.next(),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if a.batches == 0 {
        a.batches = if a.small { 20 } else { 200 };
    }
    a
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

type Report = BTreeMap<String, f64>;

/// W1: gather from a table resident on the GPU.
fn w1(ctx: &GpuContext, a: &Args, rep: &mut Report) -> Result<(), hotrow::HotrowError> {
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
        .map(|s| hotrow::CompactBatch::new(s).distinct().len() as f64 / b as f64)
        .sum::<f64>()
        / sets.len() as f64;

    let mut out = Embeddings::new(ctx, b, d)?;
    // Correctness first: every distinct batch checked against the reference.
    for s in &sets {
        out.fill(f32::NAN)?;
        gpu.gather_into(s, &mut out)?;
        let got = out.to_host()?;
        let want = reference::gather(&table, d, s);
        if got
            .iter()
            .zip(&want)
            .any(|(x, y)| x.to_bits() != y.to_bits())
        {
            eprintln!("w1: WRONG RESULT");
            std::process::exit(1);
        }
    }
    drop(table);
    let timing = ctx.enable_timing(4 * a.batches as u32);
    for s in sets.iter().cycle().take(10) {
        gpu.gather_into(s, &mut out)?;
    }
    ctx.wait_idle()?;
    let _ = ctx.take_timings()?;
    // Stream: submit every batch without waiting, wait once at the end.
    let t = Instant::now();
    for s in sets.iter().cycle().take(a.batches) {
        gpu.gather_into(s, &mut out)?;
    }
    ctx.wait_idle()?;
    let wall_ms = t.elapsed().as_secs_f64() * 1e3 / a.batches as f64;
    let (times, _) = ctx.take_timings()?;
    let mut gpu_ms: Vec<f64> = times
        .iter()
        .filter(|t| t.label == "gather")
        .map(|t| t.nanos / 1e6)
        .collect();
    let gpu_ms = if timing {
        median(&mut gpu_ms)
    } else {
        f64::NAN
    };
    let bytes = 2.0 * b as f64 * d as f64 * 4.0;
    rep.insert("W1_hotrow_gpu_ms".into(), gpu_ms);
    rep.insert("W1_hotrow_wall_ms".into(), wall_ms);
    rep.insert("W1_hotrow_GBps_rw".into(), bytes / gpu_ms / 1e6);
    rep.insert("W1_unique_frac".into(), uniq);

    // The copy ceiling as wgpu sees it: gather of every row in order (a plain 2 x 512 MiB copy).
    let all: Vec<u32> = (0..n as u32).collect();
    let mut big = Embeddings::new(ctx, n, d)?;
    for _ in 0..3 {
        gpu.gather_into(&all, &mut big)?;
    }
    ctx.wait_idle()?;
    let _ = ctx.take_timings()?;
    for _ in 0..10 {
        gpu.gather_into(&all, &mut big)?;
    }
    ctx.wait_idle()?;
    let (times, _) = ctx.take_timings()?;
    let mut copy_ms: Vec<f64> = times.iter().map(|t| t.nanos / 1e6).collect();
    let copy_ms = median(&mut copy_ms);
    rep.insert(
        "wgpu_sequential_gather_GBps_rw".into(),
        2.0 * n as f64 * d as f64 * 4.0 / copy_ms / 1e6,
    );
    ctx.disable_timing();
    Ok(())
}

fn main() -> Result<(), hotrow::HotrowError> {
    env_logger::init();
    let a = args();
    let ctx = GpuContext::new()?;
    println!("adapter: {}", ctx.adapter());
    let mut rep = Report::new();
    for w in &a.workloads {
        match w.as_str() {
            "w1" => w1(&ctx, &a, &mut rep)?,
            other => {
                eprintln!("unknown workload {other}");
                std::process::exit(2);
            }
        }
    }
    for (k, v) in &rep {
        println!("{k:40} {v:>12.4}");
    }
    if let Some(path) = &a.json {
        let body: Vec<String> = rep
            .iter()
            .map(|(k, v)| {
                format!(
                    "  \"{k}\": {}",
                    if v.is_finite() {
                        v.to_string()
                    } else {
                        "null".into()
                    }
                )
            })
            .collect();
        let adapter = ctx.adapter().to_string().replace('"', "'");
        let text = format!(
            "{{\n  \"adapter\": \"{adapter}\",\n{}\n}}\n",
            body.join(",\n")
        );
        std::fs::write(path, text).expect("write json");
    }
    Ok(())
}

//! How big a cache does my traffic need? Reads an id trace (a `.npy` of integer ids, as a
//! training loop or a server can log them) or makes W2's (`--w2`), cuts it into batches,
//! and replays it, with no GPU, through the library's own slot map at several capacities
//! (CLOCK, the default policy, exact LRU and W-TinyLFU), the offline optimum (Belady: no policy can
//! do better) and the online miss-ratio curve a cache reports
//! (`CacheConfig::miss_ratio_curve`). Prints the hit rate and the bytes uploaded per batch
//! at each capacity and writes both as an SVG plot.
//!
//!     cargo run --release --example size_cache -- trace.npy --batch 65536 --dim 128
//!     cargo run --release --example size_cache -- --w2          # W2's trace (N = 8.4M)
//!     cargo run --release --example size_cache -- --w2 --small  # a quick one (N / 64)
//!
//! The hit rate counts a batch's distinct rows (a row a batch repeats is read once); a
//! missed row is uploaded once, `dim * 4` bytes (f32 rows; halve it for f16 slots).

use std::path::{Path, PathBuf};

use clap::Parser;
use hotrow::sizing::{optimal_hits, CurveEstimator, GpuSweep};
use hotrow::{EvictionPolicy, PartitionedSlotMap, PassPlan};
use hotrow_workloads::{Rng, ZipfIds};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;

#[derive(Parser)]
#[command(about = "Hit rate and upload bytes of an id trace at every cache size")]
struct Args {
    /// A `.npy` of integer ids (int32/uint32/int64/uint64, C order): 1-D, or 2-D with one
    /// batch per row.
    trace: Option<PathBuf>,
    /// W2's trace instead (Zipf s = 1.05 over 8,388,608 rows, batches of 65,536 ids).
    #[arg(long)]
    w2: bool,
    /// W5's trace instead: W2's, the hot set moved every 50 batches (the rank-to-id
    /// permutation redrawn).
    #[arg(long)]
    w5: bool,
    /// With `--w2` / `--w5`: N / 64 rows and batches of 4,096 (seconds, not minutes).
    #[arg(long)]
    small: bool,
    /// Batches of `--w2` / `--w5`'s trace.
    #[arg(long, default_value_t = 200)]
    batches: usize,
    /// Ids per batch (a 2-D trace's row length when not given).
    #[arg(long)]
    batch: Option<usize>,
    /// Rows of the table (the largest id + 1 when not given).
    #[arg(long)]
    rows: Option<usize>,
    /// Values per row (bytes uploaded per missed row: dim * 4).
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Capacities to try, in percent of the table's rows.
    #[arg(long, value_delimiter = ',', default_value = "1,2,5,10,20")]
    capacities: Vec<f64>,
    /// Slot-map partitions of the replayed caches (a cache's default is 4 per host
    /// thread, at most one per 1,024 slots): each evicts among its own share of the slots.
    #[arg(long, default_value_t = 1)]
    partitions: usize,
    /// Where the plot goes.
    #[arg(long, default_value = "size_cache.svg")]
    out: PathBuf,
    /// Also writes the trace replayed, as a 2-D `.npy` of uint32 (a batch per row): the
    /// format this tool reads.
    #[arg(long)]
    write_trace: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let (ids, given_batch, max_id) = match (&a.trace, a.w2 || a.w5) {
        (Some(path), false) => {
            let (ids, batch) = read_ids(path)?;
            let max = ids.iter().copied().max().unwrap_or(0);
            (ids, batch, max)
        }
        (None, true) => {
            let (rows, batch) = if a.small {
                (8_388_608 / 64, 4_096)
            } else {
                (8_388_608, 65_536)
            };
            let mut rng = Rng::new(23);
            let ids = if a.w5 {
                (0..a.batches)
                    .flat_map(|k| {
                        let moved = ZipfIds::new(rows, 1.05, 50 + k as u64 / 50);
                        moved.batch(batch, &mut rng)
                    })
                    .collect()
            } else {
                ZipfIds::new(rows, 1.05, 22).batch(a.batches * batch, &mut rng)
            };
            (ids, Some(batch), rows as u32 - 1)
        }
        _ => return Err("give one trace: a .npy file, --w2 or --w5".into()),
    };
    let rows = a.rows.unwrap_or(max_id as usize + 1);
    if (max_id as usize) >= rows {
        return Err(format!("id {max_id} is not below --rows {rows}").into());
    }
    let batch = a
        .batch
        .or(given_batch)
        .ok_or("--batch is needed for a 1-D trace")?;
    if batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let batches: Vec<Vec<u32>> = ids.chunks(batch).map(<[u32]>::to_vec).collect();
    if let Some(path) = &a.write_trace {
        write_ids(path, &ids[..ids.len() / batch * batch], batch)?;
    }
    let row_bytes = (a.dim * 4) as f64;
    println!(
        "{} ids in {} batches of {batch}, {rows} rows of {} bytes",
        ids.len(),
        batches.len(),
        row_bytes
    );

    let caps: Vec<(f64, usize)> = a
        .capacities
        .iter()
        .map(|&pct| (pct, ((rows as f64 * pct / 100.0) as usize).clamp(1, rows)))
        .collect();
    let bar = ProgressBar::new((batches.len() * (5 * caps.len() + 1)) as u64);
    bar.set_style(ProgressStyle::with_template(
        "{msg:>22} [{bar:40}] {pos}/{len} batches, {eta} left",
    )?);
    // The online curve: one pass over the trace.
    bar.set_message("miss-ratio curve");
    let mut estimator = CurveEstimator::new(rows);
    // (Timed over the second half of the trace: the first batches are sampled at a
    // higher rate while the tracked ids fill up.)
    let mut spent = std::time::Duration::ZERO;
    for (k, b) in batches.iter().enumerate() {
        let t = std::time::Instant::now();
        estimator.batch(b);
        if k >= batches.len() / 2 {
            spent += t.elapsed();
        }
        bar.inc(1);
    }
    let curve = estimator.curve().clone();
    // (What a cache with `miss_ratio_curve` on pays per batch, on this machine's core.)
    let curve_ms = spent.as_secs_f64() * 1e3 / (batches.len() - batches.len() / 2).max(1) as f64;
    // Each policy at each capacity: (hit rate, MB uploaded per batch).
    let mut table: Vec<[(f64, f64); 7]> = Vec::new();
    for &(pct, cap) in &caps {
        let mut row = [(0.0, 0.0); 7];
        for (k, policy) in [
            (0, EvictionPolicy::Clock),
            (1, EvictionPolicy::Lru),
            (4, EvictionPolicy::TinyLfu),
        ] {
            bar.set_message(format!("{policy:?} at {pct}%"));
            let (hits, refs) = replay(&batches, rows, cap, policy, a.partitions, &bar);
            row[k] = (
                hits as f64 / refs as f64,
                mb(refs - hits, &batches, row_bytes),
            );
        }
        // The GPU-driven path's CLOCK and TinyLFU, replayed by their CPU twin.
        for (k, admission) in [(5, false), (6, true)] {
            bar.set_message(format!(
                "GPU path {} at {pct}%",
                ["CLOCK", "TinyLFU"][k - 5]
            ));
            let mut twin = GpuSweep::new(rows, cap, admission);
            for ids in &batches {
                twin.batch(ids);
                bar.inc(1);
            }
            let (refs, hits, _) = twin.counts();
            row[k] = (
                hits as f64 / refs as f64,
                mb(refs - hits, &batches, row_bytes),
            );
        }
        bar.set_message(format!("optimum at {pct}%"));
        let (hits, refs) = optimal_hits(&batches, rows, cap, None)?;
        row[2] = (
            hits as f64 / refs as f64,
            mb(refs - hits, &batches, row_bytes),
        );
        let est = curve.hit_rate(cap as u64);
        // (The curve's uploads: its misses over the same references.)
        row[3] = (
            est,
            mb(((1.0 - est) * refs as f64) as u64, &batches, row_bytes),
        );
        table.push(row);
    }
    bar.finish_and_clear();

    println!(
        "\n{:>9} {:>9} | {:>22} | {:>22} | {:>22} | {:>22} | {:>22} | {:>22} | {:>12}",
        "capacity",
        "rows",
        "CLOCK (default)",
        "LRU",
        "W-TinyLFU",
        "GPU path CLOCK",
        "GPU path TinyLFU",
        "optimum (Belady)",
        "online curve"
    );
    println!(
        "{:>9} {:>9} | {:>22} | {:>22} | {:>22} | {:>22} | {:>22} | {:>22} | {:>12}",
        "", "", "hit / MB per batch", "", "", "", "", "", "hit rate"
    );
    for ((pct, cap), row) in caps.iter().zip(&table) {
        let cell = |(h, m): (f64, f64)| format!("{:>6.1}% / {:>8.2} MB", h * 100.0, m);
        println!(
            "{:>8}% {:>9} | {:>22} | {:>22} | {:>22} | {:>22} | {:>22} | {:>22} | {:>11.1}%",
            pct,
            cap,
            cell(row[0]),
            cell(row[1]),
            cell(row[4]),
            cell(row[5]),
            cell(row[6]),
            cell(row[2]),
            row[3].0 * 100.0
        );
    }
    println!(
        "\nonline curve: {curve_ms:.3} ms per batch on one core, the trace's second half ({} sampled references)",
        curve.samples()
    );
    plot(&a.out, &caps, &table, &curve, rows)?;
    println!("\nplot: {}", a.out.display());
    Ok(())
}

/// "Hits" and references of the library's slot map with `policy` over the batches: the
/// references are each batch's distinct ids, the hits those not uploaded. A batch bigger
/// than the cache is served in several passes, as the cache serves it, and a row two of
/// its passes need may be uploaded twice: such a batch's rows uploaded count as its misses
/// (what crosses the bus), capped at its distinct ids.
fn replay(
    batches: &[Vec<u32>],
    rows: usize,
    cap: usize,
    policy: EvictionPolicy,
    partitions: usize,
    bar: &ProgressBar,
) -> (u64, u64) {
    let mut map = PartitionedSlotMap::new(rows, cap, policy, partitions);
    let mut plan = PassPlan::default();
    let mut seen = vec![u32::MAX; rows];
    let (mut hits, mut refs) = (0u64, 0u64);
    for (b, ids) in batches.iter().enumerate() {
        let mut distinct = 0u64;
        for &id in ids {
            if seen[id as usize] != b as u32 {
                seen[id as usize] = b as u32;
                distinct += 1;
            }
        }
        let mut uploads = 0u64;
        let mut at = 0;
        while at < ids.len() {
            at += map.resolve(&ids[at..], &mut plan);
            uploads += plan.misses.len() as u64;
        }
        refs += distinct;
        hits += distinct - uploads.min(distinct);
        bar.inc(1);
    }
    (hits, refs)
}

/// MB uploaded per batch for `misses` rows over the trace.
fn mb(misses: u64, batches: &[Vec<u32>], row_bytes: f64) -> f64 {
    misses as f64 * row_bytes / batches.len().max(1) as f64 / 1e6
}

/// The ids of a `.npy` of integers, and its row length when it is 2-D.
fn read_ids(path: &Path) -> Result<(Vec<u32>, Option<usize>), Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(format!("{}: not a .npy file", path.display()).into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("{}: .npy version {v} not read", path.display()).into()),
    };
    let header = std::str::from_utf8(bytes.get(start..start + header_len).ok_or("short header")?)?;
    let field = |key: &str| -> Option<String> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start_matches([':', ' ']);
        let end = if rest.starts_with('(') {
            rest.find(')')? + 1
        } else {
            rest.find([',', '}'])?
        };
        Some(rest[..end].trim().trim_matches('\'').to_string())
    };
    let descr = field("descr").ok_or("no dtype in the header")?;
    if field("fortran_order").as_deref() != Some("False") {
        return Err("only C-order arrays are read".into());
    }
    let shape: Vec<usize> = field("shape")
        .ok_or("no shape in the header")?
        .trim_matches(['(', ')'])
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[start + header_len..];
    let width = match descr.as_str() {
        "<i4" | "<u4" => 4,
        "<i8" | "<u8" => 8,
        d => return Err(format!("dtype {d}: ids must be int32, uint32, int64 or uint64").into()),
    };
    if data.len() < n * width {
        return Err(format!(
            "{}: {} bytes of data for {n} ids",
            path.display(),
            data.len()
        )
        .into());
    }
    let signed = descr.starts_with("<i");
    let mut ids = Vec::with_capacity(n);
    for (k, w) in data.chunks_exact(width).take(n).enumerate() {
        let v: i128 = match (width, signed) {
            (4, true) => i32::from_le_bytes(w.try_into()?) as i128,
            (4, false) => u32::from_le_bytes(w.try_into()?) as i128,
            (_, true) => i64::from_le_bytes(w.try_into()?) as i128,
            (_, false) => u64::from_le_bytes(w.try_into()?) as i128,
        };
        if !(0..u32::MAX as i128).contains(&v) {
            return Err(format!("id {v} at position {k} is not a row id").into());
        }
        ids.push(v as u32);
    }
    Ok((ids, (shape.len() == 2).then(|| shape[1])))
}

/// `ids` as a 2-D `.npy` of uint32, `batch` ids a row.
fn write_ids(path: &Path, ids: &[u32], batch: usize) -> std::io::Result<()> {
    let mut header = format!(
        "{{'descr': '<u4', 'fortran_order': False, 'shape': ({}, {batch}), }}",
        ids.len() / batch
    );
    // (magic, version, length, header: a multiple of 64 bytes, ending in a newline)
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for id in ids {
        bytes.extend_from_slice(&id.to_le_bytes());
    }
    std::fs::write(path, bytes)
}

/// Hit rate (top) and MB uploaded per batch (bottom) against the capacity, a line per
/// policy, and the online curve over the whole range.
fn plot(
    out: &Path,
    caps: &[(f64, usize)],
    table: &[[(f64, f64); 7]],
    curve: &hotrow::sizing::MissRatioCurve,
    rows: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(out, (900, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    let max_pct = caps.iter().map(|c| c.0).fold(1.0, f64::max);
    // (columns of `table`: CLOCK, LRU, optimum, curve, admission, the GPU path's CLOCK and
    // TinyLFU)
    let lines = [
        (0, "CLOCK (default)", BLUE),
        (1, "LRU", GREEN),
        (4, "W-TinyLFU (EvictionPolicy::TinyLfu)", MAGENTA),
        (5, "GPU path: CLOCK", CYAN),
        (6, "GPU path: TinyLFU", RGBColor(230, 140, 0)),
        (2, "optimum (Belady)", RED),
    ];
    let mut hit = ChartBuilder::on(&top)
        .caption("hit rate against cache size", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_pct, 0.0..100.0)?;
    hit.configure_mesh()
        .x_desc("cache, % of the table's rows")
        .y_desc("hit rate, %")
        .draw()?;
    for &(k, name, color) in &lines {
        let pts: Vec<(f64, f64)> = caps
            .iter()
            .zip(table)
            .map(|(c, r)| (c.0, r[k].0 * 100.0))
            .collect();
        hit.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        hit.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    let online: Vec<(f64, f64)> = (0..=100)
        .map(|k| {
            let pct = max_pct * k as f64 / 100.0;
            let cap = (rows as f64 * pct / 100.0) as u64;
            (pct, curve.hit_rate(cap) * 100.0)
        })
        .collect();
    hit.draw_series(LineSeries::new(online, BLACK.stroke_width(1)))?
        .label("online curve (LRU, estimated)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    hit.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    let max_mb = table
        .iter()
        .flat_map(|r| lines.iter().map(|l| r[l.0].1))
        .fold(0.0, f64::max)
        * 1.1;
    let mut up = ChartBuilder::on(&bottom)
        .caption("bytes uploaded per batch", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_pct, 0.0..max_mb.max(1e-3))?;
    up.configure_mesh()
        .x_desc("cache, % of the table's rows")
        .y_desc("MB per batch")
        .draw()?;
    for &(k, _, color) in &lines {
        let pts: Vec<(f64, f64)> = caps.iter().zip(table).map(|(c, r)| (c.0, r[k].1)).collect();
        up.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
        up.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    root.present()?;
    Ok(())
}

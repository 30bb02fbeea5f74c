//! What every workload shares: arguments, shapes, the warm-up / stream / wait skeleton,
//! GPU pass timings, result checks and the report.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use clap::Parser;

use hotrow::{
    reference, BatchPath, CacheConfig, Capacity, EmbeddingCache, Embeddings, EvictionPolicy,
    GpuContext, HostTable, HotrowError, PassTiming, Resolution, RowBuffer, RowFormat, RowLayout,
    RowSource,
};

use crate::gen::fill_random;

/// Zipf exponent of every workload.
pub const S: f64 = 1.05;

pub type Report = BTreeMap<String, f64>;
pub type Result<T> = std::result::Result<T, HotrowError>;

pub struct Args {
    pub small: bool,
    pub workloads: Vec<String>,
    pub batches: usize,
    pub json: Option<String>,
    /// Seconds of back-to-back GPU work before each timed loop (GPU clocks drop under light
    /// load and take a moment to come back).
    pub warmup_secs: f64,
    /// The GPU-bound work of the warm-up (none when `warmup_secs` is 0).
    pub heater: Option<Heater>,
    /// Ids per batch of W2 and W5 (default 65,536; 4,096 with `--small`).
    pub batch: usize,
    /// Resolution of the workloads' caches (`--resolution host|device`, default host).
    pub resolution: Resolution,
    /// How the caches store rows (`--row-format f32|f16|int8`, default f32).
    pub row_format: RowFormat,
    /// Who serves the caches' batches (`--path host|gpu|auto`, default host).
    pub path: BatchPath,
    /// GpuOptions::host_memory_import (`--host-import`).
    pub host_import: bool,
    /// W2's stream with `prefetch` one batch ahead (`--prefetch`).
    pub prefetch: bool,
    /// W2's eviction policy (`--policy clock|lru|tinylfu`, default clock).
    pub policy: EvictionPolicy,
    /// W2's and W5's cache as a fraction of the table (`--capacity`, default 0.1).
    pub capacity: f64,
    /// Where W2's table lives (`--table host|npy|f16`).
    pub table: TableKind,
    /// GPUs of `w2multi` (`--devices`, default 2).
    pub devices: usize,
    /// Cache rows per device of `w2multi`, as a fraction of the table (`--cache-frac`,
    /// default 0.1).
    pub cache_frac: f64,
    /// Slot-map partitions of W2's and W6's caches (`--partitions`; default 0: the
    /// library's default, one per host thread).
    pub partitions: usize,
    /// Staging buffers of W2's, W6's and W7's caches (`--staging-buffers`; default 0: the
    /// library's default).
    pub staging_buffers: usize,
    /// Rows of the cached workloads' table (`--rows`; default W2's N).
    pub rows: Option<usize>,
}

/// W2's table: host memory in f32 (the default), a `.npy` file written first and read
/// through the page cache (warm), or host memory in f16 (a table served in half precision,
/// as a user holding f16 weights keeps it: rows read and uploaded as stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    Host,
    Npy,
    HostF16,
}

/// GPU-bound work that brings the GPU's clocks up before a timed loop: gathers of every row
/// of a 128 MiB table, submitted back to back. (Host-bound ops such as a cached lookup keep
/// the GPU mostly idle, and its clock falls to a fraction within a second or two.)
pub struct Heater {
    table: RowBuffer,
    ids: Vec<u32>,
    out: RefCell<Embeddings>,
}

impl Heater {
    pub fn new(ctx: &GpuContext) -> Result<Self> {
        let dim = 128;
        let rows = (128 << 20) / (dim * 4);
        let table = RowBuffer::from_host(ctx, &table_values(rows * dim, 7), dim)?;
        let out = RefCell::new(Embeddings::new(ctx, rows, dim)?);
        Ok(Self {
            table,
            ids: (0..rows as u32).collect(),
            out,
        })
    }

    /// Back-to-back gathers for `secs` seconds, then waits for them.
    pub fn run(&self, ctx: &GpuContext, secs: f64) -> Result<()> {
        let t = Instant::now();
        let mut k = 0;
        let mut out = self.out.borrow_mut();
        while t.elapsed().as_secs_f64() < secs {
            self.table.gather_into(&self.ids, &mut out)?;
            k += 1;
            if k % 32 == 0 {
                let _ = ctx.take_timings()?; // bounds the queue; drops the heater's timings
            }
        }
        ctx.wait_idle()?;
        let _ = ctx.take_timings()?;
        Ok(())
    }
}

impl Args {
    /// `config` with `--partitions` and `--staging-buffers` applied (unchanged without
    /// them).
    pub fn with_knobs(&self, config: CacheConfig) -> CacheConfig {
        let config = match self.partitions {
            0 => config,
            p => config.partitions(p),
        };
        match self.staging_buffers {
            0 => config,
            n => config.staging_buffers(n),
        }
    }

    /// The command line (`--help` lists it), with the defaults that depend on `--small`.
    pub fn parse() -> Self {
        let c = Cli::parse();
        let default = |given: Option<usize>, small: usize, full: usize| {
            given.unwrap_or(if c.small { small } else { full })
        };
        Args {
            small: c.small,
            workloads: c.workloads.iter().map(|w| w.to_lowercase()).collect(),
            batches: default(c.batches, 20, 200),
            json: c.json.clone(),
            warmup_secs: c.warmup_secs.unwrap_or(if c.small { 0.0 } else { 1.0 }),
            heater: None,
            batch: default(c.batch, 65_536 / 16, 65_536),
            resolution: match c.resolution {
                ResolutionArg::Host => Resolution::Host,
                ResolutionArg::Device => Resolution::Device,
            },
            path: match c.path {
                PathArg::Host => BatchPath::Host,
                PathArg::Gpu => BatchPath::Gpu,
                PathArg::Auto => BatchPath::Auto,
            },
            row_format: match c.row_format {
                FormatArg::F32 => RowFormat::F32,
                FormatArg::F16 => RowFormat::F16,
                FormatArg::Int8 => RowFormat::Int8,
            },
            table: match c.table {
                TableArg::Host => TableKind::Host,
                TableArg::Npy => TableKind::Npy,
                TableArg::F16 => TableKind::HostF16,
            },
            devices: c.devices,
            cache_frac: c.cache_frac,
            partitions: c.partitions,
            staging_buffers: c.staging_buffers,
            host_import: c.host_import,
            prefetch: c.prefetch,
            policy: match c.policy {
                PolicyArg::Clock => EvictionPolicy::Clock,
                PolicyArg::Lru => EvictionPolicy::Lru,
                PolicyArg::Tinylfu => EvictionPolicy::TinyLfu,
            },
            capacity: c.capacity,
            rows: c.rows,
        }
    }
}

/// The workloads of WORKLOADS.md on this machine's adapter, checked against the CPU
/// reference, then timed.
#[derive(clap::Parser)]
struct Cli {
    /// CI shapes (N / 64, B / 16, 20 batches, no warm-up): a check, never a speed figure.
    #[arg(long)]
    small: bool,
    /// Workloads to run: w1-w7 (w7: training, on the path `--path` names), w2multi, w2zc (W2
    /// with no cache, rows read from host memory), w2redis (feature redis), w6pools, w6copy, w6train
    /// (W6 shapes trained through a TableBatchedCache, on the path `--path` names).
    #[arg(long, value_delimiter = ',', default_value = "w1")]
    workloads: Vec<String>,
    /// Timed batches (default 200; 20 with --small).
    #[arg(long)]
    batches: Option<usize>,
    /// Writes the report as JSON here.
    #[arg(long)]
    json: Option<String>,
    /// Seconds of GPU-bound warm-up before each timed loop (default 1; 0 with --small).
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// Ids per batch of W2 and W5 (default 65,536; 4,096 with --small).
    #[arg(long)]
    batch: Option<usize>,
    /// Where the caches resolve ids to slots.
    #[arg(long, value_enum, default_value = "host")]
    resolution: ResolutionArg,
    /// How the caches store rows.
    #[arg(long, value_enum, default_value = "f32")]
    row_format: FormatArg,
    /// Who serves the caches' batches: the host, the GPU (the GPU-driven path; the context
    /// then asks for host-visible storage), or the library's choice.
    #[arg(long, value_enum, default_value = "host")]
    path: PathArg,
    /// Where W2's table lives.
    #[arg(long, value_enum, default_value = "host")]
    table: TableArg,
    /// GPUs of w2multi.
    #[arg(long, default_value_t = 2)]
    devices: usize,
    /// Cache rows per device of w2multi, as a fraction of the table.
    #[arg(long, default_value_t = 0.1)]
    cache_frac: f64,
    /// Slot-map partitions of W2's and W6's caches (0: the library's default).
    #[arg(long, default_value_t = 0)]
    partitions: usize,
    /// Staging buffers of W2's, W6's and W7's caches (0: the library's default): how many
    /// passes the host may run ahead of the GPU.
    #[arg(long, default_value_t = 0)]
    staging_buffers: usize,
    /// Host-memory tables (the GPU-driven path, w2zc) in hotrow's own huge-page memory
    /// imported into the device instead of wgpu's mappable buffers
    /// (GpuOptions::host_memory_import).
    #[arg(long)]
    host_import: bool,
    /// W2's steady stream with `prefetch` one batch ahead: lookup(k), then prefetch(k + 1)
    /// while the GPU runs k; `W2_prefetch_lookup_misses` checks the lookups all hit.
    #[arg(long)]
    prefetch: bool,
    /// W2's eviction policy (W5 runs each).
    #[arg(long, value_enum, default_value = "clock")]
    policy: PolicyArg,
    /// W2's and W5's cache, as a fraction of the table.
    #[arg(long, default_value_t = 0.1)]
    capacity: f64,
    /// Rows of the cached workloads' table (W2-W5; default 8,388,608, N / 64 with --small):
    /// an experiment's knob (e.g. a table within one storage binding), not the workloads.
    #[arg(long)]
    rows: Option<usize>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PolicyArg {
    Clock,
    Lru,
    Tinylfu,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ResolutionArg {
    Host,
    Device,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PathArg {
    Host,
    Gpu,
    Auto,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    F32,
    F16,
    Int8,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TableArg {
    Host,
    Npy,
    F16,
}

/// Shapes of the cached workloads (W2-W5): full, or the CI "small" scale (N / 64, B / 16);
/// `--batch` sets B.
pub fn cached_shapes(a: &Args) -> (usize, usize, usize) {
    let n = a
        .rows
        .unwrap_or(if a.small { (8 << 20) / 64 } else { 8 << 20 });
    (n, a.batch, 128)
}

pub fn host_table(n: usize, d: usize) -> HostTable<'static> {
    let t = Instant::now();
    let table = HostTable::owned(table_values(n * d, 21), d).expect("table");
    eprintln!("host table {n} x {d}: {:.1} s", t.elapsed().as_secs_f64());
    table
}

/// The workloads' cache: 10% of the `n` rows on the GPU (`--capacity`), with the
/// resolution and row format of the arguments, default settings otherwise.
pub fn tenth_cache<S: RowSource>(
    ctx: &GpuContext,
    a: &Args,
    table: S,
    n: usize,
    policy: EvictionPolicy,
) -> Result<EmbeddingCache<S>> {
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(((n as f64 * a.capacity) as usize).max(1)))
        .policy(policy)
        .resolution(a.resolution)
        .row_format(a.row_format)
        // (The GPU-driven path has no exact LRU: W5's LRU point stays on the host.)
        .path(match (a.path, policy) {
            (BatchPath::Gpu, EvictionPolicy::Lru) => BatchPath::Host,
            (path, _) => path,
        });
    let t = Instant::now();
    let cache = EmbeddingCache::with_progress(ctx, table, a.with_knobs(config), |done, all| {
        if done == all && all > 0 && t.elapsed().as_secs_f64() > 1.0 {
            eprintln!(
                "table in host memory: {all} rows in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
    })?;
    eprintln!(
        "cache path: {:?} ({})",
        cache.config().path,
        cache.config().path_reason
    );
    Ok(cache)
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median GPU time (ms) of the passes labelled `label`.
pub fn gpu_median(times: &[PassTiming], label: &str) -> f64 {
    let mut v: Vec<f64> = times
        .iter()
        .filter(|t| t.label == label)
        .map(|t| t.nanos / 1e6)
        .collect();
    median(&mut v)
}

/// Sum of the GPU times (ms) of the passes labelled `label`, per `per`.
pub fn gpu_sum(times: &[PassTiming], label: &str, per: f64) -> f64 {
    times
        .iter()
        .filter(|t| t.label == label)
        .map(|t| t.nanos)
        .sum::<f64>()
        / 1e6
        / per
}

/// The GPU's time per batch from the passes' timestamps, a batch being the passes from
/// one labelled `first` to the next: (span, idle) in ms averaged over the batches, `span`
/// from the batch's first pass's begin to its last pass's end (its passes and the GPU's
/// gaps between them: copies, barriers), `idle` from that end to the next batch's begin
/// (the GPU waiting for the host). (0, 0) without such passes.
pub fn gpu_span(times: &[PassTiming], first: &str) -> (f64, f64) {
    let starts: Vec<usize> = (0..times.len())
        .filter(|&k| times[k].label == first)
        .collect();
    let (mut span, mut idle, mut n) = (0.0, 0.0, 0);
    for w in starts.windows(2) {
        let batch = &times[w[0]..w[1]];
        let end = batch.iter().map(|t| t.start + t.nanos).fold(0.0, f64::max);
        span += end - batch[0].start;
        idle += times[w[1]].start - end;
        n += 1;
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    (span / n as f64 / 1e6, idle / n as f64 / 1e6)
}

/// Warm-up before a timed loop: `a.warmup_secs` of GPU-bound work (the [`Heater`]), then
/// `min_calls` calls of `op(k)`; waits for the GPU and drops the timings recorded meanwhile.
pub fn warm_up(
    ctx: &GpuContext,
    a: &Args,
    min_calls: usize,
    mut op: impl FnMut(usize) -> Result<()>,
) -> Result<()> {
    if let Some(h) = &a.heater {
        h.run(ctx, a.warmup_secs)?;
    }
    for k in 0..min_calls {
        op(k)?;
    }
    ctx.wait_idle()?;
    let _ = ctx.take_timings()?;
    Ok(())
}

/// Minor page faults of this process so far (Linux; 0 elsewhere): a stream's share tells
/// whether memory it writes (mapped staging) is faulted in again on every use.
pub fn minor_faults() -> i64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getrusage writes one rusage struct we own.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            return u.ru_minflt;
        }
    }
    0
}

/// CPU time of every thread of the process so far (Linux; zero elsewhere): around a call,
/// the host work it did on any thread, without the time it spent blocked (a wait for the
/// GPU or for a staging entry). Beside a stream's wall time, it tells a host-bound stream
/// from one that waits. (Not the calling thread's alone: a cache call's host work runs on
/// a thread of the rayon pool while the caller sleeps. It counts the pool's idle spinning
/// and, on a software adapter, the GPU's emulation too.)
pub fn process_cpu() -> std::time::Duration {
    #[cfg(target_os = "linux")]
    {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own.
        if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0 {
            return std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32);
        }
    }
    std::time::Duration::ZERO
}

/// With `HOTROW_BENCH_TIMELINE=1`: prints 24 of a stream's pass timings from its middle
/// (label, start relative to the first, duration), where the gaps between a batch's
/// kernels show whether the GPU waited for the host.
pub fn print_timeline(what: &str, times: &[PassTiming]) {
    if std::env::var("HOTROW_BENCH_TIMELINE").map_or(true, |v| v != "1") || times.is_empty() {
        return;
    }
    let mid = times.len() / 2;
    let t0 = times[mid].start;
    for t in &times[mid..(mid + 24).min(times.len())] {
        eprintln!(
            "{what} timeline: {:>10} at {:8.1} us for {:7.1} us",
            t.label,
            (t.start - t0) / 1e3,
            t.nanos / 1e3
        );
    }
}

/// MiB of this process's anonymous memory in transparent huge pages (Linux; 0 elsewhere):
/// read beside a table's figures, it says whether the table's pages are huge
/// (`HOTROW_HUGEPAGES=1` asks; the kernel decides).
pub fn anon_huge_pages_mb() -> f64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Submits `reps` calls of `op(k)` without waiting, then waits once: wall ms per call and
/// the pass timings recorded by the stream.
pub fn stream(
    ctx: &GpuContext,
    reps: usize,
    mut op: impl FnMut(usize) -> Result<()>,
) -> Result<(f64, Vec<PassTiming>)> {
    let t = Instant::now();
    for k in 0..reps {
        op(k)?;
    }
    ctx.wait_idle()?;
    let wall = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    Ok((wall, ctx.take_timings()?.0))
}

/// GPU time of one op run alone: each call is waited for before the next, so the pass's
/// timestamps cannot include time spent queued behind earlier work. Median over `reps`.
pub fn isolated_gpu_ms(
    ctx: &GpuContext,
    label: &str,
    reps: usize,
    mut op: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..reps {
        op()?;
        ctx.wait_idle()?;
        let (times, _) = ctx.take_timings()?;
        v.extend(
            times
                .iter()
                .filter(|t| t.label == label)
                .map(|t| t.nanos / 1e6),
        );
    }
    Ok(median(&mut v))
}

/// Bit-exact check of a gather against the reference; exits on failure.
/// Rows `ids` of `table` (in order) as `layout` stores them, decoded: the table an op over
/// the cache reads, for its reference (use positions `0..ids.len()` as its ids).
pub fn stored_rows(table: &[f32], layout: RowLayout, ids: &[u32]) -> Vec<f32> {
    let rows = reference::gather(table, layout.dim(), ids);
    if layout.format() == RowFormat::F32 {
        return rows;
    }
    let mut words = vec![0u32; ids.len() * layout.words_per_row()];
    layout.encode_rows(&rows, &mut words);
    let mut back = vec![0f32; rows.len()];
    layout.decode_rows(&words, &mut back);
    back
}

/// Checks a lookup against the table's rows as `layout` stores them: bit for bit for f32
/// and f16, within a rounding of the decoded value for int8 (the GPU may fuse its
/// multiply-add); exits on failure.
pub fn verify_gather(
    what: &str,
    got: &Embeddings,
    table: &[f32],
    layout: RowLayout,
    ids: &[u32],
) -> Result<()> {
    let dim = layout.dim();
    let rows = reference::gather(table, dim, ids);
    let mut words = vec![0u32; ids.len() * layout.words_per_row()];
    layout.encode_rows(&rows, &mut words);
    let mut want = vec![0f32; rows.len()];
    layout.decode_rows(&words, &mut want);
    let exact = layout.format() != RowFormat::Int8;
    let wrong = got.to_host()?.iter().zip(&want).any(|(x, y)| {
        if exact {
            x.to_bits() != y.to_bits()
        } else {
            (x - y).abs() > 1e-6 * y.abs().max(1.0)
        }
    });
    if wrong {
        eprintln!("{what}: WRONG RESULT");
        std::process::exit(1);
    }
    Ok(())
}

/// Relative error of a GPU result against an f64 reference; exits on failure.
pub fn verify_close(what: &str, got: &Embeddings, want: &[f64]) -> Result<()> {
    let err = reference::relative_error(&got.to_host()?, want);
    if err.is_nan() || err >= 1e-5 {
        eprintln!("{what}: WRONG RESULT (relative error {err:e})");
        std::process::exit(1);
    }
    Ok(())
}

/// Adds `part` to `rep`; a key seen before (a workload named twice) gets "#2".
pub fn merge(rep: &mut Report, part: Report) {
    for (k, v) in part {
        let key = if rep.contains_key(&k) {
            format!("{k}#2")
        } else {
            k
        };
        rep.insert(key, v);
    }
}

pub fn write_json(path: &str, ctx: &GpuContext, rep: &Report) {
    let mut doc = serde_json::Map::new();
    doc.insert("adapter".into(), ctx.adapter().to_string().into());
    for (k, &v) in rep {
        // (JSON has no NaN or infinity: those are written as null.)
        let v = serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into);
        doc.insert(k.clone(), v);
    }
    let text = serde_json::to_string_pretty(&doc).expect("a report is plain JSON");
    std::fs::write(path, text + "\n").expect("write json");
}

/// `n` random table values (`hotrow_workloads::fill_random`), with `HOTROW_HUGEPAGES` set
/// (Linux) in memory asked to be transparent huge pages before it is first written, so a
/// table's random row reads miss the TLB less. An experiment's switch, off by default.
pub fn table_values(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0f32; n];
    advise_huge_pages(&mut v);
    fill_random(&mut v, seed);
    v
}

fn advise_huge_pages(v: &mut [f32]) {
    #[cfg(target_os = "linux")]
    if std::env::var_os("HOTROW_HUGEPAGES").is_some() {
        let page = 4096usize;
        let start = v.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(page);
        let end = start + std::mem::size_of_val(v);
        if end > aligned {
            // SAFETY: advisory only, over whole pages inside this allocation.
            unsafe {
                libc::madvise(
                    aligned as *mut libc::c_void,
                    end - aligned,
                    libc::MADV_HUGEPAGE,
                )
            };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

//! Shared by the integration tests: one context per test binary, fresh random seeds.
#![allow(dead_code)]

use std::sync::OnceLock;

use hotrow::GpuContext;

/// The workloads' seeded RNG and Zipf generator (shared with the benches).
pub use hotrow_workloads as workload;

/// One context per test binary, on whatever adapter this machine has (software on CI).
/// With `HOTROW_TEST_PATH=gpu` it asks for host-visible storage, so every cache built with
/// the default `BatchPath::Auto` takes the GPU-driven path where the adapter has it (CI
/// runs the suite that way on lavapipe); caches whose settings are host-only (exact LRU,
/// `Resolution::Device`) stay on the host path.
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = GpuContext::with_options(hotrow::GpuOptions {
            host_visible_storage: gpu_path_run(),
            ..Default::default()
        })
        .expect("a GPU or software adapter");
        eprintln!(
            "hotrow tests: adapter = {}; GPU-driven path by default: {}",
            ctx.adapter(),
            ctx.adapter().host_visible_storage
        );
        ctx
    })
}

/// A context on the tests' adapter that asks for host-visible storage (one per test
/// binary); `None`, with a line saying so, where the adapter has none (GL).
pub fn host_storage_ctx() -> Option<&'static GpuContext> {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    let ctx = CTX.get_or_init(|| host_storage_ctx_with(false));
    if ctx.adapter().host_visible_storage {
        Some(ctx)
    } else {
        eprintln!(
            "skipped: {} has no host-visible storage (the GPU-driven path needs it)",
            ctx.adapter()
        );
        None
    }
}

/// The paths a test runs on: the host path on the tests' context, and the GPU-driven path
/// where a context has host-visible storage.
pub fn paths() -> Vec<(&'static GpuContext, hotrow::BatchPath)> {
    let mut paths = vec![(ctx(), hotrow::BatchPath::Host)];
    if let Some(ctx) = host_storage_ctx() {
        paths.push((ctx, hotrow::BatchPath::Gpu));
    }
    paths
}

/// A new context on the tests' adapter with host-visible storage asked for, and hotrow's
/// own imported host memory when `import`.
pub fn host_storage_ctx_with(import: bool) -> GpuContext {
    let base = ctx();
    GpuContext::with_options(hotrow::GpuOptions {
        backends: Some(base.adapter().backend.into()),
        adapter_name: Some(base.adapter().name.clone()),
        host_visible_storage: true,
        host_memory_import: import,
        ..Default::default()
    })
    .unwrap()
}

/// Whether this run asks for the GPU-driven path (`HOTROW_TEST_PATH=gpu`).
pub fn gpu_path_run() -> bool {
    std::env::var("HOTROW_TEST_PATH").is_ok_and(|v| v == "gpu")
}

/// Whether caches built with the default path take the GPU-driven one in this run.
pub fn on_gpu_path() -> bool {
    ctx().adapter().host_visible_storage
}

/// A seed that differs per run (time and process) and per tag, printed so a failure can
/// be replayed with HOTROW_SEED.
pub fn seed(tag: &str) -> u64 {
    // One base a process, so every tag of a failing test replays from the one number
    // printed.
    static BASE: OnceLock<u64> = OnceLock::new();
    let s = *BASE.get_or_init(|| {
        std::env::var("HOTROW_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                t ^ ((std::process::id() as u64) << 32)
            })
    });
    eprintln!("{tag}: seed {s} (replay with HOTROW_SEED={s})");
    s ^ tag
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
}

/// Bitwise comparison that names the first differing element (NaN poison counts as a miss).
pub fn assert_rows_eq(got: &[f32], want: &[f32], dim: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: row {} col {}: got {g}, want {w}",
            k / dim,
            k % dim
        );
    }
}

/// [`assert_rows_eq`] for rows decoded from slots stored as `format`: bitwise for f32 and
/// f16; for int8 within the decode's documented bound (`RowLayout::encode_rows`): a GPU
/// may fuse the multiply-add the CPU rounds twice (an NVIDIA driver does), which moves a
/// value by a few ulps of the larger of it and the row's bias (its minimum), and may flush
/// subnormal values to zero.
pub fn assert_rows_decoded(
    got: &[f32],
    want: &[f32],
    dim: usize,
    format: hotrow::RowFormat,
    what: &str,
) {
    if format != hotrow::RowFormat::Int8 {
        return assert_rows_eq(got, want, dim, what);
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (r, (g_row, w_row)) in got.chunks(dim).zip(want.chunks(dim)).enumerate() {
        let largest = w_row.iter().fold(0f32, |a, &b| a.max(b.abs()));
        for (c, (&g, &w)) in g_row.iter().zip(w_row).enumerate() {
            let tol = 4.0 * f32::EPSILON * (w.abs() + largest) + f32::MIN_POSITIVE;
            assert!(
                (g - w).abs() <= tol,
                "{what}: row {r} col {c}: got {g}, want {w} (int8 tolerance {tol:e})"
            );
        }
    }
}

/// Serialises the GPU tests of one binary. wgpu's GL backend funnels every call through one
/// context lock and panics when a call waits more than 6 s for it, which parallel tests on a
/// slow software adapter can cause; the adapter is the bottleneck anyway, so running the
/// tests one at a time costs little.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Absolute values (the inputs of an op's error scale, see [`assert_close`]).
pub fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// f32 results of sums of products against the f64 reference: `||got - want||` must be at
/// most `1e-5 * ||scale||`, where `scale` is the same op on the absolute values of its
/// inputs (rounding in a sum grows with the sum of its terms' magnitudes, not with the
/// result, which cancellation can make arbitrarily small). NaN (poison) always fails.
pub fn assert_close(got: &hotrow::Embeddings, want: &[f64], scale: &[f64], what: &str) {
    assert_close_host(&got.to_host().unwrap(), want, scale, what);
}

/// [`assert_close`] on values already on the host.
pub fn assert_close_host(host: &[f32], want: &[f64], scale: &[f64], what: &str) {
    assert_eq!(host.len(), want.len(), "{what}: length");
    assert!(
        host.iter().all(|v| v.is_finite()),
        "{what}: NaN poison or non-finite values"
    );
    let err: f64 = host
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = scale.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!(
        err <= 1e-5 * norm,
        "{what}: error {err:e} over scale {norm:e} (relative {:e})",
        err / norm.max(f64::MIN_POSITIVE)
    );
}

/// Reference bags and their error scale (the same bags over absolute values).
pub fn bags_ref(
    data: &[f32],
    dim: usize,
    ids: &[u32],
    offsets: &[u32],
    mode: u32,
    w: Option<&[f32]>,
) -> (Vec<f64>, Vec<f64>) {
    let aw = w.map(abs);
    (
        hotrow::reference::bags(data, dim, ids, offsets, mode, w),
        hotrow::reference::bags(&abs(data), dim, ids, offsets, mode, aw.as_deref()),
    )
}

pub fn scores_ref(data: &[f32], dim: usize, q: &[f32], cand: &[u32]) -> (Vec<f64>, Vec<f64>) {
    (
        hotrow::reference::scores(data, dim, q, cand),
        hotrow::reference::scores(&abs(data), dim, &abs(q), cand),
    )
}

pub fn combine_ref(data: &[f32], dim: usize, x: &[f32], ids: &[u32]) -> (Vec<f64>, Vec<f64>) {
    (
        hotrow::reference::combine(data, dim, x, ids),
        hotrow::reference::combine(&abs(data), dim, &abs(x), ids),
    )
}

/// The table as a cache's slots hold it in `format`, decoded on the CPU (the reference the
/// compact formats are checked against); and each row's int8 quantization step (0 for the
/// other formats).
pub fn stored(data: &[f32], dim: usize, format: hotrow::RowFormat) -> (Vec<f32>, Vec<f32>) {
    let layout = hotrow::RowLayout::new(dim, format).unwrap();
    let mut words = vec![0u32; data.len() / dim * layout.words_per_row()];
    layout.encode_rows(data, &mut words);
    let mut back = vec![0f32; data.len()];
    layout.decode_rows(&words, &mut back);
    let steps = words
        .chunks_exact(layout.words_per_row())
        .map(|w| match format {
            hotrow::RowFormat::Int8 => f32::from_bits(w[w.len() - 2]),
            _ => 0.0,
        })
        .collect();
    (back, steps)
}

/// The rows a cache holds and their slots, sorted (to compare a cache before and after).
pub fn held(map: &hotrow::PartitionedSlotMap) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = map
        .resident()
        .into_iter()
        .map(|id| (id, map.slot_of(id).unwrap()))
        .collect();
    v.sort_unstable();
    v
}

/// The rows a cache holds and their slots, sorted: from the GPU's state on the GPU-driven
/// path (checked: slot_of and id_of inverse, no miss without a slot), else the slot map's.
pub fn resident<S: hotrow::RowSource>(cache: &hotrow::EmbeddingCache<S>) -> Vec<(u32, u32)> {
    match cache.driven_state().expect("the GPU's state") {
        Some(s) => driven_resident(&s),
        None => {
            cache.slot_map().check_invariants().unwrap();
            held(cache.slot_map())
        }
    }
}

/// The rows the GPU-driven path's state holds and their slots, sorted, checked: slot_of and
/// id_of are inverse maps over the slots (an entry past them names a transient slot a row
/// refused admission was served from: not resident), no miss lacked a slot, the hand is
/// within the slots.
pub fn driven_resident(s: &hotrow::DrivenState) -> Vec<(u32, u32)> {
    assert_eq!(s.fault, 0, "a miss found no slot");
    assert!(
        (s.hand as usize) < s.id_of.len(),
        "hand {} past the slots",
        s.hand
    );
    let mut v = Vec::new();
    for (slot, &id1) in s.id_of.iter().enumerate() {
        if id1 != 0 {
            assert_eq!(s.slot_of[id1 as usize - 1], slot as u32 + 1, "slot {slot}");
            v.push((id1 - 1, slot as u32));
        }
    }
    let cap = s.id_of.len() as u32;
    let listed = s.slot_of.iter().filter(|&&x| x != 0 && x <= cap).count();
    assert_eq!(listed, v.len(), "slot_of lists rows no slot holds");
    v.sort_unstable();
    v
}

/// A row source whose reads can be made to fail (`mode` 1) or panic (`mode` 2); with
/// `hide_memory` it says its rows are not in memory, so a cache reads them through
/// `read_rows` (the path of a source that is not one of hotrow's own).
pub struct Flaky<'a> {
    pub inner: Box<dyn hotrow::RowSource + 'a>,
    pub mode: std::sync::atomic::AtomicU8,
    pub hide_memory: bool,
}

impl<'a> Flaky<'a> {
    /// `inner`, reading normally until `mode` is set.
    pub fn new(inner: impl hotrow::RowSource + 'a) -> Self {
        Self {
            inner: Box::new(inner),
            mode: 0.into(),
            hide_memory: false,
        }
    }

    fn trip(&self) -> hotrow::Result<()> {
        match self.mode.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Ok(()),
            1 => Err(hotrow::HotrowError::RowSource("the store is down".into())),
            _ => panic!("the store exploded"),
        }
    }
}

impl hotrow::RowSource for Flaky<'_> {
    fn rows(&self) -> usize {
        self.inner.rows()
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> hotrow::Result<()> {
        self.trip()?;
        self.inner.read_rows(ids, out)
    }
    fn read_rows_f16(&self, ids: &[u32], out: &mut [hotrow::half::f16]) -> hotrow::Result<bool> {
        self.trip()?;
        self.inner.read_rows_f16(ids, out)
    }
    fn memory_rows(&self) -> hotrow::Result<Option<hotrow::MemoryRows<'_>>> {
        if self.hide_memory {
            return Ok(None);
        }
        self.trip()?;
        self.inner.memory_rows()
    }
}

/// Two fresh contexts on two adapters when this machine has them (lavapipe and llvmpipe-GL
/// on CI), else two devices of one.
pub fn open_two() -> Vec<GpuContext> {
    let options = hotrow::GpuOptions {
        backends: Some(wgpu::Backends::all()),
        use_env: false,
        // (a GPU-driven run: the devices that have host-visible storage take that path)
        host_visible_storage: gpu_path_run(),
        ..hotrow::GpuOptions::default()
    };
    let mut all = GpuContext::every(options.clone()).expect("an adapter");
    all.truncate(2);
    if all.len() < 2 {
        all.push(GpuContext::with_options(options).expect("a second device"));
    }
    for (d, c) in all.iter().enumerate() {
        eprintln!("group device {d}: {}", c.adapter());
    }
    all
}

/// [`open_two`], opened once per test binary.
pub fn two() -> &'static [GpuContext] {
    static CTX: OnceLock<Vec<GpuContext>> = OnceLock::new();
    CTX.get_or_init(open_two)
}

/// A new output of `rows x dim` on `ctx`, every value NaN: a result that was not written
/// shows.
pub fn poisoned(ctx: &GpuContext, rows: usize, dim: usize) -> hotrow::Embeddings {
    let e = hotrow::Embeddings::new(ctx, rows, dim).unwrap();
    e.fill(f32::NAN).unwrap();
    e
}

/// Whether every value of `e` is still NaN (nothing was written).
pub fn all_nan(e: &hotrow::Embeddings) -> bool {
    e.to_host().unwrap().iter().all(|v| v.is_nan())
}

/// [`assert_close`] of a `(values, scales)` reference.
pub fn check_close(got: &hotrow::Embeddings, (want, scale): (Vec<f64>, Vec<f64>), what: &str) {
    assert_close(got, &want, &scale, what);
}

/// `n` ids uniform over `0..rows`.
pub fn uniform_ids(rng: &mut workload::Rng, n: usize, rows: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(rows as u64) as u32).collect()
}

/// `n` ids over `0..rows`, half of them from a small hot set, so repeats are certain.
pub fn repeating_ids(rng: &mut workload::Rng, n: usize, rows: usize) -> Vec<u32> {
    let hot: Vec<u32> = (0..8).map(|_| rng.below(rows as u64) as u32).collect();
    (0..n)
        .map(|_| {
            if rng.below(2) == 0 {
                hot[rng.below(8) as usize]
            } else {
                rng.below(rows as u64) as u32
            }
        })
        .collect()
}

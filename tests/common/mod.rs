//! Shared by the integration tests: one context per test binary, fresh random seeds.
#![allow(dead_code)]

use std::sync::OnceLock;

use hotrow::GpuContext;

/// The workloads' seeded RNG and Zipf generator (shared with the benches).
#[path = "../../benches/common/workload.rs"]
pub mod workload;

/// One context per test binary, on whatever adapter this machine has (software on CI).
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = GpuContext::new().expect("a GPU or software adapter");
        eprintln!("hotrow tests: adapter = {}", ctx.adapter());
        ctx
    })
}

/// A seed that differs per run (time and process), printed so a failure can be replayed
/// with HOTROW_SEED.
pub fn seed(tag: &str) -> u64 {
    let s = std::env::var("HOTROW_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ ((std::process::id() as u64) << 32)
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

/// Serialises the GPU tests of one binary. wgpu's GL backend funnels every call through one
/// context lock and panics when a call waits more than 6 s for it, which parallel tests on a
/// slow software adapter can cause; the adapter is the bottleneck anyway, so running the
/// tests one at a time costs little.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

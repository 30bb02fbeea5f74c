//! Which path a cache takes ([`BatchPath`]), and why: the choice of `BatchPath::Auto`, and
//! the refusals of an explicit `BatchPath::Gpu` the adapter or the settings cannot serve.

use super::config::{BatchPath, CacheConfig, Resolution};
use super::slot_map::EvictionPolicy;
use crate::error::{HotrowError, Result};
use crate::gpu::GpuContext;
use crate::ops::driven::FETCH_STORAGE;

/// The path `config` asks for on `ctx` over a table of `rows` rows and `capacity` slots,
/// and the reason; an explicit `Gpu` that cannot be served is an error.
pub(crate) fn choose_path(
    ctx: &GpuContext,
    config: &CacheConfig,
    rows: usize,
    capacity: usize,
) -> Result<(BatchPath, &'static str)> {
    let blocker = gpu_blocker(ctx, config, rows, capacity);
    match (config.path, blocker) {
        (BatchPath::Host, _) => Ok((BatchPath::Host, "asked for (CacheConfig::path)")),
        (BatchPath::Gpu, None) => Ok((BatchPath::Gpu, "asked for (CacheConfig::path)")),
        (BatchPath::Gpu, Some(e)) => Err(e.error(ctx, rows)),
        (BatchPath::Auto, None) => Ok((
            BatchPath::Gpu,
            "the context has host-visible storage: the GPU serves batches from the table in host memory",
        )),
        (BatchPath::Auto, Some(e)) => Ok((BatchPath::Host, e.reason())),
    }
}

/// Why the GPU-driven path cannot serve a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocker {
    NoHostStorage,
    FewStorageBindings,
    Lru,
    DeviceResolution,
    TooManyRows,
    TooManySlots,
}

fn gpu_blocker(
    ctx: &GpuContext,
    config: &CacheConfig,
    rows: usize,
    capacity: usize,
) -> Option<Blocker> {
    if !ctx.adapter().host_visible_storage {
        Some(Blocker::NoHostStorage)
    } else if ctx.limits().max_storage_buffers_per_shader_stage < FETCH_STORAGE {
        Some(Blocker::FewStorageBindings)
    } else if config.policy == EvictionPolicy::Lru {
        Some(Blocker::Lru)
    } else if config.resolution == Resolution::Device {
        Some(Blocker::DeviceResolution)
    } else if rows as u64 * 4 > ctx.max_binding() {
        Some(Blocker::TooManyRows)
    } else if capacity as u64 * 8 > ctx.max_binding() || capacity >= 1 << 31 {
        Some(Blocker::TooManySlots)
    } else {
        None
    }
}

impl Blocker {
    fn reason(self) -> &'static str {
        match self {
            Blocker::NoHostStorage => "no host-visible storage on this context (GpuOptions::host_visible_storage; GL and browsers have none)",
            Blocker::FewStorageBindings => "the fetch binds 6 storage buffers, more than this device allows per shader stage",
            Blocker::Lru => "exact LRU asked for: the GPU-driven path evicts by CLOCK",
            Blocker::DeviceResolution => "Resolution::Device asked for: a host-path mode",
            Blocker::TooManyRows => "the id -> slot array (4 bytes per row) exceeds one storage binding",
            Blocker::TooManySlots => "the slot state (8 bytes per slot) exceeds one storage binding",
        }
    }

    fn error(self, ctx: &GpuContext, rows: usize) -> HotrowError {
        match self {
            Blocker::NoHostStorage => HotrowError::Unsupported {
                what: "the GPU-driven path (BatchPath::Gpu: its table in host memory, GpuOptions::host_visible_storage)",
                feature: "MAPPABLE_PRIMARY_BUFFERS",
            },
            Blocker::FewStorageBindings => HotrowError::ExceedsLimit {
                what: "the GPU-driven path's fetch (storage buffers bound at once)",
                bytes: FETCH_STORAGE as u64,
                limit_name: "max_storage_buffers_per_shader_stage",
                limit: ctx.limits().max_storage_buffers_per_shader_stage as u64,
            },
            Blocker::TooManyRows => HotrowError::ExceedsLimit {
                what: "the GPU-driven path's id -> slot array (4 bytes per table row)",
                bytes: rows as u64 * 4,
                limit_name: "max_storage_buffer_binding_size",
                limit: ctx.max_binding(),
            },
            other => HotrowError::InvalidArgument(format!(
                "BatchPath::Gpu cannot serve this cache: {}",
                other.reason()
            )),
        }
    }
}

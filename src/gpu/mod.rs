//! Everything that talks to wgpu: adapter choice, the device and its state, memory,
//! pipelines, kernel launches, device-resident rows, staging uploads, readback and timing.
//! This layer knows nothing of ops or caches.

mod adapter;
mod context;
mod host_import;
mod int8;
mod launch;
mod layout;
mod memory;
mod pipelines;
mod readback;
mod rows;
mod staging;
mod submit;
mod timing;

pub use adapter::{AdapterSummary, GpuOptions};
pub use context::GpuContext;
pub(crate) use launch::{
    encode, encoder, first_launches, grid, grid_for_threads, uniform_stride, Bound, Launch,
    LaunchState, ParamsAt, ParamsFrom, Staged,
};
pub(crate) use layout::{row_prefix, wgsl_rows, COPY_PREFIXES, RAW_WORDS, ROW_PREFIXES};
pub use layout::{RowFormat, RowLayout};
pub use memory::MemoryStats;
pub(crate) use memory::{GrowBuffer, TrackedBuffer};
pub use pipelines::Shader;
pub(crate) use readback::{map_read_with, read_f32, read_u32, MAP_TIMEOUT};
pub use rows::{Embeddings, Placement, RowBuffer, RowBufferOptions};
pub(crate) use staging::{StagingCopier, StagingEntry, StagingRing};
pub(crate) use submit::{submit, submit_encoder};
pub(crate) use timing::pass_writes;
pub use timing::PassTiming;

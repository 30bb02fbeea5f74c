//! Several GPUs in one process, over one shared row source: [`ReplicatedCache`] (every
//! device caches the hot rows and serves a contiguous share of each batch: data parallel)
//! and [`PartitionedCache`] (each row is owned by one device, `id % devices`; each device
//! looks up its share, bags, scores and combinations are reduced per device first, so only
//! partial results cross the host, and the result lands on the device the caller names).
//!
//! Each device has its own pool of host threads (its share of rayon's); a call runs every
//! device's part on its pool at once (no thread is started per call). wgpu has no
//! peer-to-peer copies: whatever crosses devices goes through host memory.

mod devices;
mod owned_rows;
mod partitioned;
mod replicated;

pub use owned_rows::{HostTraffic, OwnedRows};
pub use partitioned::PartitionedCache;
pub use replicated::ReplicatedCache;

//! [`OwnedRows`], the rows one device of a [`super::PartitionedCache`] owns, and
//! [`HostTraffic`], the bytes such a cache moved through the host.

use std::sync::Arc;

use crate::error::Result;
use crate::table::RowSource;

/// The rows of a shared table that one device of a [`super::PartitionedCache`] owns (those with
/// `id % devices == device`), numbered `id / devices`: each device's cache covers only its
/// own rows, so its slot map and GPU id table are `1 / devices` of the table's.
pub struct OwnedRows<S: RowSource> {
    pub(super) source: Arc<S>,
    pub(super) device: u32,
    pub(super) devices: u32,
}

impl<S: RowSource> OwnedRows<S> {
    /// The table id of this device's row `local`.
    pub fn table_id(&self, local: u32) -> u32 {
        local * self.devices + self.device
    }

    fn global(&self, ids: &[u32]) -> Vec<u32> {
        ids.iter().map(|&l| self.table_id(l)).collect()
    }
}

impl<S: RowSource> RowSource for OwnedRows<S> {
    fn rows(&self) -> usize {
        let (n, d) = (self.devices as usize, self.device as usize);
        // A device that owns no row (a table with fewer rows than devices) still gets a cache of
        // one row, which is never asked for (no table id maps to it).
        ((self.source.rows() + n - 1 - d) / n).max(1)
    }
    fn dim(&self) -> usize {
        self.source.dim()
    }
    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        self.source.read_rows(&self.global(ids), out)
    }
    fn read_rows_f16(&self, ids: &[u32], out: &mut [half::f16]) -> Result<bool> {
        self.source.read_rows_f16(&self.global(ids), out)
    }
    fn remote(&self) -> bool {
        self.source.remote()
    }
}

/// Bytes a [`super::PartitionedCache`] moved through host memory between devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostTraffic {
    /// Calls served.
    pub calls: u64,
    /// Partial results read back from the devices.
    pub bytes_to_host: u64,
    /// Results written to the device the caller named.
    pub bytes_from_host: u64,
}

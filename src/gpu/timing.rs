//! GPU pass timings from timestamp queries, where the adapter has them.
//!
//! Enable with [`GpuContext::enable_timing`]; every compute pass hotrow encodes afterwards
//! writes a begin/end timestamp pair under its label; [`GpuContext::take_timings`] resolves
//! them after the work finished.

use crate::error::{HotrowError, Result};
use crate::gpu::{GpuContext, TrackedBuffer};

/// One timed compute pass.
#[derive(Clone, Debug, PartialEq)]
pub struct PassTiming {
    /// The op that encoded the pass (e.g. "gather", "scatter_rows").
    pub label: &'static str,
    /// GPU time between the pass's begin and end timestamps, in nanoseconds.
    pub nanos: f64,
    /// When the pass began: nanoseconds after the first pass of this
    /// [`GpuContext::take_timings`] began (with `nanos`, where the GPU sat between passes).
    pub start: f64,
}

pub(crate) struct PassTimer {
    set: wgpu::QuerySet,
    resolve: TrackedBuffer,
    read: TrackedBuffer,
    capacity: u32,
    labels: Vec<&'static str>,
    dropped: usize,
}

impl GpuContext {
    /// Starts recording GPU timestamps around each hotrow compute pass, for up to
    /// `max_passes` passes between calls of [`GpuContext::take_timings`]. Returns `false`
    /// (and records nothing) where the adapter has no timestamp queries.
    ///
    /// Timestamps are written at the beginning and end of each compute pass
    /// (`timestamp_writes`), resolved after the work and read back once. Known caveat:
    /// on some Metal drivers pass-boundary timestamps read as zeros (cubecl works around
    /// this by timing with separate passes); a pass whose end is not after its beginning is
    /// reported with 0 ns, never a negative or wrapped time. Only Vulkan (NVIDIA H200) and
    /// the software adapters have been exercised.
    pub fn enable_timing(&self, max_passes: u32) -> bool {
        if !self.adapter().timestamps || max_passes == 0 {
            return false;
        }
        let d = self.device();
        let n = (max_passes * 2).min(wgpu::QUERY_SET_MAX_QUERIES);
        let set = d.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("hotrow timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: n,
        });
        let bytes = n as u64 * 8;
        let buffers = self
            .create_buffer(
                "hotrow timestamp resolve",
                bytes,
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                false,
            )
            .and_then(|resolve| {
                let read = self.create_buffer(
                    "hotrow timestamp read",
                    bytes,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    false,
                )?;
                Ok((resolve, read))
            });
        let Ok((resolve, read)) = buffers else {
            return false;
        };
        *self.inner.timer.lock().unwrap_or_else(|e| e.into_inner()) = Some(PassTimer {
            set,
            resolve,
            read,
            capacity: n / 2,
            labels: Vec::new(),
            dropped: 0,
        });
        true
    }

    /// Stops recording timestamps.
    pub fn disable_timing(&self) {
        *self.inner.timer.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The query set and indices for the next timed pass, if timing is on and room is left.
    pub(crate) fn next_timestamps(
        &self,
        label: &'static str,
    ) -> Option<(wgpu::QuerySet, u32, u32)> {
        let mut guard = self.inner.timer.lock().unwrap_or_else(|e| e.into_inner());
        let t = guard.as_mut()?;
        let k = t.labels.len() as u32;
        if k >= t.capacity {
            t.dropped += 1;
            return None;
        }
        t.labels.push(label);
        Some((t.set.clone(), 2 * k, 2 * k + 1))
    }

    /// Waits for the submitted work, then returns the timings recorded since the last call
    /// (oldest first) and how many passes were not recorded because the buffer was full.
    pub fn take_timings(&self) -> Result<(Vec<PassTiming>, usize)> {
        let mut guard = self.inner.timer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = guard.as_mut() else {
            return Ok((Vec::new(), 0));
        };
        let n = t.labels.len() as u32;
        let dropped = std::mem::take(&mut t.dropped);
        if n == 0 {
            return Ok((Vec::new(), dropped));
        }
        let mut enc = crate::gpu::encoder(self, "hotrow timestamps");
        enc.resolve_query_set(&t.set, 0..2 * n, &t.resolve, 0);
        enc.copy_buffer_to_buffer(&t.resolve, 0, &t.read, 0, 2 * n as u64 * 8);
        crate::gpu::submit_encoder(self, enc)?;
        let raw: Vec<u64> =
            crate::gpu::readback::map_read_blocking(self, &t.read, 0, 2 * n as u64 * 8)
                .map(|bytes| bytemuck::pod_collect_to_vec(&bytes))?;
        let period = self.queue().get_timestamp_period() as f64;
        let first = raw[0];
        let out = t
            .labels
            .drain(..)
            .enumerate()
            .map(|(i, label)| PassTiming {
                label,
                nanos: raw[2 * i + 1].saturating_sub(raw[2 * i]) as f64 * period,
                start: raw[2 * i].saturating_sub(first) as f64 * period,
            })
            .collect();
        Ok((out, dropped))
    }
}

pub(crate) fn pass_writes(
    ts: &Option<(wgpu::QuerySet, u32, u32)>,
) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
    ts.as_ref()
        .map(|(set, b, e)| wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: Some(*b),
            end_of_pass_write_index: Some(*e),
        })
}

impl From<wgpu::BufferAsyncError> for HotrowError {
    fn from(e: wgpu::BufferAsyncError) -> Self {
        HotrowError::Map(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use crate::{GpuContext, RowBuffer};

    /// Three gathers, each its own pass: three timings under the op's label, in order,
    /// each beginning no earlier than the one before ended; none once timing is off.
    #[test]
    fn passes_are_timed_in_order() {
        let Ok(ctx) = GpuContext::new() else {
            return;
        };
        if !ctx.enable_timing(16) {
            return; // no timestamp queries on this adapter
        }
        let rows = RowBuffer::from_host(&ctx, &[1.0; 64 * 4], 4).unwrap();
        for _ in 0..3 {
            rows.gather(&[1, 5, 5, 63]).unwrap();
        }
        let (times, dropped) = ctx.take_timings().unwrap();
        assert_eq!(dropped, 0);
        let gathers: Vec<_> = times.iter().filter(|t| t.label == "gather").collect();
        assert_eq!(gathers.len(), 3, "{times:?}");
        assert_eq!(times[0].start, 0.0);
        for w in gathers.windows(2) {
            assert!(w[1].start >= w[0].start + w[0].nanos, "{times:?}");
        }
        ctx.disable_timing();
        rows.gather(&[2]).unwrap();
        assert!(ctx.take_timings().unwrap().0.is_empty());
    }
}

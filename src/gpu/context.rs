//! [`GpuContext`]: the device, queue, limits and pipelines that every hotrow object runs
//! on, built once and shared (a cheap `Clone` over an `Arc`), with the device's
//! lost/error state.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long [`GpuContext::poll_until`] polls without blocking on a hardware adapter before
/// it blocks: longer than the GPU round trip of resolution on the GPU (0.2-0.3 ms on the H200), short
/// enough that a long wait costs a core little.
const SPIN_WAIT: Duration = Duration::from_millis(1);

use crate::error::{HotrowError, Result};
use crate::gpu::adapter::{self, AdapterSummary, GpuOptions};
use crate::gpu::host_import;
use crate::gpu::memory::Memory;
use crate::gpu::pipelines::Pipelines;
use crate::gpu::readback::Poller;
use crate::gpu::timing::PassTimer;

/// Whether the device is usable: loss (from wgpu's callback, or forwarded by the
/// application) and errors wgpu reported outside error scopes.
#[derive(Default)]
pub(crate) struct DeviceState {
    lost: Mutex<Option<String>>,
    /// Errors wgpu reported outside error scopes; only collected where hotrow owns the
    /// device (an application's device keeps its own handler).
    uncaptured: Mutex<Vec<String>>,
}

impl DeviceState {
    pub(crate) fn mark_lost(&self, reason: String) {
        let mut l = self.lost.lock().unwrap_or_else(|e| e.into_inner());
        l.get_or_insert(reason);
    }
}

pub(crate) struct Inner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) summary: AdapterSummary,
    pub(crate) limits: wgpu::Limits,
    pub(crate) pipelines: Pipelines,
    pub(crate) state: Arc<DeviceState>,
    pub(crate) timer: Mutex<Option<PassTimer>>,
    pub(crate) memory: Memory,
    pub(crate) poller: Poller,
    /// hotrow opened the device (and so holds its lost callback and error handler); false
    /// for [`GpuContext::from_device`], whose calls run inside error scopes instead.
    owned: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.poller.shutdown();
    }
}

/// The device, queue, limits and compiled pipelines that every hotrow object runs on.
///
/// Build it once and clone it freely: clones share one device. Objects made on one context
/// (its clones included) work only with that context: passing an [`crate::Embeddings`] of
/// another context to an op is [`HotrowError::ForeignContext`], never a silent misuse of
/// another device's buffers.
///
/// ```no_run
/// # fn main() -> Result<(), hotrow::HotrowError> {
/// let ctx = hotrow::GpuContext::new()?; // real GPU first, software adapter otherwise
/// println!("running on {}", ctx.adapter());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct GpuContext {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.inner.summary)
            .finish()
    }
}

impl GpuContext {
    /// Picks an adapter with [`GpuOptions::default`] (environment honoured) and opens a device.
    pub fn new() -> Result<Self> {
        Self::with_options(GpuOptions::default())
    }

    /// Picks an adapter as `options` say and opens a device on it, requesting the adapter's
    /// own limits (not wgpu's 128 MiB defaults) and the optional features it has
    /// (timestamp queries, `f16`, and storage in host memory when
    /// [`GpuOptions::host_visible_storage`] asks).
    pub fn with_options(options: GpuOptions) -> Result<Self> {
        pollster::block_on(Self::with_options_async(options))
    }

    /// Opens a device on **every** adapter `options` allow, best first (the order
    /// [`GpuContext::with_options`] ranks them in): the contexts of a multi-GPU cache
    /// ([`crate::ReplicatedCache`], [`crate::PartitionedCache`]). Two GPUs of the same model
    /// are two adapters. To keep only real GPUs of one API, set `backends` (e.g.
    /// `Some(wgpu::Backends::VULKAN)`) and filter on [`GpuContext::adapter`]`.software`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hotrow::HotrowError> {
    /// let all = hotrow::GpuContext::every(hotrow::GpuOptions::default())?;
    /// let gpus: Vec<_> = all.into_iter().filter(|c| !c.adapter().software).collect();
    /// println!("{} GPUs", gpus.len());
    /// # Ok(()) }
    /// ```
    ///
    /// An adapter whose device cannot be opened is left out (with a `log` warning); the
    /// call fails only when none opens.
    pub fn every(options: GpuOptions) -> Result<Vec<Self>> {
        pollster::block_on(async {
            let mut out = Vec::new();
            let mut first_error = None;
            for adapter in adapter::candidates(&options).await? {
                let name = adapter.get_info().name;
                match Self::open(adapter, &options).await {
                    Ok(ctx) => out.push(ctx),
                    Err(e) => {
                        log::warn!("hotrow: adapter {name} left out: {e}");
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                Some(e) if out.is_empty() => Err(e),
                _ => Ok(out),
            }
        })
    }

    /// Async form of [`GpuContext::with_options`].
    pub async fn with_options_async(options: GpuOptions) -> Result<Self> {
        let adapter = adapter::choose(&options).await?;
        Self::open(adapter, &options).await
    }

    /// Opens a device on `adapter`, owned by hotrow (its loss and uncaptured errors).
    async fn open(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Self> {
        let memory_budget = options.memory_budget;
        let mut optional = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16;
        if options.host_visible_storage {
            optional |= wgpu::Features::MAPPABLE_PRIMARY_BUFFERS;
        }
        let desc = wgpu::DeviceDescriptor {
            label: Some("hotrow"),
            required_features: adapter.features() & optional,
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        // Host-memory rows in hotrow's own huge pages need the device opened with an extra
        // Vulkan extension; without it (or on any failure) the device opens as usual.
        let imported = (options.host_visible_storage
            && options.host_memory_import
            && desc
                .required_features
                .contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS))
        .then(|| host_import::open(&adapter, &desc))
        .flatten();
        let import = imported.is_some();
        let (device, queue) = match imported {
            Some(opened) => opened,
            None => adapter.request_device(&desc).await?,
        };
        let ctx = Self::build(
            adapter.get_info(),
            device,
            queue,
            memory_budget,
            true,
            import,
        );
        // hotrow owns this device, so it also takes its loss and uncaptured errors.
        let state = Arc::downgrade(&ctx.inner.state);
        ctx.inner
            .device
            .set_device_lost_callback(move |reason, msg| {
                if let Some(s) = state.upgrade() {
                    s.mark_lost(format!("{reason:?}: {msg}"));
                }
            });
        let sink = Arc::downgrade(&ctx.inner.state);
        ctx.inner
            .device
            .on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                log::error!("hotrow: wgpu error: {e}");
                if let Some(s) = sink.upgrade() {
                    s.uncaptured
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(e.to_string());
                }
            }));
        Ok(ctx)
    }

    /// Wraps a device the application already has, so hotrow shares it (and its queue)
    /// with the application's own pipelines.
    ///
    /// What the context takes: clones of the device and queue (the application keeps
    /// using them), and nothing else. The limits and features in force are the device's
    /// own. hotrow installs **no** device-lost callback and **no** uncaptured-error handler
    /// on a device it did not open (wgpu keeps one of each per device, so installing ours
    /// would silently replace the application's). Instead each hotrow call on such a context
    /// runs inside wgpu error scopes: an error it causes comes back as a typed error (a
    /// lost or destroyed device as [`HotrowError::DeviceLost`]) rather than reaching the
    /// application's handler. The application may also forward a loss it sees with
    /// [`GpuContext::device_lost`]; from then on every hotrow call on this context returns
    /// [`HotrowError::DeviceLost`].
    ///
    /// ```no_run
    /// # async fn app(adapter: wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) {
    /// let ctx = hotrow::GpuContext::from_device(&adapter, device.clone(), queue);
    /// let forward = ctx.clone();
    /// device.set_device_lost_callback(move |reason, msg| {
    ///     // ... the application's own handling ...
    ///     forward.device_lost(format!("{reason:?}: {msg}"));
    /// });
    /// # }
    /// ```
    pub fn from_device(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self::build(adapter.get_info(), device, queue, None, false, false)
    }

    fn build(
        info: wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        memory_budget: Option<u64>,
        owned: bool,
        host_memory_import: bool,
    ) -> Self {
        let limits = device.limits();
        let summary = AdapterSummary {
            host_memory_import,
            ..adapter::summarize(info, &limits, device.features())
        };
        let pipelines = Pipelines::new(&device);
        Self {
            inner: Arc::new(Inner {
                pipelines,
                poller: Poller::new(&device),
                device,
                queue,
                summary,
                limits,
                state: Arc::new(DeviceState::default()),
                timer: Mutex::new(None),
                memory: Memory::new(memory_budget),
                owned,
            }),
        }
    }

    /// The adapter in use and the limits in force.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.inner.summary
    }

    /// The wgpu device (for the application's own pipelines over hotrow's buffers).
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue hotrow submits to.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The limits in force on the device.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// Whether `other` is this context or a clone of it (objects of one work with the other).
    pub fn same_as(&self, other: &GpuContext) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// [`HotrowError::ForeignContext`] unless `other` is this context (or a clone of it).
    pub(crate) fn check_same(&self, other: &GpuContext, what: &'static str) -> Result<()> {
        if self.same_as(other) {
            Ok(())
        } else {
            Err(HotrowError::ForeignContext { what })
        }
    }

    /// Tells the context its device is lost (an application that shares its device through
    /// [`GpuContext::from_device`] forwards its own device-lost callback here). Every later
    /// call returns [`HotrowError::DeviceLost`] with this reason.
    pub fn device_lost(&self, reason: impl Into<String>) {
        self.inner.state.mark_lost(reason.into());
    }

    /// Runs `f` (a public call's GPU work). On a shared device ([`GpuContext::from_device`])
    /// it runs inside validation and internal error scopes, so an error the call causes is
    /// returned as a typed error; on a device hotrow opened, errors reach hotrow's own
    /// handler and [`GpuContext::check`] reports them.
    pub(crate) fn guarded<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        self.check()?;
        if self.inner.owned {
            return f();
        }
        let device = &self.inner.device;
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = f();
        let caught = pollster::block_on(validation.pop()).or(pollster::block_on(internal.pop()));
        let failed = match caught {
            None => match result {
                Ok(r) => return Ok(r),
                Err(e) => e,
            },
            Some(e) => HotrowError::Gpu(e.to_string()),
        };
        // Something failed: if the device itself is gone, say so (and remember it).
        if let Some(reason) = self.probe_lost() {
            self.device_lost(reason.clone());
            return Err(HotrowError::DeviceLost(reason));
        }
        Err(failed)
    }

    /// Whether the device still works (asked only after a failure on a shared device, which
    /// has no lost callback of hotrow's): a fresh 4-byte buffer must map. A lost device
    /// raises no errors (WebGPU's rule), but its new buffers are invalid and never map.
    fn probe_lost(&self) -> Option<String> {
        let device = &self.inner.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let probe = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("hotrow device probe"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mapped = Arc::new(Mutex::new(None));
        let sink = mapped.clone();
        probe.map_async(wgpu::MapMode::Read, .., move |r| {
            *sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.is_ok());
        });
        let _ = device.poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: Some(Duration::from_secs(5)),
        });
        drop(pollster::block_on(scope.pop()));
        let ok = *mapped.lock().unwrap_or_else(|e| e.into_inner());
        match ok {
            Some(true) => None,
            _ => Some("the device is lost or destroyed (a fresh buffer does not map)".into()),
        }
    }

    /// Fails with [`HotrowError::DeviceLost`] once the device is gone, or with
    /// [`HotrowError::Gpu`] for an error wgpu reported since the last check.
    pub fn check(&self) -> Result<()> {
        let state = &self.inner.state;
        if let Some(reason) = state.lost.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(HotrowError::DeviceLost(reason));
        }
        let mut errs = state.uncaptured.lock().unwrap_or_else(|e| e.into_inner());
        if !errs.is_empty() {
            let msg = errs.join("; ");
            errs.clear();
            return Err(HotrowError::Gpu(msg));
        }
        Ok(())
    }

    /// Blocks until all work submitted so far has finished.
    pub fn wait_idle(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.poll_error(e))?;
        self.check()
    }

    /// A failed poll: a timeout, unless the device is known to be lost.
    fn poll_error(&self, e: wgpu::PollError) -> HotrowError {
        match self.check() {
            Err(lost) => lost,
            Ok(()) => HotrowError::Timeout(e.to_string()),
        }
    }

    /// Polls the device until `done()` holds. Map callbacks run on whichever thread polls,
    /// so with several threads on one device a callback may land just after this thread's
    /// poll returned: hence the loop. Gives up with [`HotrowError::Timeout`] after
    /// `timeout` (or [`HotrowError::DeviceLost`] if the device went away meanwhile).
    ///
    /// On a hardware adapter it first polls without blocking for up to [`SPIN_WAIT`]: the
    /// waits on the hot paths (the round trip of resolution on the GPU, a staging entry the GPU
    /// still copies from) are a fraction of a millisecond, and a blocking wait adds the
    /// driver's and the scheduler's wake-up to each. A software adapter runs the GPU's
    /// work on the host's cores, which spinning would take from it.
    pub(crate) fn poll_until(
        &self,
        submission: Option<wgpu::SubmissionIndex>,
        timeout: Duration,
        mut done: impl FnMut() -> bool,
    ) -> Result<()> {
        let start = std::time::Instant::now();
        let spin = if self.inner.summary.software {
            Duration::ZERO
        } else {
            SPIN_WAIT
        };
        let mut blocked = false;
        while !done() {
            self.check()?;
            let elapsed = start.elapsed();
            if elapsed > timeout {
                return Err(HotrowError::Timeout(format!(
                    "GPU work did not finish within {timeout:?}"
                )));
            }
            let poll = if elapsed < spin {
                std::hint::spin_loop();
                wgpu::PollType::Poll
            } else if !blocked {
                blocked = true;
                wgpu::PollType::Wait {
                    submission_index: submission.clone(),
                    timeout: Some(timeout.saturating_sub(elapsed)),
                }
            } else {
                std::thread::yield_now();
                wgpu::PollType::Poll
            };
            self.inner
                .device
                .poll(poll)
                .map_err(|e| self.poll_error(e))?;
        }
        Ok(())
    }

    /// Largest bytes one storage binding may cover on this device.
    pub(crate) fn max_binding(&self) -> u64 {
        self.inner.limits.max_storage_buffer_binding_size
    }
}

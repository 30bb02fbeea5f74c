//! Adapter and device selection: one [`GpuContext`] built once, shared by every table,
//! cache and op (it is a cheap `Clone` over an `Arc`).

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::error::{HotrowError, Result};
use crate::gpu::kernels::Kernels;
use crate::gpu::timing::PassTimer;

/// How [`GpuContext::with_options`] picks an adapter. `Default` follows wgpu's environment
/// conventions: `WGPU_BACKEND` (e.g. `vulkan`, `gl`, `metal`, `dx12`) restricts the backends
/// and `WGPU_ADAPTER_NAME` picks the first adapter whose name contains that text
/// (case-insensitive).
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to search. `None`: `WGPU_BACKEND` if set, else every backend compiled in.
    pub backends: Option<wgpu::Backends>,
    /// Adapter name fragment. `None`: `WGPU_ADAPTER_NAME` if set, else the best adapter.
    pub adapter_name: Option<String>,
    /// Only consider software adapters (llvmpipe, lavapipe, WARP, SwiftShader).
    pub force_software: bool,
    /// Read `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` where the fields above are `None`.
    pub use_env: bool,
    /// Refuse single allocations that would bring the bytes this context allocated for
    /// hotrow above this many bytes. `None`: only the adapter's own limits apply (and an
    /// out-of-memory from the driver is reported as [`HotrowError::OutOfMemory`]).
    pub memory_budget: Option<u64>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            backends: None,
            adapter_name: None,
            force_software: false,
            use_env: true,
            memory_budget: None,
        }
    }
}

/// What the context runs on: the adapter chosen, and the limits and features in force.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Adapter name as the driver reports it (e.g. "NVIDIA H200", "llvmpipe (LLVM 15.0.6, 256 bits)").
    pub name: String,
    /// Backend (Vulkan, Metal, Dx12, Gl).
    pub backend: wgpu::Backend,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: wgpu::DeviceType,
    /// Driver name and version as reported.
    pub driver: String,
    /// Whether this is a software rasteriser (CPU) adapter.
    pub software: bool,
    /// Largest storage buffer binding in force on the device, in bytes.
    pub max_storage_buffer_binding_size: u64,
    /// Largest buffer in force on the device, in bytes.
    pub max_buffer_size: u64,
    /// Largest dispatch size per dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// GPU timestamps are available for pass timings.
    pub timestamps: bool,
    /// `f16` in shaders is available.
    pub shader_f16: bool,
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?}, {:?}{}; driver {}; max binding {} MiB, max buffer {} MiB, timestamps {})",
            self.name,
            self.backend,
            self.device_type,
            if self.software { ", software" } else { "" },
            if self.driver.is_empty() {
                "?"
            } else {
                &self.driver
            },
            self.max_storage_buffer_binding_size >> 20,
            self.max_buffer_size >> 20,
            if self.timestamps { "yes" } else { "no" },
        )
    }
}

pub(crate) struct Inner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) summary: AdapterSummary,
    pub(crate) limits: wgpu::Limits,
    pub(crate) kernels: Kernels,
    lost: Arc<Mutex<Option<String>>>,
    /// Errors wgpu reported outside error scopes; only collected where hotrow owns the device.
    uncaptured: Option<Arc<Mutex<Vec<String>>>>,
    pub(crate) timer: Mutex<Option<PassTimer>>,
    pub(crate) allocated: std::sync::atomic::AtomicU64,
    memory_budget: Option<u64>,
}

/// The device, queue, limits and compiled pipelines that every hotrow object runs on.
///
/// Build it once and clone it freely: clones share one device.
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

fn is_software(info: &wgpu::AdapterInfo) -> bool {
    if info.device_type == wgpu::DeviceType::Cpu {
        return true;
    }
    let n = info.name.to_lowercase();
    [
        "llvmpipe",
        "lavapipe",
        "softpipe",
        "swiftshader",
        "basic render driver",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Lower is better: real GPUs before software ones, native APIs before GL,
/// discrete before integrated.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8, u8) {
    let soft = u8::from(is_software(info));
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    };
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    (soft, backend, ty)
}

impl GpuContext {
    /// Picks an adapter with [`GpuOptions::default`] (environment honoured) and opens a device.
    pub fn new() -> Result<Self> {
        Self::with_options(GpuOptions::default())
    }

    /// Picks an adapter as `options` say and opens a device on it, requesting the adapter's
    /// own limits (not wgpu's 128 MiB defaults) and the optional features it has
    /// (timestamp queries, `f16`).
    pub fn with_options(options: GpuOptions) -> Result<Self> {
        pollster::block_on(Self::with_options_async(options))
    }

    /// Async form of [`GpuContext::with_options`].
    pub async fn with_options_async(options: GpuOptions) -> Result<Self> {
        let backends = options
            .backends
            .or_else(|| options.use_env.then(wgpu::Backends::from_env).flatten())
            .unwrap_or(wgpu::Backends::all());
        let wanted = options.adapter_name.clone().or_else(|| {
            options
                .use_env
                .then(|| std::env::var("WGPU_ADAPTER_NAME").ok())
                .flatten()
                .filter(|s| !s.is_empty())
        });
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        desc.flags = wgpu::InstanceFlags::from_build_config().with_env();
        let instance = wgpu::Instance::new(desc);
        let all = instance.enumerate_adapters(backends).await;
        let seen: Vec<String> = all
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} [{:?}]", i.name, i.backend)
            })
            .collect();
        let mut candidates: Vec<wgpu::Adapter> = all
            .into_iter()
            .filter(|a| {
                a.get_downlevel_capabilities()
                    .flags
                    .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
            })
            .filter(|a| !options.force_software || is_software(&a.get_info()))
            .collect();
        if let Some(w) = &wanted {
            let w = w.to_lowercase();
            candidates.retain(|a| a.get_info().name.to_lowercase().contains(&w));
            if candidates.is_empty() {
                return Err(HotrowError::AdapterNotFound {
                    wanted: w,
                    seen: seen.join(", "),
                });
            }
        }
        candidates.sort_by_key(|a| rank(&a.get_info()));
        let Some(adapter) = candidates.into_iter().next() else {
            return Err(HotrowError::NoAdapter {
                backends: format!("{backends:?}"),
                hint: if seen.is_empty() {
                    "; on Linux without a GPU install a software adapter, e.g. `apt-get install mesa-vulkan-drivers`".into()
                } else {
                    format!(
                        "; adapters without compute or filtered out: {}",
                        seen.join(", ")
                    )
                },
            });
        };
        Self::open(&adapter, options.memory_budget).await
    }

    async fn open(adapter: &wgpu::Adapter, memory_budget: Option<u64>) -> Result<Self> {
        let optional = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16;
        let features = adapter.features() & optional;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("hotrow"),
                required_features: features,
                required_limits: limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("hotrow: wgpu error: {e}");
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        Ok(Self::build(
            adapter.get_info(),
            device,
            queue,
            Some(uncaptured),
            memory_budget,
        ))
    }

    /// Wraps a device the application already has, so hotrow shares it (and its queue)
    /// with the application's own pipelines. The limits and features in force are the
    /// device's own; hotrow leaves the device's uncaptured-error handler alone.
    pub fn from_device(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self::build(adapter.get_info(), device, queue, None, None)
    }

    fn build(
        info: wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        uncaptured: Option<Arc<Mutex<Vec<String>>>>,
        memory_budget: Option<u64>,
    ) -> Self {
        let limits = device.limits();
        let features = device.features();
        let lost = Arc::new(Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut l) = flag.lock() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        let summary = AdapterSummary {
            software: is_software(&info),
            name: info.name,
            backend: info.backend,
            device_type: info.device_type,
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
        };
        let kernels = Kernels::new(&device);
        Self {
            inner: Arc::new(Inner {
                device,
                queue,
                summary,
                limits,
                kernels,
                lost,
                uncaptured,
                timer: Mutex::new(None),
                allocated: std::sync::atomic::AtomicU64::new(0),
                memory_budget,
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

    /// Bytes of GPU buffers that hotrow objects made on this context currently hold.
    pub fn allocated_bytes(&self) -> u64 {
        self.inner
            .allocated
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fails with [`HotrowError::DeviceLost`] once the device is gone, or with
    /// [`HotrowError::Gpu`] for an error wgpu reported since the last check.
    pub fn check(&self) -> Result<()> {
        if let Some(reason) = self.inner.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(HotrowError::DeviceLost(reason));
        }
        if let Some(errs) = &self.inner.uncaptured {
            if let Ok(mut v) = errs.lock() {
                if !v.is_empty() {
                    let msg = v.join("; ");
                    v.clear();
                    return Err(HotrowError::Gpu(msg));
                }
            }
        }
        Ok(())
    }

    /// Blocks until all work submitted so far has finished.
    pub fn wait_idle(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| HotrowError::DeviceLost(e.to_string()))?;
        self.check()
    }

    /// Polls the device until `done()` holds. Map callbacks run on whichever thread polls,
    /// so with several threads on one device a callback may land just after this thread's
    /// poll returned: hence the loop. Gives up (as a lost device) after `timeout`.
    pub(crate) fn poll_until(
        &self,
        submission: Option<wgpu::SubmissionIndex>,
        timeout: std::time::Duration,
        mut done: impl FnMut() -> bool,
    ) -> Result<()> {
        let start = std::time::Instant::now();
        let mut first = true;
        while !done() {
            self.check()?;
            if start.elapsed() > timeout {
                return Err(HotrowError::DeviceLost(format!(
                    "GPU work did not finish within {timeout:?}"
                )));
            }
            let poll = if first {
                wgpu::PollType::Wait {
                    submission_index: submission.clone(),
                    timeout: Some(timeout),
                }
            } else {
                std::thread::yield_now();
                wgpu::PollType::Poll
            };
            first = false;
            self.inner
                .device
                .poll(poll)
                .map_err(|e| HotrowError::DeviceLost(e.to_string()))?;
        }
        Ok(())
    }

    /// Creates a buffer, checking the budget and the adapter's `max_buffer_size` first and
    /// turning a driver out-of-memory into [`HotrowError::OutOfMemory`].
    pub(crate) fn create_buffer(
        &self,
        what: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
        mapped_at_creation: bool,
    ) -> Result<TrackedBuffer> {
        // Whole multiples of 16 bytes, so any buffer can be bound whole as an array of vec4.
        let size = size.max(16).next_multiple_of(16);
        if size > self.inner.limits.max_buffer_size {
            return Err(HotrowError::ExceedsLimit {
                what,
                bytes: size,
                limit_name: "max_buffer_size",
                limit: self.inner.limits.max_buffer_size,
            });
        }
        if let Some(budget) = self.inner.memory_budget {
            let now = self.allocated_bytes();
            if now + size > budget {
                return Err(HotrowError::ExceedsLimit {
                    what,
                    bytes: now + size,
                    limit_name: "GpuOptions::memory_budget",
                    limit: budget,
                });
            }
        }
        self.check()?;
        let scope = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size,
            usage,
            mapped_at_creation,
        });
        if pollster::block_on(scope.pop()).is_some() {
            return Err(HotrowError::OutOfMemory { what, bytes: size });
        }
        self.inner
            .allocated
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        Ok(TrackedBuffer {
            buffer,
            ctx: Arc::downgrade(&self.inner),
        })
    }

    /// Largest bytes one storage binding may cover on this device.
    pub(crate) fn max_binding(&self) -> u64 {
        self.inner.limits.max_storage_buffer_binding_size
    }
}

/// A buffer whose size counts towards [`GpuContext::allocated_bytes`] while it lives.
#[derive(Debug)]
pub(crate) struct TrackedBuffer {
    pub(crate) buffer: wgpu::Buffer,
    ctx: std::sync::Weak<Inner>,
}

impl std::ops::Deref for TrackedBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for TrackedBuffer {
    fn drop(&mut self) {
        if let Some(inner) = self.ctx.upgrade() {
            inner
                .allocated
                .fetch_sub(self.buffer.size(), std::sync::atomic::Ordering::Relaxed);
        }
        // No `destroy()`: wgpu frees the memory once the last submission using it is done.
    }
}

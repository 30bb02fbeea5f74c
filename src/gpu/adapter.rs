//! Adapter choice: which of the adapters wgpu enumerates a [`crate::GpuContext`] runs on,
//! and the summary of what was chosen.

use std::fmt;

use crate::error::{HotrowError, Result};

/// How [`crate::GpuContext::with_options`] picks an adapter. `Default` follows wgpu's environment
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
    /// Ask for storage buffers in host memory (wgpu's `MAPPABLE_PRIMARY_BUFFERS`) where the
    /// adapter has them, for [`crate::RowBuffer::in_host_memory`]. Off by default: wgpu
    /// warns (a `log` warning) that the feature is a performance trap on a discrete GPU for
    /// buffers made mappable and usable at once; hotrow makes such buffers only where asked.
    pub host_visible_storage: bool,
    /// With [`GpuOptions::host_visible_storage`], on Vulkan: make host-memory rows from
    /// hotrow's own memory, in 2 MiB huge pages where the OS gives them, imported into the
    /// device (`VK_EXT_external_memory_host`, when the adapter has it), instead of wgpu's
    /// mappable buffers (which the driver allocates itself, in small pages: a kernel
    /// reading random rows from them reads rows confined to a 2 MiB window 4x faster than
    /// rows spread over the table, which points at address translation). The table is
    /// then also filled directly, without the queue. Off by default until its speed on
    /// real GPUs is measured (BENCHMARKS.md); anything missing falls back to wgpu's
    /// buffers ([`AdapterSummary::host_memory_import`] says which is in force).
    pub host_memory_import: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            backends: None,
            adapter_name: None,
            force_software: false,
            use_env: true,
            memory_budget: None,
            host_visible_storage: false,
            host_memory_import: false,
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
    /// Storage buffers one shader stage may bind (hotrow's kernels bind at most 4, the
    /// WebGPU / downlevel minimum).
    pub max_storage_buffers_per_shader_stage: u32,
    /// GPU timestamps are available for pass timings.
    pub timestamps: bool,
    /// `f16` in shaders is available.
    pub shader_f16: bool,
    /// Kernels can read storage buffers that live in host memory
    /// (`wgpu::Features::MAPPABLE_PRIMARY_BUFFERS`, in force when asked for with
    /// [`GpuOptions::host_visible_storage`] and the adapter has it: Vulkan, Metal, DX12; not
    /// GL or browsers): [`crate::RowBuffer::in_host_memory`].
    pub host_visible_storage: bool,
    /// Host-memory rows ([`crate::RowBuffer::in_host_memory`]) are hotrow's own memory in
    /// 2 MiB pages where the OS gives them, imported into the device
    /// ([`GpuOptions::host_memory_import`]); else wgpu's mappable buffers.
    pub host_memory_import: bool,
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?}, {:?}{}; driver {}; max binding {} MiB, max buffer {} MiB, timestamps {}{})",
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
            match (self.host_visible_storage, self.host_memory_import) {
                (false, _) => "",
                (true, false) => "; host-memory storage",
                (true, true) => "; host-memory storage, imported",
            },
        )
    }
}

pub(crate) fn is_software(info: &wgpu::AdapterInfo) -> bool {
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
pub(crate) fn rank(info: &wgpu::AdapterInfo) -> (u8, u8, u8) {
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

/// The best adapter `options` allow: compute shaders required; a name fragment filters;
/// then real GPUs before software ones, native APIs before GL, discrete before integrated.
pub(crate) async fn choose(options: &GpuOptions) -> Result<wgpu::Adapter> {
    let mut all = candidates(options).await?;
    Ok(all.remove(0))
}

/// Every adapter `options` allow, best first (as [`choose`] ranks them); never empty.
pub(crate) async fn candidates(options: &GpuOptions) -> Result<Vec<wgpu::Adapter>> {
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
    if !candidates.is_empty() {
        return Ok(candidates);
    }
    Err(HotrowError::NoAdapter {
        backends: format!("{backends:?}"),
        hint: if seen.is_empty() {
            "; on Linux without a GPU install a software adapter, e.g. `apt-get install mesa-vulkan-drivers`".into()
        } else {
            format!(
                "; adapters without compute or filtered out: {}",
                seen.join(", ")
            )
        },
    })
}

/// The summary of `info` with the limits and features in force on a device.
pub(crate) fn summarize(
    info: wgpu::AdapterInfo,
    limits: &wgpu::Limits,
    features: wgpu::Features,
) -> AdapterSummary {
    AdapterSummary {
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
        max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
        timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
        shader_f16: features.contains(wgpu::Features::SHADER_F16),
        host_visible_storage: features.contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
        host_memory_import: false,
    }
}

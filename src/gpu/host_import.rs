//! Host memory of hotrow's own, imported into Vulkan (`VK_EXT_external_memory_host`) as a
//! storage buffer kernels read across the bus: the GPU-driven path's table.
//!
//! Why not wgpu's own mappable buffers (`MAPPABLE_PRIMARY_BUFFERS`): the driver allocates
//! those in 4 KiB pages, and a kernel reading random rows from them pays a GPU address
//! translation miss per row (BENCHMARKS.md: random rows read at ~60 M rows/s whatever
//! their size, rows inside a 2 MiB window 4x faster). Here the memory is anonymous memory
//! in 2 MiB-aligned chunks with transparent huge pages advised (`MADV_HUGEPAGE`), so the
//! OS backs it with 2 MiB pages where it can, and the host can also write it directly.
//!
//! The device must be opened with the extension ([`open`]); a buffer is made by
//! [`imported_buffer`]. Anything missing (not Vulkan, no extension, the import refused)
//! gives `None`, and the caller uses wgpu's mappable buffers instead.

#[cfg(all(unix, not(target_vendor = "apple"), not(target_arch = "wasm32")))]
mod vulkan {
    use std::ffi::CStr;

    use ash::vk;
    use wgpu::hal::api::Vulkan;

    const EXTENSION: &CStr = ash::ext::external_memory_host::NAME;
    /// Chunk size and alignment of the memory (one huge page).
    const HUGE: usize = 2 << 20;

    /// Opens `adapter`'s device with `VK_EXT_external_memory_host` enabled, when the adapter
    /// is Vulkan and lists it (`None` otherwise, or if the device does not open).
    pub(crate) fn open(
        adapter: &wgpu::Adapter,
        desc: &wgpu::DeviceDescriptor<'_>,
    ) -> Option<(wgpu::Device, wgpu::Queue)> {
        // SAFETY: the HAL adapter is used only inside this function, while `adapter` lives;
        // the callback only adds an extension the adapter lists; the device is handed to
        // wgpu with a descriptor whose features and limits are the ones it was opened with.
        unsafe {
            let hal = adapter.as_hal::<Vulkan>()?;
            let instance = hal.shared_instance().raw_instance();
            let listed = instance
                .enumerate_device_extension_properties(hal.raw_physical_device())
                .ok()?
                .iter()
                .any(|e| e.extension_name_as_c_str() == Ok(EXTENSION));
            if !listed {
                return None;
            }
            let add: Box<wgpu::hal::vulkan::CreateDeviceCallback<'static>> =
                Box::new(|args| args.extensions.push(EXTENSION));
            let open = hal
                .open_with_callback(
                    desc.required_features,
                    &desc.required_limits,
                    &desc.memory_hints,
                    Some(add),
                )
                .ok()?;
            drop(hal);
            adapter.create_device_from_hal::<Vulkan>(open, desc).ok()
        }
    }

    /// An anonymous mapping, unmapped when dropped.
    pub(crate) struct Mapping {
        ptr: std::ptr::NonNull<u8>,
        /// The mapping as made (before alignment).
        raw: *mut libc::c_void,
        raw_len: usize,
        len: usize,
    }

    // SAFETY: the mapping is plain memory; who writes it when is the owner's business (a
    // `RowBuffer` writes it only while no submission reads it).
    unsafe impl Send for Mapping {}
    unsafe impl Sync for Mapping {}

    impl Mapping {
        /// `len` bytes (a multiple of 2 MiB), 2 MiB-aligned, zeroed, huge pages advised.
        fn new(len: usize) -> Option<Self> {
            let raw_len = len.checked_add(HUGE)?;
            // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
            let raw = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    raw_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if raw == libc::MAP_FAILED {
                return None;
            }
            let aligned = (raw as usize).next_multiple_of(HUGE) as *mut u8;
            // SAFETY: `aligned .. aligned + len` lies inside the mapping. Advice only: if
            // the OS has no transparent huge pages the memory stays in small pages.
            unsafe {
                libc::madvise(aligned.cast(), len, libc::MADV_HUGEPAGE);
            }
            Some(Self {
                ptr: std::ptr::NonNull::new(aligned)?,
                raw,
                raw_len,
                len,
            })
        }

        pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
            self.ptr.as_ptr()
        }

        pub(crate) fn len(&self) -> usize {
            self.len
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the mapping `new` made, once.
            unsafe {
                libc::munmap(self.raw, self.raw_len);
            }
        }
    }

    /// A storage buffer of at least `size` bytes over fresh (zeroed) host memory, and that
    /// memory, mapped for the host. `None` when the device is not a Vulkan device opened
    /// with the extension, or the driver refuses the import.
    ///
    /// wgpu runs the returned buffer's drop callback once the buffer is dropped and no
    /// submission uses it; the callback destroys the Vulkan buffer and frees the imported
    /// memory, and the mapping goes last (the callback owns a handle to it).
    pub(crate) fn imported_buffer(
        device: &wgpu::Device,
        label: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Option<(wgpu::Buffer, std::sync::Arc<Mapping>)> {
        // The memory is whole huge pages; the buffer is the size asked for (a binding of
        // the whole buffer must stay within the binding limit the caller sized it for).
        let size = size.max(4).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let len = usize::try_from(size).ok()?.next_multiple_of(HUGE);
        let mapping = std::sync::Arc::new(Mapping::new(len)?);
        // SAFETY: every Vulkan object made here is either handed to wgpu (with a callback
        // that destroys it) or destroyed before returning `None`; the imported memory is
        // the mapping above, which outlives the Vulkan memory (the callback holds it).
        unsafe {
            let hal = device.as_hal::<Vulkan>()?;
            if !hal.enabled_device_extensions().contains(&EXTENSION) {
                return None;
            }
            let raw = hal.raw_device().clone();
            let instance = hal.shared_instance().raw_instance();
            let ext = ash::ext::external_memory_host::Device::new(instance, &raw);
            let handle = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
            let mut host = vk::MemoryHostPointerPropertiesEXT::default();
            let r = (ext.fp().get_memory_host_pointer_properties_ext)(
                raw.handle(),
                handle,
                mapping.as_mut_ptr().cast(),
                &mut host,
            );
            if r != vk::Result::SUCCESS {
                return None;
            }
            let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle);
            let info = vk::BufferCreateInfo::default()
                .size(size)
                .usage(
                    vk::BufferUsageFlags::STORAGE_BUFFER
                        | vk::BufferUsageFlags::TRANSFER_SRC
                        | vk::BufferUsageFlags::TRANSFER_DST,
                )
                .sharing_mode(vk::SharingMode::EXCLUSIVE)
                .push_next(&mut external);
            let buffer = raw.create_buffer(&info, None).ok()?;
            let req = raw.get_buffer_memory_requirements(buffer);
            let types = instance.get_physical_device_memory_properties(hal.raw_physical_device());
            let types = types.memory_types_as_slice();
            // Coherent, so host writes need no flush; cached where offered.
            let coherent =
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
            let cached = vk::MemoryPropertyFlags::HOST_CACHED;
            let allowed = req.memory_type_bits & host.memory_type_bits;
            let Some(ty) = (0..types.len())
                .filter(|&i| allowed & (1 << i) != 0 && types[i].property_flags.contains(coherent))
                .max_by_key(|&i| types[i].property_flags.contains(cached))
            else {
                raw.destroy_buffer(buffer, None);
                return None;
            };
            let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
                .handle_type(handle)
                .host_pointer(mapping.as_mut_ptr().cast());
            let alloc = vk::MemoryAllocateInfo::default()
                .allocation_size(len as u64)
                .memory_type_index(ty as u32)
                .push_next(&mut import);
            let Ok(memory) = raw.allocate_memory(&alloc, None) else {
                raw.destroy_buffer(buffer, None);
                return None;
            };
            if raw.bind_buffer_memory(buffer, memory, 0).is_err() {
                raw.destroy_buffer(buffer, None);
                raw.free_memory(memory, None);
                return None;
            }
            drop(hal);
            let keep = mapping.clone();
            let hal_buffer = wgpu::hal::vulkan::Buffer::from_raw_externally_owned(
                buffer,
                Box::new(move || {
                    raw.destroy_buffer(buffer, None);
                    raw.free_memory(memory, None);
                    drop(keep);
                }),
            );
            let buffer = device.create_buffer_from_hal::<Vulkan>(
                hal_buffer,
                &wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage,
                    mapped_at_creation: false,
                },
            );
            Some((buffer, mapping))
        }
    }
}

#[cfg(not(all(unix, not(target_vendor = "apple"), not(target_arch = "wasm32"))))]
mod vulkan {
    /// No import on this platform: wgpu's mappable buffers are used.
    pub(crate) fn open(
        _adapter: &wgpu::Adapter,
        _desc: &wgpu::DeviceDescriptor<'_>,
    ) -> Option<(wgpu::Device, wgpu::Queue)> {
        None
    }

    /// Never made on this platform.
    pub(crate) struct Mapping;

    impl Mapping {
        pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
            unreachable!("no imported memory on this platform")
        }

        pub(crate) fn len(&self) -> usize {
            0
        }
    }

    pub(crate) fn imported_buffer(
        _device: &wgpu::Device,
        _label: &'static str,
        _size: u64,
        _usage: wgpu::BufferUsages,
    ) -> Option<(wgpu::Buffer, std::sync::Arc<Mapping>)> {
        None
    }
}

pub(crate) use vulkan::{imported_buffer, open, Mapping};

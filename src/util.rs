//! Small helpers shared by the host-side hot paths.

/// A hint to bring the cache line holding `p` closer; a no-op where unsupported.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Elements per task of [`copy_parallel`]: 64 KiB of u32s.
const COPY_CHUNK: usize = 16 * 1024;

/// `dst.copy_from_slice(src)`, spread over the rayon pool when long (1 MiB or more). The destination is
/// usually write-combined mapped staging memory, where one thread's stores reach a fraction
/// of what several threads' reach (a step's ids or slot list is megabytes).
pub(crate) fn copy_parallel<T: Copy + Send + Sync>(dst: &mut [T], src: &[T]) {
    use rayon::prelude::*;
    assert_eq!(dst.len(), src.len(), "copy_parallel lengths");
    if src.len() < 16 * COPY_CHUNK {
        dst.copy_from_slice(src);
    } else {
        dst.par_chunks_mut(COPY_CHUNK)
            .zip(src.par_chunks(COPY_CHUNK))
            .for_each(|(d, s)| d.copy_from_slice(s));
    }
}

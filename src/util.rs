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

/// Bytes per task of [`copy_parallel`].
const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// Bytes from which [`copy_parallel`] spreads a copy.
const PARALLEL_FROM_BYTES: usize = 1 << 20;

/// `dst.copy_from_slice(src)`, spread over the rayon pool from 1 MiB on. The destination
/// is usually write-combined mapped staging memory, where one thread's stores reach a
/// fraction of what several threads' reach (a step's ids or slot list is megabytes).
/// Smaller copies stay on the calling thread: below that, waking the pool costs more than
/// the threads save (BENCHMARKS.md, the GPU-driven path's W3).
pub(crate) fn copy_parallel<T: Copy + Send + Sync>(dst: &mut [T], src: &[T]) {
    use rayon::prelude::*;
    assert_eq!(dst.len(), src.len(), "copy_parallel lengths");
    let chunk = (COPY_CHUNK_BYTES / std::mem::size_of::<T>().max(1)).max(1);
    if std::mem::size_of_val(src) < PARALLEL_FROM_BYTES {
        dst.copy_from_slice(src);
    } else {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
    }
}

#[cfg(test)]
mod tests {
    use super::copy_parallel;

    /// Below, at and past the parallel threshold, in bytes and in words: every element
    /// copied, nothing past the end touched.
    #[test]
    fn copy_parallel_copies_every_element() {
        for n in [0usize, 1, 65_535, 1_048_575, 1_048_576, 1_300_001] {
            let src: Vec<u8> = (0..n).map(|k| (k * 7 % 251) as u8).collect();
            let mut dst = vec![0xAAu8; n + 3];
            copy_parallel(&mut dst[..n], &src);
            assert_eq!(&dst[..n], &src[..], "{n} bytes");
            assert_eq!(&dst[n..], &[0xAA; 3], "{n} bytes: past the end");
            let words: Vec<u32> = (0..n as u32)
                .map(|k| k.wrapping_mul(2_654_435_761))
                .collect();
            let mut out = vec![0u32; n];
            copy_parallel(&mut out, &words);
            assert_eq!(out, words, "{n} words");
        }
    }
}

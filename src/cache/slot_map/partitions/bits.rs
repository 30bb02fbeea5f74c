//! Runs of bits in the touched-slot bitmap of a pass resolved on the GPU, one partition's
//! slot range at a time.

/// Mask of the bits of word `w` that lie in positions `start..end`.
fn word_mask(w: usize, start: u32, end: u32) -> u32 {
    let lo = (w as u32 * 32).max(start);
    let hi = (w as u32 * 32 + 32).min(end);
    let span = hi - lo;
    let shift = lo - w as u32 * 32;
    if span == 32 {
        u32::MAX
    } else {
        ((1u32 << span) - 1) << shift
    }
}

/// How many bits of `bits` are set among positions `start..start + len`: a popcount per
/// word (the fit check of a pass resolved on the GPU covers every slot, millions of them).
pub(super) fn count_bits(bits: &[u32], start: u32, len: u32) -> usize {
    let end = start + len;
    let words = (start / 32) as usize..(end.div_ceil(32) as usize).min(bits.len());
    words
        .map(|w| (bits[w] & word_mask(w, start, end)).count_ones() as usize)
        .sum()
}

/// The set bits of `bits` among positions `start..start + len`, as offsets from `start`.
pub(super) fn set_bits(bits: &[u32], start: u32, len: u32) -> impl Iterator<Item = u32> + '_ {
    let end = start + len;
    let words = (start / 32) as usize..(end.div_ceil(32) as usize).min(bits.len());
    words.flat_map(move |w| {
        let mut word = bits[w] & word_mask(w, start, end);
        std::iter::from_fn(move || {
            if word == 0 {
                return None;
            }
            let b = word.trailing_zeros();
            word &= word - 1;
            Some(w as u32 * 32 + b - start)
        })
    })
}

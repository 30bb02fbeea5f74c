//! TinyLFU's frequency estimate: how often an id was seen lately, in about a byte per
//! cached row whatever the table (what `EvictionPolicy::TinyLfu` asks before a row may
//! evict another).

/// A count-min sketch of 4-bit counters, halved every `sample` increments so old
/// popularity fades: TinyLFU's frequency estimate in ~1 byte per cached row.
///
/// Blocked, as Caffeine's: an id's four counters (one in each of four of the 8 words of
/// its 64-byte block) share one cache line, found from one hash, so counting an id costs
/// one memory access, not four; a cache counts every distinct id of every batch
/// (a cache prefetches its line a few ids ahead).
#[derive(Clone, Debug)]
pub struct FrequencySketch {
    table: Vec<u64>,
    /// Blocks of 8 words, minus one (a power of two).
    block_mask: usize,
    additions: usize,
    sample: usize,
}

fn mix(id: u32) -> u64 {
    let mut x = (u64::from(id) ^ 0x97cb_3127_0e3b_4f4d).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

impl FrequencySketch {
    /// A sketch for a cache of `capacity` rows.
    pub fn new(capacity: usize) -> Self {
        // 16 counters a word, 4 an id: as many words as rows gives each id's counters
        // room among 4x as many ids as the cache holds.
        let blocks = capacity.max(16).div_ceil(8).next_power_of_two();
        Self {
            table: vec![0; blocks * 8],
            block_mask: blocks - 1,
            additions: 0,
            sample: 10 * capacity.max(16),
        }
    }

    /// Where `id`'s four counters are: (word, shift) each, in one block.
    #[inline]
    fn counters(&self, id: u32) -> [(usize, u32); 4] {
        let h = mix(id);
        let block = ((h as usize) & self.block_mask) * 8;
        let bits = h >> 32;
        // counter i: word 2i or 2i + 1 of the block, one of its 16 nibbles
        std::array::from_fn(|i| {
            let word = block + 2 * i + ((bits >> i) & 1) as usize;
            let nibble = ((bits >> (4 + 4 * i)) & 15) as u32;
            (word, nibble * 4)
        })
    }

    /// Brings `id`'s block toward the core (a hint; the cache asks it a few ids ahead).
    #[inline]
    pub(crate) fn prefetch(&self, id: u32) {
        let block = ((mix(id) as usize) & self.block_mask) * 8;
        crate::util::prefetch(self.table.as_ptr().wrapping_add(block));
    }

    /// How often `id` was seen lately (0 to 15).
    pub fn frequency(&self, id: u32) -> u32 {
        self.counters(id)
            .iter()
            .map(|&(word, shift)| (self.table[word] >> shift) as u32 & 15)
            .min()
            .unwrap_or(0)
    }

    /// One occurrence of `id`.
    pub fn increment(&mut self, id: u32) {
        // conservative update: only the smallest counters grow
        let counters = self.counters(id);
        let values = counters.map(|(word, shift)| (self.table[word] >> shift) as u32 & 15);
        let min = values.iter().copied().min().unwrap_or(0);
        if min < 15 {
            for (&(word, shift), &v) in counters.iter().zip(&values) {
                if v == min {
                    self.table[word] += 1 << shift;
                }
            }
        }
        self.additions += 1;
        if self.additions >= self.sample {
            self.halve();
        }
    }

    /// Every count forgotten (a hot set that moved at once: what was popular says nothing).
    pub fn clear(&mut self) {
        self.table.iter_mut().for_each(|w| *w = 0);
        self.additions = 0;
    }

    /// Every counter halved: popularity fades.
    pub fn halve(&mut self) {
        for w in &mut self.table {
            *w = (*w >> 1) & 0x7777_7777_7777_7777;
        }
        self.additions /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sketch_counts_saturates_and_fades() {
        let mut s = FrequencySketch::new(1_000);
        for _ in 0..5 {
            s.increment(7);
        }
        assert_eq!(s.frequency(7), 5);
        assert_eq!(s.frequency(8), 0);
        for _ in 0..100 {
            s.increment(9);
        }
        assert_eq!(s.frequency(9), 15, "counters stop at 15");
        s.halve();
        assert_eq!(s.frequency(9), 7);
        assert_eq!(s.frequency(7), 2);
        s.clear();
        assert_eq!((s.frequency(7), s.frequency(9)), (0, 0));
    }

    /// A count-min sketch never counts an id less than it was seen (before any halving),
    /// whatever the other ids sharing its counters.
    #[test]
    fn the_sketch_never_undercounts() {
        let mut s = FrequencySketch::new(4_096);
        let mut x = 0x1234_5678u32;
        let mut counts = std::collections::HashMap::new();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let id = x % 30_000;
            s.increment(id);
            *counts.entry(id).or_insert(0u32) += 1;
        }
        for (&id, &n) in &counts {
            assert!(
                s.frequency(id) >= n.min(15),
                "id {id}: {} < {n}",
                s.frequency(id)
            );
        }
    }
}

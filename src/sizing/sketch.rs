//! TinyLFU's frequency estimate: how often an id was seen lately, in about a byte per
//! cached row whatever the table (what `EvictionPolicy::TinyLfu` asks before a row may
//! evict another).

/// A count-min sketch of 4-bit counters (four per id, one in each of four rows of 64-bit
/// words), halved every `sample` increments so old popularity fades, with a doorkeeper
/// bit set that absorbs an id's first occurrence (most ids are seen once): TinyLFU's
/// frequency estimate in ~1 byte per cached row.
#[derive(Clone, Debug)]
pub struct FrequencySketch {
    table: Vec<u64>,
    mask: usize,
    doorkeeper: Vec<u64>,
    additions: usize,
    sample: usize,
}

fn mix(id: u32, seed: u64) -> u64 {
    let mut x = (u64::from(id) ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

const SEEDS: [u64; 4] = [
    0x97cb_3127_0e3b_4f4d,
    0x5e2f_5f35_43b1_0cc1,
    0x2c1b_3c6d_9d0a_7e13,
    0x7fb5_d329_728e_a185,
];

impl FrequencySketch {
    /// A sketch for a cache of `capacity` rows.
    pub fn new(capacity: usize) -> Self {
        let words = capacity.max(16).next_power_of_two();
        Self {
            table: vec![0; words],
            mask: words - 1,
            doorkeeper: vec![0; (words * 4).div_ceil(64)],
            additions: 0,
            sample: 10 * capacity.max(16),
        }
    }

    fn counter(&self, id: u32, i: usize) -> (usize, u32) {
        let h = mix(id, SEEDS[i]);
        let word = (h as usize) & self.mask;
        // 16 counters a word: this row's counter in this word
        let nibble = ((h >> 40) as u32 & 3) * 4 + i as u32;
        (word, nibble * 4)
    }

    fn door_bit(&self, id: u32) -> (usize, u64) {
        let bits = self.doorkeeper.len() * 64;
        let b = (mix(id, 0x1234_5678_9abc_def1) as usize) % bits;
        (b / 64, 1 << (b % 64))
    }

    /// How often `id` was seen lately (0 to 16).
    pub fn frequency(&self, id: u32) -> u32 {
        let (w, bit) = self.door_bit(id);
        let door = u32::from(self.doorkeeper[w] & bit != 0);
        let count = (0..4)
            .map(|i| {
                let (word, shift) = self.counter(id, i);
                (self.table[word] >> shift) as u32 & 15
            })
            .min()
            .unwrap_or(0);
        count + door
    }

    /// One occurrence of `id`.
    pub fn increment(&mut self, id: u32) {
        let (w, bit) = self.door_bit(id);
        if self.doorkeeper[w] & bit == 0 {
            self.doorkeeper[w] |= bit;
        } else {
            // conservative update: only the smallest counters grow
            let mut counters = [(0usize, 0u32, 0u32); 4];
            for (i, c) in counters.iter_mut().enumerate() {
                let (word, shift) = self.counter(id, i);
                *c = (word, shift, (self.table[word] >> shift) as u32 & 15);
            }
            let min = counters.iter().map(|c| c.2).min().unwrap_or(0);
            if min < 15 {
                for &(word, shift, v) in &counters {
                    if v == min {
                        self.table[word] += 1 << shift;
                    }
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
        self.doorkeeper.iter_mut().for_each(|w| *w = 0);
        self.additions = 0;
    }

    /// Every counter halved and the doorkeeper cleared: popularity fades.
    pub fn halve(&mut self) {
        for w in &mut self.table {
            *w = (*w >> 1) & 0x7777_7777_7777_7777;
        }
        self.doorkeeper.iter_mut().for_each(|w| *w = 0);
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
        assert_eq!(s.frequency(7), 5, "doorkeeper 1 + 4 counts");
        assert_eq!(s.frequency(8), 0);
        for _ in 0..100 {
            s.increment(9);
        }
        assert_eq!(s.frequency(9), 16, "counters stop at 15");
        s.halve();
        assert_eq!(s.frequency(9), 7);
        assert_eq!(s.frequency(7), 2);
        s.clear();
        assert_eq!((s.frequency(7), s.frequency(9)), (0, 0));
    }
}

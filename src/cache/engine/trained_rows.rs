//! Rows training changed that left the cache on the host path, kept in host memory: the
//! newest stored words of each (values, then optimizer state) and whether the row source
//! has them yet. A pass that misses one of these rows uploads its words here, not the row
//! source's values (which are older, and carry no state); a flush hands the unflushed ones
//! to the row source. Rows with optimizer state stay after a flush (the row source keeps
//! values only); rows without any are dropped once flushed.

use std::collections::HashMap;

use super::Written;

pub(crate) struct TrainedRows {
    /// Words per row.
    stride: usize,
    /// The index of each kept row's words.
    at: HashMap<u32, usize>,
    words: Vec<u32>,
    /// Per index: changed since the row source last got it.
    unflushed: Vec<bool>,
    /// Indices no row holds.
    free: Vec<usize>,
    /// Rows carry optimizer state: kept after a flush.
    keep_flushed: bool,
}

impl TrainedRows {
    pub(crate) fn new(stride: usize, keep_flushed: bool) -> Self {
        Self {
            stride,
            at: HashMap::new(),
            words: Vec::new(),
            unflushed: Vec::new(),
            free: Vec::new(),
            keep_flushed,
        }
    }

    /// Keeps `words` (one stored row) as row `id`'s newest copy, not yet flushed.
    pub(crate) fn put(&mut self, id: u32, words: &[u32]) {
        debug_assert_eq!(words.len(), self.stride);
        let k = match self.at.get(&id) {
            Some(&k) => k,
            None => {
                let k = self.free.pop().unwrap_or_else(|| {
                    self.words.resize(self.words.len() + self.stride, 0);
                    self.unflushed.push(false);
                    self.unflushed.len() - 1
                });
                self.at.insert(id, k);
                k
            }
        };
        self.words[k * self.stride..][..self.stride].copy_from_slice(words);
        self.unflushed[k] = true;
    }

    /// Row `id`'s kept words, if any.
    pub(crate) fn get(&self, id: u32) -> Option<&[u32]> {
        self.at
            .get(&id)
            .map(|&k| &self.words[k * self.stride..][..self.stride])
    }

    /// Overwrites the rows of `out` (one stored row per id of `ids`, as read from the row
    /// source) whose ids are kept with their kept words.
    pub(crate) fn patch(&self, ids: &[u32], out: &mut [u32]) {
        if self.at.is_empty() {
            return;
        }
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(self.stride)) {
            if let Some(words) = self.get(id) {
                row.copy_from_slice(words);
            }
        }
    }

    /// The rows the row source does not have yet, ascending, with their words.
    pub(crate) fn unflushed(&self) -> Written {
        let mut ids: Vec<u32> = self
            .at
            .iter()
            .filter(|&(_, &k)| self.unflushed[k])
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        let mut words = Vec::with_capacity(ids.len() * self.stride);
        for &id in &ids {
            words.extend_from_slice(self.get(id).expect("a kept row"));
        }
        Written { ids, words }
    }

    /// The row source now has rows `ids` as kept: they are flushed (and, without optimizer
    /// state, no longer kept).
    pub(crate) fn flushed(&mut self, ids: &[u32]) {
        for id in ids {
            let Some(&k) = self.at.get(id) else { continue };
            self.unflushed[k] = false;
            if !self.keep_flushed {
                self.at.remove(id);
                self.free.push(k);
            }
        }
    }

    /// Host bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        (self.words.capacity() * 4 + self.unflushed.capacity()) as u64
            + self.at.capacity() as u64 * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_copy_wins_and_patches_only_kept_rows() {
        let mut t = TrainedRows::new(3, true);
        t.put(7, &[1, 2, 3]);
        t.put(2, &[4, 5, 6]);
        t.put(7, &[7, 8, 9]);
        let ids = [2u32, 5, 7, 2];
        let mut out = vec![0u32; 12];
        t.patch(&ids, &mut out);
        assert_eq!(out, [4, 5, 6, 0, 0, 0, 7, 8, 9, 4, 5, 6]);
        let w = t.unflushed();
        assert_eq!(w.ids, [2, 7]);
        assert_eq!(w.words, [4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn a_flush_keeps_rows_with_state_and_drops_the_others() {
        for keep in [true, false] {
            let mut t = TrainedRows::new(2, keep);
            for id in 0..10u32 {
                t.put(id, &[id, id + 100]);
            }
            t.flushed(&[1, 3, 5]);
            let w = t.unflushed();
            assert_eq!(w.ids, [0, 2, 4, 6, 7, 8, 9]);
            assert_eq!(t.get(3).is_some(), keep);
            // a row changed again after its flush is unflushed again
            t.put(3, &[33, 34]);
            assert!(t.unflushed().ids.contains(&3));
            assert_eq!(t.get(3), Some(&[33u32, 34][..]));
            // freed room is reused, not grown
            let before = t.words.len();
            t.flushed(&[0, 2]);
            t.put(50, &[1, 1]);
            t.put(51, &[2, 2]);
            if !keep {
                assert_eq!(t.words.len(), before);
            }
            assert_eq!(t.get(50), Some(&[1u32, 1][..]));
            assert_eq!(t.get(51), Some(&[2u32, 2][..]));
        }
    }

    #[test]
    fn a_failed_flush_leaves_every_row_unflushed() {
        let mut t = TrainedRows::new(1, false);
        t.put(4, &[1]);
        t.put(9, &[2]);
        let first = t.unflushed();
        // (the write failed: `flushed` is not called)
        assert_eq!(t.unflushed().ids, first.ids);
        t.flushed(&first.ids);
        assert!(t.unflushed().ids.is_empty());
        assert!(t.get(4).is_none());
    }
}

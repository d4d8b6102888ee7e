//! Bounded top-k selection: keeps the k best (key, index) pairs while scanning, never
//! sorting all experts.
//!
//! Order: higher key first, then lower index (IEEE `>`/`==`, so -0 and +0 tie). Keys are
//! never NaN here: callers map NaN to -inf first. Candidates must be pushed in ascending
//! index order, which makes the tie rule free: an equal key pushed later always ranks
//! after what is kept.
//!
//! Small k keeps a sorted array (insertion). Large k appends candidates to a buffer of
//! 2k and, when it fills, keeps its k best by a heap selection ([`crate::sort`]), so a
//! candidate that cannot beat the k-th best is one compare and the rest cost O(log k)
//! amortised over the k pushes between cuts.

use super::MAX_K;
use crate::sort;

/// Up to this k, a sorted array with insertion is fastest.
const INSERTION_MAX_K: usize = 16;

/// One kept candidate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Ranked {
    pub key: f32,
    pub index: u32,
}

/// Rank order: whether `a` ranks before `b` (higher key, then lower index).
fn ranks_before(a: &Ranked, b: &Ranked) -> bool {
    a.key > b.key || (a.key == b.key && a.index < b.index)
}

/// The k best candidates seen so far.
pub(crate) struct TopK {
    items: [Ranked; 2 * MAX_K],
    len: usize,
    k: usize,
    /// Large k: `items` is an unsorted buffer of up to 2k candidates.
    buffered: bool,
    /// Large k: a key must beat this to be taken (valid once `trimmed`).
    threshold: f32,
    /// Large k: the buffer has been cut to its k best at least once.
    trimmed: bool,
}

impl TopK {
    /// An empty selection of at most `k` (clamped to `MAX_K`) candidates.
    #[inline]
    pub fn new(k: usize) -> Self {
        let k = k.min(MAX_K);
        TopK {
            items: [Ranked { key: 0.0, index: 0 }; 2 * MAX_K],
            len: 0,
            k,
            buffered: k > INSERTION_MAX_K,
            threshold: f32::NEG_INFINITY,
            trimmed: false,
        }
    }

    /// Offers a candidate; indices must ascend between calls.
    #[inline]
    pub fn push(&mut self, key: f32, index: u32) {
        if self.k == 0 {
            return;
        }
        let item = Ranked { key, index };
        if self.buffered {
            if self.trimmed && key <= self.threshold {
                return;
            }
            self.items[self.len] = item;
            self.len += 1;
            if self.len == 2 * self.k {
                self.trim();
            }
        } else {
            if self.len == self.k && key <= self.items[self.len - 1].key {
                return;
            }
            self.insert(item);
        }
    }

    /// Offers `keys[i]` as expert `base + i` for every `i`, in order: candidates that
    /// cannot beat the worst kept are skipped eight at a time (a vector compare).
    #[inline]
    pub fn push_all(&mut self, keys: &[f32], base: u32) {
        let mut i = 0;
        while self.worst().is_none() && i < keys.len() {
            self.push(keys[i], base + i as u32);
            i += 1;
        }
        let Some(mut worst) = self.worst() else {
            return;
        };
        let (chunks, tail) = keys[i..].as_chunks::<8>();
        for (c, chunk) in chunks.iter().enumerate() {
            if chunk.iter().fold(false, |any, &x| any | (x > worst)) {
                let at = base + (i + c * 8) as u32;
                for (j, &x) in chunk.iter().enumerate() {
                    if x > worst {
                        self.push(x, at + j as u32);
                        worst = self.worst().unwrap_or(worst);
                    }
                }
            }
        }
        let at = base + (keys.len() - tail.len()) as u32;
        for (j, &x) in tail.iter().enumerate() {
            if x > worst {
                self.push(x, at + j as u32);
                worst = self.worst().unwrap_or(worst);
            }
        }
    }

    /// The key a later candidate must beat, once there is one (every candidate is taken
    /// before).
    #[inline]
    fn worst(&self) -> Option<f32> {
        if self.buffered {
            self.trimmed.then_some(self.threshold)
        } else if self.len == self.k && self.k > 0 {
            Some(self.items[self.len - 1].key)
        } else {
            None
        }
    }

    /// Sorted insertion (descending), dropping the last when full.
    #[inline]
    fn insert(&mut self, item: Ranked) {
        // Equal keys already kept have lower indices, so they stay in front.
        let mut pos = self.len.min(self.k - 1);
        if self.len < self.k {
            self.len += 1;
        }
        while pos > 0 && self.items[pos - 1].key < item.key {
            self.items[pos] = self.items[pos - 1];
            pos -= 1;
        }
        self.items[pos] = item;
    }

    /// Cuts the full buffer (2k candidates) to its k best; the k-th becomes the
    /// threshold.
    fn trim(&mut self) {
        sort::select_least_by(&mut self.items[..self.len], self.k, ranks_before);
        self.len = self.k;
        // The selection leaves the k-th best (the lowest kept key) in front.
        self.threshold = self.items[0].key;
        self.trimmed = true;
    }

    /// The kept candidates in rank order.
    pub fn sorted(&mut self) -> &[Ranked] {
        if self.buffered {
            sort::sort_least_by(&mut self.items[..self.len], self.k, ranks_before);
            self.len = self.len.min(self.k);
        }
        &self.items[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(keys: &[f32], k: usize) -> heapless::Vec<u32, MAX_K> {
        // Repeated argmax: the obvious definition.
        let mut taken = [false; 256];
        let mut out = heapless::Vec::new();
        for _ in 0..k.min(keys.len()) {
            let mut best: Option<usize> = None;
            for (i, &key) in keys.iter().enumerate() {
                if taken[i] {
                    continue;
                }
                if best.is_none_or(|b| key > keys[b]) {
                    best = Some(i);
                }
            }
            let b = best.unwrap();
            taken[b] = true;
            out.push(b as u32).unwrap();
        }
        out
    }

    #[test]
    fn matches_repeated_argmax_with_ties() {
        let mut seed = 1u64;
        for round in 0..2000 {
            let n = 1 + round % 200;
            let keys: heapless::Vec<f32, 256> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    // Few distinct values so ties are common; include -inf and -0.
                    match (seed >> 33) % 7 {
                        0 => f32::NEG_INFINITY,
                        1 => -0.0,
                        2 => 0.0,
                        v => v as f32,
                    }
                })
                .collect();
            for k in [1, 2, 5, 16, 17, 40, 64] {
                let mut top = TopK::new(k);
                for (i, &key) in keys.iter().enumerate() {
                    top.push(key, i as u32);
                }
                let got: heapless::Vec<u32, MAX_K> = top.sorted().iter().map(|r| r.index).collect();
                assert_eq!(got, brute(&keys, k), "n={n} k={k}");
                let mut all = TopK::new(k);
                all.push_all(&keys, 0);
                let got: heapless::Vec<u32, MAX_K> = all.sorted().iter().map(|r| r.index).collect();
                assert_eq!(got, brute(&keys, k), "push_all n={n} k={k}");
            }
        }
    }
}

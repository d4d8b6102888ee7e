//! Bounded top-k selection: keeps the k best (key, index) pairs while scanning, never
//! sorting all experts.
//!
//! Order: higher key first, then lower index (IEEE `>`/`==`, so -0 and +0 tie). Keys are
//! never NaN here: callers map NaN to -inf first. Candidates must be pushed in ascending
//! index order, which makes the tie rule free: an equal key pushed later always ranks
//! after what is kept.

use super::MAX_K;

/// Up to this k, a sorted array with insertion beats a heap.
const INSERTION_MAX_K: usize = 16;

/// One kept candidate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Ranked {
    pub key: f32,
    pub index: u32,
}

/// `a` is worse than `b` in rank order.
#[inline]
fn worse(a: &Ranked, b: &Ranked) -> bool {
    a.key < b.key || (a.key == b.key && a.index > b.index)
}

/// The k best candidates seen so far.
pub(crate) struct TopK {
    items: [Ranked; MAX_K],
    len: usize,
    k: usize,
    /// Kept as a min-heap (worst at 0) instead of a sorted array.
    heap: bool,
}

impl TopK {
    /// An empty selection of at most `k` (clamped to `MAX_K`) candidates.
    #[inline]
    pub fn new(k: usize) -> Self {
        let k = k.min(MAX_K);
        TopK {
            items: [Ranked { key: 0.0, index: 0 }; MAX_K],
            len: 0,
            k,
            heap: k > INSERTION_MAX_K,
        }
    }

    /// Offers a candidate; indices must ascend between calls.
    #[inline]
    pub fn push(&mut self, key: f32, index: u32) {
        let item = Ranked { key, index };
        if self.len == self.k {
            // Full: only a strictly larger key beats the worst kept (ties lose to the
            // lower, earlier index).
            let worst = if self.heap {
                self.items[0].key
            } else {
                self.items[self.len - 1].key
            };
            if key <= worst {
                return;
            }
        }
        if self.heap {
            self.heap_push(item);
        } else {
            self.insert(item);
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

    /// Min-heap by rank (worst at the root).
    fn heap_push(&mut self, item: Ranked) {
        if self.len < self.k {
            let mut i = self.len;
            self.len += 1;
            self.items[i] = item;
            while i > 0 {
                let parent = (i - 1) / 2;
                if worse(&self.items[i], &self.items[parent]) {
                    self.items.swap(i, parent);
                    i = parent;
                } else {
                    break;
                }
            }
        } else {
            self.items[0] = item;
            let mut i = 0;
            loop {
                let (l, r) = (2 * i + 1, 2 * i + 2);
                let mut m = i;
                if l < self.len && worse(&self.items[l], &self.items[m]) {
                    m = l;
                }
                if r < self.len && worse(&self.items[r], &self.items[m]) {
                    m = r;
                }
                if m == i {
                    break;
                }
                self.items.swap(i, m);
                i = m;
            }
        }
    }

    /// The kept candidates in rank order.
    pub fn sorted(&mut self) -> &[Ranked] {
        let items = &mut self.items[..self.len];
        if self.heap {
            items.sort_unstable_by(|a, b| {
                if worse(b, a) {
                    core::cmp::Ordering::Less
                } else if worse(a, b) {
                    core::cmp::Ordering::Greater
                } else {
                    core::cmp::Ordering::Equal
                }
            });
        }
        items
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
            }
        }
    }
}

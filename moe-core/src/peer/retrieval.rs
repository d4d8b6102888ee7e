//! Product-key retrieval: the top-k of each query half over its n sub-keys, then the top
//! of the k × k candidate sums, which holds the exact top of all N = n² keys.
//!
//! Why it is exact: if the full key (i, j) is among the best `k_final ≤ k`, then fewer
//! than k first-half sub-keys beat i (each such i' would make (i', j) beat (i, j), since
//! f32 addition is monotone), so i is in the first half's top k; likewise j. When the
//! k-th and (k+1)-th scores of all N keys are not tied the two selections are equal;
//! under ties (and when `k_final > k`) the product-key answer is one of the valid
//! answers, not necessarily the reference's.
//!
//! Order everywhere: higher score first, then lower index (IEEE comparison, so -0 and +0
//! tie); NaN scores count as -inf.

use super::config::{IndexMajor, MAX_TOPK};

/// One retrieved sub-key or expert and its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// The score (a dot product or a sum of two).
    pub score: f32,
    /// The sub-key index (0..n) or expert id (0..N).
    pub index: u32,
}

/// Whether `a` ranks before `b`.
#[inline]
fn before(a: &Scored, b: &Scored) -> bool {
    a.score > b.score || (a.score == b.score && a.index < b.index)
}

/// The best `k ≤ MAX_TOPK` of the candidates pushed so far, kept sorted: a bounded
/// selection that never sorts all candidates (each push is O(1) when it cannot enter,
/// O(k) when it does). Candidates may come in any order.
#[derive(Clone, Copy, Debug)]
pub struct TopList {
    items: [Scored; MAX_TOPK],
    len: usize,
    k: usize,
}

impl TopList {
    /// An empty list of at most `k` (clamped to [`MAX_TOPK`]) candidates.
    pub fn new(k: usize) -> Self {
        TopList {
            items: [Scored {
                score: 0.0,
                index: 0,
            }; MAX_TOPK],
            len: 0,
            k: k.min(MAX_TOPK),
        }
    }

    /// Offers a candidate.
    #[inline]
    pub fn push(&mut self, score: f32, index: u32) {
        let item = Scored {
            score: if score.is_nan() {
                f32::NEG_INFINITY
            } else {
                score
            },
            index,
        };
        if self.len == self.k {
            match self.items[..self.len].last() {
                Some(last) if before(&item, last) => {}
                _ => return,
            }
        } else {
            self.len += 1;
        }
        let mut pos = self.len - 1;
        while pos > 0 && before(&item, &self.items[pos - 1]) {
            self.items[pos] = self.items[pos - 1];
            pos -= 1;
        }
        self.items[pos] = item;
    }

    /// The score a candidate must reach to enter (reaching it is enough only with a lower
    /// index than the last kept), once the list is full.
    #[inline]
    pub fn threshold(&self) -> Option<f32> {
        if self.len == self.k && self.k > 0 {
            Some(self.items[self.len - 1].score)
        } else {
            None
        }
    }

    /// The kept candidates, best first.
    pub fn as_slice(&self) -> &[Scored] {
        &self.items[..self.len]
    }

    /// Number kept.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the list, keeping its k.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// The best `k_final` experts among the candidate sums `first[a] + second[b]` of two
/// per-half top lists (each sorted best first, indices below `n_keys`), with expert ids
/// made by `major`.
///
/// Both lists are sorted, so a row of candidates stops at the first sum below the
/// threshold, and the whole scan stops at a row whose best sum is below it: far fewer
/// than k² additions once the list is full.
pub fn product_key_topk(
    first: &TopList,
    second: &TopList,
    n_keys: u32,
    major: IndexMajor,
    k_final: usize,
) -> TopList {
    let mut best = TopList::new(k_final);
    for a in first.as_slice() {
        for (col, b) in second.as_slice().iter().enumerate() {
            let score = a.score + b.score;
            // Monotone rounding: every later candidate of this row (and, at col 0, of
            // every later row) scores ≤ this one, hence strictly below the threshold.
            if best.threshold().is_some_and(|t| score < t) {
                if col == 0 {
                    return best;
                }
                break;
            }
            best.push(score, major.expert(a.index, b.index, n_keys));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_with_lower_index_on_ties() {
        let mut t = TopList::new(3);
        for (i, s) in [1.0, 3.0, 3.0, f32::NAN, 2.0, 3.0, -0.0]
            .into_iter()
            .enumerate()
        {
            t.push(s, i as u32);
        }
        let got: [(f32, u32); 3] = core::array::from_fn(|i| {
            let s = t.as_slice()[i];
            (s.score, s.index)
        });
        assert_eq!(got, [(3.0, 1), (3.0, 2), (3.0, 5)]);
        // Any push order gives the same list.
        let mut r = TopList::new(3);
        for (i, s) in [1.0, 3.0, 3.0, f32::NAN, 2.0, 3.0, -0.0]
            .into_iter()
            .enumerate()
            .rev()
        {
            r.push(s, i as u32);
        }
        assert_eq!(r.as_slice(), t.as_slice());
    }

    #[test]
    fn candidate_sums_use_the_index_convention() {
        let mut a = TopList::new(2);
        a.push(1.0, 3);
        a.push(0.5, 1);
        let mut b = TopList::new(2);
        b.push(2.0, 0);
        b.push(-1.0, 2);
        let first = product_key_topk(&a, &b, 4, IndexMajor::First, 2);
        assert_eq!(
            first.as_slice(),
            [
                Scored {
                    score: 3.0,
                    index: 12
                },
                Scored {
                    score: 2.5,
                    index: 4
                }
            ]
        );
        let second = product_key_topk(&a, &b, 4, IndexMajor::Second, 1);
        assert_eq!(
            second.as_slice(),
            [Scored {
                score: 3.0,
                index: 3
            }]
        );
    }
}

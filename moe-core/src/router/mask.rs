//! [`ExpertMask`]: which experts a router may choose (Lifelong-MoE partial gating).
//!
//! Excluded experts are not scored at all, so a layer whose experts and router rows were
//! appended, routed with the mask set to the original experts, reproduces the old router
//! bit for bit: same logits, same softmax normaliser, same choices.

use crate::error::{Error, Result};

/// The experts a router may choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertMask<'a> {
    /// Every expert.
    All,
    /// Experts `0..n` (the original experts before `n_expert - n` were appended).
    First(usize),
    /// A bitset: expert `e` is active when bit `e % 64` of word `e / 64` is set. Holds
    /// exactly `n_expert.div_ceil(64)` words; bits past `n_expert` must be clear.
    Bits(&'a [u64]),
}

impl<'a> ExpertMask<'a> {
    /// Checks the mask against a layer of `n_expert` experts and returns how many are
    /// active (at least one).
    pub fn validate(&self, n_expert: usize) -> Result<usize> {
        let bad = |reason| Err(Error::InvalidRouterConfig { reason });
        let n = match *self {
            ExpertMask::All => n_expert,
            ExpertMask::First(n) => {
                if n > n_expert {
                    return bad("mask First(n) with n above n_expert");
                }
                n
            }
            ExpertMask::Bits(bits) => {
                if bits.len() != n_expert.div_ceil(64) {
                    return bad("mask bitset must hold n_expert.div_ceil(64) words");
                }
                let tail = n_expert % 64;
                if tail != 0 && bits.last().is_some_and(|w| w >> tail != 0) {
                    return bad("mask bitset has bits set past n_expert");
                }
                bits.iter().map(|w| w.count_ones() as usize).sum()
            }
        };
        if n == 0 {
            return bad("mask leaves no active expert");
        }
        Ok(n)
    }

    /// One past the last expert that can be active.
    #[inline]
    pub(crate) fn limit(&self, n_expert: usize) -> usize {
        match *self {
            ExpertMask::First(n) => n.min(n_expert),
            _ => n_expert,
        }
    }

    /// Whether expert `e` is active.
    #[inline]
    pub fn is_active(&self, e: usize) -> bool {
        match *self {
            ExpertMask::All => true,
            ExpertMask::First(n) => e < n,
            ExpertMask::Bits(bits) => bits.get(e / 64).is_some_and(|w| (w >> (e % 64)) & 1 == 1),
        }
    }

    /// The active experts in ascending order.
    #[inline]
    pub fn active(&self, n_expert: usize) -> impl Iterator<Item = usize> + 'a {
        let bits = match *self {
            ExpertMask::Bits(bits) => Some(bits),
            _ => None,
        };
        (0..self.limit(n_expert)).filter(move |&e| {
            bits.is_none_or(|b| b.get(e / 64).is_some_and(|w| (w >> (e % 64)) & 1 == 1))
        })
    }

    /// The `rank`-th active expert (0-based), if there are that many.
    pub fn nth_active(&self, n_expert: usize, rank: usize) -> Option<usize> {
        match *self {
            ExpertMask::All | ExpertMask::First(_) => (rank < self.limit(n_expert)).then_some(rank),
            ExpertMask::Bits(bits) => {
                let mut left = rank;
                for (i, &w) in bits.iter().enumerate() {
                    let ones = w.count_ones() as usize;
                    if left < ones {
                        let mut w = w;
                        for _ in 0..left {
                            w &= w - 1;
                        }
                        let e = i * 64 + w.trailing_zeros() as usize;
                        return (e < n_expert).then_some(e);
                    }
                    left -= ones;
                }
                None
            }
        }
    }
}

//! [`PeerConfig`]: the shape and the choices of a PEER layer, all read from the checkpoint
//! (peer-pytorch's defaults differ from the paper's, so nothing is assumed).

use crate::moe::Activation;
use crate::{Error, Result};

/// Most candidates one top-k list holds: the per-half top-k and the per-head final k are
/// both at most this (PEER uses 16, product-key memory 32).
pub const MAX_TOPK: usize = 64;

/// Largest sub-key count n, so that every expert id `i · n + j` of one expert set fits
/// in a `u32` (N ≤ 65 535² ≈ 4.3 · 10⁹).
pub const MAX_KEYS: usize = u16::MAX as usize;

/// How the two sub-key indices (i from the first query half, j from the second) make an
/// expert id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexMajor {
    /// `i · n + j`: peer-pytorch's `PEER` and product-key-memory.
    First,
    /// `j · n + i`: peer-pytorch's generic `PK` module.
    Second,
}

impl IndexMajor {
    /// The expert id of sub-keys `i` (first half) and `j` (second half) out of `n` each.
    /// Exact for `i, j < n ≤ MAX_KEYS`; wraps (never panics) beyond.
    #[inline]
    pub fn expert(self, i: u32, j: u32, n: u32) -> u32 {
        let (major, minor) = match self {
            IndexMajor::First => (i, j),
            IndexMajor::Second => (j, i),
        };
        major.wrapping_mul(n).wrapping_add(minor)
    }
}

/// What turns a head's k retrieved scores into expert weights (peer-pytorch's
/// `score_activation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreActivation {
    /// Softmax over the head's k scores (the paper; peer-pytorch with
    /// `non_competing_scores=False`).
    Softmax,
    /// `sigmoid(s)` per score (the paper's alternative).
    Sigmoid,
    /// `max(s, 0)` per score (peer-pytorch's default, `non_competing_scores=True`).
    Relu,
}

impl ScoreActivation {
    /// Writes the weights of `scores` (rank order) into `weights[..scores.len()]`.
    /// Softmax subtracts the maximum and sums in rank order, in f32.
    pub fn apply(self, scores: &[f32], weights: &mut [f32]) {
        let len = scores.len().min(weights.len());
        let weights = &mut weights[..len];
        match self {
            ScoreActivation::Softmax => {
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let mut sum = 0.0f32;
                for (w, &s) in weights.iter_mut().zip(scores) {
                    *w = libm::expf(s - max);
                    sum += *w;
                }
                // sum ≥ 1 (the maximum contributes exp(0)) unless every score is -inf.
                let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                for w in weights.iter_mut() {
                    *w *= inv;
                }
            }
            ScoreActivation::Sigmoid => {
                for (w, &s) in weights.iter_mut().zip(scores) {
                    *w = crate::moe::ffn::sigmoid(s);
                }
            }
            ScoreActivation::Relu => {
                for (w, &s) in weights.iter_mut().zip(scores) {
                    *w = s.max(0.0);
                }
            }
        }
    }
}

/// The shape of a PEER layer and the choices its checkpoint made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerConfig {
    /// Model width d (input and output length, and the length of every u and v row).
    pub n_embd: usize,
    /// Retrieval heads H.
    pub n_head: usize,
    /// Experts N per expert set (a perfect square n²).
    pub n_expert: usize,
    /// Length of one sub-key and of one query half (peer-pytorch's `dim_key`), so a full
    /// key and a head's query have 2 · `key_length` elements.
    pub key_length: usize,
    /// Sub-keys kept per query half before the candidate sums (peer-pytorch's
    /// `product_key_topk`).
    pub product_key_topk: usize,
    /// Experts kept per head out of the k² candidates (16 in the paper, 1 in peer-pytorch
    /// with `non_competing_scores=True`). Exact whenever it is ≤ `product_key_topk`.
    pub experts_per_head: usize,
    /// Scores to weights.
    pub score_activation: ScoreActivation,
    /// Sub-key indices to expert id.
    pub index_major: IndexMajor,
    /// One sub-key table for all heads instead of one per head.
    pub shared_keys: bool,
    /// One expert set (N rows of u and of v) per head, head h at rows `h·N..(h+1)·N`
    /// (peer-pytorch's `separate_embed_per_head`).
    pub separate_embed_per_head: bool,
    /// The expert nonlinearity (`nn.GELU()`, exact erf, by default).
    pub activation: Activation,
    /// ε of the query BatchNorm, when the layer has one.
    pub query_norm_epsilon: f32,
}

impl PeerConfig {
    /// Sub-keys per half, n = √N (0 when N is not a square; [`validate`](Self::validate)
    /// rejects that).
    pub fn n_keys(&self) -> usize {
        let n = isqrt(self.n_expert as u64);
        if n.checked_mul(n) == Some(self.n_expert as u64) {
            n as usize
        } else {
            0
        }
    }

    /// Length of the projected query: two halves of `key_length` per head, ordered
    /// `(half, head, element)` with the half outermost (peer-pytorch's `(p h d)`).
    pub fn query_length(&self) -> Option<usize> {
        self.n_head.checked_mul(self.key_length)?.checked_mul(2)
    }

    /// Rows of each expert table: N, or H · N with one expert set per head.
    pub fn expert_rows(&self) -> Option<usize> {
        if self.separate_embed_per_head {
            self.n_expert.checked_mul(self.n_head)
        } else {
            Some(self.n_expert)
        }
    }

    /// Sub-key tables: H, or 1 when shared.
    pub fn key_sets(&self) -> usize {
        if self.shared_keys { 1 } else { self.n_head }
    }

    /// Checks that the configuration can run.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason| Err(Error::InvalidPeerConfig { reason });
        if self.n_embd == 0 || self.n_head == 0 || self.key_length == 0 {
            return invalid("embedding length, head count and key length must be positive");
        }
        if self.n_expert == 0 {
            return invalid("expert count must be positive");
        }
        let n = self.n_keys();
        if n == 0 {
            return Err(Error::ExpertCountNotSquare {
                n_expert: self.n_expert as u64,
            });
        }
        if n > MAX_KEYS {
            return invalid("more than 65535 sub-keys per half");
        }
        let k = self.product_key_topk;
        if k == 0 || k > n || k > MAX_TOPK {
            return invalid("product_key_topk must be between 1 and min(64, sqrt(expert_count))");
        }
        let k_final = self.experts_per_head;
        if k_final == 0 || k_final > k * k || k_final > MAX_TOPK {
            return invalid("experts_per_head must be between 1 and min(64, product_key_topk^2)");
        }
        if !(self.query_norm_epsilon.is_finite() && self.query_norm_epsilon >= 0.0) {
            return invalid("query_norm_epsilon must be finite and non-negative");
        }
        if self.query_length().is_none() || self.expert_rows().is_none() {
            return invalid("layer too large to address");
        }
        Ok(())
    }
}

/// ⌊√x⌋, exactly, without floating point.
pub(crate) fn isqrt(x: u64) -> u64 {
    if x < 2 {
        return x;
    }
    // Newton from above: starts at a power of two ≥ √x and decreases monotonically.
    let mut r = 1u64 << (64 - x.leading_zeros()).div_ceil(2);
    loop {
        let next = (r + x / r) / 2;
        if next >= r {
            return r;
        }
        r = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isqrt_is_exact() {
        for x in (0..100_000u64).chain([u64::MAX, u64::MAX - 1, (1 << 40) - 1, 1 << 40]) {
            let r = isqrt(x);
            assert!(r * r <= x, "{x}");
            assert!((r + 1).checked_mul(r + 1).is_none_or(|s| s > x), "{x}");
        }
    }

    #[test]
    fn softmax_of_one_score_is_one() {
        let mut w = [0.0; 1];
        ScoreActivation::Softmax.apply(&[-3.5], &mut w);
        assert_eq!(w, [1.0]);
    }
}

//! Reference PEER layer (plain f32): the specification [`crate::peer::PeerLayer`] is
//! tested against.
//!
//! Retrieval is brute force: every one of the N = n² full keys `[c_a ; c'_b]` is scored
//! against the head's whole query `[q1 ; q2]` as one dot product of 2·d_key terms, and the
//! best `k_final` are kept, ordered by (score descending, expert id ascending), NaN as
//! -inf. No product-key shortcut, so it also checks that the shortcut is exact.
//!
//! ```text
//! x   = x · √d / max(‖x‖, 1e-12) · w_norm                        (with a pre-norm)
//! q   = W_q x + b;  q ← (q - μ) / √(σ² + ε) · γ + β                (bias, BatchNorm optional)
//! I_h = top_{k_final} over i < N of q_h · key_h(i)
//! out = Σ_h Σ_{i ∈ I_h} s(S_h)_i · act(u_{o_h + i} · x) · v_{o_h + i}
//! ```
//!
//! with `o_h = h·N` for separate expert sets, else 0, and `s` the score activation over
//! the head's k_final scores. Sums run in index order, heads then ranks, in f32.

use crate::peer::{IndexMajor, MAX_TOPK, PeerConfig, Scored};
use crate::{Error, Result};

/// Inference BatchNorm parameters of the query, each of the query length.
#[derive(Clone, Copy, Debug)]
pub struct BatchNorm<'a> {
    /// γ (`None`: 1).
    pub weight: Option<&'a [f32]>,
    /// β (`None`: 0).
    pub bias: Option<&'a [f32]>,
    /// Running mean.
    pub running_mean: &'a [f32],
    /// Running variance.
    pub running_var: &'a [f32],
}

/// A PEER layer with f32 weights (dequantize GGUF tensors with
/// [`crate::reference::moe::dequantize`]).
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    /// Shapes and choices.
    pub config: PeerConfig,
    /// Query projection: `query_length` rows of `n_embd`.
    pub query: &'a [f32],
    /// Query bias.
    pub query_bias: Option<&'a [f32]>,
    /// Query BatchNorm.
    pub query_norm: Option<BatchNorm<'a>>,
    /// Pre-norm multiplier (`n_embd`).
    pub norm: Option<&'a [f32]>,
    /// Sub-keys `[set][i][half][d_key]`.
    pub keys: &'a [f32],
    /// u rows (`expert_rows × n_embd`).
    pub down: &'a [f32],
    /// v rows (`expert_rows × n_embd`).
    pub up: &'a [f32],
}

/// The best experts of one head, best first.
pub type Retrieved = heapless::Vec<Scored, MAX_TOPK>;

/// `Σ a_i b_i` in index order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// Whether `a` ranks before `b`: higher score, then lower index.
fn before(a: &Scored, b: &Scored) -> bool {
    a.score > b.score || (a.score == b.score && a.index < b.index)
}

/// Keeps the best `k` of `list` after adding `item`.
fn offer(list: &mut Retrieved, k: usize, score: f32, index: u32) {
    let score = if score.is_nan() {
        f32::NEG_INFINITY
    } else {
        score
    };
    let item = Scored { score, index };
    let pos = list
        .iter()
        .position(|x| before(&item, x))
        .unwrap_or(list.len());
    if pos < k {
        if list.len() == k {
            list.pop();
        }
        // Room was made above (k ≤ MAX_TOPK).
        let _ = list.insert(pos, item);
    }
}

/// The best `k_final` of all n² sums `first[a] + second[b]` (sub-key scores of one head),
/// expert id by `major`: the brute-force twin of
/// [`crate::peer::product_key_topk`] on the same f32 sums.
pub fn brute_force_topk(
    first: &[f32],
    second: &[f32],
    major: IndexMajor,
    k_final: usize,
) -> Retrieved {
    let n = first.len() as u32;
    let k = k_final.min(MAX_TOPK);
    let mut list = Retrieved::new();
    for (a, &sa) in first.iter().enumerate() {
        for (b, &sb) in second.iter().enumerate() {
            offer(&mut list, k, sa + sb, major.expert(a as u32, b as u32, n));
        }
    }
    list
}

impl Peer<'_> {
    /// Floats of scratch [`forward_token`](Self::forward_token) needs: the normalised
    /// input and the query.
    pub fn scratch_len(&self) -> usize {
        self.config.n_embd + self.config.query_length().unwrap_or(0)
    }

    fn check(&self) -> Result<()> {
        self.config.validate()?;
        let c = &self.config;
        let (d, q_len) = (c.n_embd, c.query_length().unwrap_or(0));
        let rows = c.expert_rows().unwrap_or(0);
        let keys = (c.key_sets() * c.n_keys() * 2).saturating_mul(c.key_length);
        let opt = |s: Option<&[f32]>, n: usize| (s.map_or(n, <[f32]>::len), n);
        let bn = self.query_norm;
        let sizes = [
            (self.query.len(), q_len.saturating_mul(d)),
            (self.keys.len(), keys),
            (self.down.len(), rows.saturating_mul(d)),
            (self.up.len(), rows.saturating_mul(d)),
            opt(self.query_bias, q_len),
            opt(self.norm, d),
            opt(bn.map(|b| b.running_mean), q_len),
            opt(bn.map(|b| b.running_var), q_len),
            opt(bn.and_then(|b| b.weight), q_len),
            opt(bn.and_then(|b| b.bias), q_len),
        ];
        for (actual, expected) in sizes {
            if actual != expected {
                return Err(Error::LengthMismatch { expected, actual });
            }
        }
        Ok(())
    }

    /// The input after the pre-norm (a copy without one).
    fn normalize(&self, x: &[f32], xn: &mut [f32]) {
        match self.norm {
            Some(w) => {
                let norm = libm::sqrtf(dot(x, x)).max(1e-12);
                let scale = libm::sqrtf(x.len() as f32);
                for ((o, &x), &w) in xn.iter_mut().zip(x).zip(w) {
                    *o = x / norm * scale * w;
                }
            }
            None => xn.copy_from_slice(x),
        }
    }

    /// The query of a normalised input: projection, bias, BatchNorm.
    fn query(&self, xn: &[f32], q: &mut [f32]) {
        let d = self.config.n_embd;
        let eps = self.config.query_norm_epsilon;
        for (c, (q, row)) in q.iter_mut().zip(self.query.chunks_exact(d)).enumerate() {
            *q = dot(row, xn) + self.query_bias.map_or(0.0, |b| b[c]);
            if let Some(bn) = &self.query_norm {
                let gamma = bn.weight.map_or(1.0, |w| w[c]);
                let beta = bn.bias.map_or(0.0, |b| b[c]);
                *q =
                    (*q - bn.running_mean[c]) / libm::sqrtf(bn.running_var[c] + eps) * gamma + beta;
            }
        }
    }

    /// Head `head`'s best `k_final` experts (ids in `0..N`) for the projected query `q`
    /// (the query length), by brute force over all N full keys.
    pub fn retrieve(&self, q: &[f32], head: usize) -> Result<Retrieved> {
        self.check()?;
        let c = &self.config;
        let q_len = c.query_length().unwrap_or(0);
        if q.len() != q_len {
            return Err(Error::LengthMismatch {
                expected: q_len,
                actual: q.len(),
            });
        }
        if head >= c.n_head {
            return Err(Error::InvalidPeerConfig {
                reason: "head index out of range",
            });
        }
        let (n, dk, h) = (c.n_keys(), c.key_length, c.n_head);
        let q1 = &q[head * dk..(head + 1) * dk];
        let q2 = &q[(h + head) * dk..(h + head + 1) * dk];
        let set = if c.shared_keys { 0 } else { head };
        let sub_key = |i: usize, half: usize| {
            let at = ((set * n + i) * 2 + half) * dk;
            &self.keys[at..at + dk]
        };
        let mut list = Retrieved::new();
        for a in 0..n {
            for b in 0..n {
                // One dot product over the concatenated key [c_a ; c'_b].
                let terms = q1
                    .iter()
                    .zip(sub_key(a, 0))
                    .chain(q2.iter().zip(sub_key(b, 1)));
                let score: f32 = terms.map(|(q, k)| q * k).sum();
                let id = c.index_major.expert(a as u32, b as u32, n as u32);
                offer(&mut list, c.experts_per_head, score, id);
            }
        }
        Ok(list)
    }

    /// `out = PEER(x)` for one token; `scratch` holds [`scratch_len`](Self::scratch_len)
    /// floats. `on_head` sees each head's retrieved experts and weights.
    pub fn forward_token(
        &self,
        x: &[f32],
        out: &mut [f32],
        scratch: &mut [f32],
        mut on_head: impl FnMut(usize, &Retrieved, &[f32]),
    ) -> Result<()> {
        self.check()?;
        let c = &self.config;
        let d = c.n_embd;
        for (actual, expected) in [
            (x.len(), d),
            (out.len(), d),
            (scratch.len(), self.scratch_len()),
        ] {
            if actual != expected {
                return Err(Error::LengthMismatch { expected, actual });
            }
        }
        let (xn, q) = scratch.split_at_mut(d);
        self.normalize(x, xn);
        self.query(xn, q);
        out.fill(0.0);
        for head in 0..c.n_head {
            let experts = self.retrieve(q, head)?;
            let mut scores = [0.0f32; MAX_TOPK];
            for (s, e) in scores.iter_mut().zip(&experts) {
                *s = e.score;
            }
            let mut weights = [0.0f32; MAX_TOPK];
            c.score_activation
                .apply(&scores[..experts.len()], &mut weights);
            on_head(head, &experts, &weights[..experts.len()]);
            let offset = if c.separate_embed_per_head {
                head * c.n_expert
            } else {
                0
            };
            for (e, &g) in experts.iter().zip(&weights) {
                let row = (offset + e.index as usize) * d;
                let z = c.activation.apply(dot(&self.down[row..row + d], xn));
                for (o, &v) in out.iter_mut().zip(&self.up[row..row + d]) {
                    *o += g * z * v;
                }
            }
        }
        Ok(())
    }
}

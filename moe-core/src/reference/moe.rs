//! Reference MoE layer (plain f32): the specification [`crate::moe::MoeLayer`] is tested
//! against.
//!
//! Written to be read, not to be fast. Weights are f32 slices (dequantize a GGUF tensor
//! with [`dequantize`]); capacity is decided pair by pair straight from its definition
//! (quadratic in the batch); each routed pair runs its expert on its own; sums run in rank
//! order in f32.
//!
//! For a batch `x_0..x_{T-1}` with selections `(e_{t,j}, w_{t,j})`:
//!
//! ```text
//! out_t = Σ_j kept(t, j) · w_{t,j} · Expert_{e_{t,j}}(x_t)  +  g_t · Shared(x_t)
//! Expert(x) = down · (act(gate · x) ⊙ (up · x))      (gated)
//!           = down · act(up · x)                    (two-matrix)
//! g_t = 1 (always-on shared expert) or sigmoid(w_s · x_t) (gated), 0 without one
//! ```
//!
//! Selections come from the caller or from [`route`], which routes token by token with
//! [`crate::reference::router`] (the batch at once for S-BASE).
//!
//! `kept(t, j)` is 1 without a capacity limit. With capacity C, pairs are ranked by
//! (slot j, then token priority: batch position, or descending top-1 weight with ties to
//! the earlier token) and a pair is kept iff fewer than C pairs of the same expert rank
//! before it. Dropped pairs contribute zero; surviving weights are not renormalised.

use crate::moe::capacity::{CapacityPolicy, DropPriority};
use crate::moe::ffn::{Activation, sigmoid};
use crate::quant::dequantize_row;
use crate::reference::router::{self as reference_router, Inputs};
use crate::router::{Method, RouterConfig, Selection};
use crate::tensor::TensorView;
use crate::{Error, Result};

/// Dequantizes a whole tensor into `dst` (`dst.len()` = its element count).
pub fn dequantize(view: &TensorView<'_>, dst: &mut [f32]) -> Result<()> {
    let row_len = view.row_len() as usize;
    if dst.len() as u64 != view.n_elements() || row_len == 0 {
        return Err(Error::LengthMismatch {
            expected: view.n_elements() as usize,
            actual: dst.len(),
        });
    }
    for (src, dst) in view
        .data()
        .chunks_exact(view.row_bytes())
        .zip(dst.chunks_exact_mut(row_len))
    {
        dequantize_row(view.ty(), src, dst)?;
    }
    Ok(())
}

/// One f32 FFN: `gate` and `up` hold `n_ff` rows of `n_embd`, `down` holds `n_embd` rows
/// of `n_ff` (GGUF order: `[n_embd, n_ff]` and `[n_ff, n_embd]`).
#[derive(Clone, Copy, Debug)]
pub struct Ffn<'a> {
    /// Gate rows (`None`: the two-matrix form).
    pub gate: Option<&'a [f32]>,
    /// Up rows.
    pub up: &'a [f32],
    /// Down rows.
    pub down: &'a [f32],
    /// Model width.
    pub n_embd: usize,
    /// Hidden width.
    pub n_ff: usize,
    /// The nonlinearity.
    pub activation: Activation,
}

/// `Σ a_i b_i` in index order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

impl Ffn<'_> {
    /// `y = FFN(x)`, using `h` (length `n_ff`) for the intermediate row.
    pub fn forward(&self, x: &[f32], h: &mut [f32], y: &mut [f32]) -> Result<()> {
        let (d, f) = (self.n_embd, self.n_ff);
        let sizes = [
            (x.len(), d),
            (h.len(), f),
            (y.len(), d),
            (self.up.len(), d * f),
            (self.down.len(), d * f),
            (self.gate.map_or(d * f, <[f32]>::len), d * f),
        ];
        for (actual, expected) in sizes {
            if actual != expected || d == 0 || f == 0 {
                return Err(Error::LengthMismatch { expected, actual });
            }
        }
        for (r, h) in h.iter_mut().enumerate() {
            let up = dot(&self.up[r * d..(r + 1) * d], x);
            *h = match self.gate {
                Some(gate) => self.activation.apply(dot(&gate[r * d..(r + 1) * d], x)) * up,
                None => self.activation.apply(up),
            };
        }
        for (j, y) in y.iter_mut().enumerate() {
            *y = dot(&self.down[j * f..(j + 1) * f], h);
        }
        Ok(())
    }
}

/// Routed experts as f32 stacks in GGUF order: expert `e`'s gate/up rows start at
/// `e · n_ff · n_embd`, its down rows at `e · n_embd · n_ff`.
#[derive(Clone, Copy, Debug)]
pub struct Experts<'a> {
    /// Gate stack (`None`: two-matrix experts).
    pub gate: Option<&'a [f32]>,
    /// Up stack.
    pub up: &'a [f32],
    /// Down stack.
    pub down: &'a [f32],
    /// Model width.
    pub n_embd: usize,
    /// Hidden width of one expert.
    pub n_ff: usize,
    /// Number of experts.
    pub n_expert: usize,
    /// The nonlinearity.
    pub activation: Activation,
}

impl<'a> Experts<'a> {
    /// Expert `e`.
    pub fn expert(&self, e: usize) -> Result<Ffn<'a>> {
        let size = self.n_embd * self.n_ff;
        let part = |stack: &'a [f32]| {
            stack
                .get(e * size..(e + 1) * size)
                .ok_or(Error::ExpertOutOfRange {
                    expert: e as i64,
                    n_expert: self.n_expert as u64,
                })
        };
        if e >= self.n_expert {
            return Err(Error::ExpertOutOfRange {
                expert: e as i64,
                n_expert: self.n_expert as u64,
            });
        }
        Ok(Ffn {
            gate: self.gate.map(part).transpose()?,
            up: part(self.up)?,
            down: part(self.down)?,
            n_embd: self.n_embd,
            n_ff: self.n_ff,
            activation: self.activation,
        })
    }
}

/// The shared expert.
#[derive(Clone, Copy, Debug, Default)]
pub enum Shared<'a> {
    /// None.
    #[default]
    None,
    /// Weight 1.
    AlwaysOn(Ffn<'a>),
    /// Weight `sigmoid(gate · x)`.
    Gated {
        /// The FFN.
        ffn: Ffn<'a>,
        /// The gate vector (`n_embd`).
        gate: &'a [f32],
    },
}

/// The reference layer.
#[derive(Clone, Copy, Debug)]
pub struct Layer<'a> {
    /// Routed experts.
    pub experts: Experts<'a>,
    /// Shared expert.
    pub shared: Shared<'a>,
    /// Capacity policy.
    pub capacity: CapacityPolicy,
    /// Experts per token the layer is sized for (used by the capacity formulas).
    pub k: usize,
}

/// The priority rank of token `t` (0 = placed first) under `priority`.
fn token_rank(selections: &[Selection], t: usize, priority: DropPriority) -> usize {
    match priority {
        DropPriority::Sequence => t,
        DropPriority::BatchPrioritized => {
            let top1 = |u: usize| {
                let w = selections[u]
                    .first()
                    .map_or(f32::NEG_INFINITY, |c| c.weight);
                if w.is_nan() { f32::NEG_INFINITY } else { w }
            };
            (0..selections.len())
                .filter(|&u| top1(u) > top1(t) || (top1(u) == top1(t) && u < t))
                .count()
        }
    }
}

/// Whether slot `j` of token `t` survives `policy` (capacity computed for `k` experts per
/// token among `n_expert`), straight from the definition.
pub fn kept(
    selections: &[Selection],
    t: usize,
    j: usize,
    k: usize,
    n_expert: usize,
    policy: &CapacityPolicy,
) -> Result<bool> {
    let Some(choice) = selections.get(t).and_then(|s| s.get(j)) else {
        return Ok(false);
    };
    let Some(capacity) = policy.limit(selections.len(), k, n_expert)? else {
        return Ok(true);
    };
    let rank = token_rank(selections, t, policy.priority);
    let mut before = 0;
    for (u, sel) in selections.iter().enumerate() {
        for (i, c) in sel.iter().enumerate() {
            let earlier = i < j || (i == j && token_rank(selections, u, policy.priority) < rank);
            if earlier && c.expert == choice.expert {
                before += 1;
            }
        }
    }
    Ok(before < capacity)
}

impl Layer<'_> {
    /// Scratch length [`forward`](Self::forward) needs.
    pub fn scratch_len(&self) -> usize {
        let shared_ff = match self.shared {
            Shared::None => 0,
            Shared::AlwaysOn(f) | Shared::Gated { ffn: f, .. } => f.n_ff,
        };
        self.experts.n_ff.max(shared_ff) + self.experts.n_embd
    }

    /// The layer on `selections.len()` tokens: `hidden` and `out` are `T × n_embd`.
    pub fn forward(
        &self,
        hidden: &[f32],
        selections: &[Selection],
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        let d = self.experts.n_embd;
        let n_tokens = selections.len();
        for actual in [hidden.len(), out.len()] {
            if actual != n_tokens * d {
                return Err(Error::LengthMismatch {
                    expected: n_tokens * d,
                    actual,
                });
            }
        }
        if scratch.len() < self.scratch_len() {
            return Err(Error::LengthMismatch {
                expected: self.scratch_len(),
                actual: scratch.len(),
            });
        }
        let (h, y) = scratch.split_at_mut(scratch.len() - d);
        for t in 0..n_tokens {
            let x = &hidden[t * d..(t + 1) * d];
            let o = &mut out[t * d..(t + 1) * d];
            o.fill(0.0);
            for (j, choice) in selections[t].iter().enumerate() {
                let e = choice.expert as usize;
                let ffn = self.experts.expert(e)?;
                if !kept(
                    selections,
                    t,
                    j,
                    self.k,
                    self.experts.n_expert,
                    &self.capacity,
                )? {
                    continue;
                }
                ffn.forward(x, &mut h[..ffn.n_ff], y)?;
                for (o, y) in o.iter_mut().zip(y.iter()) {
                    *o += choice.weight * y;
                }
            }
            let (ffn, g) = match self.shared {
                Shared::None => continue,
                Shared::AlwaysOn(ffn) => (ffn, 1.0),
                Shared::Gated { ffn, gate } => (ffn, sigmoid(dot(gate, x))),
            };
            ffn.forward(x, &mut h[..ffn.n_ff], y)?;
            for (o, y) in o.iter_mut().zip(y.iter()) {
                *o += g * y;
            }
        }
        Ok(())
    }
}

/// f32 scratch elements [`route`] needs for `n_tokens` tokens: the batch's logits, one
/// dequantized router row, scores and keys, and the Sinkhorn scales.
pub fn route_scratch_len(config: &RouterConfig, n_tokens: usize) -> usize {
    let e = config.n_expert;
    n_tokens * e + config.n_embd + 3 * e + n_tokens
}

/// Routes the `n_tokens = out.len()` rows of `hidden` with the reference router: logits
/// `W · x` in f32 from the dequantized router weight `[n_embd, n_expert]`, then
/// [`reference_router::route_token`] per token (top-k, greedy, hash) or
/// [`reference_router::route_sbase`] over the batch (S-BASE). Noisy gating is not applied.
/// `token_ids` holds one id per token, or is empty (id 0 for every token). `order` holds
/// `n_expert` elements.
#[allow(clippy::too_many_arguments)]
pub fn route(
    config: &RouterConfig,
    weight: &TensorView<'_>,
    inputs: &Inputs<'_>,
    hidden: &[f32],
    token_ids: &[u32],
    out: &mut [Selection],
    scratch: &mut [f32],
    order: &mut [u32],
) -> Result<()> {
    let (d, e, n_tokens) = (config.n_embd, config.n_expert, out.len());
    if d == 0 || e == 0 {
        return Err(Error::InvalidRouterConfig {
            reason: "a router needs n_embd > 0 and n_expert > 0",
        });
    }
    let need = route_scratch_len(config, n_tokens);
    for (actual, expected) in [
        (hidden.len(), n_tokens * d),
        (scratch.len().min(need), need),
        (order.len(), e),
    ] {
        if actual != expected {
            return Err(Error::LengthMismatch { expected, actual });
        }
    }
    let (logits, rest) = scratch.split_at_mut(n_tokens * e);
    let (row, rest) = rest.split_at_mut(d);
    let (scores, rest) = rest.split_at_mut(e);
    let (keys, rest) = rest.split_at_mut(e);
    let (log_d1, rest) = rest.split_at_mut(e);
    let log_d0 = &mut rest[..n_tokens];
    for (x, l) in hidden.chunks_exact(d).zip(logits.chunks_exact_mut(e)) {
        reference_router::logits(weight, x, None, row, l)?;
    }
    if let Method::SBase { .. } = config.method {
        reference_router::route_sbase(config, logits, inputs, log_d0, log_d1, scores, out);
        return Ok(());
    }
    for (t, sel) in out.iter_mut().enumerate() {
        *sel = reference_router::route_token(
            config,
            &logits[t * e..(t + 1) * e],
            token_ids.get(t).copied().unwrap_or(0),
            inputs,
            scores,
            keys,
            order,
        );
    }
    Ok(())
}

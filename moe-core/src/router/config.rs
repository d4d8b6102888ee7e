//! [`RouterConfig`]: every choice that decides which experts a token goes to and with what
//! weight, as plain data (build it by hand, or read it with
//! [`RouterConfig::from_gguf`](crate::router::RouterConfig::from_gguf)).
//!
//! The exact math of each option is written out in [`crate::reference::router`], the
//! executable specification.

use super::MAX_K;
use crate::error::{Error, Result};

/// Most expert groups group-limited routing takes: the chosen groups of a token fit one
/// `u64` bitset. DeepSeek-V2/V3 use 8.
pub const MAX_GROUPS: usize = 64;

/// Router rows dequantized at a time while computing logits: each token's hidden state is
/// read once per block instead of once per expert.
pub(crate) const LOGIT_ROWS: usize = 8;

/// llama.cpp's lower clamp on the sum of top-k weights before renormalising (the smallest
/// normal f16), so a sum near zero never divides.
pub const LLAMA_CPP_MIN_WEIGHT_SUM: f32 = 6.103_515_6e-5;

/// How router logits become expert scores (llama.cpp `expert_gating_func`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreFunc {
    /// Softmax over all (active) experts: Mixtral, Qwen, OLMoE, DeepSeek-V2. Id 1.
    Softmax,
    /// Elementwise sigmoid: DeepSeek-V3. Id 2.
    Sigmoid,
    /// Select on the raw logits, then softmax over the selected ones only (Shazeer 2017,
    /// llama.cpp `SOFTMAX_WEIGHT`). Id 3.
    SoftmaxSelected,
}

impl ScoreFunc {
    /// The score function for llama.cpp's `expert_gating_func` value (0, "none", means
    /// the default softmax).
    pub fn from_gguf(value: u64) -> Result<Self> {
        match value {
            0 | 1 => Ok(ScoreFunc::Softmax),
            2 => Ok(ScoreFunc::Sigmoid),
            3 => Ok(ScoreFunc::SoftmaxSelected),
            _ => Err(Error::UnknownGatingFunc { value }),
        }
    }
}

/// Renormalisation of a token's selected weights (`norm_topk_prob`,
/// `expert_weights_norm`). A denominator that is not positive yields zero weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Normalize {
    /// Weights stay the raw scores (Qwen2-MoE, OLMoE, DeepSeek-V2).
    None,
    /// `w / (sum + epsilon)`: Mixtral and Qwen3 use epsilon 0, DeepSeek-V3 (HF) 1e-20.
    Sum {
        /// Added to the sum.
        epsilon: f32,
    },
    /// `w / max(sum, min_sum)`: llama.cpp, with [`LLAMA_CPP_MIN_WEIGHT_SUM`].
    ClampedSum {
        /// Lower clamp of the sum.
        min_sum: f32,
    },
}

/// How a group of experts is scored in group-limited routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupScore {
    /// The group's best selection score (DeepSeek-V2 device-limited routing).
    Max,
    /// The sum of the group's `m` best selection scores (DeepSeek-V3 node-limited
    /// routing uses 2).
    SumTop(u32),
}

/// Group-limited selection: experts form `n_group` contiguous groups; a token first picks
/// its `topk_group` best groups and then its experts only inside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupLimit {
    /// Number of groups (divides the expert count; at most [`MAX_GROUPS`]).
    pub n_group: u32,
    /// Groups each token may use.
    pub topk_group: u32,
    /// How groups are ranked.
    pub score: GroupScore,
}

/// Where the raw weights of hash-routed experts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashGate {
    /// Every hashed expert gets raw weight 1 (Hash Layers, Roller et al. 2021), then
    /// [`Normalize`] and the scale apply.
    Constant,
    /// The router's scores of the hashed experts (DeepSeek-V4 style); needs the router
    /// weight.
    Scores,
}

/// The routing method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// Token-choice top-k with every option of the config.
    TopK,
    /// Top-1 by selection score with the unnormalised score as weight: BASE layers and
    /// RL-R at inference. Ignores `k` and `normalize`.
    Greedy,
    /// Token id → experts, through the router's hash table or, when it has none, the
    /// seeded hash of [`crate::router::hash`].
    Hash {
        /// Seed of the fallback hash (ignored with a table).
        seed: u64,
        /// Where the weights come from.
        gate: HashGate,
    },
    /// S-BASE (Clark et al. 2022): log-domain Sinkhorn balancing of the batch's logits,
    /// then each token takes the argmax of its row of the balanced plan, with the
    /// unnormalised score as weight. Ignores `k`, `normalize`, groups and the bias.
    SBase {
        /// Most Sinkhorn iterations.
        iterations: u32,
        /// Stop when every row sum is within this (log-)relative error of 1/T.
        tolerance: f32,
    },
}

/// Noisy top-k gating (Shazeer et al. 2017): `H = x·W + N(0,1) · (softplus(x·W_noise) +
/// epsilon)`. A training-time rule, off unless asked for; the normal draws come from the
/// counter-based generator in [`crate::router::noise`], so a seed reproduces a routing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoisyGating {
    /// Seed of the draws.
    pub seed: u64,
    /// Added to the softplus (tensor2tensor uses 1e-2).
    pub epsilon: f32,
}

/// Everything a router needs besides its tensors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouterConfig {
    /// Hidden size (the router weight's row length).
    pub n_embd: usize,
    /// Experts in the layer (router rows), including appended ones.
    pub n_expert: usize,
    /// Experts per token (`expert_used_count`), `1..=min(n_expert, MAX_K)`.
    pub k: usize,
    /// Logits → scores.
    pub score: ScoreFunc,
    /// Renormalisation of the selected weights.
    pub normalize: Normalize,
    /// Routed scaling factor multiplying every weight (`expert_weights_scale`).
    pub scale: f32,
    /// Group-limited selection, if any.
    pub groups: Option<GroupLimit>,
    /// The routing method.
    pub method: Method,
    /// Noisy gating, if any (needs the router's noise weight).
    pub noise: Option<NoisyGating>,
}

impl RouterConfig {
    /// Plain softmax top-k without renormalisation (Qwen2-MoE, OLMoE); change fields with
    /// struct update syntax for the other variants.
    pub fn top_k(n_embd: usize, n_expert: usize, k: usize) -> Self {
        RouterConfig {
            n_embd,
            n_expert,
            k,
            score: ScoreFunc::Softmax,
            normalize: Normalize::None,
            scale: 1.0,
            groups: None,
            method: Method::TopK,
            noise: None,
        }
    }

    /// Mixtral / Qwen3-MoE: softmax, top-k, weights renormalised to sum to 1.
    pub fn mixtral(n_embd: usize, n_expert: usize, k: usize) -> Self {
        RouterConfig {
            normalize: Normalize::Sum { epsilon: 0.0 },
            ..Self::top_k(n_embd, n_expert, k)
        }
    }

    /// Experts each token is routed to: `k`, or 1 for greedy and S-BASE.
    pub fn experts_per_token(&self) -> usize {
        match self.method {
            Method::Greedy | Method::SBase { .. } => 1,
            Method::TopK | Method::Hash { .. } => self.k,
        }
    }

    /// Whether routing reads the router weight (hash routing with constant gates does
    /// not).
    pub fn needs_logits(&self) -> bool {
        !matches!(
            self.method,
            Method::Hash {
                gate: HashGate::Constant,
                ..
            }
        )
    }

    /// Exact number of f32 scratch elements [`Router::route`](super::Router::route) needs
    /// for `n_tokens` tokens (0 for none; saturating: a length that does not fit cannot be
    /// given).
    pub fn scratch_len(&self, n_tokens: usize) -> usize {
        if n_tokens == 0 {
            return 0;
        }
        let logits = n_tokens.saturating_mul(self.n_expert);
        let rows = LOGIT_ROWS.min(self.n_expert) * if self.noise.is_some() { 2 } else { 1 };
        let mut len = self
            .n_embd
            .saturating_mul(rows)
            .saturating_add(logits)
            .saturating_add(self.n_expert.saturating_mul(2));
        if let Method::SBase { .. } = self.method {
            len = len.saturating_add(n_tokens).saturating_add(self.n_expert);
        }
        len
    }

    /// Checks that the configuration can route.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason| Err(Error::InvalidRouterConfig { reason });
        if self.n_embd == 0 {
            return bad("n_embd is 0");
        }
        if self.n_expert == 0 || self.n_expert > u32::MAX as usize {
            return bad("n_expert must be in 1..=u32::MAX");
        }
        if self.k == 0 || self.k > self.n_expert || self.k > MAX_K {
            return bad("k must be in 1..=min(n_expert, MAX_K)");
        }
        if !self.scale.is_finite() {
            return bad("scale is not finite");
        }
        match self.normalize {
            Normalize::None => {}
            Normalize::Sum { epsilon: x } | Normalize::ClampedSum { min_sum: x } => {
                if !(x.is_finite() && x >= 0.0) {
                    return bad("normalisation epsilon must be finite and >= 0");
                }
            }
        }
        if let Some(g) = self.groups {
            let n_group = g.n_group as usize;
            if n_group == 0 || n_group > MAX_GROUPS {
                return bad("n_group must be in 1..=64");
            }
            if !self.n_expert.is_multiple_of(n_group) {
                return bad("n_group does not divide n_expert");
            }
            if g.topk_group == 0 || g.topk_group > g.n_group {
                return bad("topk_group must be in 1..=n_group");
            }
            let per_group = self.n_expert / n_group;
            if self.k > g.topk_group as usize * per_group {
                return bad("k exceeds the experts of topk_group groups");
            }
            if let GroupScore::SumTop(m) = g.score
                && (m == 0 || m as usize > per_group.min(MAX_K))
            {
                return bad("group SumTop(m) needs 1 <= m <= min(experts per group, MAX_K)");
            }
        }
        if let Method::SBase {
            iterations,
            tolerance,
        } = self.method
            && (iterations == 0 || !(tolerance.is_finite() && tolerance >= 0.0))
        {
            return bad("S-BASE needs iterations >= 1 and a finite tolerance >= 0");
        }
        if let Some(n) = self.noise
            && !(n.epsilon.is_finite() && n.epsilon >= 0.0)
        {
            return bad("noise epsilon must be finite and >= 0");
        }
        Ok(())
    }
}

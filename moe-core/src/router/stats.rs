//! [`RouterStats`]: load and confidence of a router over any number of batches, kept in
//! caller memory.
//!
//! Probabilities here are always the softmax over the active experts' logits, whatever
//! the score function, so the Switch load-balancing value and the entropies compare
//! across routers.

use crate::error::{Error, Result};

/// Router statistics accumulated across [`Router::route`](super::Router::route) calls.
#[derive(Debug)]
pub struct RouterStats<'s> {
    tokens_per_expert: &'s mut [u32],
    drops_per_expert: &'s mut [u32],
    prob_sum: &'s mut [f64],
    weight_sum: &'s mut [f64],
    tokens: u64,
    prob_tokens: u64,
    assignments: u64,
    drops: u64,
    z_sum: f64,
    entropy_sum: f64,
}

impl<'s> RouterStats<'s> {
    /// Statistics for a layer of `tokens_per_expert.len()` experts; every slice has that
    /// length and is zeroed.
    pub fn new(
        tokens_per_expert: &'s mut [u32],
        drops_per_expert: &'s mut [u32],
        prob_sum: &'s mut [f64],
        weight_sum: &'s mut [f64],
    ) -> Result<Self> {
        let n = tokens_per_expert.len();
        for len in [drops_per_expert.len(), prob_sum.len(), weight_sum.len()] {
            if len != n {
                return Err(Error::LengthMismatch {
                    expected: n,
                    actual: len,
                });
            }
        }
        let mut stats = RouterStats {
            tokens_per_expert,
            drops_per_expert,
            prob_sum,
            weight_sum,
            tokens: 0,
            prob_tokens: 0,
            assignments: 0,
            drops: 0,
            z_sum: 0.0,
            entropy_sum: 0.0,
        };
        stats.reset();
        Ok(stats)
    }

    /// Forgets everything recorded.
    pub fn reset(&mut self) {
        self.tokens_per_expert.fill(0);
        self.drops_per_expert.fill(0);
        self.prob_sum.fill(0.0);
        self.weight_sum.fill(0.0);
        self.tokens = 0;
        self.prob_tokens = 0;
        self.assignments = 0;
        self.drops = 0;
        self.z_sum = 0.0;
        self.entropy_sum = 0.0;
    }

    /// Experts of the layer.
    pub fn n_expert(&self) -> usize {
        self.tokens_per_expert.len()
    }

    /// Tokens routed.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// (token, expert) assignments made by the router (before any capacity drop).
    pub fn assignments(&self) -> u64 {
        self.assignments
    }

    /// Assignments routed to each expert.
    pub fn tokens_per_expert(&self) -> &[u32] {
        self.tokens_per_expert
    }

    /// Assignments dropped by capacity, per expert.
    pub fn drops_per_expert(&self) -> &[u32] {
        self.drops_per_expert
    }

    /// Assignments dropped by capacity in all.
    pub fn drops(&self) -> u64 {
        self.drops
    }

    /// Counts one (token, `expert`) assignment dropped for capacity; dispatch calls it.
    pub fn record_drop(&mut self, expert: u32) -> Result<()> {
        let n_expert = self.n_expert() as u64;
        let slot =
            self.drops_per_expert
                .get_mut(expert as usize)
                .ok_or(Error::ExpertOutOfRange {
                    expert: i64::from(expert),
                    n_expert,
                })?;
        *slot = slot.saturating_add(1);
        self.drops += 1;
        Ok(())
    }

    /// Records one token: its softmax probabilities `probs` over the active experts
    /// `active` (when it had a finite logit, with `lse` the logsumexp of its logits) and
    /// its choices `(expert, weight)`.
    pub(crate) fn record_token(
        &mut self,
        probs: Option<(&[f32], f32)>,
        active: impl Iterator<Item = usize>,
        choices: impl Iterator<Item = (u32, f32)>,
    ) {
        self.tokens += 1;
        if let Some((p, lse)) = probs
            && lse.is_finite()
        {
            self.prob_tokens += 1;
            self.z_sum += f64::from(lse) * f64::from(lse);
            let mut h = 0.0f64;
            for e in active {
                let pe = f64::from(p[e]);
                self.prob_sum[e] += pe;
                if pe > 0.0 {
                    h -= pe * libm::log(pe);
                }
            }
            self.entropy_sum += h;
        }
        for (e, w) in choices {
            if let Some(n) = self.tokens_per_expert.get_mut(e as usize) {
                *n = n.saturating_add(1);
                self.weight_sum[e as usize] += f64::from(w);
                self.assignments += 1;
            }
        }
    }

    /// Mean router probability of `expert` (`P_i`), over tokens with a finite logit.
    pub fn mean_probability(&self, expert: usize) -> f64 {
        match self.prob_sum.get(expert) {
            Some(&s) if self.prob_tokens > 0 => s / self.prob_tokens as f64,
            _ => 0.0,
        }
    }

    /// Fraction of assignments that went to `expert` (`f_i`).
    pub fn fraction(&self, expert: usize) -> f64 {
        match self.tokens_per_expert.get(expert) {
            Some(&n) if self.assignments > 0 => f64::from(n) / self.assignments as f64,
            _ => 0.0,
        }
    }

    /// Mean combine weight of the assignments to `expert` (0 when it got none).
    pub fn mean_weight(&self, expert: usize) -> f64 {
        match (
            self.tokens_per_expert.get(expert),
            self.weight_sum.get(expert),
        ) {
            (Some(&n), Some(&w)) if n > 0 => w / f64::from(n),
            _ => 0.0,
        }
    }

    /// Mean combine weight over all assignments.
    pub fn mean_weight_overall(&self) -> f64 {
        if self.assignments == 0 {
            return 0.0;
        }
        self.weight_sum.iter().sum::<f64>() / self.assignments as f64
    }

    /// The Switch load-balancing value `N · Σ f_i P_i` (1 at perfect balance; `f_i` counts
    /// all k choices, so top-k routers are on the same scale).
    pub fn load_balancing(&self) -> f64 {
        let n = self.n_expert() as f64;
        n * (0..self.n_expert())
            .map(|e| self.fraction(e) * self.mean_probability(e))
            .sum::<f64>()
    }

    /// Router z-loss (ST-MoE): mean over tokens of `logsumexp(logits)²`.
    pub fn z_loss(&self) -> f64 {
        if self.prob_tokens == 0 {
            0.0
        } else {
            self.z_sum / self.prob_tokens as f64
        }
    }

    /// Mean entropy (nats) of a token's router distribution.
    pub fn router_entropy(&self) -> f64 {
        if self.prob_tokens == 0 {
            0.0
        } else {
            self.entropy_sum / self.prob_tokens as f64
        }
    }

    /// Entropy (nats) of the expert load distribution `f`; `ln N` is perfect balance.
    pub fn load_entropy(&self) -> f64 {
        (0..self.n_expert())
            .map(|e| self.fraction(e))
            .filter(|&f| f > 0.0)
            .map(|f| -f * libm::log(f))
            .sum()
    }
}

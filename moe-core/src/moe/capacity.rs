//! Expert capacity: how many (token, slot) pairs one expert accepts per batch, and which
//! pairs are dropped first when more arrive.
//!
//! Implementations disagree on the formula (Mesh-TF and flaxformer do not multiply by k,
//! Megatron and Tutel do), so the formula is an enum, not a number. Modern decoder LLMs
//! (Mixtral, Qwen, DeepSeek, OLMoE) are dropless at inference; the capacity variants
//! reproduce Switch/GShard-style training-time routing.

use crate::{Error, Result};

/// The capacity formula. `T` = tokens in the batch, `k` = experts per token, `E` = experts,
/// `cf` = capacity factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Capacity {
    /// No limit: every pair runs (inference in every modern MoE decoder).
    Dropless,
    /// Megatron-LM `get_capacity(T·k, E, cf)`: `ceil(T·k / E · cf)`.
    Megatron {
        /// Capacity factor.
        factor: f32,
    },
    /// Mesh-TensorFlow / GShard / Switch: `min(T, floor(T · cf / E))` (no factor k: `cf`
    /// counts slots relative to `T / E`).
    MeshTf {
        /// Capacity factor (1.25 in training, 2.0 at evaluation in the Switch configs).
        factor: f32,
    },
    /// flaxformer `MoeLayer`: `round(cf · T / E)`, rounding halves to even as Python does.
    Flaxformer {
        /// Capacity factor.
        factor: f32,
    },
    /// Tutel `extract_critical`: `k · floor(cf · ceil(T / E))`.
    Tutel {
        /// Capacity factor.
        factor: f32,
    },
    /// An absolute number of pairs per expert (HF SwitchTransformers `expert_capacity`).
    Fixed(u32),
}

/// Which pairs keep their place when an expert is over capacity. In both orders every
/// first choice is placed before any second choice (GShard, Mesh-TF, flaxformer, Tutel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropPriority {
    /// Earlier tokens win (Mesh-TF, Switch, Tutel's default).
    Sequence,
    /// Batch-prioritised routing (V-MoE): tokens ordered by descending top-1 weight, ties
    /// to the earlier token.
    BatchPrioritized,
}

/// A capacity formula, a floor under it, and the drop order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CapacityPolicy {
    /// The formula.
    pub capacity: Capacity,
    /// A lower bound on every formula but [`Capacity::Dropless`] (Mesh-TF and flaxformer
    /// use 4, Megatron's `min_capacity` defaults to none = 0).
    pub min_capacity: u32,
    /// Which pairs survive.
    pub priority: DropPriority,
}

impl Default for CapacityPolicy {
    fn default() -> Self {
        Self::DROPLESS
    }
}

impl CapacityPolicy {
    /// No capacity limit.
    pub const DROPLESS: Self = CapacityPolicy {
        capacity: Capacity::Dropless,
        min_capacity: 0,
        priority: DropPriority::Sequence,
    };

    /// The capacity per expert for a batch of `n_tokens` tokens with `k` experts each among
    /// `n_expert`, or `None` for no limit. Values above `n_tokens · k` are clamped to it
    /// (an expert can never receive more).
    pub fn limit(&self, n_tokens: usize, k: usize, n_expert: usize) -> Result<Option<usize>> {
        if n_expert == 0 {
            return Err(Error::InvalidMoeConfig {
                reason: "capacity of a layer without experts",
            });
        }
        let t = n_tokens as f64;
        let e = n_expert as f64;
        let raw = match self.capacity {
            Capacity::Dropless => return Ok(None),
            Capacity::Megatron { factor } => libm::ceil(t * k as f64 / e * check(factor)?),
            Capacity::MeshTf { factor } => libm::floor(t * check(factor)? / e).min(t),
            Capacity::Flaxformer { factor } => libm::rint(check(factor)? * t / e),
            Capacity::Tutel { factor } => {
                k as f64 * libm::floor(check(factor)? * libm::ceil(t / e))
            }
            Capacity::Fixed(c) => c as f64,
        };
        let all = n_tokens.saturating_mul(k);
        // `as` saturates; the value is finite and non-negative here.
        let c = (raw as usize).max(self.min_capacity as usize);
        Ok(Some(c.min(all)))
    }
}

/// How a layer turns its policy into a capacity: [`CapacityPolicy::limit`], or [`no_limit`]
/// for a layer that was never given a policy. Picked once when the layer is built, so a
/// dropless layer never reaches the formulas (and their `f64` arithmetic, which is
/// software on a single-precision FPU).
pub(crate) type LimitFn = fn(&CapacityPolicy, usize, usize, usize) -> Result<Option<usize>>;

/// The capacity of a dropless layer: no limit.
pub(crate) fn no_limit(_: &CapacityPolicy, _: usize, _: usize, _: usize) -> Result<Option<usize>> {
    Ok(None)
}

/// A capacity factor must be a positive finite number.
fn check(factor: f32) -> Result<f64> {
    if factor.is_finite() && factor > 0.0 {
        Ok(factor.into())
    } else {
        Err(Error::InvalidMoeConfig {
            reason: "capacity factor is not a positive finite number",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(capacity: Capacity, min_capacity: u32) -> CapacityPolicy {
        CapacityPolicy {
            capacity,
            min_capacity,
            priority: DropPriority::Sequence,
        }
    }

    #[test]
    fn formulas() {
        // T = 10, k = 2, E = 4.
        let c = |cap, min| policy(cap, min).limit(10, 2, 4).unwrap();
        assert_eq!(c(Capacity::Dropless, 0), None);
        assert_eq!(c(Capacity::Megatron { factor: 1.0 }, 0), Some(5)); // ceil(5.0)
        assert_eq!(c(Capacity::Megatron { factor: 1.1 }, 0), Some(6)); // ceil(5.5)
        assert_eq!(c(Capacity::MeshTf { factor: 1.25 }, 0), Some(3)); // floor(3.125)
        assert_eq!(c(Capacity::MeshTf { factor: 1.25 }, 4), Some(4)); // min capacity
        assert_eq!(c(Capacity::MeshTf { factor: 100.0 }, 0), Some(10)); // min(T, ..)
        assert_eq!(c(Capacity::Flaxformer { factor: 1.0 }, 0), Some(2)); // round(2.5) = 2
        let flax = policy(Capacity::Flaxformer { factor: 1.0 }, 0);
        assert_eq!(flax.limit(14, 2, 4).unwrap(), Some(4)); // round(3.5) = 4
        assert_eq!(c(Capacity::Tutel { factor: 1.0 }, 0), Some(6)); // 2·floor(ceil(2.5))
        assert_eq!(c(Capacity::Fixed(7), 0), Some(7));
        assert_eq!(c(Capacity::Fixed(70), 0), Some(20)); // clamped to T·k
    }

    #[test]
    fn bad_factors_are_errors() {
        for f in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let p = policy(Capacity::Megatron { factor: f }, 0);
            assert!(p.limit(4, 1, 2).is_err());
        }
        assert!(CapacityPolicy::DROPLESS.limit(4, 1, 0).is_err());
    }
}

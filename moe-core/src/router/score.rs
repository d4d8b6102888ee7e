//! Scalar numerics shared by the routers: sigmoid, softplus, and the weight rules.
//!
//! Written once so every method rounds the same way; the reference spells the same math
//! out independently.

use super::config::Normalize;

/// `1 / (1 + e^-x)` without overflow or cancellation on either side.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + libm::expf(-x))
    } else {
        let e = libm::expf(x);
        e / (1.0 + e)
    }
}

/// `ln(1 + e^x)`, exact for large `x` and without overflow.
#[inline]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        libm::log1pf(libm::expf(x))
    }
}

/// A logit as routing reads it: NaN counts as -inf.
#[inline]
pub fn finite_or_neg_inf(x: f32) -> f32 {
    if x.is_nan() { f32::NEG_INFINITY } else { x }
}

/// `exp(x - max)`, with the limits the formula means when `max` is infinite: all mass on
/// the +inf entries, or none at all when everything is -inf.
#[inline]
pub fn shifted_exp(x: f32, max: f32) -> f32 {
    if max == f32::INFINITY {
        if x == f32::INFINITY { 1.0 } else { 0.0 }
    } else if max == f32::NEG_INFINITY {
        0.0
    } else {
        libm::expf(x - max)
    }
}

/// The divisor that renormalises weights summing to `sum`, or `None` when weights stay as
/// they are.
#[inline]
pub fn norm_divisor(normalize: Normalize, sum: f32) -> Option<f32> {
    match normalize {
        Normalize::None => None,
        Normalize::Sum { epsilon } => Some(sum + epsilon),
        Normalize::ClampedSum { min_sum } => Some(if sum > min_sum { sum } else { min_sum }),
    }
}

/// `w / divisor`, or 0 when the divisor is not positive (no mass to share).
#[inline]
pub fn divide(w: f32, divisor: f32) -> f32 {
    if divisor > 0.0 { w / divisor } else { 0.0 }
}

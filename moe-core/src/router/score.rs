//! Scalar numerics shared by the routers: sigmoid, softplus, and the weight rules.
//!
//! Written once so every method rounds the same way; the reference spells the same math
//! out independently.

use super::config::Normalize;

/// `e^x` by Cephes' range reduction and degree-6 polynomial (within 2 ulp of `expf` on
/// `[-87.3, 88.7]`; 0 below, so -inf gives exactly 0). Branch-free integer tricks only, so
/// loops over it vectorise: the softmax over 1024 experts is mostly this.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LO: f32 = -87.336_55;
    const HI: f32 = 88.722_84;
    // Adding 1.5 · 2^23 rounds to an integer whose value sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let t = xc * core::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let y = p * (r * r) + r + 1.0;
    let v = y * f32::from_bits(((ni + 127) as u32) << 23);
    if x < LO { 0.0 } else { v }
}

/// `1 / (1 + e^-x)` through [`exp_fast`], without overflow or cancellation on either
/// side.
#[inline(always)]
pub fn sigmoid_fast(x: f32) -> f32 {
    let e = exp_fast(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 { s } else { e * s }
}

/// Largest value of `v` (-inf when empty); exact, so lane order does not matter.
#[inline]
pub fn max_of(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let (chunks, tail) = v.as_chunks::<8>();
    for c in chunks {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(tail) {
        m = if x > m { x } else { m };
    }
    m
}

/// Sum of `v` in eight lanes.
#[inline]
pub fn sum_of(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (chunks, tail) = v.as_chunks::<8>();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &x in tail {
        s += x;
    }
    s
}

/// [`sum_of`] over only the entries whose bit is set in `bits`, with the lanes assigned by
/// rank among them: the same additions, in the same order, as [`sum_of`] of those entries
/// packed together. So a bitset mask sums exactly like the router without the masked
/// experts, bit for bit.
pub fn sum_of_active(v: &[f32], bits: &[u64]) -> f32 {
    let active = |e: usize| bits.get(e / 64).is_some_and(|w| (w >> (e % 64)) & 1 == 1);
    let n_active = (0..v.len()).filter(|&e| active(e)).count();
    let in_lanes = n_active / 8 * 8;
    let mut acc = [0.0f32; 8];
    let mut tail = [0.0f32; 8];
    let mut rank = 0;
    for (e, &x) in v.iter().enumerate() {
        if active(e) {
            if rank < in_lanes {
                acc[rank % 8] += x;
            } else {
                tail[rank - in_lanes] = x;
            }
            rank += 1;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &x in &tail[..n_active - in_lanes] {
        s += x;
    }
    s
}

/// Softmax of `v` in place (no NaN inside; -inf entries get exactly 0); returns the
/// logsumexp. All mass on the +inf entries if any; all zeros if every entry is -inf.
/// With `bits`, only those entries are summed ([`sum_of_active`]); the others must be -inf.
pub fn softmax_in_place(v: &mut [f32], bits: Option<&[u64]>) -> f32 {
    let m = max_of(v);
    if !m.is_finite() {
        let mut z = 0.0f32;
        for x in v.iter_mut() {
            *x = shifted_exp(*x, m);
            z += *x;
        }
        for x in v.iter_mut() {
            *x = divide(*x, z);
        }
        return m;
    }
    for x in v.iter_mut() {
        *x = exp_fast(*x - m);
    }
    // The max contributes exp(0) = 1, so z >= 1.
    let z = match bits {
        Some(bits) => sum_of_active(v, bits),
        None => sum_of(v),
    };
    for x in v.iter_mut() {
        *x /= z;
    }
    m + libm::logf(z)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_is_within_two_ulp_of_expf() {
        let mut x = -87.0f32;
        let mut worst = 0.0f32;
        while x < 88.0 {
            let (a, b) = (exp_fast(x), libm::expf(x));
            worst = worst.max(((a - b) / b).abs());
            x += 0.000_37;
        }
        assert!(worst < 2.5e-7, "{worst}");
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(-100.0), 0.0);
        assert_eq!(exp_fast(0.0), 1.0);
        assert_eq!(sigmoid_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(sigmoid_fast(f32::INFINITY), 1.0);
        assert!((sigmoid_fast(-3.0) - 1.0 / (1.0 + libm::expf(3.0))).abs() < 1e-7);
    }
}

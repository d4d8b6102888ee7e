//! Scalar reference dot products: the specification every SIMD kernel is tested against.
//!
//! Each function takes a weight row and an activation row as whole blocks of the paired
//! types and returns their dot product. Inside a block the quants are multiplied and
//! summed as integers (exact); each block (or sub-block scale) then costs one float
//! multiply-add, as in ggml. Minimum terms use the activation's precomputed sums (Q8_1's
//! `s`, Q8_K's `bsums`) instead of another pass over the quants.
//!
//! Integer sums cannot overflow `i32` for any bytes: the largest, Q6_K, is bounded by
//! 256 · 128 · 32 · 128 < 2^31.

use crate::quant::{
    float, iq4_nl, iq4_xs, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, q8_1, q8_k,
};
use crate::{Error, Result, TensorType};

/// Checks that the weight and activation rows have the same number of blocks.
fn same_blocks(weights: usize, activations: usize) -> Result<()> {
    if weights == activations {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            expected: weights,
            actual: activations,
        })
    }
}

/// The exact integer dot product of two quant slices of equal length.
fn isum<W: Copy + Into<i32>>(w: &[W], a: &[i8]) -> i32 {
    w.iter()
        .zip(a)
        .map(|(&w, &a)| w.into() * i32::from(a))
        .sum()
}

/// Q4_0 · Q8_0: `Σ_blocks (d_w · d_a) · Σ q_w q_a`.
pub fn dot_q4_0_q8_0(w: &[q4_0::Block], a: &[q8_0::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let sumi = isum(&q4_0::quants(w), &q8_0::quants(a));
        sum += sumi as f32 * (q4_0::d(w) * q8_0::d(a));
    }
    Ok(sum)
}

/// Q5_0 · Q8_0: `Σ_blocks (d_w · d_a) · Σ q_w q_a`.
pub fn dot_q5_0_q8_0(w: &[q5_0::Block], a: &[q8_0::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let sumi = isum(&q5_0::quants(w), &q8_0::quants(a));
        sum += sumi as f32 * (q5_0::d(w) * q8_0::d(a));
    }
    Ok(sum)
}

/// Q8_0 · Q8_0: `Σ_blocks (d_w · d_a) · Σ q_w q_a`.
pub fn dot_q8_0_q8_0(w: &[q8_0::Block], a: &[q8_0::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let sumi = isum(&q8_0::quants(w), &q8_0::quants(a));
        sum += sumi as f32 * (q8_0::d(w) * q8_0::d(a));
    }
    Ok(sum)
}

/// IQ4_NL · Q8_0: `Σ_blocks (d_w · d_a) · Σ K[q_w] q_a` with the codebook values as
/// integers.
pub fn dot_iq4_nl_q8_0(w: &[iq4_nl::Block], a: &[q8_0::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let sumi = isum(&iq4_nl::quants(w), &q8_0::quants(a));
        sum += sumi as f32 * (iq4_nl::d(w) * q8_0::d(a));
    }
    Ok(sum)
}

/// Q4_1 · Q8_1: `Σ_blocks (d_w · d_a) · Σ q_w q_a + m_w · s_a`; the minimum needs only
/// the activation block's stored `s = d_a · Σ q_a`.
pub fn dot_q4_1_q8_1(w: &[q4_1::Block], a: &[q8_1::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let sumi = isum(&q4_1::quants(w), &q8_1::quants(a));
        sum += (q4_1::d(w) * q8_1::d(a)) * sumi as f32 + q4_1::m(w) * q8_1::s(a);
    }
    Ok(sum)
}

/// Q5_1 · Q8_1: `Σ_blocks (d_w · d_a) · Σ q_w q_a + m_w · s_a`.
pub fn dot_q5_1_q8_1(w: &[q5_1::Block], a: &[q8_1::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let sumi = isum(&q5_1::quants(w), &q8_1::quants(a));
        sum += (q5_1::d(w) * q8_1::d(a)) * sumi as f32 + q5_1::m(w) * q8_1::s(a);
    }
    Ok(sum)
}

/// Q2_K · Q8_K: `d_w d_a Σ_k sc_k Σ q_w q_a − dmin_w d_a Σ_k m_k bsum_k` over the 16
/// sub-blocks of 16, which line up with Q8_K's 16 `bsums`.
pub fn dot_q2_k_q8_k(w: &[q2_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let (scales, mins) = q2_k::scales_mins(w);
        let (qw, qa, bsums) = (q2_k::quants(w), q8_k::quants(a), q8_k::bsums(a));
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for k in 0..q2_k::N_SUB {
            let sub = 16 * k..16 * k + 16;
            sumi += i32::from(scales[k]) * isum(&qw[sub.clone()], &qa[sub]);
            summ += i32::from(mins[k]) * i32::from(bsums[k]);
        }
        let d_a = q8_k::d(a);
        sum += (q2_k::d(w) * d_a) * sumi as f32 - (q2_k::dmin(w) * d_a) * summ as f32;
    }
    Ok(sum)
}

/// Q3_K · Q8_K: `d_w d_a Σ_k sc_k Σ q_w q_a` over 16 sub-blocks of 16 with signed scales.
pub fn dot_q3_k_q8_k(w: &[q3_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let scales = q3_k::scales(w);
        let (qw, qa) = (q3_k::quants(w), q8_k::quants(a));
        let mut sumi = 0i32;
        for (k, &scale) in scales.iter().enumerate() {
            let sub = 16 * k..16 * k + 16;
            sumi += i32::from(scale) * isum(&qw[sub.clone()], &qa[sub]);
        }
        sum += (q3_k::d(w) * q8_k::d(a)) * sumi as f32;
    }
    Ok(sum)
}

/// Q4_K · Q8_K: `d_w d_a Σ_s sc_s Σ q_w q_a − dmin_w d_a Σ_s m_s (bsum_2s + bsum_2s+1)`
/// over 8 sub-blocks of 32 (two `bsums` each).
pub fn dot_q4_k_q8_k(w: &[q4_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let (scales, mins) = q4_k::scales_mins(w);
        let (sumi, summ) = k_sums(&scales, &mins, &q4_k::quants(w), a);
        let d_a = q8_k::d(a);
        sum += (q4_k::d(w) * d_a) * sumi as f32 - (q4_k::dmin(w) * d_a) * summ as f32;
    }
    Ok(sum)
}

/// Q5_K · Q8_K: as Q4_K with 5-bit quants.
pub fn dot_q5_k_q8_k(w: &[q5_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let (scales, mins) = q5_k::scales_mins(w);
        let (sumi, summ) = k_sums(&scales, &mins, &q5_k::quants(w), a);
        let d_a = q8_k::d(a);
        sum += (q5_k::d(w) * d_a) * sumi as f32 - (q5_k::dmin(w) * d_a) * summ as f32;
    }
    Ok(sum)
}

/// The scaled quant sum and the minimum sum of a Q4_K/Q5_K block against a Q8_K block:
/// `(Σ_s sc_s Σ q_w q_a, Σ_s m_s (bsum_2s + bsum_2s+1))`.
fn k_sums(scales: &[u8; 8], mins: &[u8; 8], qw: &[u8; 256], a: &q8_k::Block) -> (i32, i32) {
    let (qa, bsums) = (q8_k::quants(a), q8_k::bsums(a));
    let mut sumi = 0i32;
    let mut summ = 0i32;
    for s in 0..8 {
        let sub = 32 * s..32 * s + 32;
        sumi += i32::from(scales[s]) * isum(&qw[sub.clone()], &qa[sub]);
        summ += i32::from(mins[s]) * (i32::from(bsums[2 * s]) + i32::from(bsums[2 * s + 1]));
    }
    (sumi, summ)
}

/// Q6_K · Q8_K: `d_w d_a Σ_k sc_k Σ q_w q_a` over 16 sub-blocks of 16 with signed scales.
pub fn dot_q6_k_q8_k(w: &[q6_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let scales = q6_k::scales(w);
        let (qw, qa) = (q6_k::quants(w), q8_k::quants(a));
        let mut sumi = 0i32;
        for (k, &scale) in scales.iter().enumerate() {
            let sub = 16 * k..16 * k + 16;
            sumi += i32::from(scale) * isum(&qw[sub.clone()], &qa[sub]);
        }
        sum += (q6_k::d(w) * q8_k::d(a)) * sumi as f32;
    }
    Ok(sum)
}

/// IQ4_XS · Q8_K: `d_w d_a Σ_b sc_b Σ K[q_w] q_a` over 8 sub-blocks of 32 with signed
/// scales.
pub fn dot_iq4_xs_q8_k(w: &[iq4_xs::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let scales = iq4_xs::scales(w);
        let (qw, qa) = (iq4_xs::quants(w), q8_k::quants(a));
        let mut sumi = 0i32;
        for (b, &scale) in scales.iter().enumerate() {
            let sub = 32 * b..32 * b + 32;
            sumi += i32::from(scale) * isum(&qw[sub.clone()], &qa[sub]);
        }
        sum += (iq4_xs::d(w) * q8_k::d(a)) * sumi as f32;
    }
    Ok(sum)
}

/// The dot product of two float rows: f32 products summed with Neumaier's compensated
/// summation, so the sum adds no error beyond the products' own roundings: to first order
/// `|error| ≤ 2^-24 (Σ|w·a| + |result|)`, where a plain f32 sum can lose
/// `n · 2^-24 Σ|w·a|`. All in f32, because a single-precision FPU (Cortex-M4F) does f64
/// in software. A sum that overflows returns the plain sum (±inf or NaN, as the terms
/// say).
fn float_dot(w: impl Iterator<Item = f32>, a: impl Iterator<Item = f32>) -> f32 {
    let (mut sum, mut carry) = (0.0f32, 0.0f32);
    for (w, a) in w.zip(a) {
        let p = w * a;
        let t = sum + p;
        // What `sum + p` dropped, exactly (Fast2Sum, the larger magnitude first).
        carry += if sum.abs() >= p.abs() {
            (sum - t) + p
        } else {
            (p - t) + sum
        };
        sum = t;
    }
    let compensated = sum + carry;
    if compensated.is_finite() {
        compensated
    } else {
        sum
    }
}

fn f32_at(bytes: &[u8; 4]) -> f32 {
    f32::from_le_bytes(*bytes)
}

fn f16_at(bytes: &[u8; 2]) -> f32 {
    float::f16_to_f32(u16::from_le_bytes(*bytes))
}

fn bf16_at(bytes: &[u8; 2]) -> f32 {
    float::bf16_to_f32(u16::from_le_bytes(*bytes))
}

/// F32 weights (little-endian bytes) · f32 activations.
pub fn dot_f32(w: &[[u8; 4]], a: &[f32]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    Ok(float_dot(w.iter().map(f32_at), a.iter().copied()))
}

/// F16 weights (little-endian bytes) · f32 activations.
pub fn dot_f16(w: &[[u8; 2]], a: &[f32]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    Ok(float_dot(w.iter().map(f16_at), a.iter().copied()))
}

/// BF16 weights (little-endian bytes) · f32 activations.
pub fn dot_bf16(w: &[[u8; 2]], a: &[f32]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    Ok(float_dot(w.iter().map(bf16_at), a.iter().copied()))
}

/// The batch entry of the scalar table: [`dot`] for every (weight row, activation row)
/// pair, with [`Kernels::matmul`](super::Kernels::matmul)'s contract.
pub fn matmul(
    weight_type: TensorType,
    weights: &[u8],
    activations: &[&[u8]],
    out: &mut [f32],
) -> Result<()> {
    super::matmul_by_dot(dot, weight_type, weights, activations, out)
}

/// The dot product of a row of `weight_type` with a row of its
/// [`activation_type`](TensorType::activation_type), both as raw little-endian bytes
/// (F32 activations for float weights).
///
/// `weights` must be whole blocks and `activations` exactly as many blocks of the
/// activation type; anything else is an error, never a panic.
pub fn dot(weight_type: TensorType, weights: &[u8], activations: &[u8]) -> Result<f32> {
    use TensorType::*;
    let Some(act_type) = weight_type.activation_type() else {
        return Err(Error::UnsupportedType { ty: weight_type });
    };
    let block_bytes = weight_type.block_bytes();
    let n_blocks = weights.len() / block_bytes;
    if !weights.len().is_multiple_of(block_bytes) {
        return Err(Error::LengthMismatch {
            expected: n_blocks * block_bytes,
            actual: weights.len(),
        });
    }
    // Paired types have equal block lengths, so blocks correspond one to one.
    let expected = n_blocks.saturating_mul(act_type.block_bytes());
    if activations.len() != expected {
        return Err(Error::LengthMismatch {
            expected,
            actual: activations.len(),
        });
    }
    let (w, a) = (weights, activations);
    // Formats left out of the build have no activation type (checked above); their arms
    // are compiled out so their kernels are not linked.
    match weight_type {
        #[cfg(feature = "q4_0")]
        Q4_0 => dot_q4_0_q8_0(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "q5_0")]
        Q5_0 => dot_q5_0_q8_0(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "q8_0")]
        Q8_0 => dot_q8_0_q8_0(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "iq4_nl")]
        IQ4_NL => dot_iq4_nl_q8_0(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "q4_1")]
        Q4_1 => dot_q4_1_q8_1(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "q5_1")]
        Q5_1 => dot_q5_1_q8_1(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "q2_k")]
        Q2_K => dot_q2_k_q8_k(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "q3_k")]
        Q3_K => dot_q3_k_q8_k(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "q4_k")]
        Q4_K => dot_q4_k_q8_k(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "q5_k")]
        Q5_K => dot_q5_k_q8_k(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "q6_k")]
        Q6_K => dot_q6_k_q8_k(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "iq4_xs")]
        IQ4_XS => dot_iq4_xs_q8_k(w.as_chunks().0, a.as_chunks().0),
        #[cfg(feature = "f32")]
        F32 => Ok(float_dot(
            w.as_chunks().0.iter().map(f32_at),
            a.as_chunks().0.iter().map(f32_at),
        )),
        #[cfg(feature = "f16")]
        F16 => Ok(float_dot(
            w.as_chunks().0.iter().map(f16_at),
            a.as_chunks().0.iter().map(f32_at),
        )),
        #[cfg(feature = "bf16")]
        BF16 => Ok(float_dot(
            w.as_chunks().0.iter().map(bf16_at),
            a.as_chunks().0.iter().map(f32_at),
        )),
        _ => Err(Error::UnsupportedType { ty: weight_type }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::ALL_TYPES;

    #[test]
    fn paired_types_have_equal_block_lengths() {
        for ty in ALL_TYPES {
            if let Some(act) = ty.activation_type() {
                assert_eq!(ty.block_len(), act.block_len(), "{ty}");
                assert!(act.can_quantize(), "{ty}");
            }
        }
    }

    fn f32_row(v: &[f32]) -> heapless::Vec<[u8; 4], 8> {
        v.iter().map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn float_rows_keep_small_terms_next_to_large_ones() {
        // 1e8 + 1 - 1e8 + 0.5: a plain f32 sum gives 0.5; the compensated sum 1.5.
        let w = f32_row(&[1e8, 1.0, -1e8, 0.5]);
        assert_eq!(dot_f32(&w, &[1.0; 4]), Ok(1.5));
        // Overflow stays infinite (no NaN from the compensation), NaN stays NaN.
        let big = f32_row(&[f32::MAX, f32::MAX]);
        assert_eq!(dot_f32(&big, &[2.0, 2.0]), Ok(f32::INFINITY));
        let nan = f32_row(&[f32::NAN, 1.0]);
        assert!(dot_f32(&nan, &[1.0, 1.0]).unwrap().is_nan());
    }

    #[test]
    fn one_q4_0_block_by_hand() {
        // d_w = 0.5, all nibbles 9 (q = +1); d_a = 2, all quants 3: 32 · 1 · 3 · 0.5 · 2.
        let mut w = [0x99u8; 18];
        w[..2].copy_from_slice(&0x3800u16.to_le_bytes());
        let mut a = [3u8; 34];
        a[..2].copy_from_slice(&0x4000u16.to_le_bytes());
        assert_eq!(dot(TensorType::Q4_0, &w, &a), Ok(96.0));
    }
}

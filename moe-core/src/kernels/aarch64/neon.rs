//! NEON dot products (AArch64, 128-bit vectors), written once for both AArch64 levels.
//!
//! Every kernel is generic over a [`ByteDot`]: the exact dot product of 16 signed byte
//! pairs into four `i32` lanes. This level's is [`WideningMultiply`] (`smull`/`smull2`
//! to `i16`, then `sadalp` into `i32`); [`dotprod`](super::dotprod) passes `sdot`.
//!
//! Quantized kernels compute each block's (or sub-block's) integer sum exactly, then
//! apply the specification's float operations in its order ([`scalar`]): per-block
//! scales are converted and multiplied four blocks at a time, lane by lane the same
//! IEEE operations, and added to the running sum one block after another. They return
//! the specification's bits. Float kernels add exact `f32` products in `f64` lanes, so
//! only the summation order differs from the specification.
//!
//! f16 values (block scales and F16 weights) are widened by `fcvtl`, which is base
//! AArch64 SIMD, through inline assembly: Rust 1.88's `vcvt_f32_f16` needs the unstable
//! `f16` type. It gives the same value as [`float::f16_to_f32`] for every non-NaN input
//! (a NaN keeps its payload but gets its quiet bit set).

use core::arch::aarch64::*;
use core::arch::asm;

use crate::kernels::{check_row, same_blocks, scalar};
use crate::quant::{
    float, iq4_nl, iq4_xs, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, q8_1, q8_k,
};
use crate::{Result, TensorType};

/// The table entry: the dot product of a row of `weight_type` with its activation row,
/// through NEON where a kernel exists and the scalar specification otherwise.
///
/// Needs no proof: this module is built only where NEON is a compile-time feature.
pub(in crate::kernels) fn dot(weight_type: TensorType, w: &[u8], a: &[u8]) -> Result<f32> {
    // SAFETY: NEON is enabled at compile time wherever this module is built (its cfg).
    unsafe { dot_with(WideningMultiply, weight_type, w, a) }
}

/// The batch table entry: [`dot`] for every (weight row, activation row) pair, with
/// [`Kernels::matmul`](crate::kernels::Kernels::matmul)'s contract.
pub(in crate::kernels) fn matmul(
    weight_type: TensorType,
    weights: &[u8],
    activations: &[&[u8]],
    out: &mut [f32],
) -> Result<()> {
    crate::kernels::matmul_by_dot(dot, weight_type, weights, activations, out)
}

/// An exact dot product of 16 signed byte pairs: the one operation in which the AArch64
/// levels differ.
pub(super) trait ByteDot: Copy {
    /// `acc` plus `Σ a_i b_i`, spread over the four lanes in an order of the
    /// implementation's choosing (callers only ever add the lanes up). Exact for any
    /// bytes: a lane gains at most 4 · 128 · 128 = 2^16 per call.
    fn dot(self, acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// Base NEON's byte dot product: `smull` and `smull2` (each product fits `i16`: at most
/// 128 · 128 = 2^14), then `sadalp` adds neighbouring products into the `i32` lanes.
#[derive(Clone, Copy, Debug)]
pub(super) struct WideningMultiply;

impl ByteDot for WideningMultiply {
    #[inline(always)]
    fn dot(self, acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY: NEON is enabled at compile time wherever this module is built (its cfg).
        unsafe { widening_dot(acc, a, b) }
    }
}

/// [`WideningMultiply`]'s dot product.
#[inline]
#[target_feature(enable = "neon")]
fn widening_dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// [`dot`] with the byte dot product `bytes`: the body of both AArch64 levels' table
/// entries.
#[target_feature(enable = "neon")]
pub(super) fn dot_with<D: ByteDot>(
    bytes: D,
    weight_type: TensorType,
    w: &[u8],
    a: &[u8],
) -> Result<f32> {
    use TensorType::*;
    check_row(weight_type, w.len(), a.len())?;
    // The row lengths were checked above; the typed kernels check block counts again.
    match weight_type {
        Q4_0 => dot_q4_0_q8_0(bytes, w.as_chunks().0, a.as_chunks().0),
        Q4_1 => dot_q4_1_q8_1(bytes, w.as_chunks().0, a.as_chunks().0),
        Q5_0 => dot_q5_0_q8_0(bytes, w.as_chunks().0, a.as_chunks().0),
        Q5_1 => dot_q5_1_q8_1(bytes, w.as_chunks().0, a.as_chunks().0),
        Q8_0 => dot_q8_0_q8_0(bytes, w.as_chunks().0, a.as_chunks().0),
        IQ4_NL => dot_iq4_nl_q8_0(bytes, w.as_chunks().0, a.as_chunks().0),
        Q2_K => dot_q2_k_q8_k(bytes, w.as_chunks().0, a.as_chunks().0),
        Q3_K => dot_q3_k_q8_k(bytes, w.as_chunks().0, a.as_chunks().0),
        Q4_K => dot_q4_k_q8_k(bytes, w.as_chunks().0, a.as_chunks().0),
        Q5_K => dot_q5_k_q8_k(bytes, w.as_chunks().0, a.as_chunks().0),
        Q6_K => dot_q6_k_q8_k(bytes, w.as_chunks().0, a.as_chunks().0),
        IQ4_XS => dot_iq4_xs_q8_k(bytes, w.as_chunks().0, a.as_chunks().0),
        F32 => Ok(float_rows::<32>(w, a, |c| f32x8(c), f32_at)),
        F16 => Ok(float_rows::<16>(w, a, |c| f16x8(c), f16_at)),
        BF16 => Ok(float_rows::<16>(w, a, |c| bf16x8(c), bf16_at)),
        _ => scalar::dot(weight_type, w, a),
    }
}

/// The 16 bytes of `block` from `at` as one vector. Every call passes a constant offset
/// into a fixed-size block, so the bounds check is resolved at compile time.
#[inline]
#[target_feature(enable = "neon")]
fn load16<const N: usize>(block: &[u8; N], at: usize) -> uint8x16_t {
    let bytes = &block[at..at + 16];
    // SAFETY: `bytes` is 16 readable bytes (its bounds were checked by the slicing);
    // `ld1` of bytes has no alignment requirement.
    unsafe { vld1q_u8(bytes.as_ptr()) }
}

/// [`load16`] as signed bytes.
#[inline]
#[target_feature(enable = "neon")]
fn load16_i8<const N: usize>(block: &[u8; N], at: usize) -> int8x16_t {
    vreinterpretq_s8_u8(load16(block, at))
}

/// Four IEEE binary16 values (bit patterns) widened to `f32` by `fcvtl`: exact, the same
/// as [`float::f16_to_f32`] except that a NaN comes out quiet.
#[inline(always)]
fn f16x4_to_f32(bits: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: `fcvtl` (half to single precision) is base AArch64 SIMD, which this
    // module's cfg guarantees; it reads and writes vector registers only.
    unsafe {
        asm!(
            "fcvtl {out:v}.4s, {bits:v}.4h",
            bits = in(vreg) bits,
            out = lateout(vreg) out,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// The little-endian `u16` at `block[at..at + 2]`.
#[inline(always)]
fn le_u16<const N: usize>(block: &[u8; N], at: usize) -> u16 {
    u16::from_le_bytes([block[at], block[at + 1]])
}

/// The f16 at `block[at..at + 2]` as f32, by `fcvtl`.
#[inline]
#[target_feature(enable = "neon")]
fn f16_at_offset<const N: usize>(block: &[u8; N], at: usize) -> f32 {
    vgetq_lane_f32::<0>(f16x4_to_f32(vcreate_u16(u64::from(le_u16(block, at)))))
}

/// Lane `i` is the f16 at byte `at` of `blocks[i]` as f32 (0 past the end): the scale
/// fields of up to four 32-quant blocks in one conversion.
#[inline]
#[target_feature(enable = "neon")]
fn f16_fields<const N: usize>(blocks: &[[u8; N]], at: usize) -> float32x4_t {
    let mut bits = 0u64;
    for (i, block) in blocks.iter().take(4).enumerate() {
        bits |= u64::from(le_u16(block, at)) << (16 * i);
    }
    f16x4_to_f32(vcreate_u16(bits))
}

/// What a 32-quant block pair adds to the sum besides `(d_w · d_a) · sumi`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Minimum {
    /// Nothing (Q4_0, Q5_0, Q8_0, IQ4_NL against Q8_0).
    None,
    /// `m_w · s_a`: Q4_1 and Q5_1 against Q8_1, whose second f16 is the weights'
    /// minimum and the activations' scaled sum.
    SecondF16s,
}

/// `Σ_b (d_w · d_a)_b · sumi_b` over pairs of 32-quant blocks whose f16 scale `d` leads
/// each block, plus the `minimum` term per pair, as the specification computes it.
///
/// `block_sum` returns a vector whose lanes add up to the pair's exact integer sum. Four
/// pairs share one reduction, two (four with a minimum) f16 conversions and the multiplies;
/// the four terms are then added to the sum in block order, as the specification does.
#[inline]
#[target_feature(enable = "neon")]
fn sum_blocks<const W: usize, const A: usize>(
    w: &[[u8; W]],
    a: &[[u8; A]],
    minimum: Minimum,
    block_sum: impl Fn(&[u8; W], &[u8; A]) -> int32x4_t,
) -> f32 {
    let mut sum = 0.0f32;
    for (wc, ac) in w.chunks(4).zip(a.chunks(4)) {
        let mut v = [vdupq_n_s32(0); 4];
        for ((v, wb), ab) in v.iter_mut().zip(wc).zip(ac) {
            *v = block_sum(wb, ab);
        }
        let sumi = vpaddq_s32(vpaddq_s32(v[0], v[1]), vpaddq_s32(v[2], v[3]));
        let d = vmulq_f32(f16_fields(wc, 0), f16_fields(ac, 0));
        let mut terms = vmulq_f32(d, vcvtq_f32_s32(sumi));
        if minimum == Minimum::SecondF16s {
            terms = vaddq_f32(terms, vmulq_f32(f16_fields(wc, 2), f16_fields(ac, 2)));
        }
        let terms = [
            vgetq_lane_f32::<0>(terms),
            vgetq_lane_f32::<1>(terms),
            vgetq_lane_f32::<2>(terms),
            vgetq_lane_f32::<3>(terms),
        ];
        for t in terms.iter().take(wc.len().min(ac.len())) {
            sum += t;
        }
    }
    sum
}

/// The low and high nibbles of 16 packed bytes: elements `0..16` and `16..32` of a
/// 32-quant block, each in `0..=15`.
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(packed: uint8x16_t) -> (uint8x16_t, uint8x16_t) {
    (vandq_u8(packed, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(packed))
}

/// The fifth bits of a Q5_0/Q5_1 block's 32 quants as `0x10` or `0` per byte, for
/// elements `0..16` and `16..32`: bit `i` of the little-endian `qh` belongs to element
/// `i`.
#[inline]
#[target_feature(enable = "neon")]
fn fifth_bits<const N: usize>(block: &[u8; N], qh: usize) -> (uint8x16_t, uint8x16_t) {
    // Byte k of each half selects bit k % 8.
    let bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
    let spread = |lo: u8, hi: u8| {
        let bytes = vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi));
        vandq_u8(vtstq_u8(bytes, bit), vdupq_n_u8(0x10))
    };
    (
        spread(block[qh], block[qh + 1]),
        spread(block[qh + 2], block[qh + 3]),
    )
}

/// The exact `Σ q_w q_a` of 32 weight quants (elements `0..16` and `16..32`) with the
/// 32 activation quants at `block[at..at + 32]`.
#[inline]
#[target_feature(enable = "neon")]
fn dot32<D: ByteDot, const N: usize>(
    bytes: D,
    q: (int8x16_t, int8x16_t),
    block: &[u8; N],
    at: usize,
) -> int32x4_t {
    let acc = bytes.dot(vdupq_n_s32(0), q.0, load16_i8(block, at));
    bytes.dot(acc, q.1, load16_i8(block, at + 16))
}

/// Unsigned quants (at most 31) as signed bytes.
#[inline]
#[target_feature(enable = "neon")]
fn signed(q: (uint8x16_t, uint8x16_t)) -> (int8x16_t, int8x16_t) {
    (vreinterpretq_s8_u8(q.0), vreinterpretq_s8_u8(q.1))
}

/// Unsigned quants (at most 31) as signed bytes minus `offset`.
#[inline]
#[target_feature(enable = "neon")]
fn centred(q: (uint8x16_t, uint8x16_t), offset: i8) -> (int8x16_t, int8x16_t) {
    let (q0, q1) = signed(q);
    let offset = vdupq_n_s8(offset);
    (vsubq_s8(q0, offset), vsubq_s8(q1, offset))
}

/// Q4_0 · Q8_0: nibbles minus 8, exact block sums.
#[target_feature(enable = "neon")]
fn dot_q4_0_q8_0<D: ByteDot>(bytes: D, w: &[q4_0::Block], a: &[q8_0::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    Ok(sum_blocks(w, a, Minimum::None, |wb, ab| {
        dot32(bytes, centred(nibbles(load16(wb, 2)), 8), ab, 2)
    }))
}

/// Q5_0 · Q8_0: nibbles with their fifth bit, minus 16, exact block sums.
#[target_feature(enable = "neon")]
fn dot_q5_0_q8_0<D: ByteDot>(bytes: D, w: &[q5_0::Block], a: &[q8_0::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    Ok(sum_blocks(w, a, Minimum::None, |wb, ab| {
        let (lo, hi) = nibbles(load16(wb, 6));
        let (h0, h1) = fifth_bits(wb, 2);
        let q = (vorrq_u8(lo, h0), vorrq_u8(hi, h1));
        dot32(bytes, centred(q, 16), ab, 2)
    }))
}

/// Q8_0 · Q8_0: exact block sums of the signed quants.
#[target_feature(enable = "neon")]
fn dot_q8_0_q8_0<D: ByteDot>(bytes: D, w: &[q8_0::Block], a: &[q8_0::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    Ok(sum_blocks(w, a, Minimum::None, |wb, ab| {
        dot32(bytes, (load16_i8(wb, 2), load16_i8(wb, 18)), ab, 2)
    }))
}

/// The IQ4_NL codebook (also IQ4_XS's) as a `tbl` table.
#[inline]
#[target_feature(enable = "neon")]
fn iq4_codebook() -> int8x16_t {
    // SAFETY: the codebook is 16 readable bytes; `ld1` has no alignment requirement.
    unsafe { vld1q_s8(iq4_nl::KVALUES.as_ptr()) }
}

/// IQ4_NL · Q8_0: nibbles looked up in the codebook (`tbl`), exact block sums.
#[target_feature(enable = "neon")]
fn dot_iq4_nl_q8_0<D: ByteDot>(bytes: D, w: &[iq4_nl::Block], a: &[q8_0::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let codebook = iq4_codebook();
    Ok(sum_blocks(w, a, Minimum::None, |wb, ab| {
        let (lo, hi) = nibbles(load16(wb, 2));
        let q = (vqtbl1q_s8(codebook, lo), vqtbl1q_s8(codebook, hi));
        dot32(bytes, q, ab, 2)
    }))
}

/// Q4_1 · Q8_1: unsigned nibbles, exact block sums; the minimum from the activation's
/// stored `s`.
#[target_feature(enable = "neon")]
fn dot_q4_1_q8_1<D: ByteDot>(bytes: D, w: &[q4_1::Block], a: &[q8_1::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    Ok(sum_blocks(w, a, Minimum::SecondF16s, |wb, ab| {
        dot32(bytes, signed(nibbles(load16(wb, 4))), ab, 4)
    }))
}

/// Q5_1 · Q8_1: unsigned 5-bit quants, exact block sums; the minimum from `s`.
#[target_feature(enable = "neon")]
fn dot_q5_1_q8_1<D: ByteDot>(bytes: D, w: &[q5_1::Block], a: &[q8_1::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    Ok(sum_blocks(w, a, Minimum::SecondF16s, |wb, ab| {
        let (lo, hi) = nibbles(load16(wb, 8));
        let (h0, h1) = fifth_bits(wb, 4);
        let q = (vorrq_u8(lo, h0), vorrq_u8(hi, h1));
        dot32(bytes, signed(q), ab, 4)
    }))
}

/// Offset of a Q8_K block's quants.
const Q8_K_QS: usize = 4;
/// Offset of a Q8_K block's 16 `bsums`.
const Q8_K_BSUMS: usize = 260;

/// `Σ_s m_s (bsum_2s + bsum_2s+1)`, the minimum term of Q4_K/Q5_K against Q8_K, exact:
/// the pair sums are widened to `i32` before anything else is added.
#[inline]
#[target_feature(enable = "neon")]
fn min_sum_pairs(mins: &[u8; 8], a: &q8_k::Block) -> i32 {
    let pairs_lo = vpaddlq_s16(vreinterpretq_s16_u8(load16(a, Q8_K_BSUMS)));
    let pairs_hi = vpaddlq_s16(vreinterpretq_s16_u8(load16(a, Q8_K_BSUMS + 16)));
    let mins = vmovl_u8(vcreate_u8(u64::from_le_bytes(*mins)));
    let mins_lo = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(mins)));
    let mins_hi = vreinterpretq_s32_u32(vmovl_high_u16(mins));
    vaddvq_s32(vmlaq_s32(vmulq_s32(pairs_lo, mins_lo), pairs_hi, mins_hi))
}

/// `Σ_k m_k bsum_k` over Q8_K's 16 `bsums`, the minimum term of Q2_K (`mins` at most 15
/// each), exact in `i32`.
#[inline]
#[target_feature(enable = "neon")]
fn min_sum16(mins: uint8x16_t, a: &q8_k::Block) -> i32 {
    let bsums_lo = vreinterpretq_s16_u8(load16(a, Q8_K_BSUMS));
    let bsums_hi = vreinterpretq_s16_u8(load16(a, Q8_K_BSUMS + 16));
    let mins_lo = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mins)));
    let mins_hi = vreinterpretq_s16_u16(vmovl_high_u8(mins));
    let acc = vmull_s16(vget_low_s16(bsums_lo), vget_low_s16(mins_lo));
    let acc = vmlal_high_s16(acc, bsums_lo, mins_lo);
    let acc = vmlal_s16(acc, vget_low_s16(bsums_hi), vget_low_s16(mins_hi));
    vaddvq_s32(vmlal_high_s16(acc, bsums_hi, mins_hi))
}

/// `Σ_s sc_s Σ q_w q_a` over the eight 32-quant sub-blocks of a Q4_K/Q5_K/IQ4_XS block
/// against a Q8_K block; `quants(s)` gives sub-block `s`'s signed quants (elements
/// `0..16` and `16..32`), `scale(s)` its scale. Exact: a sub-block's lane is below
/// 8 · 128 · 128 and a scale at most 64 in magnitude.
#[inline]
#[target_feature(enable = "neon")]
fn scaled_sums32<D: ByteDot>(
    bytes: D,
    a: &q8_k::Block,
    quants: impl Fn(usize) -> (int8x16_t, int8x16_t),
    scale: impl Fn(usize) -> i32,
) -> i32 {
    // Two accumulators, so consecutive sub-blocks do not wait on each other.
    let mut acc = [vdupq_n_s32(0); 2];
    for s in 0..8 {
        let sub = dot32(bytes, quants(s), a, Q8_K_QS + 32 * s);
        acc[s % 2] = vmlaq_s32(acc[s % 2], sub, vdupq_n_s32(scale(s)));
    }
    vaddvq_s32(vaddq_s32(acc[0], acc[1]))
}

/// `Σ_k sc_k Σ q_w q_a` over the sixteen 16-quant sub-blocks of a Q2_K/Q3_K/Q6_K block
/// against a Q8_K block; `quants(k)` gives sub-block `k`'s signed quants, `scale(k)` its
/// scale. Exact: a sub-block's lane is below 4 · 64 · 128 and a scale at most 128 in
/// magnitude.
#[inline]
#[target_feature(enable = "neon")]
fn scaled_sums16<D: ByteDot>(
    bytes: D,
    a: &q8_k::Block,
    quants: impl Fn(usize) -> int8x16_t,
    scale: impl Fn(usize) -> i32,
) -> i32 {
    let mut acc = [vdupq_n_s32(0); 2];
    for k in 0..16 {
        let sub = bytes.dot(vdupq_n_s32(0), quants(k), load16_i8(a, Q8_K_QS + 16 * k));
        acc[k % 2] = vmlaq_s32(acc[k % 2], sub, vdupq_n_s32(scale(k)));
    }
    vaddvq_s32(vaddq_s32(acc[0], acc[1]))
}

/// `(d_w · d_a) · sumi − (dmin_w · d_a) · summ`, a Q2_K/Q4_K/Q5_K block's term exactly
/// as the specification computes it (`d` and `dmin` are the f16s at `at` and `at + 2`).
#[inline]
#[target_feature(enable = "neon")]
fn k_term<const N: usize>(
    block: &[u8; N],
    at: usize,
    a: &q8_k::Block,
    sumi: i32,
    summ: i32,
) -> f32 {
    let bits = u64::from(le_u16(block, at)) | (u64::from(le_u16(block, at + 2)) << 16);
    let scales = f16x4_to_f32(vcreate_u16(bits));
    let (d, dmin) = (vgetq_lane_f32::<0>(scales), vgetq_lane_f32::<1>(scales));
    let d_a = q8_k::d(a);
    (d * d_a) * sumi as f32 - (dmin * d_a) * summ as f32
}

/// `(d_w · d_a) · sumi`, a Q3_K/Q6_K/IQ4_XS block's term as the specification computes
/// it (`d` is the f16 at `at`).
#[inline]
#[target_feature(enable = "neon")]
fn scaled_term<const N: usize>(block: &[u8; N], at: usize, a: &q8_k::Block, sumi: i32) -> f32 {
    (f16_at_offset(block, at) * q8_k::d(a)) * sumi as f32
}

/// Bits `2j..2j + 2` of each byte, for `j` in `0..4`.
#[inline]
#[target_feature(enable = "neon")]
fn crumbs(bytes: uint8x16_t, j: usize) -> uint8x16_t {
    let shifted = match j {
        0 => bytes,
        1 => vshrq_n_u8::<2>(bytes),
        2 => vshrq_n_u8::<4>(bytes),
        _ => vshrq_n_u8::<6>(bytes),
    };
    vandq_u8(shifted, vdupq_n_u8(3))
}

/// Q2_K · Q8_K: 2-bit quants times 4-bit scales per 16-quant sub-block, the minimum
/// term from the activation's `bsums`, as in the specification.
#[target_feature(enable = "neon")]
fn dot_q2_k_q8_k<D: ByteDot>(bytes: D, w: &[q2_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        // Byte k of `scales`: scale of sub-block k in the low nibble, minimum in the high.
        let scales = load16(wb, 0);
        let sumi = scaled_sums16(
            bytes,
            ab,
            |k| {
                // Sub-block k: bits 2j.. (j = k % 8 / 2) of `qs[32 (k / 8) + 16 (k % 2)..]`.
                let q = load16(wb, 16 + 32 * (k / 8) + 16 * (k % 2));
                vreinterpretq_s8_u8(crumbs(q, k % 8 / 2))
            },
            |k| i32::from(wb[k] & 0x0f),
        );
        let summ = min_sum16(vshrq_n_u8::<4>(scales), ab);
        sum += k_term(wb, 80, ab, sumi, summ);
    }
    Ok(sum)
}

/// Q3_K · Q8_K: 2-bit quants with a high bit from `hmask` (`-4..=3`) times signed 6-bit
/// scales per 16-quant sub-block.
#[target_feature(enable = "neon")]
fn dot_q3_k_q8_k<D: ByteDot>(bytes: D, w: &[q3_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let sc = q3_k::scales(wb);
        let sumi = scaled_sums16(
            bytes,
            ab,
            |k| {
                // Sub-block k is half i = k % 2 of group g = k / 2 of 32: bits 2 (g % 4)..
                // of `qs[32 (g / 4) + 16 i..]`, minus 4 where bit g of `hmask[16 i..]` is
                // clear.
                let (g, i) = (k / 2, k % 2);
                let low = crumbs(load16(wb, 32 + 32 * (g / 4) + 16 * i), g % 4);
                let set = vtstq_u8(load16(wb, 16 * i), vdupq_n_u8(1 << g));
                let q = vorrq_u8(low, vandq_u8(set, vdupq_n_u8(4)));
                vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(4))
            },
            |k| i32::from(sc[k]),
        );
        sum += scaled_term(wb, 108, ab, sumi);
    }
    Ok(sum)
}

/// Q4_K · Q8_K: each 32-quant sub-block's exact sum times its 6-bit scale; the minimum
/// term from the activation's `bsums`, as in the specification.
#[target_feature(enable = "neon")]
fn dot_q4_k_q8_k<D: ByteDot>(bytes: D, w: &[q4_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let (scales, mins) = q4_k::scales_mins(wb);
        let sumi = scaled_sums32(
            bytes,
            ab,
            |s| {
                // Sub-block 2c is the low nibbles of `qs[32c..32c + 32]`, 2c + 1 the high.
                let at = 16 + 32 * (s / 2);
                let (lo0, hi0) = nibbles(load16(wb, at));
                let (lo1, hi1) = nibbles(load16(wb, at + 16));
                signed(if s % 2 == 0 { (lo0, lo1) } else { (hi0, hi1) })
            },
            |s| i32::from(scales[s]),
        );
        sum += k_term(wb, 0, ab, sumi, min_sum_pairs(&mins, ab));
    }
    Ok(sum)
}

/// Q5_K · Q8_K: as Q4_K, with the fifth bit of element `l` of sub-block `s` in bit `s`
/// of `qh[l]`.
#[target_feature(enable = "neon")]
fn dot_q5_k_q8_k<D: ByteDot>(bytes: D, w: &[q5_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let (scales, mins) = q5_k::scales_mins(wb);
        let (qh0, qh1) = (load16(wb, 16), load16(wb, 32));
        let sumi = scaled_sums32(
            bytes,
            ab,
            |s| {
                let at = 48 + 32 * (s / 2);
                let (lo0, hi0) = nibbles(load16(wb, at));
                let (lo1, hi1) = nibbles(load16(wb, at + 16));
                let (q0, q1) = if s % 2 == 0 { (lo0, lo1) } else { (hi0, hi1) };
                let bit = vdupq_n_u8(1 << s);
                let fifth = |qh| vandq_u8(vtstq_u8(qh, bit), vdupq_n_u8(0x10));
                signed((vorrq_u8(q0, fifth(qh0)), vorrq_u8(q1, fifth(qh1))))
            },
            |s| i32::from(scales[s]),
        );
        sum += k_term(wb, 0, ab, sumi, min_sum_pairs(&mins, ab));
    }
    Ok(sum)
}

/// Q6_K · Q8_K: 6-bit quants rebuilt from `ql`/`qh` and offset to `-32..=31`, each
/// 16-quant sub-block's exact sum times its signed scale.
#[target_feature(enable = "neon")]
fn dot_q6_k_q8_k<D: ByteDot>(bytes: D, w: &[q6_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let sc = q6_k::scales(wb);
        let sumi = scaled_sums16(
            bytes,
            ab,
            |k| {
                // Sub-block k holds elements 16k'..16k' + 16 (k' = k % 8) of half h = k / 8:
                // group g = k' / 2 of 32 takes the low (g < 2) or high nibbles of
                // `ql[64h + 32 (g % 2)..]` and bits 2g, 2g + 1 of `qh[32h..]`, moved to bits
                // 4 and 5.
                let (h, g, i) = (k / 8, k % 8 / 2, k % 2);
                let l = load16(wb, 64 * h + 32 * (g % 2) + 16 * i);
                let low = if g < 2 {
                    vandq_u8(l, vdupq_n_u8(0x0f))
                } else {
                    vshrq_n_u8::<4>(l)
                };
                let qh = load16(wb, 128 + 32 * h + 16 * i);
                let high = match g {
                    0 => vshlq_n_u8::<4>(qh),
                    1 => vshlq_n_u8::<2>(qh),
                    2 => qh,
                    _ => vshrq_n_u8::<2>(qh),
                };
                let q = vorrq_u8(low, vandq_u8(high, vdupq_n_u8(0x30)));
                vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(32))
            },
            |k| i32::from(sc[k]),
        );
        sum += scaled_term(wb, 208, ab, sumi);
    }
    Ok(sum)
}

/// IQ4_XS · Q8_K: nibbles looked up in the IQ4_NL codebook, each 32-quant sub-block's
/// exact sum times its signed 6-bit scale.
#[target_feature(enable = "neon")]
fn dot_iq4_xs_q8_k<D: ByteDot>(bytes: D, w: &[iq4_xs::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let codebook = iq4_codebook();
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let sc = iq4_xs::scales(wb);
        let sumi = scaled_sums32(
            bytes,
            ab,
            |s| {
                let (lo, hi) = nibbles(load16(wb, 8 + 16 * s));
                (vqtbl1q_s8(codebook, lo), vqtbl1q_s8(codebook, hi))
            },
            |s| i32::from(sc[s]),
        );
        sum += scaled_term(wb, 0, ab, sumi);
    }
    Ok(sum)
}

/// Four `f32` products, exact in `f64`, added to two `f64x2` accumulators.
#[inline]
#[target_feature(enable = "neon")]
fn fma_f64(acc: &mut [float64x2_t; 2], w: float32x4_t, a: float32x4_t) {
    let (w_lo, a_lo) = (vcvt_f64_f32(vget_low_f32(w)), vcvt_f64_f32(vget_low_f32(a)));
    acc[0] = vfmaq_f64(acc[0], w_lo, a_lo);
    acc[1] = vfmaq_f64(acc[1], vcvt_high_f64_f32(w), vcvt_high_f64_f32(a));
}

/// Float weights (eight elements in `W` bytes, widened by `widen`) · F32 activations
/// (both little-endian bytes of whole elements; lengths checked by the caller): exact
/// products summed in `f64` over four accumulators, rounded once. The tail shorter than
/// eight elements goes through `element`.
#[target_feature(enable = "neon")]
fn float_rows<const W: usize>(
    w: &[u8],
    a: &[u8],
    widen: impl Fn(&[u8; W]) -> [float32x4_t; 2],
    element: impl Fn(&[u8]) -> f32,
) -> f32 {
    let (w8, w_tail) = w.as_chunks::<W>();
    let (a8, a_tail) = a.as_chunks::<32>();
    let mut acc = [[vdupq_n_f64(0.0); 2]; 2];
    for (wc, ac) in w8.iter().zip(a8) {
        let [w0, w1] = widen(wc);
        let [a0, a1] = f32x8(ac);
        fma_f64(&mut acc[0], w0, a0);
        fma_f64(&mut acc[1], w1, a1);
    }
    let total = vaddq_f64(
        vaddq_f64(acc[0][0], acc[0][1]),
        vaddq_f64(acc[1][0], acc[1][1]),
    );
    let mut sum = vaddvq_f64(total);
    for (we, ae) in w_tail.chunks_exact(W / 8).zip(a_tail.chunks_exact(4)) {
        sum += f64::from(element(we)) * f64::from(f32_at(ae));
    }
    sum as f32
}

/// Eight little-endian `f32`.
#[inline]
#[target_feature(enable = "neon")]
fn f32x8(bytes: &[u8; 32]) -> [float32x4_t; 2] {
    [0, 16].map(|at| vreinterpretq_f32_u8(load16(bytes, at)))
}

/// Eight little-endian f16, widened by `fcvtl`.
#[inline]
#[target_feature(enable = "neon")]
fn f16x8(bytes: &[u8; 16]) -> [float32x4_t; 2] {
    let bits = vreinterpretq_u16_u8(load16(bytes, 0));
    [vget_low_u16(bits), vget_high_u16(bits)].map(f16x4_to_f32)
}

/// Eight little-endian bf16: each is the top half of its f32.
#[inline]
#[target_feature(enable = "neon")]
fn bf16x8(bytes: &[u8; 16]) -> [float32x4_t; 2] {
    let bits = vreinterpretq_u16_u8(load16(bytes, 0));
    [
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(bits))),
        vreinterpretq_f32_u32(vshll_high_n_u16::<16>(bits)),
    ]
}

/// A little-endian f32 (the caller passes exactly four bytes).
fn f32_at(bytes: &[u8]) -> f32 {
    match bytes {
        &[b0, b1, b2, b3] => f32::from_le_bytes([b0, b1, b2, b3]),
        _ => 0.0,
    }
}

/// A little-endian f16 (the caller passes exactly two bytes).
fn f16_at(bytes: &[u8]) -> f32 {
    match bytes {
        &[b0, b1] => float::f16_to_f32(u16::from_le_bytes([b0, b1])),
        _ => 0.0,
    }
}

/// A little-endian bf16 (the caller passes exactly two bytes).
fn bf16_at(bytes: &[u8]) -> f32 {
    match bytes {
        &[b0, b1] => float::bf16_to_f32(u16::from_le_bytes([b0, b1])),
        _ => 0.0,
    }
}

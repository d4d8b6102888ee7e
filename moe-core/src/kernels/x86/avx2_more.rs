//! AVX2 + FMA + F16C dot products for the weight types [`avx2`](super::avx2) has no
//! kernel of its own for: Q4_1 and Q5_1 (· Q8_1), Q5_0 and IQ4_NL (· Q8_0), Q2_K, Q3_K,
//! Q5_K and IQ4_XS (· Q8_K), and BF16 (· f32).
//!
//! The contract is `avx2`'s: every integer block (or sub-block) sum is exact, reduced
//! horizontally, and then scaled with the specification's float operations in its order
//! (separate multiplies and adds, no FMA), so the quantized kernels return
//! [`scalar`](crate::kernels::scalar)'s bits; the BF16 kernel sums exact `f32` products
//! in `f64` and differs from it only by summation order.
//!
//! Exactness of the byte products: `maddubs` multiplies unsigned by signed bytes and adds
//! pairs with `i16` saturation. Every use here keeps the unsigned side small (quants of at
//! most 5 bits, or |activation| ≤ 128 against a codebook value of magnitude ≤ 127), so a
//! pair is at most 2 · 128 · 127 < 2^15 and never saturates, whatever the bytes.

use core::arch::x86_64::*;

use super::avx2::{
    dot_u7_i8, f16_at, fma_f64, hsum_f64, hsum_i32, hsum8, load16, load32, q8_k_qs, sum_scaled,
};
use crate::kernels::same_blocks;
use crate::quant::{iq4_nl, iq4_xs, q2_k, q3_k, q4_1, q5_0, q5_1, q5_k, q8_0, q8_1, q8_k};
use crate::{Result, TensorType};

/// The dot product of a row of `weight_type` with its activation row through one of this
/// file's kernels, or `None` for a type that has none here (the caller falls back).
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C, and the row lengths must have passed
/// [`check_row`](crate::kernels::check_row) (the typed kernels check block counts again,
/// so a violation is an error, not undefined behaviour).
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn dot_more(
    weight_type: TensorType,
    w: &[u8],
    a: &[u8],
) -> Option<Result<f32>> {
    use TensorType::*;
    Some(match weight_type {
        Q4_1 => dot_q4_1_q8_1(w.as_chunks().0, a.as_chunks().0),
        Q5_1 => dot_q5_1_q8_1(w.as_chunks().0, a.as_chunks().0),
        Q5_0 => dot_q5_0_q8_0(w.as_chunks().0, a.as_chunks().0),
        IQ4_NL => dot_iq4_nl_q8_0(w.as_chunks().0, a.as_chunks().0),
        Q2_K => dot_q2_k_q8_k(w.as_chunks().0, a.as_chunks().0),
        Q3_K => dot_q3_k_q8_k(w.as_chunks().0, a.as_chunks().0),
        Q5_K => dot_q5_k_q8_k(w.as_chunks().0, a.as_chunks().0),
        IQ4_XS => dot_iq4_xs_q8_k(w.as_chunks().0, a.as_chunks().0),
        BF16 => Ok(dot_bf16(w, a)),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// Shared unpacking

/// The 16 packed nibble bytes of a 32-quant block as 32 bytes in element order: low
/// nibbles are elements 0..16, high nibbles 16..32 (Q4_1, Q5_0, Q5_1, IQ4_NL, and each
/// IQ4_XS sub-block).
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(packed: &[u8; 16]) -> __m256i {
    let packed = load16(packed);
    _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed),
        _mm256_set1_epi8(0x0f),
    )
}

/// Byte `i` is `0x10` where bit `i` of the little-endian `qh` is set, else 0: the fifth
/// bit of element `i` of a Q5_0/Q5_1 block, in place.
#[inline]
#[target_feature(enable = "avx2")]
fn fifth_bits(qh: &[u8; 4]) -> __m256i {
    let word = _mm256_set1_epi32(i32::from_le_bytes(*qh));
    // Byte i takes byte i / 8 of the word ...
    let spread = _mm256_shuffle_epi8(
        word,
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    // ... and keeps bit i % 8 of it.
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// `value` in each byte whose bits under the one-bit mask `bit` are `set`, else 0.
#[inline]
#[target_feature(enable = "avx2")]
fn where_bit(v: __m256i, bit: __m256i, set: bool, value: __m256i) -> __m256i {
    let hit = _mm256_and_si256(v, bit);
    let mask = if set {
        _mm256_cmpeq_epi8(hit, bit)
    } else {
        _mm256_cmpeq_epi8(hit, _mm256_setzero_si256())
    };
    _mm256_and_si256(mask, value)
}

/// `Σ w_i a_i` in `i32` lanes for signed `w` in `-127..=127` and any signed `a`, exact:
/// `maddubs(|a|, w · sign(a))`, where `|−128|` read unsigned is 128 and `w` never needs
/// negating past `i8`.
#[inline]
#[target_feature(enable = "avx2")]
fn dot_i7_i8(w: __m256i, a: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_sign_epi8(w, a));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// The IQ4_NL codebook in both 128-bit lanes, for `pshufb` lookups by nibble.
#[inline]
#[target_feature(enable = "avx2")]
fn codebook() -> __m256i {
    // SAFETY: `KVALUES` is 16 readable bytes; unaligned loads are allowed.
    let k = unsafe { _mm_loadu_si128(iq4_nl::KVALUES.as_ptr().cast()) };
    _mm256_broadcastsi128_si256(k)
}

/// The signed scales of two 16-quant sub-blocks `k` and `k + 1` as `i16` lanes: lanes
/// 0..8 are `scales[k]`, lanes 8..16 `scales[k + 1]` (the layout `maddubs` leaves for
/// one 32-byte load that spans both sub-blocks). `scales` holds the 16 `i8` scales in both
/// 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn pair_scales(scales: __m256i, k: usize) -> __m256i {
    // Both bytes of each word are the scale, so an arithmetic shift by 8 sign-extends it.
    let (lo, hi) = (k as i8, (k + 1) as i8);
    let spread = _mm256_shuffle_epi8(
        scales,
        _mm256_set_m128i(_mm_set1_epi8(hi), _mm_set1_epi8(lo)),
    );
    _mm256_srai_epi16::<8>(spread)
}

/// The 16 `bsums` of a Q8_K block as `i16` lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn bsums(b: &q8_k::Block) -> __m256i {
    load32(&b[260..].as_chunks().0[0])
}

/// `d_w d_a · sumi − dmin_w d_a · summ` for a K-quant super-block whose `d`/`dmin` are
/// the f16 at `w[at..]`/`w[at + 2..]`: the specification's operations, in its order.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn k_term_min<const W: usize>(
    wb: &[u8; W],
    at: usize,
    ab: &q8_k::Block,
    sumi: i32,
    summ: i32,
) -> f32 {
    let d_a = q8_k::d(ab);
    (f16_at(wb, at) * d_a) * sumi as f32 - (f16_at(wb, at + 2) * d_a) * summ as f32
}

// ---------------------------------------------------------------------------------------
// 32-quant blocks

/// Up to eight f16 fields, each at byte `at` of its block, as `f32` lanes by one F16C
/// conversion (the specification's values; a NaN may differ in its quiet bit). Lanes past
/// the slice are 0.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16_lanes<const B: usize>(blocks: &[[u8; B]], at: usize) -> __m256 {
    let mut bits = [0u16; 8];
    for (bits, b) in bits.iter_mut().zip(blocks) {
        *bits = u16::from_le_bytes([b[at], b[at + 1]]);
    }
    // SAFETY: the pointer covers 16 readable bytes; unaligned loads are allowed.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(bits.as_ptr().cast()) })
}

/// `Σ_b (d_w · d_a)_b · sumi_b + m_w · s_a` over Q4_1/Q5_1 · Q8_1 block pairs (`d`, `m`
/// and `d`, `s` the leading f16 pairs of the blocks), each term computed and added in
/// block order exactly as the specification does; `block_sum` returns a vector whose
/// lanes add up to the pair's exact integer sum. Eight blocks share one horizontal
/// reduction and one conversion per field.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn sum_scaled_min<const W: usize>(
    w: &[[u8; W]],
    a: &[q8_1::Block],
    block_sum: impl Fn(&[u8; W], &q8_1::Block) -> __m256i,
) -> f32 {
    let mut sum = 0.0f32;
    for (wc, ac) in w.chunks(8).zip(a.chunks(8)) {
        let mut v = [_mm256_setzero_si256(); 8];
        for ((v, wb), ab) in v.iter_mut().zip(wc).zip(ac) {
            *v = block_sum(wb, ab);
        }
        let dd = _mm256_mul_ps(f16_lanes(wc, 0), f16_lanes(ac, 0));
        let ms = _mm256_mul_ps(f16_lanes(wc, 2), f16_lanes(ac, 2));
        let terms = _mm256_add_ps(_mm256_mul_ps(dd, _mm256_cvtepi32_ps(hsum8(v))), ms);
        let mut t = [0f32; 8];
        // SAFETY: the pointer covers 32 writable bytes; unaligned stores are allowed.
        unsafe { _mm256_storeu_ps(t.as_mut_ptr(), terms) };
        for t in t.iter().take(wc.len().min(ac.len())) {
            sum += t;
        }
    }
    sum
}

/// The 32 quants of a Q8_0 block.
#[inline]
fn q8_0_qs(b: &q8_0::Block) -> &[u8; 32] {
    &b[2..].as_chunks().0[0]
}

/// The 32 quants of a Q8_1 block.
#[inline]
fn q8_1_qs(b: &q8_1::Block) -> &[u8; 32] {
    &b[4..].as_chunks().0[0]
}

/// Q4_1 · Q8_1: `Σ n a` with the nibbles `n` in `0..=15`, exact; the minimum from the
/// activation's stored `s`.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1_q8_1(w: &[q4_1::Block], a: &[q8_1::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    Ok(sum_scaled_min(w, a, |wb, ab| {
        dot_u7_i8(nibbles(&wb[4..].as_chunks().0[0]), load32(q8_1_qs(ab)))
    }))
}

/// Q5_1 · Q8_1: `Σ u a` with the 5-bit quants `u` in `0..=31` (nibble | fifth bit),
/// exact; the minimum from the activation's stored `s`.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_1_q8_1(w: &[q5_1::Block], a: &[q8_1::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    Ok(sum_scaled_min(w, a, |wb, ab| {
        let u = _mm256_or_si256(
            nibbles(&wb[8..].as_chunks().0[0]),
            fifth_bits(&wb[4..].as_chunks().0[0]),
        );
        dot_u7_i8(u, load32(q8_1_qs(ab)))
    }))
}

/// Q5_0 · Q8_0: `Σ (u − 16) a` with the 5-bit quants `u` in `0..=31`; the pairwise
/// `maddubs` sums of `u a` and `16 a` differ by at most 2 · 16 · 128, so they are
/// subtracted in `i16` before widening, exactly.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0_q8_0(w: &[q5_0::Block], a: &[q8_0::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let sixteen = _mm256_set1_epi8(16);
    Ok(sum_scaled(w, a, |wb, ab| {
        let u = _mm256_or_si256(
            nibbles(&wb[6..].as_chunks().0[0]),
            fifth_bits(&wb[2..].as_chunks().0[0]),
        );
        let qa = load32(q8_0_qs(ab));
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(u, qa),
            _mm256_maddubs_epi16(sixteen, qa),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }))
}

/// IQ4_NL · Q8_0: the codebook values looked up by `pshufb`, `Σ K[n] a` by the sign
/// trick, exact.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq4_nl_q8_0(w: &[iq4_nl::Block], a: &[q8_0::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let k = codebook();
    Ok(sum_scaled(w, a, |wb, ab| {
        let q = _mm256_shuffle_epi8(k, nibbles(&wb[2..].as_chunks().0[0]));
        dot_i7_i8(q, load32(q8_0_qs(ab)))
    }))
}

// ---------------------------------------------------------------------------------------
// 256-quant super-blocks (· Q8_K)

/// Q2_K · Q8_K: 2-bit quants in `0..=3` by shift and mask, 32 at a time (two 16-quant
/// sub-blocks), each sub-block's exact sum times its 4-bit scale; the minimum term is the
/// 4-bit mins against the activation's `bsums`, as in the specification.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q2_k_q8_k(w: &[q2_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let m2 = _mm256_set1_epi8(3);
    let m4 = _mm_set1_epi8(0x0f);
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let packed_scales = load16(&wb[..16].as_chunks().0[0]);
        // Mins (high nibbles) as i16 against the 16 bsums: Σ_k m_k bsum_k, exact.
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(packed_scales), m4));
        let summ = hsum_i32(_mm256_madd_epi16(mins, bsums(ab)));
        let scales = _mm256_broadcastsi128_si256(_mm_and_si128(packed_scales, m4));
        let qs: &[[u8; 32]] = wb[16..80].as_chunks().0;
        let qa = q8_k_qs(ab);
        let mut acc = _mm256_setzero_si256();
        for (h, qs) in qs.iter().enumerate() {
            let bits = load32(qs);
            // Shift j: elements 128h + 32j .. + 32, sub-blocks 8h + 2j and 8h + 2j + 1.
            let q = [
                _mm256_and_si256(bits, m2),
                _mm256_and_si256(_mm256_srli_epi16::<2>(bits), m2),
                _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m2),
                _mm256_and_si256(_mm256_srli_epi16::<6>(bits), m2),
            ];
            for (j, q) in q.into_iter().enumerate() {
                let p = _mm256_maddubs_epi16(q, load32(&qa[4 * h + j]));
                let s = pair_scales(scales, 8 * h + 2 * j);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
            }
        }
        sum += k_term_min(wb, 80, ab, hsum_i32(acc), summ);
    }
    Ok(sum)
}

/// The 16 signed 6-bit scales of a Q3_K block, as [`q3_k::scales`] decodes them, in both
/// 128-bit lanes: mask-and-shift on the 12 packed bytes four at a time, because picking
/// bits scale by scale cost as much as the whole quant loop. Byte `i` of the result is
/// `(low_i | high_i << 4) − 32`, where `low_i` is the low (`i < 8`) or high nibble of
/// byte `i % 8` and `high_i` bits `2 (i / 4)..` of byte `8 + i % 4`.
#[inline]
#[target_feature(enable = "avx2")]
fn q3_k_scales(wb: &q3_k::Block) -> __m256i {
    const LOW: u32 = 0x0f0f_0f0f;
    const TWO: u32 = 0x0303_0303;
    let word = |at: usize| u32::from_le_bytes([wb[at], wb[at + 1], wb[at + 2], wb[at + 3]]);
    let (lo0, lo1, hi) = (word(96), word(100), word(104));
    let s = [
        (lo0 & LOW) | ((hi & TWO) << 4),
        (lo1 & LOW) | (((hi >> 2) & TWO) << 4),
        ((lo0 >> 4) & LOW) | (((hi >> 4) & TWO) << 4),
        ((lo1 >> 4) & LOW) | (((hi >> 6) & TWO) << 4),
    ];
    let v = _mm_set_epi32(s[3] as i32, s[2] as i32, s[1] as i32, s[0] as i32);
    _mm256_broadcastsi128_si256(_mm_sub_epi8(v, _mm_set1_epi8(32)))
}

/// Q3_K · Q8_K: `Σ (l − 4c) a` per 16-quant sub-block, with the low 2 bits `l` from
/// `qs` and `c` = 1 where the `hmask` bit is clear; the two `maddubs` pair sums differ by
/// at most 2 · 7 · 128, subtracted in `i16`, then times the signed 6-bit scale. Exact.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q3_k_q8_k(w: &[q3_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let m2 = _mm256_set1_epi8(3);
    let four = _mm256_set1_epi8(4);
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let scales = q3_k_scales(wb);
        let hmask = load32(&wb[..32].as_chunks().0[0]);
        let qs: &[[u8; 32]] = wb[32..96].as_chunks().0;
        let qa = q8_k_qs(ab);
        let mut acc = _mm256_setzero_si256();
        for (h, qs) in qs.iter().enumerate() {
            let bits = load32(qs);
            let low = [
                _mm256_and_si256(bits, m2),
                _mm256_and_si256(_mm256_srli_epi16::<2>(bits), m2),
                _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m2),
                _mm256_and_si256(_mm256_srli_epi16::<6>(bits), m2),
            ];
            for (j, low) in low.into_iter().enumerate() {
                // Group g = 4h + j: elements 32g .. 32g + 32, high bit g of `hmask[l]`.
                let g = 4 * h + j;
                let clear = where_bit(hmask, _mm256_set1_epi8((1u8 << g) as i8), false, four);
                let y = load32(&qa[g]);
                let p =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(low, y), _mm256_maddubs_epi16(clear, y));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, pair_scales(scales, 2 * g)));
            }
        }
        sum += (f16_at(wb, 108) * q8_k::d(ab)) * hsum_i32(acc) as f32;
    }
    Ok(sum)
}

/// Q5_K · Q8_K: as Q4_K with the fifth bit of sub-block `s` from bit `s` of `qh`; each
/// 32-quant sub-block's exact sum times its 6-bit scale, the minimum term from the
/// activation's `bsums`.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_k_q8_k(w: &[q5_k::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let m4 = _mm256_set1_epi8(0x0f);
    let sixteen = _mm256_set1_epi8(0x10);
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let (scales, mins) = q5_k::scales_mins(wb);
        // Each sub-block's min against its two bsums: madd of [m0, m0, m1, m1, ...].
        let m = _mm_cvtepu8_epi16(_mm_set_epi64x(0, i64::from_le_bytes(mins)));
        let m = _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m));
        let summ = hsum_i32(_mm256_madd_epi16(m, bsums(ab)));
        let qh = load32(&wb[16..48].as_chunks().0[0]);
        let qs: &[[u8; 32]] = wb[48..].as_chunks().0;
        let qa = q8_k_qs(ab);
        let mut acc = _mm256_setzero_si256();
        for (c, qs) in qs.iter().enumerate() {
            let packed = load32(qs);
            // Sub-block 2c is the low nibbles, 2c + 1 the high nibbles.
            for (s, n) in [
                (2 * c, _mm256_and_si256(packed, m4)),
                (
                    2 * c + 1,
                    _mm256_and_si256(_mm256_srli_epi16::<4>(packed), m4),
                ),
            ] {
                let hi = where_bit(qh, _mm256_set1_epi8((1u8 << s) as i8), true, sixteen);
                let p = _mm256_maddubs_epi16(_mm256_or_si256(n, hi), load32(&qa[s]));
                let sc = _mm256_set1_epi16(i16::from(scales[s]));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc));
            }
        }
        sum += k_term_min(wb, 0, ab, hsum_i32(acc), summ);
    }
    Ok(sum)
}

/// IQ4_XS · Q8_K: per 32-quant sub-block, the codebook values by `pshufb` and `Σ K[n] a`
/// by the sign trick (pair sums below 2^15), times the signed 6-bit scale. Exact.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_iq4_xs_q8_k(w: &[iq4_xs::Block], a: &[q8_k::Block]) -> Result<f32> {
    same_blocks(w.len(), a.len())?;
    let k = codebook();
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let scales = iq4_xs::scales(wb);
        let qs: &[[u8; 16]] = wb[8..].as_chunks().0;
        let qa = q8_k_qs(ab);
        let mut acc = _mm256_setzero_si256();
        for ((qs, y), &sc) in qs.iter().zip(qa).zip(&scales) {
            let q = _mm256_shuffle_epi8(k, nibbles(qs));
            let y = load32(y);
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(y), _mm256_sign_epi8(q, y));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(i16::from(sc))));
        }
        sum += (f16_at(wb, 0) * q8_k::d(ab)) * hsum_i32(acc) as f32;
    }
    Ok(sum)
}

// ---------------------------------------------------------------------------------------
// Float

/// BF16 weights · F32 activations (both little-endian bytes of whole elements; lengths
/// checked by the caller): bf16 widened to f32 by a 16-bit shift (exact), exact products
/// summed in `f64`, rounded once.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_bf16(w: &[u8], a: &[u8]) -> f32 {
    let (w8, w_tail) = w.as_chunks::<16>();
    let (a8, a_tail) = a.as_chunks::<32>();
    let mut acc = [_mm256_setzero_pd(); 2];
    for (wc, ac) in w8.iter().zip(a8) {
        let wv = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load16(wc))));
        // SAFETY: the reference covers 32 readable bytes; unaligned loads are allowed.
        let av = unsafe { _mm256_loadu_ps(ac.as_ptr().cast()) };
        fma_f64(&mut acc, wv, av);
    }
    let mut sum = hsum_f64(acc);
    for (wc, ac) in w_tail
        .as_chunks::<2>()
        .0
        .iter()
        .zip(a_tail.as_chunks::<4>().0)
    {
        let wf = crate::quant::float::bf16_to_f32(u16::from_le_bytes(*wc));
        sum += f64::from(wf) * f64::from(f32::from_le_bytes(*ac));
    }
    sum as f32
}

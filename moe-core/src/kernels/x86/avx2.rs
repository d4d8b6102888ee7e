//! AVX2 + FMA + F16C dot products (x86-64, 256-bit vectors).
//!
//! Every integer block sum is computed exactly (no saturating `maddubs` on full-range
//! operands: one side is always a small unsigned value), horizontally reduced per block,
//! and then scaled with the same float operations, in the same order, as
//! [`scalar`](crate::kernels::scalar). The quantized kernels therefore return the same
//! bits as the specification. The float kernels accumulate exact `f32` products in
//! `f64` lanes, so only the summation order differs from the specification.
//!
//! This file has the kernels for Q4_0, Q8_0, Q4_K, Q6_K, F16 and F32; every other weight
//! type's (Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q5_K, IQ4_XS, BF16) is in
//! [`avx2_more`](super::avx2_more), which `dot_unchecked` tries before the specification.

use core::arch::x86_64::*;

use crate::kernels::check_row;
use crate::quant::{q4_0, q4_k, q6_k, q8_0, q8_k};
use crate::{Result, TensorType};

/// The table entry: the dot product of a row of `weight_type` with its activation row,
/// through AVX2 where a kernel exists and the scalar specification otherwise.
///
/// Private to `kernels`: only [`Kernels`](crate::kernels::Kernels) constructors that hold
/// proof of AVX2, FMA and F16C store this function.
pub(in crate::kernels) fn dot(weight_type: TensorType, w: &[u8], a: &[u8]) -> Result<f32> {
    // SAFETY: this function is reachable only through a `Kernels` table, and every
    // constructor of a table at `Level::Avx2` or above requires (detected, compiled-in or
    // `unsafe`-promised) AVX2, FMA and F16C.
    unsafe { dot_unchecked(weight_type, w, a) }
}

/// [`dot`] without the table's proof.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn dot_unchecked(
    weight_type: TensorType,
    w: &[u8],
    a: &[u8],
) -> Result<f32> {
    use TensorType::*;
    check_row(weight_type, w.len(), a.len())?;
    // SAFETY: (all arms) the caller guarantees the target features; the row lengths were
    // checked above, and the typed kernels check block counts again.
    unsafe {
        match weight_type {
            Q4_0 => dot_q4_0_q8_0(w.as_chunks().0, a.as_chunks().0),
            Q8_0 => dot_q8_0_q8_0(w.as_chunks().0, a.as_chunks().0),
            Q4_K => dot_q4_k_q8_k(w.as_chunks().0, a.as_chunks().0),
            Q6_K => dot_q6_k_q8_k(w.as_chunks().0, a.as_chunks().0),
            F32 => Ok(dot_f32(w, a)),
            F16 => Ok(dot_f16(w, a)),
            _ => super::avx2_more::dot_more(weight_type, w, a)
                .unwrap_or_else(|| crate::kernels::scalar::dot(weight_type, w, a)),
        }
    }
}

/// The exact sum of the eight `i32` lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// `Σ u_i a_i` over 32 byte pairs, exact for `u` in `0..=127` and any `a`: `maddubs`
/// pairs cannot saturate (2 · 127 · 128 < 2^15), and `madd` widens to `i32`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn dot_u7_i8(u: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1))
}

/// Loads 32 bytes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn load32(bytes: &[u8; 32]) -> __m256i {
    // SAFETY: the reference covers 32 readable bytes; unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// Loads 16 bytes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn load16(bytes: &[u8; 16]) -> __m128i {
    // SAFETY: the reference covers 16 readable bytes; unaligned loads are allowed.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

/// The little-endian f16 at `block[at..at + 2]` as f32, by F16C: the same value as
/// [`float::f16_to_f32`](crate::quant::float::f16_to_f32) (a NaN may differ in its
/// quiet bit), without its software conversion's cost per block.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn f16_at(block: &[u8], at: usize) -> f32 {
    let lo = block.get(at).copied().unwrap_or(0);
    let hi = block.get(at + 1).copied().unwrap_or(0);
    // A broadcast, not `_mm_cvtsi32_si128`: LLVM lowers that to an insert into whatever
    // register is free, often the running sum, which chains every block to the last.
    let bits = i16::from_le_bytes([lo, hi]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(bits)))
}

/// `d_w · d_a` for up to eight block pairs whose f16 scale leads each block (Q4_0, Q8_0),
/// by one F16C conversion per side: lane-wise the same products as the specification's
/// per-block `d(w) * d(a)`. Lanes past the slices' length are 0.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn scale_products<const W: usize, const A: usize>(w: &[[u8; W]], a: &[[u8; A]]) -> __m256 {
    let mut dw = [0u16; 8];
    let mut da = [0u16; 8];
    for ((dw, da), (wb, ab)) in dw.iter_mut().zip(&mut da).zip(w.iter().zip(a)) {
        *dw = u16::from_le_bytes([wb[0], wb[1]]);
        *da = u16::from_le_bytes([ab[0], ab[1]]);
    }
    // SAFETY: each pointer covers 16 readable bytes; unaligned loads are allowed.
    let (dw, da) = unsafe {
        (
            _mm_loadu_si128(dw.as_ptr().cast()),
            _mm_loadu_si128(da.as_ptr().cast()),
        )
    };
    _mm256_mul_ps(_mm256_cvtph_ps(dw), _mm256_cvtph_ps(da))
}

/// Lane `i` is the exact sum of the eight `i32` lanes of `v[i]`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum8(v: [__m256i; 8]) -> __m256i {
    let t0 = _mm256_hadd_epi32(v[0], v[1]);
    let t1 = _mm256_hadd_epi32(v[2], v[3]);
    let t2 = _mm256_hadd_epi32(v[4], v[5]);
    let t3 = _mm256_hadd_epi32(v[6], v[7]);
    // Per 128-bit half: partial sums of v0..v3 (u0) and v4..v7 (u1).
    let u0 = _mm256_hadd_epi32(t0, t1);
    let u1 = _mm256_hadd_epi32(t2, t3);
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(u0, u1),
        _mm256_permute2x128_si256::<0x31>(u0, u1),
    )
}

/// `Σ_b sumi_b as f32 · (d_w · d_a)_b` over block pairs whose f16 scale leads each block,
/// added in block order exactly as the specification does; `block_sum` returns a vector
/// whose lanes add up to the pair's exact integer sum. Eight blocks share one horizontal
/// reduction, one conversion and one multiply.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn sum_scaled<const W: usize, const A: usize>(
    w: &[[u8; W]],
    a: &[[u8; A]],
    block_sum: impl Fn(&[u8; W], &[u8; A]) -> __m256i,
) -> f32 {
    let mut sum = 0.0f32;
    for (wc, ac) in w.chunks(8).zip(a.chunks(8)) {
        let mut v = [_mm256_setzero_si256(); 8];
        for ((v, wb), ab) in v.iter_mut().zip(wc).zip(ac) {
            *v = block_sum(wb, ab);
        }
        let terms = _mm256_mul_ps(_mm256_cvtepi32_ps(hsum8(v)), scale_products(wc, ac));
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

/// Q8_0 · Q8_0, exact block sums: both sides are sign-extended to `i16` before `madd`.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn dot_q8_0_q8_0(
    w: &[q8_0::Block],
    a: &[q8_0::Block],
) -> Result<f32> {
    crate::kernels::same_blocks(w.len(), a.len())?;
    Ok(sum_scaled(w, a, |wb, ab| {
        let (qw, qa) = (load32(q8_0_qs(wb)), load32(q8_0_qs(ab)));
        let lo = _mm256_madd_epi16(
            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(qw)),
            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(qa)),
        );
        let hi = _mm256_madd_epi16(
            _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(qw)),
            _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(qa)),
        );
        _mm256_add_epi32(lo, hi)
    }))
}

/// Q4_0 · Q8_0: `Σ (n − 8) a = Σ n a − 8 Σ a` with the nibbles `n` in `0..=15`, both
/// sums exact.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn dot_q4_0_q8_0(
    w: &[q4_0::Block],
    a: &[q8_0::Block],
) -> Result<f32> {
    crate::kernels::same_blocks(w.len(), a.len())?;
    let mask = _mm256_set1_epi8(0x0f);
    let eight = _mm256_set1_epi8(8);
    Ok(sum_scaled(w, a, |wb, ab| {
        let packed = load16(&wb[2..].as_chunks().0[0]);
        // Low nibbles are elements 0..16, high nibbles 16..32.
        let n = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed), mask);
        let qa = load32(q8_0_qs(ab));
        _mm256_sub_epi32(dot_u7_i8(n, qa), dot_u7_i8(eight, qa))
    }))
}

/// The 256 quants of a Q8_K block, in eight loads of 32.
#[inline]
pub(super) fn q8_k_qs(b: &q8_k::Block) -> &[[u8; 32]] {
    b[4..260].as_chunks().0
}

/// Q4_K · Q8_K: each 32-quant sub-block's exact sum times its 6-bit scale; the minimum
/// term from the activation's `bsums`, as in the specification.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn dot_q4_k_q8_k(
    w: &[q4_k::Block],
    a: &[q8_k::Block],
) -> Result<f32> {
    crate::kernels::same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    for (wb, ab) in w.iter().zip(a) {
        let (scales, mins) = q4_k::scales_mins(wb);
        let bsums = q8_k::bsums(ab);
        let mut summ = 0i32;
        for s in 0..8 {
            summ += i32::from(mins[s]) * (i32::from(bsums[2 * s]) + i32::from(bsums[2 * s + 1]));
        }
        let q = q4_k_quants(wb);
        let qa = q8_k_qs(ab);
        let sumi = {
            let mut acc = _mm256_setzero_si256();
            for (j, (q, a)) in q.into_iter().zip(qa).enumerate() {
                let p = _mm256_maddubs_epi16(q, load32(a));
                let p = _mm256_madd_epi16(p, _mm256_set1_epi16(i16::from(scales[j])));
                acc = _mm256_add_epi32(acc, p);
            }
            hsum_i32(acc)
        };
        let d_a = q8_k::d(ab);
        sum += (f16_at(wb, 0) * d_a) * sumi as f32 - (f16_at(wb, 2) * d_a) * summ as f32;
    }
    Ok(sum)
}

/// Q6_K · Q8_K: 6-bit quants `u` in `0..=63` rebuilt from `ql`/`qh`, `Σ (u − 32) a`
/// per 16-quant sub-block, times its signed scale, all exact.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::kernels) unsafe fn dot_q6_k_q8_k(
    w: &[q6_k::Block],
    a: &[q8_k::Block],
) -> Result<f32> {
    crate::kernels::same_blocks(w.len(), a.len())?;
    let mut sum = 0.0f32;
    let off = _mm256_set1_epi8(32);
    for (wb, ab) in w.iter().zip(a) {
        let sc = q6_k::scales(wb);
        let qa = q8_k_qs(ab);
        let sumi = {
            let mut acc = _mm256_setzero_si256();
            for (v, (u, a)) in q6_k_quants(wb).into_iter().zip(qa).enumerate() {
                let y = load32(a);
                // Pairwise `Σ (u − 32) a`: |·| ≤ 2 · 32 · 128, fits i16.
                let p = _mm256_sub_epi16(_mm256_maddubs_epi16(u, y), _mm256_maddubs_epi16(off, y));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, q6_k_scale_pair(&sc, v)));
            }
            hsum_i32(acc)
        };
        sum += (f16_at(wb, 208) * q8_k::d(ab)) * sumi as f32;
    }
    Ok(sum)
}

/// The 256 quants of a Q4_K block as bytes `0..=15` in eight vectors, vector `j` being
/// sub-block `j` (the low nibbles of 32 bytes, then their high nibbles).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q4_k_quants(block: &q4_k::Block) -> [__m256i; 8] {
    let mask = _mm256_set1_epi8(0x0f);
    let qs: &[[u8; 32]] = block[16..].as_chunks().0;
    core::array::from_fn(|j| {
        let packed = load32(&qs[j / 2]);
        let packed = if j % 2 == 0 {
            packed
        } else {
            _mm256_srli_epi16::<4>(packed)
        };
        _mm256_and_si256(packed, mask)
    })
}

/// The 256 quants of a Q6_K block as bytes `0..=63` (rebuilt from `ql` and `qh`) in eight
/// vectors in activation order: vector `v` holds sub-blocks `2v` and `2v + 1`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q6_k_quants(block: &q6_k::Block) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0f);
    let m2 = _mm256_set1_epi8(3);
    let ql: &[[u8; 32]] = block[..128].as_chunks().0;
    let qh: &[[u8; 32]] = block[128..192].as_chunks().0;
    let mut u = [_mm256_setzero_si256(); 8];
    for h in 0..2 {
        let l0 = load32(&ql[2 * h]);
        let l1 = load32(&ql[2 * h + 1]);
        let hb = load32(&qh[h]);
        // Bits 2i..2i + 2 of `qh`, moved to bits 4..6.
        let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(hb, m2));
        let h1 = _mm256_slli_epi16::<2>(_mm256_and_si256(hb, _mm256_slli_epi16::<2>(m2)));
        let h2 = _mm256_and_si256(hb, _mm256_slli_epi16::<4>(m2));
        let h3 = _mm256_and_si256(_mm256_srli_epi16::<2>(hb), _mm256_slli_epi16::<4>(m2));
        u[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, m4), h0);
        u[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), h1);
        u[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4), h2);
        u[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4), h3);
    }
    u
}

/// The `i16` multipliers of [`q6_k_quants`]' vector `v`: lanes 0..8 (its first 16
/// quants' pairs) take sub-block `2v`'s scale, lanes 8..16 sub-block `2v + 1`'s.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q6_k_scale_pair(scales: &[i8; 16], v: usize) -> __m256i {
    _mm256_set_m128i(
        _mm_set1_epi16(i16::from(scales[2 * v + 1])),
        _mm_set1_epi16(i16::from(scales[2 * v])),
    )
}

/// Eight `f32` products widened to `f64` and added to two accumulators.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn fma_f64(acc: &mut [__m256d; 2], w: __m256, a: __m256) {
    acc[0] = _mm256_fmadd_pd(
        _mm256_cvtps_pd(_mm256_castps256_ps128(w)),
        _mm256_cvtps_pd(_mm256_castps256_ps128(a)),
        acc[0],
    );
    acc[1] = _mm256_fmadd_pd(
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(w)),
        _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(a)),
        acc[1],
    );
}

/// The sum of two `f64x4` accumulators.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_f64(acc: [__m256d; 2]) -> f64 {
    let v = _mm256_add_pd(acc[0], acc[1]);
    let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
    _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
}

/// F32 weights · F32 activations (both little-endian bytes of whole elements; lengths
/// checked by the caller): exact products summed in `f64`, rounded once.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32(w: &[u8], a: &[u8]) -> f32 {
    let (w8, w_tail) = w.as_chunks::<32>();
    let (a8, a_tail) = a.as_chunks::<32>();
    let mut acc = [_mm256_setzero_pd(); 2];
    for (wc, ac) in w8.iter().zip(a8) {
        // SAFETY: target features are the caller's; each load covers 32 bytes.
        unsafe {
            let wv = _mm256_loadu_ps(wc.as_ptr().cast());
            let av = _mm256_loadu_ps(ac.as_ptr().cast());
            fma_f64(&mut acc, wv, av);
        }
    }
    let mut sum = hsum_f64(acc);
    for (wc, ac) in w_tail
        .as_chunks::<4>()
        .0
        .iter()
        .zip(a_tail.as_chunks::<4>().0)
    {
        sum += f64::from(f32::from_le_bytes(*wc)) * f64::from(f32::from_le_bytes(*ac));
    }
    sum as f32
}

/// F16 weights · F32 activations (F16C conversion; exact products summed in `f64`).
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(w: &[u8], a: &[u8]) -> f32 {
    let (w8, w_tail) = w.as_chunks::<16>();
    let (a8, a_tail) = a.as_chunks::<32>();
    let mut acc = [_mm256_setzero_pd(); 2];
    for (wc, ac) in w8.iter().zip(a8) {
        // SAFETY: target features are the caller's; loads cover 16 and 32 bytes.
        unsafe {
            let wv = _mm256_cvtph_ps(load16(wc));
            let av = _mm256_loadu_ps(ac.as_ptr().cast());
            fma_f64(&mut acc, wv, av);
        }
    }
    let mut sum = hsum_f64(acc);
    for (wc, ac) in w_tail
        .as_chunks::<2>()
        .0
        .iter()
        .zip(a_tail.as_chunks::<4>().0)
    {
        let wf = crate::quant::float::f16_to_f32(u16::from_le_bytes(*wc));
        sum += f64::from(wf) * f64::from(f32::from_le_bytes(*ac));
    }
    sum as f32
}

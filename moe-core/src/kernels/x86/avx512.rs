//! AVX-512 VNNI kernels (x86-64) on 256-bit vectors (AVX-512 VL), in the eight-row
//! drivers through which every matrix product goes: `vpdpbusd` for Q4_0 and Q8_0;
//! `vpdpwssd` for Q4_K and Q6_K, which multiplies the `maddubs` pair sums by the
//! sub-block scales and accumulates in one instruction (for Q4_K with the scale
//! broadcast from memory, so no shuffle builds it), with the eight rows' scales and
//! minimums decoded together a row per lane. The row dot product and every other type
//! use the AVX2 kernels. (The VNNI row dot measured in the first session was slowed by
//! the closure-inlining problem the drivers' macro solves; a row dot still adds its
//! block terms one at a time, so the drivers are where VNNI pays.)
//!
//! `vpdpbusd` multiplies unsigned by signed bytes and adds groups of four into `i32`
//! lanes without saturation, `vpdpwssd` the same for pairs of `i16`, so the block sums
//! are exact; the float scaling is the specification's, so results are bit-identical to
//! it. The intrinsics need Rust 1.89 (the workspace's minimum is 1.88), hence inline
//! assembly for the AVX-512 instructions.

use core::arch::asm;
use core::arch::x86_64::*;

use super::avx2::{self, hsum8, load16, q4_k_quants, q6_k_quants};
use super::batch::{
    self, ROWS, f16_lanes, matmul_rows_into_vnni, matmul_scaled_vnni, matvec_rows_vnni, nibbles,
    q8_0_quants, q8_k_vectors,
};
use crate::kernels::{MatmulShape, check_matmul};
use crate::quant::{q4_k, q5_k, q6_k, q8_k};
use crate::{Result, TensorType};

/// The table entry: the AVX2 dot product (see the module docs).
///
/// Private to `kernels`: only [`Kernels`](crate::kernels::Kernels) constructors that hold
/// proof of the [`Level::Avx512`](crate::kernels::Level::Avx512) features store it.
pub(in crate::kernels) fn dot(weight_type: TensorType, w: &[u8], a: &[u8]) -> Result<f32> {
    avx2::dot(weight_type, w, a)
}

/// The batch entry: the eight-row driver with `vpdpbusd` for Q4_0 and Q8_0, the AVX2
/// batch kernels otherwise.
///
/// Private to `kernels`: only [`Kernels`](crate::kernels::Kernels) constructors that hold
/// proof of the [`Level::Avx512`](crate::kernels::Level::Avx512) features store it.
pub(in crate::kernels) fn matmul(
    weight_type: TensorType,
    weights: &[u8],
    activations: &[&[u8]],
    out: &mut [f32],
) -> Result<()> {
    // SAFETY: reachable only through a `Kernels` table at `Level::Avx512`, whose every
    // constructor requires proof of AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    unsafe { matmul_unchecked(weight_type, weights, activations, out) }
}

/// [`matmul`] without the table's proof.
///
/// Each weight byte becomes unsigned (`n` for Q4_0, `w + 128` for Q8_0) and the offset
/// times `Σ a`, computed once per activation block for all eight rows, seeds the
/// accumulator with its negation: one `vpdpbusd` per block pair, exact in `i32`.
///
/// # Safety
///
/// The CPU must support AVX2, FMA, F16C, AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn matmul_unchecked(
    weight_type: TensorType,
    weights: &[u8],
    activations: &[&[u8]],
    out: &mut [f32],
) -> Result<()> {
    let shape = check_matmul(weight_type, weights.len(), activations, out.len())?;
    let zero = _mm256_setzero_si256();
    // `−offset · Σ a` as four-byte group sums, the seed of every row's `vpdpbusd`.
    let seed = |offset: __m256i, qa: __m256i| _mm256_sub_epi32(zero, dpbusd(zero, offset, qa));
    match weight_type {
        TensorType::Q4_0 if shape.blocks > 0 => {
            let mask = _mm256_set1_epi8(0x0f);
            let eight = _mm256_set1_epi8(8);
            matmul_scaled_vnni(
                weights.as_chunks::<18>().0,
                shape,
                activations,
                out,
                |w| nibbles(w, mask),
                |a| {
                    let qa = load32(q8_0_quants(a));
                    (qa, seed(eight, qa))
                },
                |n, (qa, seed)| dpbusd(seed, n, qa),
            );
        }
        TensorType::Q8_0 if shape.blocks > 0 => {
            let bias = _mm256_set1_epi8(i8::MIN);
            matmul_scaled_vnni(
                weights.as_chunks::<34>().0,
                shape,
                activations,
                out,
                // `w ^ 0x80` is `w + 128` read as unsigned.
                |w| _mm256_xor_si256(load32(q8_0_quants(w)), bias),
                |a| {
                    let qa = load32(q8_0_quants(a));
                    (qa, seed(bias, qa))
                },
                |w, (qa, seed)| dpbusd(seed, w, qa),
            );
        }
        TensorType::Q4_K if shape.blocks > 0 => matmul_q4_k(weights, shape, activations, out),
        TensorType::Q6_K if shape.blocks > 0 => matmul_q6_k(weights, shape, activations, out),
        TensorType::Q5_K if shape.blocks > 0 => matmul_q5_k(weights, shape, activations, out),
        // SAFETY: the caller guarantees a superset of the AVX2 level's features.
        _ => return unsafe { batch::matmul_unchecked(weight_type, weights, activations, out) },
    }
    Ok(())
}

/// `vpdpbusd`: `acc + Σ` over each group of four bytes of `u · s` (`u` unsigned, `s`
/// signed), exact in `i32`. Inline assembly because the intrinsic needs Rust 1.89.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    let mut acc = acc;
    // SAFETY: the enclosing function's target features include AVX-512 VNNI and VL, the
    // instruction's requirements; it reads and writes registers only.
    unsafe {
        asm!(
            "vpdpbusd {acc}, {u}, {s}",
            acc = inout(ymm_reg) acc,
            u = in(ymm_reg) u,
            s = in(ymm_reg) s,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Loads 32 bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn load32(bytes: &[u8; 32]) -> __m256i {
    // SAFETY: the reference covers 32 readable bytes; unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// `vpdpwssd`: `acc + Σ` over each pair of `i16` lanes of `a · b`, exact in `i32` (the
/// non-saturating form).
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    let mut acc = acc;
    // SAFETY: the enclosing function's target features include AVX-512 VNNI and VL, the
    // instruction's requirements; it reads and writes registers only.
    unsafe {
        asm!(
            "vpdpwssd {acc}, {a}, {b}",
            acc = inout(ymm_reg) acc,
            a = in(ymm_reg) a,
            b = in(ymm_reg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// [`dpwssd`] with `b` the pair of `i16` at `pair` broadcast to every lane (an embedded
/// `{1to8}` broadcast, which costs no shuffle).
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn dpwssd_bcst(acc: __m256i, a: __m256i, pair: &u32) -> __m256i {
    let mut acc = acc;
    // SAFETY: the enclosing function's target features include AVX-512 VNNI and VL, the
    // instruction's requirements; it reads the four bytes `pair` refers to and writes a
    // register only.
    unsafe {
        asm!(
            "vpdpwssd {acc}, {a}, dword ptr [{b}]{{1to8}}",
            acc = inout(ymm_reg) acc,
            a = in(ymm_reg) a,
            b = in(reg) core::ptr::from_ref(pair),
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    acc
}

/// Loads 32 bytes from a constant table.
#[inline]
#[target_feature(enable = "avx2")]
fn table(bytes: &[u8; 32]) -> __m256i {
    // SAFETY: the reference covers 32 readable bytes; unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

/// `pshufb` indices that turn byte `j` of each `i32` lane into the `i16` pair `(b, b)`
/// (zero-extended) in that lane.
const fn pair_index(j: usize) -> [u8; 32] {
    let mut t = [0x80u8; 32];
    let mut d = 0;
    while d < 8 {
        let at = 4 * (d % 4) + j;
        t[4 * d] = at as u8;
        t[4 * d + 2] = at as u8;
        d += 1;
    }
    t
}

/// `pshufb` indices that turn bytes `j` and `j + 1` of each `i32` lane into the `i16`
/// pair `(b_j, b_j+1)` (zero-extended) in that lane.
const fn two_index(j: usize) -> [u8; 32] {
    let mut t = [0x80u8; 32];
    let mut d = 0;
    while d < 8 {
        let at = 4 * (d % 4) + j;
        t[4 * d] = at as u8;
        t[4 * d + 2] = at as u8 + 1;
        d += 1;
    }
    t
}

const PAIR_INDEX: [[u8; 32]; 4] = [pair_index(0), pair_index(1), pair_index(2), pair_index(3)];

/// The first 16 bytes of eight Q4_K or Q5_K blocks (`d`, `dmin`, the 12 packed scale
/// bytes) as
/// four vectors whose lane `k` is dword `i` of row `k`'s bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn q4_k_heads<const W: usize>(w: &[&[u8; W]; ROWS]) -> [__m256i; 4] {
    let mut r = [_mm256_setzero_si256(); 4];
    for (k, r) in r.iter_mut().enumerate() {
        let head = |k: usize| load16(&w[k][..16].as_chunks().0[0]);
        *r = _mm256_set_m128i(head(k + 4), head(k));
    }
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

/// Eight Q4_K (or Q5_K) rows' block heads decoded together, a row per lane: everything
/// but the quants.
struct KMinHeads {
    /// One token: `scale_pairs[c][k]`, row `k`'s scales of sub-blocks `2c` and `2c + 1`
    /// as an `i16` pair.
    scale_pairs: [[u32; ROWS]; 4],
    /// Batches: `scales[k][c]`, row `k`'s scales of sub-blocks `2c` (the four low `i16`
    /// of each 128 bits) and `2c + 1` (the four high), as [`_mm256_packs_epi32`] pairs
    /// their sums.
    scales: [[__m256i; 4]; ROWS],
    /// `mins[s]`: lane `k` is row `k`'s sub-block `s` minimum as the `i16` pair `(m, m)`.
    mins: [__m256i; 8],
    d: __m256,
    dmin: __m256,
}

impl KMinHeads {
    #[inline]
    #[target_feature(enable = "avx2")]
    fn new() -> KMinHeads {
        KMinHeads {
            scale_pairs: [[0; ROWS]; 4],
            scales: [[_mm256_setzero_si256(); 4]; ROWS],
            mins: [_mm256_setzero_si256(); 8],
            d: _mm256_setzero_ps(),
            dmin: _mm256_setzero_ps(),
        }
    }
}

/// Eight Q4_K (or Q5_K) rows' unpacked block, for a batch.
struct KMinRows {
    heads: KMinHeads,
    /// Quants `0..=15` (`0..=31`), vector `j` being sub-block `j`.
    q: [[__m256i; 8]; ROWS],
}

/// Q4_K · Q8_K for eight rows: per row `Σ_j scale_j Σ q a` (`maddubs` pairs times the
/// broadcast scale by `vpdpwssd`) and `Σ_s min_s (bsum_2s + bsum_2s+1)` (lane per row,
/// one `vpdpwssd` per sub-block), both exact, then `(d d_a) sumi − (dmin d_a) summ` as
/// the specification computes it. The scales and minimums of the eight rows are decoded
/// together, a row per lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn matmul_q4_k(weights: &[u8], shape: MatmulShape, activations: &[&[u8]], out: &mut [f32]) {
    let w = weights.as_chunks::<{ q4_k::BLOCK_BYTES }>().0;
    matmul_k_min(w, shape, activations, out, |w| q4_k_quants(w));
}

/// Q5_K · Q8_K for eight rows: as Q4_K (the same scales, minimums and float terms) with
/// the fifth bit of each quant from `qh`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn matmul_q5_k(weights: &[u8], shape: MatmulShape, activations: &[&[u8]], out: &mut [f32]) {
    let w = weights.as_chunks::<{ q5_k::BLOCK_BYTES }>().0;
    matmul_k_min(w, shape, activations, out, |w| q5_k_quants(w));
}

/// The 256 quants of a Q5_K block as bytes `0..=31` in eight vectors, vector `j` being
/// sub-block `j`: the nibbles as Q4_K's (from byte 48), bit `j` of `qh` as bit 4.
#[inline]
#[target_feature(enable = "avx2")]
fn q5_k_quants(block: &q5_k::Block) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0f);
    let bit4 = _mm256_set1_epi8(0x10);
    let qh = avx2::load32(&block[16..48].as_chunks().0[0]);
    let qs: &[[u8; 32]] = block[48..].as_chunks().0;
    let mut q = [_mm256_setzero_si256(); 8];
    for (c, qs) in qs.iter().enumerate() {
        let packed = avx2::load32(qs);
        let lo = _mm256_and_si256(packed, m4);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), m4);
        // Bit `j` of `qh` at bit 4: shifted left by `4 − j` or right by `j − 4`.
        let (h0, h1) = match c {
            0 => (_mm256_slli_epi16::<4>(qh), _mm256_slli_epi16::<3>(qh)),
            1 => (_mm256_slli_epi16::<2>(qh), _mm256_slli_epi16::<1>(qh)),
            2 => (qh, _mm256_srli_epi16::<1>(qh)),
            _ => (_mm256_srli_epi16::<2>(qh), _mm256_srli_epi16::<3>(qh)),
        };
        q[2 * c] = _mm256_or_si256(lo, _mm256_and_si256(h0, bit4));
        q[2 * c + 1] = _mm256_or_si256(hi, _mm256_and_si256(h1, bit4));
    }
    q
}

/// The shuffle tables of [`KMinTables::heads`], made once per call.
struct KMinTables {
    /// Byte `s % 4` of each `i32` lane as the pair `(m, m)`.
    min_index: [__m256i; 4],
    /// Bytes `0, 1` or `2, 3` of each `i32` lane as an `i16` pair.
    pair_index: [__m256i; 2],
    /// Scale `2c` to the low four `i16` of each half, `2c + 1` to the high four.
    pack_index: [__m256i; 4],
    /// Bytes 0, 1 (`d`) of each dword to the low half of each 128-bit lane, 2, 3 (`dmin`)
    /// to the high half.
    f16_index: __m256i,
}

impl KMinTables {
    #[inline]
    #[target_feature(enable = "avx2")]
    fn new() -> KMinTables {
        KMinTables {
            min_index: PAIR_INDEX.map(|t| table(&t)),
            pair_index: [table(&two_index(0)), table(&two_index(2))],
            pack_index: core::array::from_fn(|c| {
                let mut t = [0x80u8; 32];
                for (i, t) in t.chunks_exact_mut(2).enumerate() {
                    t[0] = (2 * c + i % 8 / 4) as u8;
                }
                table(&t)
            }),
            f16_index: table(&[
                0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, //
                0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
            ]),
        }
    }

    /// Decodes the heads of eight blocks into `heads`, as `q4_k::scales_mins` does, a row
    /// per lane: the scale pairs of one token, or with `PACK` the scale vectors of a
    /// batch.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn heads<const W: usize, const PACK: bool>(&self, w: &[&[u8; W]; ROWS], heads: &mut KMinHeads) {
        let m6 = _mm256_set1_epi32(0x3f3f_3f3f);
        let m4 = _mm256_set1_epi32(0x0f0f_0f0f);
        let hi2 = _mm256_set1_epi32(0x3030_3030);
        let [u0, u1, u2, u3] = q4_k_heads(w);
        // Bytes of scales 0..4 and 4..8, of minimums 0..4 and 4..8.
        let sc_lo = _mm256_and_si256(u1, m6);
        let sc_hi = _mm256_or_si256(
            _mm256_and_si256(u3, m4),
            _mm256_and_si256(_mm256_srli_epi32::<2>(u1), hi2),
        );
        let m_lo = _mm256_and_si256(u2, m6);
        let m_hi = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi32::<4>(u3), m4),
            _mm256_and_si256(_mm256_srli_epi32::<2>(u2), hi2),
        );
        if PACK {
            let (mut lo, mut hi) = ([0u32; ROWS], [0u32; ROWS]);
            // SAFETY: the pointers cover 32 writable bytes; unaligned stores are allowed.
            unsafe {
                _mm256_storeu_si256(lo.as_mut_ptr().cast(), sc_lo);
                _mm256_storeu_si256(hi.as_mut_ptr().cast(), sc_hi);
            }
            for (k, s) in heads.scales.iter_mut().enumerate() {
                // Row `k`'s eight scale bytes in every quadword.
                let bytes = u64::from(hi[k]) << 32 | u64::from(lo[k]);
                let row = _mm256_set1_epi64x(bytes as i64);
                for (c, s) in s.iter_mut().enumerate() {
                    *s = _mm256_shuffle_epi8(row, self.pack_index[c]);
                }
            }
        } else {
            for (c, s) in heads.scale_pairs.iter_mut().enumerate() {
                let src = if c < 2 { sc_lo } else { sc_hi };
                let v = _mm256_shuffle_epi8(src, self.pair_index[c % 2]);
                // SAFETY: the pointer covers 32 writable bytes; unaligned stores are allowed.
                unsafe { _mm256_storeu_si256(s.as_mut_ptr().cast(), v) };
            }
        }
        for (s, m) in heads.mins.iter_mut().enumerate() {
            *m = _mm256_shuffle_epi8(if s < 4 { m_lo } else { m_hi }, self.min_index[s % 4]);
        }
        // `d` of the eight rows in the low 128 bits, `dmin` in the high.
        let h = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(u0, self.f16_index));
        heads.d = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
        heads.dmin = _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(h));
    }
}

/// Row `k`'s exact `Σ_j scale_j Σ q a` as `i32` lanes that add up to it: sub-blocks `2c`
/// and `2c + 1` by `vpdpbusd` (each `i32` lane a sum of four products, |·| ≤ 4 · 31 ·
/// 128 < 2^15), then paired as `i16` and scaled by one `vpdpwssd`: for a batch (`PACK`)
/// by `vpackssdw` (one shuffle, never saturating) against the row's scale vectors; for
/// one token by interleaving the low halves (two shuffles) against the scale pair
/// broadcast from memory, which saves making the vectors.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn k_min_row_sum<const PACK: bool>(
    q: &[__m256i; 8],
    heads: &KMinHeads,
    k: usize,
    qa: &[__m256i; 8],
) -> __m256i {
    let zero = _mm256_setzero_si256();
    let mut acc = zero;
    for c in 0..4 {
        let v0 = dpbusd(zero, q[2 * c], qa[2 * c]);
        let v1 = dpbusd(zero, q[2 * c + 1], qa[2 * c + 1]);
        acc = if PACK {
            dpwssd(acc, _mm256_packs_epi32(v0, v1), heads.scales[k][c])
        } else {
            let v = _mm256_blend_epi16::<0b1010_1010>(v0, _mm256_bslli_epi128::<2>(v1));
            dpwssd_bcst(acc, v, &heads.scale_pairs[c][k])
        };
    }
    acc
}

/// The eight rows' float terms from their integer sums: `Σ_s min_s (bsum_2s +
/// bsum_2s+1)` a lane per row (one `vpdpwssd` per sub-block), then
/// `(d d_a) sumi − (dmin d_a) summ`.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn k_min_terms(heads: &KMinHeads, sums: [__m256i; ROWS], bsums: &[u32; 8], d_a: f32) -> __m256 {
    let sumi = hsum8(sums);
    let mut summ = _mm256_setzero_si256();
    for (m, pair) in heads.mins.iter().zip(bsums) {
        summ = dpwssd_bcst(summ, *m, pair);
    }
    let d_a = _mm256_set1_ps(d_a);
    _mm256_sub_ps(
        _mm256_mul_ps(_mm256_mul_ps(heads.d, d_a), _mm256_cvtepi32_ps(sumi)),
        _mm256_mul_ps(_mm256_mul_ps(heads.dmin, d_a), _mm256_cvtepi32_ps(summ)),
    )
}

/// The eight-row driver of the formats with Q4_K's scales, minimums and float terms;
/// `quants` gives a block's quants (at most 127, so `maddubs` pairs are exact), vector
/// `j` being sub-block `j`. One token unpacks each row's quants straight into its sum; a
/// batch unpacks the eight rows once for all its tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn matmul_k_min<const W: usize>(
    weights: &[[u8; W]],
    shape: MatmulShape,
    activations: &[&[u8]],
    out: &mut [f32],
    quants: impl Fn(&[u8; W]) -> [__m256i; 8],
) {
    let tables = KMinTables::new();
    let prepare = |a: &q8_k::Block| {
        let qa = q8_k_vectors(a);
        // The `bsums` as eight pairs `(bsum_2s, bsum_2s+1)`.
        let pairs: &[[u8; 4]] = a[260..].as_chunks().0;
        let bsums: [u32; 8] = core::array::from_fn(|s| u32::from_le_bytes(pairs[s]));
        (qa, bsums, q8_k::d(a))
    };
    if let [activation] = activations {
        matvec_rows_vnni(
            weights,
            shape,
            activation,
            out,
            prepare,
            |w: &[&[u8; W]; ROWS], (qa, bsums, d_a)| {
                let mut heads = KMinHeads::new();
                tables.heads::<W, false>(w, &mut heads);
                let sums =
                    core::array::from_fn(|k| k_min_row_sum::<false>(&quants(w[k]), &heads, k, qa));
                k_min_terms(&heads, sums, bsums, *d_a)
            },
        );
        return;
    }
    matmul_rows_into_vnni(
        weights,
        shape,
        activations,
        out,
        KMinRows {
            heads: KMinHeads::new(),
            q: [[_mm256_setzero_si256(); 8]; ROWS],
        },
        |w: &[&[u8; W]; ROWS], rows: &mut KMinRows| {
            tables.heads::<W, true>(w, &mut rows.heads);
            for (q, w) in rows.q.iter_mut().zip(w) {
                *q = quants(w);
            }
        },
        prepare,
        |rows, (qa, bsums, d_a)| {
            let sums =
                core::array::from_fn(|k| k_min_row_sum::<true>(&rows.q[k], &rows.heads, k, qa));
            k_min_terms(&rows.heads, sums, bsums, *d_a)
        },
    );
}

/// Eight Q6_K rows' unpacked block, for a batch: each row's [`q6_k_row`] and the rows'
/// `d`.
struct Q6kRows {
    rows: [([__m256i; 8], [__m256i; 4], __m256i); ROWS],
    d: __m256,
}

/// The sixteen sub-block sums `Σ a` (16 quants each) of a Q8_K block as `i16`, even
/// sub-blocks in the low 128 bits, odd in the high; exact (|Σ| ≤ 2048).
#[inline]
#[target_feature(enable = "avx2")]
fn q6_k_sub_sums(qa: &[__m256i; 8]) -> __m256i {
    let ones = _mm256_set1_epi8(1);
    let mut p = [_mm256_setzero_si256(); 8];
    for (p, a) in p.iter_mut().zip(qa) {
        *p = _mm256_maddubs_epi16(ones, *a);
    }
    let h01 = _mm256_hadd_epi16(p[0], p[1]);
    let h23 = _mm256_hadd_epi16(p[2], p[3]);
    let h45 = _mm256_hadd_epi16(p[4], p[5]);
    let h67 = _mm256_hadd_epi16(p[6], p[7]);
    _mm256_hadd_epi16(_mm256_hadd_epi16(h01, h23), _mm256_hadd_epi16(h45, h67))
}

/// One Q6_K row's block unpacked: the 6-bit quants `0..=63` as [`q6_k_quants`] orders
/// them; the `i16` scales, vector `m` with sub-block `4m`'s in its four lowest lanes, then
/// `4m + 2`'s, `4m + 1`'s and `4m + 3`'s; and `−32 · scale` per sub-block, even
/// sub-blocks in the low 128 bits and odd ones in the high (the order of
/// [`q6_k_sub_sums`]).
#[inline]
#[target_feature(enable = "avx2")]
fn q6_k_row(w: &q6_k::Block, index: &[__m256i; 2]) -> ([__m256i; 8], [__m256i; 4], __m256i) {
    let even_odd = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    let raw = load16(&w[192..208].as_chunks().0[0]);
    let wide = _mm256_cvtepi8_epi16(raw);
    let lo = _mm256_permute2x128_si256::<0x00>(wide, wide);
    let hi = _mm256_permute2x128_si256::<0x11>(wide, wide);
    let scales =
        core::array::from_fn(|m| _mm256_shuffle_epi8(if m < 2 { lo } else { hi }, index[m % 2]));
    let eo = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(raw, even_odd));
    let offsets = _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16::<5>(eo));
    (q6_k_quants(w), scales, offsets)
}

/// One row's exact `Σ_k sc_k Σ (u − 32) a` of a Q6_K block as `i32` lanes that add up to
/// it: the offsets against the activation's sub-block sums, then vectors 2m and 2m + 1
/// by `vpdpbusd` (each `i32` lane a sum of four products, |·| ≤ 4 · 63 · 128 < 2^15, so
/// the pack never saturates), packed to `i16` (sub-blocks 4m and 4m + 2 in the low 128
/// bits, 4m + 1 and 4m + 3 in the high, four lanes each) and scaled by one `vpdpwssd`.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn q6_k_row_sum(
    (u, scales, offsets): &([__m256i; 8], [__m256i; 4], __m256i),
    qa: &[__m256i; 8],
    sub_sums: __m256i,
) -> __m256i {
    let zero = _mm256_setzero_si256();
    let mut acc = dpwssd(zero, *offsets, sub_sums);
    for (m, s) in scales.iter().enumerate() {
        let x0 = dpbusd(zero, u[2 * m], qa[2 * m]);
        let x1 = dpbusd(zero, u[2 * m + 1], qa[2 * m + 1]);
        acc = dpwssd(acc, _mm256_packs_epi32(x0, x1), *s);
    }
    acc
}

/// Q6_K · Q8_K for eight rows: per row `Σ_k sc_k Σ u a − 32 Σ_k sc_k Σ a` (the quants'
/// offset taken out through the activation's own sub-block sums, shared by the eight
/// rows), exact, then `(d d_a) sumi` as the specification computes it. One token unpacks
/// each row's block straight into its sum; a batch unpacks the eight rows once for all
/// its tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn matmul_q6_k(weights: &[u8], shape: MatmulShape, activations: &[&[u8]], out: &mut [f32]) {
    // Scale 4m to the low four `i16` of the low half, 4m + 2 to its high four, 4m + 1 and
    // 4m + 3 likewise in the high half, from the widened scales 0..8 (m = 0, 1) or 8..16.
    let index: [__m256i; 2] = core::array::from_fn(|m| {
        let mut t = [0u8; 32];
        for (i, t) in t.chunks_exact_mut(2).enumerate() {
            let scale = 4 * m + [0, 2, 1, 3][i / 4];
            t.copy_from_slice(&[2 * scale as u8, 2 * scale as u8 + 1]);
        }
        table(&t)
    });
    let weights = weights.as_chunks::<{ q6_k::BLOCK_BYTES }>().0;
    let prepare = |a: &q8_k::Block| {
        let qa = q8_k_vectors(a);
        (qa, q6_k_sub_sums(&qa), q8_k::d(a))
    };
    let scale = |d: __m256, d_a: f32, sumi: __m256i| {
        _mm256_mul_ps(
            _mm256_mul_ps(d, _mm256_set1_ps(d_a)),
            _mm256_cvtepi32_ps(sumi),
        )
    };
    if let [activation] = activations {
        matvec_rows_vnni(
            weights,
            shape,
            activation,
            out,
            prepare,
            |w: &[&q6_k::Block; ROWS], (qa, sub_sums, d_a)| {
                let sums =
                    core::array::from_fn(|k| q6_k_row_sum(&q6_k_row(w[k], &index), qa, *sub_sums));
                scale(f16_lanes(w, 208), *d_a, hsum8(sums))
            },
        );
        return;
    }
    matmul_rows_into_vnni(
        weights,
        shape,
        activations,
        out,
        Q6kRows {
            rows: [(
                [_mm256_setzero_si256(); 8],
                [_mm256_setzero_si256(); 4],
                _mm256_setzero_si256(),
            ); ROWS],
            d: _mm256_setzero_ps(),
        },
        |w: &[&q6_k::Block; ROWS], unpacked: &mut Q6kRows| {
            for (row, w) in unpacked.rows.iter_mut().zip(w) {
                *row = q6_k_row(w, &index);
            }
            unpacked.d = f16_lanes(w, 208);
        },
        prepare,
        |unpacked, (qa, sub_sums, d_a)| {
            let sums = core::array::from_fn(|k| q6_k_row_sum(&unpacked.rows[k], qa, *sub_sums));
            scale(unpacked.d, *d_a, hsum8(sums))
        },
    );
}

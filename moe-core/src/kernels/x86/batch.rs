//! Matrix × batch, eight weight rows at a time with one `f32` lane per row: Q4_0 and
//! Q8_0 (against Q8_0 activations), Q4_K and Q6_K (against Q8_K).
//!
//! A row-at-a-time dot product must add its block terms one after another (the
//! specification's order), so its speed is bounded by the latency of one float add per
//! block. Here each of eight rows owns a lane of one vector: a single vector add per block
//! advances all eight running sums, each still in the specification's order, so the
//! results stay bit-identical to [`scalar::dot`](crate::kernels::scalar::dot). Each
//! group of weight blocks is unpacked once and then used for every activation row of the
//! batch, which is what makes prefill cheaper per row than repeated matrix × vector.
//!
//! [`matmul_rows`] is the driver; a format enters through three closures — unpack the
//! eight rows' blocks, prepare an activation block, and turn the two into the eight
//! rows' float terms with the specification's operations — so formats and instruction
//! sets (AVX2, AVX-512 VNNI) share it. For one activation row the K-quants use
//! [`matvec_rows`] instead, whose closure unpacks each row's block straight into its dot
//! product: a single token never reuses an unpacked block, so storing it costs more than
//! it saves.

use core::arch::x86_64::*;

use super::avx2::{
    self, f16_at, hsum8, load16, load32, q4_k_quants, q6_k_quants, q6_k_scale_pair, q8_k_qs,
};
use crate::kernels::{MatmulShape, check_matmul, matmul_by_dot};
use crate::quant::{q4_k, q6_k, q8_0, q8_k};
use crate::{Result, TensorType};

/// Weight rows summed together: one lane each of an `f32 × 8` vector.
pub(super) const ROWS: usize = 8;

/// Activation rows whose running sums are kept at once (on the stack, 32 bytes each).
const TOKENS: usize = 16;

/// The AVX2 table's batch entry: the eight-row driver for Q4_0, Q8_0, Q4_K and Q6_K, the
/// AVX2 dot product pair by pair for every other type.
///
/// Private to `kernels`: only [`Kernels`](crate::kernels::Kernels) constructors that hold
/// proof of AVX2, FMA and F16C store this function.
pub(in crate::kernels) fn matmul(
    weight_type: TensorType,
    weights: &[u8],
    activations: &[&[u8]],
    out: &mut [f32],
) -> Result<()> {
    // SAFETY: reachable only through a `Kernels` table at `Level::Avx2` or above, whose
    // constructors all require AVX2, FMA and F16C.
    unsafe { matmul_unchecked(weight_type, weights, activations, out) }
}

/// [`matmul`] without the table's proof.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matmul_unchecked(
    weight_type: TensorType,
    weights: &[u8],
    activations: &[&[u8]],
    out: &mut [f32],
) -> Result<()> {
    let shape = check_matmul(weight_type, weights.len(), activations, out.len())?;
    match weight_type {
        TensorType::Q4_0 if shape.blocks > 0 => {
            let mask = _mm256_set1_epi8(0x0f);
            let eight = _mm256_set1_epi8(8);
            let ones = _mm256_set1_epi16(1);
            matmul_scaled(
                weights.as_chunks::<18>().0,
                shape,
                activations,
                out,
                |w| nibbles(w, mask),
                // `8 Σ a` in pairs, shared by the eight rows.
                |a| {
                    let qa = load32(q8_0_quants(a));
                    (qa, _mm256_maddubs_epi16(eight, qa))
                },
                // `Σ (n − 8) a = Σ n a − 8 Σ a`: pairs stay within ±3840, so `maddubs`
                // never saturates and `i16` holds the difference exactly.
                |n, (qa, eight_a)| {
                    let pairs = _mm256_sub_epi16(_mm256_maddubs_epi16(n, qa), eight_a);
                    _mm256_madd_epi16(pairs, ones)
                },
            );
        }
        TensorType::Q8_0 if shape.blocks > 0 => matmul_scaled(
            weights.as_chunks::<34>().0,
            shape,
            activations,
            out,
            |w| widen(load32(q8_0_quants(w))),
            |a| widen(load32(q8_0_quants(a))),
            // Both sides as `i16`: products and pair sums are exact for every byte.
            |(w_lo, w_hi), (a_lo, a_hi)| {
                _mm256_add_epi32(_mm256_madd_epi16(w_lo, a_lo), _mm256_madd_epi16(w_hi, a_hi))
            },
        ),
        TensorType::Q4_K if shape.blocks > 0 => matmul_q4_k(weights, shape, activations, out),
        TensorType::Q6_K if shape.blocks > 0 => matmul_q6_k(weights, shape, activations, out),
        _ => return matmul_by_dot(avx2::dot, weight_type, weights, activations, out),
    }
    Ok(())
}

/// Q4_K · Q8_K for eight rows: per row `Σ_j scale_j Σ q a` and `Σ_j min_j (bsum pair j)`,
/// both exact, then `(d d_a) sumi − (dmin d_a) summ` as the specification computes it.
/// One token unpacks each row's block straight into its sums; a batch unpacks the eight
/// rows once for all its tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn matmul_q4_k(weights: &[u8], shape: MatmulShape, activations: &[&[u8]], out: &mut [f32]) {
    /// One row's unpacked block: quants, scales broadcast per sub-block, and mins in the
    /// lane order of [`bsum_pairs`].
    type Row = ([__m256i; 8], [__m256i; 8], __m256i);
    let row = |w: &q4_k::Block| -> Row {
        let (scales, mins) = q4_k::scales_mins(w);
        let m = BSUM_PAIR_ORDER.map(|s| i32::from(mins[s]));
        // SAFETY: the pointer covers 32 readable bytes; unaligned loads are allowed.
        let mins = unsafe { _mm256_loadu_si256(m.as_ptr().cast()) };
        (
            q4_k_quants(w),
            scales.map(|s| _mm256_set1_epi16(i16::from(s))),
            mins,
        )
    };
    // Row sums `Σ_j scale_j Σ q a` and the row's minimum terms, lanes to be added up.
    let sums = |(q, scales, mins): &Row, qa: &[__m256i; 8], pairs: __m256i| {
        let mut acc = _mm256_setzero_si256();
        for ((q, a), s) in q.iter().zip(qa).zip(scales) {
            let p = _mm256_maddubs_epi16(*q, *a);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, *s));
        }
        (acc, _mm256_mullo_epi32(*mins, pairs))
    };
    let scale = |d: __m256, dmin: __m256, d_a: f32, sums: [(__m256i, __m256i); ROWS]| {
        let sumi = hsum8(sums.map(|s| s.0));
        let summ = hsum8(sums.map(|s| s.1));
        let d_a = _mm256_set1_ps(d_a);
        _mm256_sub_ps(
            _mm256_mul_ps(_mm256_mul_ps(d, d_a), _mm256_cvtepi32_ps(sumi)),
            _mm256_mul_ps(_mm256_mul_ps(dmin, d_a), _mm256_cvtepi32_ps(summ)),
        )
    };
    let weights = weights.as_chunks::<{ q4_k::BLOCK_BYTES }>().0;
    let prepare = |a: &q8_k::Block| (q8_k_vectors(a), bsum_pairs(a), q8_k::d(a));
    if let [activation] = activations {
        matvec_rows(
            weights,
            shape,
            activation,
            out,
            prepare,
            |w: &[&q4_k::Block; ROWS], (qa, pairs, d_a)| {
                let sums = core::array::from_fn(|k| sums(&row(w[k]), qa, *pairs));
                scale(f16_lanes(w, 0), f16_lanes(w, 2), *d_a, sums)
            },
        );
        return;
    }
    matmul_rows(
        weights,
        shape,
        activations,
        out,
        |w: &[&q4_k::Block; ROWS]| (w.map(row), f16_lanes(w, 0), f16_lanes(w, 2)),
        prepare,
        |(rows, d, dmin), (qa, pairs, d_a)| {
            let sums = core::array::from_fn(|k| sums(&rows[k], qa, *pairs));
            scale(*d, *dmin, *d_a, sums)
        },
    );
}

/// The 256 quants of a Q8_K block in eight vectors.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn q8_k_vectors(a: &q8_k::Block) -> [__m256i; 8] {
    let qs = q8_k_qs(a);
    core::array::from_fn(|j| load32(&qs[j]))
}

/// Which sub-block's pair of `bsums` each lane of [`bsum_pairs`] holds.
const BSUM_PAIR_ORDER: [usize; 8] = [0, 1, 4, 5, 2, 3, 6, 7];

/// `bsums[2s] + bsums[2s + 1]` of a Q8_K block as `i32` lanes, sub-blocks `s` in
/// [`BSUM_PAIR_ORDER`] (what one `hadd` of the widened sums leaves). Stored `bsums` may
/// be any `i16`, so the pairs are added in `i32`.
#[inline]
#[target_feature(enable = "avx2")]
fn bsum_pairs(a: &q8_k::Block) -> __m256i {
    let raw = load32(&a[260..].as_chunks().0[0]);
    let lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(raw));
    let hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(raw));
    _mm256_hadd_epi32(lo, hi)
}

/// Q6_K · Q8_K for eight rows: per row `Σ_k sc_k Σ (u − 32) a`, exact, then
/// `(d d_a) sumi` as the specification computes it. One token unpacks each row's block
/// straight into its sum; a batch unpacks the eight rows once for all its tokens.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn matmul_q6_k(weights: &[u8], shape: MatmulShape, activations: &[&[u8]], out: &mut [f32]) {
    /// One row's unpacked block: 6-bit quants and their scale pairs.
    type Row = ([__m256i; 8], [__m256i; 8]);
    let row = |w: &q6_k::Block| -> Row {
        let sc = q6_k::scales(w);
        (
            q6_k_quants(w),
            core::array::from_fn(|v| q6_k_scale_pair(&sc, v)),
        )
    };
    let sum = |(u, scales): &Row, qa: &[__m256i; 8], off_a: &[__m256i; 8]| {
        let mut acc = _mm256_setzero_si256();
        for (((u, a), off_a), s) in u.iter().zip(qa).zip(off_a).zip(scales) {
            // Pairwise `Σ (u − 32) a`: |·| ≤ 2 · 32 · 128, fits i16.
            let p = _mm256_sub_epi16(_mm256_maddubs_epi16(*u, *a), *off_a);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, *s));
        }
        acc
    };
    let scale = |d: __m256, d_a: f32, sumi: __m256i| {
        _mm256_mul_ps(
            _mm256_mul_ps(d, _mm256_set1_ps(d_a)),
            _mm256_cvtepi32_ps(sumi),
        )
    };
    let off = _mm256_set1_epi8(32);
    let weights = weights.as_chunks::<{ q6_k::BLOCK_BYTES }>().0;
    // `32 Σ a` in pairs, shared by the eight rows.
    let prepare = |a: &q8_k::Block| {
        let qa = q8_k_vectors(a);
        (qa, qa.map(|y| _mm256_maddubs_epi16(off, y)), q8_k::d(a))
    };
    if let [activation] = activations {
        matvec_rows(
            weights,
            shape,
            activation,
            out,
            prepare,
            |w: &[&q6_k::Block; ROWS], (qa, off_a, d_a)| {
                let sums = core::array::from_fn(|k| sum(&row(w[k]), qa, off_a));
                scale(f16_lanes(w, 208), *d_a, hsum8(sums))
            },
        );
        return;
    }
    matmul_rows(
        weights,
        shape,
        activations,
        out,
        |w: &[&q6_k::Block; ROWS]| (w.map(row), f16_lanes(w, 208)),
        prepare,
        |(rows, d), (qa, off_a, d_a)| {
            let sums = core::array::from_fn(|k| sum(&rows[k], qa, off_a));
            scale(*d, *d_a, hsum8(sums))
        },
    );
}

/// The 32 quants of a Q8_0 block (after its f16 scale).
#[inline]
pub(super) fn q8_0_quants(block: &q8_0::Block) -> &[u8; 32] {
    &block[2..].as_chunks().0[0]
}

/// The 32 nibbles of a Q4_0 block as bytes `0..=15`, in element order (low nibbles are
/// elements 0..16, high nibbles 16..32).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn nibbles(block: &[u8; 18], mask: __m256i) -> __m256i {
    let packed = load16(&block[2..].as_chunks().0[0]);
    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed), mask)
}

/// 32 signed bytes as two vectors of sixteen `i16`.
#[inline]
#[target_feature(enable = "avx2")]
fn widen(q: __m256i) -> (__m256i, __m256i) {
    (
        _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q)),
        _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(q)),
    )
}

/// Defines the drivers for one set of target features. The closures a kernel passes
/// inherit its function's features, and a function can only be inlined into one with at
/// least its features: the AVX-512 kernels therefore get their own instance of the
/// drivers, so their closures inline instead of becoming a call per block.
macro_rules! drivers {
    ($features:literal, $scaled:ident, $rows:ident, $vec:ident) => {
        /// `out[t · rows + r] = Σ_b isum(w_rb, a_tb) as f32 · (d(w_rb) · d(a_tb))`, summed over
        /// blocks `b` in order, for weight blocks of `W` bytes led by an f16 scale and Q8_0
        /// activation rows.
        ///
        /// `block_sum(unpack(w), prepare(a))` must return a vector whose eight `i32` lanes add up
        /// to the exact integer dot product of the two blocks' quants. `shape` is as for
        /// the driver below.
        #[inline]
        #[target_feature(enable = $features)]
        pub(super) fn $scaled<const W: usize, U: Copy, P: Copy>(
            weights: &[[u8; W]],
            shape: MatmulShape,
            activations: &[&[u8]],
            out: &mut [f32],
            unpack: impl Fn(&[u8; W]) -> U,
            prepare: impl Fn(&q8_0::Block) -> P,
            block_sum: impl Fn(U, P) -> __m256i,
        ) {
            $rows(
                weights,
                shape,
                activations,
                out,
                |w| (w.map(&unpack), f16_lanes(w, 0)),
                |a| (prepare(a), f16_at(a, 0)),
                |(u, d_w), (p, d_a)| {
                    let sums = hsum8(core::array::from_fn(|k| block_sum(u[k], *p)));
                    let d = _mm256_mul_ps(*d_w, _mm256_set1_ps(*d_a));
                    _mm256_mul_ps(_mm256_cvtepi32_ps(sums), d)
                },
            );
        }

        /// The driver: `out[t · rows + r] = Σ_b term(r, t, b)`, summed over blocks `b` in order
        /// from `+0.0` (the specification's order, one lane per row), where lane `k` of
        /// `terms(unpack(w), prepare(a))` is the term of row `k` of the group of eight.
        ///
        /// Weight blocks are `W` bytes, activation blocks `A`. `unpack` runs once per group and
        /// block for the whole batch; `prepare` once per activation row and block for all eight
        /// rows. A partial group repeats its last row in the spare lanes, whose sums are dropped.
        /// `shape` must be the one [`check_matmul`] returned for these arguments, with at least
        /// one block per row.
        #[inline]
        #[target_feature(enable = $features)]
        pub(super) fn $rows<const W: usize, const A: usize, U, P>(
            weights: &[[u8; W]],
            shape: MatmulShape,
            activations: &[&[u8]],
            out: &mut [f32],
            unpack: impl Fn(&[&[u8; W]; ROWS]) -> U,
            prepare: impl Fn(&[u8; A]) -> P,
            terms: impl Fn(&U, &P) -> __m256,
        ) {
            let MatmulShape { blocks, rows } = shape;
            for g in 0..rows.div_ceil(ROWS) {
                let RowGroup {
                    r0,
                    n_rows,
                    row,
                    next,
                } = RowGroup::new(weights, blocks, g);
                for (c, batch) in activations.chunks(TOKENS).enumerate() {
                    let act: [&[[u8; A]]; TOKENS] =
                        core::array::from_fn(|t| batch.get(t).map_or(&[][..], |a| a.as_chunks().0));
                    let mut acc = [_mm256_setzero_ps(); TOKENS];
                    for b in 0..blocks {
                        if c == 0 {
                            prefetch_step(next, b, blocks);
                        }
                        let unpacked = unpack(&core::array::from_fn(|k| &row[k][b]));
                        for (acc, act) in acc.iter_mut().zip(&act[..batch.len()]) {
                            *acc = _mm256_add_ps(*acc, terms(&unpacked, &prepare(&act[b])));
                        }
                    }
                    for (t, acc) in acc.iter().take(batch.len()).enumerate() {
                        let mut lanes = [0.0f32; ROWS];
                        // SAFETY: the pointer covers 32 writable bytes; unaligned stores are allowed.
                        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *acc) };
                        let at = (c * TOKENS + t) * rows + r0;
                        out[at..at + n_rows].copy_from_slice(&lanes[..n_rows]);
                    }
                }
            }
        }

        /// The driver for one activation row: as [`matmul_rows`] with a batch of one, but
        /// `terms` takes the eight rows' blocks themselves, so a format unpacks each row's
        /// block straight into its dot product (in registers) instead of through a buffer
        /// that one token never reuses.
        #[inline]
        #[target_feature(enable = $features)]
        pub(super) fn $vec<const W: usize, const A: usize, P>(
            weights: &[[u8; W]],
            shape: MatmulShape,
            activation: &[u8],
            out: &mut [f32],
            prepare: impl Fn(&[u8; A]) -> P,
            terms: impl Fn(&[&[u8; W]; ROWS], &P) -> __m256,
        ) {
            let MatmulShape { blocks, rows } = shape;
            let act: &[[u8; A]] = activation.as_chunks().0;
            for g in 0..rows.div_ceil(ROWS) {
                let RowGroup {
                    r0,
                    n_rows,
                    row,
                    next,
                } = RowGroup::new(weights, blocks, g);
                let mut acc = _mm256_setzero_ps();
                for (b, a) in act.iter().enumerate().take(blocks) {
                    prefetch_step(next, b, blocks);
                    let w = core::array::from_fn(|k| &row[k][b]);
                    acc = _mm256_add_ps(acc, terms(&w, &prepare(a)));
                }
                let mut lanes = [0.0f32; ROWS];
                // SAFETY: the pointer covers 32 writable bytes; unaligned stores are allowed.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
                out[r0..r0 + n_rows].copy_from_slice(&lanes[..n_rows]);
            }
        }
    };
}

drivers!("avx2,fma,f16c", matmul_scaled, matmul_rows, matvec_rows);
drivers!(
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    matmul_scaled_vnni,
    matmul_rows_vnni,
    matvec_rows_vnni
);

/// [`matmul_rows_vnni`] for large unpacked blocks: `unpack` writes the eight rows' block
/// into one buffer made by `init` once per call, instead of returning a new value per
/// block (which the compiler zeroes or copies on the stack, kilobytes per block).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)] // `matmul_rows`' seven and the buffer.
pub(super) fn matmul_rows_into_vnni<const W: usize, const A: usize, U, P>(
    weights: &[[u8; W]],
    shape: MatmulShape,
    activations: &[&[u8]],
    out: &mut [f32],
    init: U,
    unpack: impl Fn(&[&[u8; W]; ROWS], &mut U),
    prepare: impl Fn(&[u8; A]) -> P,
    terms: impl Fn(&U, &P) -> __m256,
) {
    let MatmulShape { blocks, rows } = shape;
    let mut unpacked = init;
    for g in 0..rows.div_ceil(ROWS) {
        let RowGroup {
            r0,
            n_rows,
            row,
            next,
        } = RowGroup::new(weights, blocks, g);
        for (c, batch) in activations.chunks(TOKENS).enumerate() {
            let act: [&[[u8; A]]; TOKENS] =
                core::array::from_fn(|t| batch.get(t).map_or(&[][..], |a| a.as_chunks().0));
            let mut acc = [_mm256_setzero_ps(); TOKENS];
            for b in 0..blocks {
                if c == 0 {
                    prefetch_step(next, b, blocks);
                }
                unpack(&core::array::from_fn(|k| &row[k][b]), &mut unpacked);
                for (acc, act) in acc.iter_mut().zip(&act[..batch.len()]) {
                    *acc = _mm256_add_ps(*acc, terms(&unpacked, &prepare(&act[b])));
                }
            }
            for (t, acc) in acc.iter().take(batch.len()).enumerate() {
                let mut lanes = [0.0f32; ROWS];
                // SAFETY: the pointer covers 32 writable bytes; unaligned stores are allowed.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *acc) };
                let at = (c * TOKENS + t) * rows + r0;
                out[at..at + n_rows].copy_from_slice(&lanes[..n_rows]);
            }
        }
    }
}

/// Group `g` of eight weight rows, as every driver walks them.
struct RowGroup<'w, const W: usize> {
    /// Its first row.
    r0: usize,
    /// Its rows (eight except in a last, partial group).
    n_rows: usize,
    /// Each lane's row of blocks; a partial group repeats its last row in the spare lanes,
    /// whose sums are dropped.
    row: [&'w [[u8; W]]; ROWS],
    /// The next group's bytes (contiguous), prefetched a slice per block step: eight
    /// interleaved short row streams defeat the hardware prefetcher on narrow matrices.
    next: &'w [u8],
}

impl<'w, const W: usize> RowGroup<'w, W> {
    /// Group `g` of `weights`, rows of `blocks` blocks (`g` below the group count).
    #[inline]
    fn new(weights: &'w [[u8; W]], blocks: usize, g: usize) -> Self {
        let group = &weights[g * ROWS * blocks..weights.len().min((g + 1) * ROWS * blocks)];
        let n_rows = group.len() / blocks;
        let next = weights
            .get((g + 1) * blocks * ROWS..)
            .map_or(&[][..], |n| &n[..n.len().min(blocks * ROWS)])
            .as_flattened();
        let row = core::array::from_fn(|k| {
            let k = k.min(n_rows - 1);
            &group[k * blocks..(k + 1) * blocks]
        });
        RowGroup {
            r0: g * ROWS,
            n_rows,
            row,
            next,
        }
    }
}

/// Prefetches step `b` of `steps` equal slices of `bytes` into the cache, one line at a
/// time.
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch_step(bytes: &[u8], b: usize, steps: usize) {
    const LINE: usize = 64;
    let lines = bytes.len().div_ceil(LINE);
    for line in b * lines / steps..(b + 1) * lines / steps {
        if let Some(byte) = bytes.get(line * LINE) {
            // A hint that never faults (safe in a function with the target feature).
            _mm_prefetch::<_MM_HINT_T1>(core::ptr::from_ref(byte).cast());
        }
    }
}

/// The f16 at byte `at` of eight blocks, as `f32` lanes (F16C: the same values as the
/// specification's software conversion).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn f16_lanes<const W: usize>(w: &[&[u8; W]; ROWS], at: usize) -> __m256 {
    let bits: [u16; ROWS] = w.map(|b| u16::from_le_bytes([b[at], b[at + 1]]));
    // SAFETY: the pointer covers 16 readable bytes; unaligned loads are allowed.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(bits.as_ptr().cast()) })
}

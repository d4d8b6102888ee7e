//! Matrix × batch for block formats with a leading f16 scale against Q8_0 activations
//! (Q4_0, Q8_0): eight weight rows at a time, one `f32` lane per row.
//!
//! A row-at-a-time dot product must add its block terms one after another (the
//! specification's order), so its speed is bounded by the latency of one float add per
//! block. Here each of eight rows owns a lane of one vector: a single vector add per block
//! advances all eight running sums, each still in the specification's order, so the
//! results stay bit-identical to [`scalar::dot`](crate::kernels::scalar::dot). Each
//! group of weight blocks is unpacked once and then used for every activation row of the
//! batch, which is what makes prefill cheaper per row than repeated matrix × vector.
//!
//! The instruction set enters only through three closures per format — unpack a weight
//! block, prepare an activation block, sum one pair exactly — so AVX2 and AVX-512 VNNI
//! share the driver.

use core::arch::x86_64::*;

use super::avx2::{self, f16_at, hsum8, load16, load32};
use crate::kernels::{MatmulShape, check_matmul, matmul_by_dot};
use crate::quant::q8_0;
use crate::{Result, TensorType};

/// Weight rows summed together: one lane each of an `f32 × 8` vector.
const ROWS: usize = 8;

/// Activation rows whose running sums are kept at once (on the stack, 32 bytes each).
const TOKENS: usize = 16;

/// The AVX2 table's batch entry: the eight-row driver for Q4_0 and Q8_0, the AVX2 dot
/// product pair by pair for every other type.
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
unsafe fn matmul_unchecked(
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
        _ => return matmul_by_dot(avx2::dot, weight_type, weights, activations, out),
    }
    Ok(())
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

/// `out[t · rows + r] = Σ_b isum(w_rb, a_tb) as f32 · (d(w_rb) · d(a_tb))`, summed over
/// blocks `b` in order, for weight blocks of `W` bytes led by an f16 scale and Q8_0
/// activation rows.
///
/// `block_sum(unpack(w), prepare(a))` must return a vector whose eight `i32` lanes add up
/// to the exact integer dot product of the two blocks' quants. `shape` must be the one
/// [`check_matmul`](crate::kernels::check_matmul) returned for these arguments with at
/// least one block per row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn matmul_scaled<const W: usize, U: Copy, P: Copy>(
    weights: &[[u8; W]],
    shape: MatmulShape,
    activations: &[&[u8]],
    out: &mut [f32],
    unpack: impl Fn(&[u8; W]) -> U,
    prepare: impl Fn(&q8_0::Block) -> P,
    block_sum: impl Fn(U, P) -> __m256i,
) {
    let MatmulShape { blocks, rows } = shape;
    for (g, group) in weights.chunks(blocks * ROWS).enumerate() {
        let r0 = g * ROWS;
        let n_rows = group.len() / blocks;
        // A partial group repeats its last row in the spare lanes; their sums are dropped.
        let row: [&[[u8; W]]; ROWS] = core::array::from_fn(|k| {
            let k = k.min(n_rows - 1);
            &group[k * blocks..(k + 1) * blocks]
        });
        for (c, batch) in activations.chunks(TOKENS).enumerate() {
            let act: [&[q8_0::Block]; TOKENS] =
                core::array::from_fn(|t| batch.get(t).map_or(&[][..], |a| a.as_chunks().0));
            let mut acc = [_mm256_setzero_ps(); TOKENS];
            for b in 0..blocks {
                let w: [&[u8; W]; ROWS] = core::array::from_fn(|k| &row[k][b]);
                let unpacked: [U; ROWS] = core::array::from_fn(|k| unpack(w[k]));
                let d_w = scales(&w);
                for (acc, act) in acc.iter_mut().zip(&act[..batch.len()]) {
                    let a = &act[b];
                    let p = prepare(a);
                    let sums = hsum8(core::array::from_fn(|k| block_sum(unpacked[k], p)));
                    let d = _mm256_mul_ps(d_w, _mm256_set1_ps(f16_at(a, 0)));
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(_mm256_cvtepi32_ps(sums), d));
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

/// The f16 scales leading eight weight blocks, as `f32` lanes (F16C: the same values as
/// the specification's software conversion).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn scales<const W: usize>(w: &[&[u8; W]; ROWS]) -> __m256 {
    let bits: [u16; ROWS] = core::array::from_fn(|k| u16::from_le_bytes([w[k][0], w[k][1]]));
    // SAFETY: the pointer covers 16 readable bytes; unaligned loads are allowed.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(bits.as_ptr().cast()) })
}

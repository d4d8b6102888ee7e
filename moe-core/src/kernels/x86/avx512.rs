//! AVX-512 VNNI kernels (x86-64): `vpdpbusd` on 256-bit vectors (AVX-512 VL) in the
//! eight-row drivers for Q4_0 and Q8_0, through which every matrix product goes; the row
//! dot product and every other type use the AVX2 kernels. (The VNNI row dot measured in
//! the first session was slowed by the closure-inlining problem the drivers' macro
//! solves; a row dot still adds its block terms one at a time, so the drivers are where
//! VNNI pays.)
//!
//! `vpdpbusd` multiplies unsigned by signed bytes and adds groups of four into `i32`
//! lanes without saturation, so the block sums are exact; the float scaling is the
//! specification's, so results are bit-identical to it.

use core::arch::asm;
use core::arch::x86_64::*;

use super::avx2;
use super::batch::{self, matmul_scaled_vnni, nibbles, q8_0_quants};
use crate::kernels::check_matmul;
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

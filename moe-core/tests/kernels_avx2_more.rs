//! The AVX2 kernels of `kernels/x86/avx2_more.rs` (Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K,
//! Q5_K, IQ4_XS, BF16) against the scalar specification at every x86 level this CPU
//! supports (AVX-512 falls back to them), on inputs `kernels_simd.rs` leaves out:
//! arbitrary activation bytes (Q8_1 `s` and Q8_K `bsums` that disagree with their quants,
//! quants of −128, NaN and infinite scales), extreme quant fills under unit scales, and
//! rows of 1 to 20 blocks (past the eight-block groups of the 32-quant kernels).
//!
//! Quantized types must return the specification's bits; BF16 may differ only by
//! summation order, within the specification's own error bound.

#![cfg(target_arch = "x86_64")]

use moe_core::TensorType;
use moe_core::kernels::{Kernels, Level, scalar};
use moe_core::quant::quantize_row;
use proptest::prelude::*;

const QUANTIZED: [TensorType; 8] = [
    TensorType::Q4_1,
    TensorType::Q5_0,
    TensorType::Q5_1,
    TensorType::IQ4_NL,
    TensorType::Q2_K,
    TensorType::Q3_K,
    TensorType::Q5_K,
    TensorType::IQ4_XS,
];

/// The x86 tables this CPU supports (none, with a message, on a CPU without AVX2).
fn tables() -> Vec<Kernels> {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni");
    let mut out = Vec::new();
    for (level, has) in [(Level::Avx2, avx2), (Level::Avx512, avx512)] {
        if has {
            // SAFETY: every feature of `level` was detected on this CPU just above.
            out.push(unsafe { Kernels::with_level_unchecked(level) });
        } else {
            eprintln!("skipping kernel level {level}: not supported by this CPU");
        }
    }
    out
}

/// Equal bits, or both NaN.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// `n` bytes from a seed, varied past the seed's length.
fn bytes(n: usize, seed: &[u8]) -> Vec<u8> {
    (0..n)
        .map(|i| seed[i % seed.len()] ^ (i / seed.len()) as u8)
        .collect()
}

fn check(k: &Kernels, ty: TensorType, w: &[u8], a: &[u8]) -> Result<(), TestCaseError> {
    let spec = scalar::dot(ty, w, a);
    let got = k.dot(ty, w, a);
    match (spec, got) {
        (Ok(s), Ok(g)) => prop_assert!(same(s, g), "{} {}: spec {} got {}", k.level(), ty, s, g),
        (s, g) => prop_assert_eq!(s, g, "{} {}", k.level(), ty),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary weight and activation bytes, 0 to 20 blocks: the same bits.
    #[test]
    fn arbitrary_bytes_match_the_spec(
        n in 0usize..21,
        wseed in proptest::collection::vec(any::<u8>(), 1..900),
        aseed in proptest::collection::vec(any::<u8>(), 1..1500),
    ) {
        for ty in QUANTIZED {
            let act = ty.activation_type().unwrap();
            let w = bytes(n * ty.block_bytes(), &wseed);
            let a = bytes(n * act.block_bytes(), &aseed);
            for k in &tables() {
                check(k, ty, &w, &a)?;
            }
        }
    }

    /// Arbitrary weights against properly quantized activations (finite scales, so the
    /// sums are mostly finite and every bit of them is compared).
    #[test]
    fn quantized_activations_match_the_spec(
        n in 1usize..21,
        wseed in proptest::collection::vec(any::<u8>(), 1..900),
        vals in proptest::collection::vec(-4.0f32..4.0, 1..300),
    ) {
        for ty in QUANTIZED {
            let act = ty.activation_type().unwrap();
            let mut w = bytes(n * ty.block_bytes(), &wseed);
            // Tame the f16 scales (exponent below 2^0) so most sums stay finite.
            for block in w.chunks_mut(ty.block_bytes()) {
                for &at in scale_fields(ty) {
                    block[at + 1] &= 0x3b;
                }
            }
            let src: Vec<f32> = (0..n * ty.block_len())
                .map(|i| vals[i % vals.len()] * (1.0 + (i / vals.len()) as f32 * 0.37))
                .collect();
            let mut a = vec![0u8; n * act.block_bytes()];
            quantize_row(act, &src, &mut a).unwrap();
            for k in &tables() {
                check(k, ty, &w, &a)?;
            }
        }
    }

    /// BF16 rows of 0 to 70 elements (vector body and scalar tail): within the
    /// specification's error bound, 2^-24 (Σ |w a| + |result|), doubled.
    #[test]
    fn bf16_is_within_the_spec_bound(
        w in proptest::collection::vec(-1e3f32..1e3, 0..70),
        seed in proptest::collection::vec(-1e3f32..1e3, 1..70),
    ) {
        let a: Vec<f32> = (0..w.len()).map(|i| seed[i % seed.len()]).collect();
        let mut wb = vec![0u8; 2 * w.len()];
        quantize_row(TensorType::BF16, &w, &mut wb).unwrap();
        let ab: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
        let abs: f64 = wb
            .chunks_exact(2)
            .zip(&a)
            .map(|(w, a)| {
                let w = f32::from_bits(u32::from(u16::from_le_bytes([w[0], w[1]])) << 16);
                (f64::from(w) * f64::from(*a)).abs()
            })
            .sum();
        let s = scalar::dot(TensorType::BF16, &wb, &ab).unwrap();
        for k in &tables() {
            let g = k.dot(TensorType::BF16, &wb, &ab).unwrap();
            let tol = 2f64.powi(-23) * (abs + f64::from(s.abs())) + 1e-30;
            let err = (f64::from(s) - f64::from(g)).abs();
            prop_assert!(err <= tol, "{}: spec {} got {}", k.level(), s, g);
        }
    }
}

/// Byte offsets of a weight block's f16 scale fields.
fn scale_fields(ty: TensorType) -> &'static [usize] {
    match ty {
        TensorType::Q5_0 | TensorType::IQ4_NL | TensorType::IQ4_XS => &[0],
        TensorType::Q4_1 | TensorType::Q5_1 | TensorType::Q5_K => &[0, 2],
        TensorType::Q2_K => &[80, 82],
        TensorType::Q3_K => &[108],
        _ => unreachable!("{ty}"),
    }
}

#[test]
fn integer_block_sums_are_exact() {
    // Unit scales make every (sub-)block's contribution an exact integer in f32: any
    // lost or saturated product shows as a different value, not a rounding difference.
    // Every activation quant is −128, the one value a sign trick can get wrong.
    let one = 0x3c00u16.to_le_bytes();
    for k in tables() {
        for ty in QUANTIZED {
            let act = ty.activation_type().unwrap();
            for fill in [0x00u8, 0x80, 0x7f, 0xff, 0x0f, 0xf0, 0x55, 0xaa, 0x33, 0xcc] {
                for n in [1usize, 3, 9] {
                    let mut w = vec![fill; n * ty.block_bytes()];
                    for block in w.chunks_mut(ty.block_bytes()) {
                        for &at in scale_fields(ty) {
                            block[at..at + 2].copy_from_slice(&one);
                        }
                    }
                    let mut a = vec![0x80u8; n * act.block_bytes()];
                    for block in a.chunks_mut(act.block_bytes()) {
                        if act == TensorType::Q8_K {
                            block[..4].copy_from_slice(&1.0f32.to_le_bytes());
                        } else {
                            block[..2].copy_from_slice(&one);
                        }
                    }
                    let s = scalar::dot(ty, &w, &a).unwrap();
                    let g = k.dot(ty, &w, &a).unwrap();
                    assert_eq!(
                        g.to_bits(),
                        s.to_bits(),
                        "{} {ty} fill {fill:#x} n {n}",
                        k.level()
                    );
                }
            }
        }
    }
}

//! Every kernel table against the scalar specification: `Kernels::scalar()`,
//! `Kernels::compiled()`, each level this CPU supports (skipped, with a message, where it
//! does not) and each level capped lower with `at_most`.
//!
//! Quantized kernels must return the specification's bits (exact integer block sums, the
//! same float operations in the same order); float kernels may differ only by summation
//! order (and the specification's f32 product rounding), so they are held to twice the
//! specification's error bound, 2^-24 (Σ |w a| + |result|). Wrong lengths and
//! unsupported types give the specification's typed errors, never a panic.

use moe_core::kernels::{Kernels, Level, scalar};
use moe_core::quant::{ALL_TYPES, quantize_row};
use moe_core::{Error, TensorType};
use proptest::prelude::*;

/// Whether this CPU has every feature of `level`.
fn cpu_has(level: Level) -> bool {
    match level {
        Level::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => {
            cpu_has(Level::Avx2)
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
        }
        _ => false,
    }
}

/// Every table to test: scalar, compiled, each supported level and its caps.
fn tables() -> Vec<(String, Kernels)> {
    let mut out = vec![
        ("scalar".to_string(), Kernels::scalar()),
        (
            format!("compiled ({})", Level::compiled()),
            Kernels::compiled(),
        ),
    ];
    for level in Level::ALL {
        if !level.is_built() || !cpu_has(level) {
            eprintln!("skipping kernel level {level}: not built for or not supported by this CPU");
            continue;
        }
        // SAFETY: `cpu_has` checked every feature of `level` on this CPU just above.
        let k = unsafe { Kernels::with_level_unchecked(level) };
        assert_eq!(k.level(), level);
        for cap in Level::ALL.into_iter().filter(|&c| c < level) {
            out.push((format!("{level} at most {cap}"), k.at_most(cap)));
        }
        out.push((level.to_string(), k));
    }
    out
}

/// Weight types with an activation type (the ones a table computes).
fn dot_types() -> Vec<TensorType> {
    ALL_TYPES
        .into_iter()
        .filter(|t| t.activation_type().is_some())
        .collect()
}

/// Equal bits, or both NaN.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn is_float(ty: TensorType) -> bool {
    matches!(ty, TensorType::F32 | TensorType::F16 | TensorType::BF16)
}

/// `Σ |w a|` for a float weight row and F32 activations (the float kernels' scale).
fn abs_dot(ty: TensorType, w: &[u8], a: &[u8]) -> f64 {
    let n = a.len() / 4;
    let mut wf = vec![0f32; n];
    moe_core::quant::dequantize_row(ty, w, &mut wf).unwrap();
    wf.iter()
        .zip(a.chunks_exact(4))
        .map(|(w, a)| (f64::from(*w) * f64::from(f32::from_le_bytes(a.try_into().unwrap()))).abs())
        .sum()
}

/// Checks one table's row dot product against the specification.
fn check_dot(name: &str, k: &Kernels, ty: TensorType, w: &[u8], a: &[u8]) {
    let spec = scalar::dot(ty, w, a);
    let got = k.dot(ty, w, a);
    match (spec, got) {
        (Ok(s), Ok(g)) if is_float(ty) && s.is_finite() => {
            // The specification's own error bound is 2^-24 (Σ|w a| + |result|); the SIMD
            // kernels' (exact products, f64 sums) is far below it.
            let tol = 2f64.powi(-23) * (abs_dot(ty, w, a) + f64::from(s.abs())) + 1e-30;
            assert!(
                (f64::from(s) - f64::from(g)).abs() <= tol,
                "{name} {ty}: spec {s} got {g} (tolerance {tol})"
            );
        }
        (Ok(s), Ok(g)) => assert!(same(s, g), "{name} {ty}: spec {s} got {g}"),
        (s, g) => assert_eq!(s, g, "{name} {ty}"),
    }
}

/// Random weight bytes for `n` blocks of `ty`: arbitrary quant bytes (scales included,
/// so NaN and infinite scales occur) or, for float types, finite values.
fn weights(ty: TensorType, n: usize, seed: &[u8]) -> Vec<u8> {
    let bytes = n * ty.block_bytes();
    let mut w: Vec<u8> = (0..bytes)
        .map(|i| seed[i % seed.len()] ^ (i / seed.len()) as u8)
        .collect();
    if is_float(ty) {
        let vals: Vec<f32> = w
            .chunks(4)
            .map(|c| {
                (f32::from(c[0]) - 127.5) / 64.0 * f32::from(c.get(1).copied().unwrap_or(1)) / 200.0
            })
            .collect();
        let n_elem = n * ty.block_len();
        let src: Vec<f32> = (0..n_elem)
            .map(|i| vals[i % vals.len().max(1)] + i as f32 * 1e-3)
            .collect();
        quantize_row(ty, &src, &mut w).unwrap();
    }
    w
}

/// An activation row of `n` blocks for `ty`: quantized from random floats.
fn activations(ty: TensorType, n: usize, vals: &[f32]) -> Vec<u8> {
    let act = ty.activation_type().unwrap();
    let n_elem = n * ty.block_len();
    let src: Vec<f32> = (0..n_elem)
        .map(|i| vals[i % vals.len()] * (1.0 + (i / vals.len()) as f32 * 0.37))
        .collect();
    let mut a = vec![0u8; n * act.block_bytes()];
    quantize_row(act, &src, &mut a).unwrap();
    a
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every table equals the specification on quantized activations.
    #[test]
    fn every_table_matches_the_spec(
        n in 0usize..12,
        seed in proptest::collection::vec(any::<u8>(), 1..600),
        vals in proptest::collection::vec(-4.0f32..4.0, 1..300),
    ) {
        let tables = tables();
        for ty in dot_types() {
            let w = weights(ty, n, &seed);
            let a = activations(ty, n, &vals);
            for (name, k) in &tables {
                check_dot(name, k, ty, &w, &a);
            }
        }
    }

    /// Arbitrary activation bytes too (Q8_K `bsums` need not match their quants; the
    /// kernels use the stored ones, as the specification does).
    #[test]
    fn arbitrary_bytes_match_the_spec(
        n in 0usize..6,
        wseed in proptest::collection::vec(any::<u8>(), 1..700),
        aseed in proptest::collection::vec(any::<u8>(), 1..1200),
    ) {
        let tables = tables();
        for ty in [TensorType::Q4_0, TensorType::Q8_0, TensorType::Q4_K, TensorType::Q6_K] {
            let w = weights(ty, n, &wseed);
            let act = ty.activation_type().unwrap();
            let a: Vec<u8> = (0..n * act.block_bytes()).map(|i| aseed[i % aseed.len()] ^ (i / aseed.len()) as u8).collect();
            for (name, k) in &tables {
                check_dot(name, k, ty, &w, &a);
            }
        }
    }

    /// Wrong lengths: the same typed error as the specification, for every table.
    #[test]
    fn wrong_lengths_are_the_spec_errors(
        wl in 0usize..700,
        al in 0usize..1200,
    ) {
        let tables = tables();
        let w = vec![0x11u8; wl];
        let a = vec![0x22u8; al];
        for ty in ALL_TYPES {
            for (name, k) in &tables {
                let spec = scalar::dot(ty, &w, &a);
                let got = k.dot(ty, &w, &a);
                match (spec, got) {
                    (Ok(s), Ok(g)) => prop_assert!(same(s, g) || is_float(ty), "{} {}", name, ty),
                    (s, g) => prop_assert_eq!(s, g, "{} {}", name, ty),
                }
            }
        }
    }

    /// Matrix × vector: each output is the row's dot product through the same table.
    #[test]
    fn matvec_is_rows_of_dots(
        rows in 0usize..6,
        n in 0usize..4,
        seed in proptest::collection::vec(any::<u8>(), 1..300),
        vals in proptest::collection::vec(-2.0f32..2.0, 1..100),
    ) {
        let tables = tables();
        for ty in dot_types() {
            let row_bytes = n * ty.block_bytes();
            let w = weights(ty, n * rows.max(1), &seed);
            let w = &w[..row_bytes * rows];
            let a = activations(ty, n, &vals);
            for (name, k) in &tables {
                let mut out = vec![f32::NAN; rows];
                k.matvec(ty, w, &a, &mut out).unwrap();
                for (r, o) in out.iter().enumerate() {
                    let d = k.dot(ty, &w[r * row_bytes..(r + 1) * row_bytes], &a).unwrap();
                    prop_assert!(same(*o, d), "{} {} row {}", name, ty, r);
                }
                // One row too many or too few is an error, never a panic.
                let mut longer = vec![0.0; rows + 1];
                if row_bytes > 0 {
                    let res = k.matvec(ty, w, &a, &mut longer);
                    prop_assert!(matches!(res, Err(Error::LengthMismatch { .. })), "{} {}", name, ty);
                }
            }
        }
    }
}

#[test]
fn integer_block_sums_are_exact() {
    // Unit scales make every block's contribution an exact integer in f32: any lost or
    // saturated product shows as a different value, not a rounding difference.
    let one = 0x3c00u16.to_le_bytes();
    for (name, k) in tables() {
        for ty in [TensorType::Q4_0, TensorType::Q8_0] {
            for fill in [0x00u8, 0x80, 0x7f, 0xff, 0x0f, 0xf0] {
                let mut w = vec![fill; 3 * ty.block_bytes()];
                let mut a = vec![0x80u8; 3 * 34]; // every activation quant -128
                for b in 0..3 {
                    w[b * ty.block_bytes()..][..2].copy_from_slice(&one);
                    a[b * 34..][..2].copy_from_slice(&one);
                }
                let s = scalar::dot(ty, &w, &a).unwrap();
                assert_eq!(k.dot(ty, &w, &a).unwrap(), s, "{name} {ty} fill {fill:#x}");
            }
        }
    }
}

#[test]
fn levels_and_caps() {
    assert_eq!(Kernels::scalar().level(), Level::Scalar);
    assert_eq!(Kernels::default().level(), Level::Scalar);
    assert_eq!(Kernels::compiled().level(), Level::compiled());
    for level in Level::ALL {
        assert_eq!(Level::from_name(level.name()), Some(level));
        assert_eq!(
            Kernels::compiled().at_most(level).level(),
            Level::compiled().min(level)
        );
    }
    assert_eq!(Level::from_name("neon"), None);
    // Unsupported types are errors at every level.
    for (name, k) in tables() {
        assert_eq!(
            k.dot(TensorType::I32, &[], &[]),
            Err(Error::UnsupportedType {
                ty: TensorType::I32
            }),
            "{name}"
        );
        let mut out = [0.0f32; 1];
        assert!(
            k.matvec(TensorType::Q8_K, &[], &[], &mut out).is_err(),
            "{name}"
        );
    }
}

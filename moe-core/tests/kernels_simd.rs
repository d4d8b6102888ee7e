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

mod kernel_levels;
use kernel_levels::supported_levels;

/// Every table to test: scalar, compiled, each supported level and its caps.
fn tables() -> Vec<(String, Kernels)> {
    let mut out = vec![
        ("scalar".to_string(), Kernels::scalar()),
        (
            format!("compiled ({})", Level::compiled()),
            Kernels::compiled(),
        ),
    ];
    for level in supported_levels() {
        // SAFETY: `supported_levels` checked every feature of `level` on this CPU.
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Matrix × batch: every output is the pair's dot product through the same table,
    /// bit for bit, for partial row groups (rows not a multiple of 8), batches past one
    /// chunk of accumulators (more than 16 rows) and arbitrary weight bytes.
    #[test]
    fn matmul_is_pairs_of_dots(
        rows in 0usize..20,
        tokens in 0usize..36,
        n in 0usize..4,
        seed in proptest::collection::vec(any::<u8>(), 1..400),
        vals in proptest::collection::vec(-2.0f32..2.0, 1..100),
    ) {
        let tables = tables();
        for ty in dot_types() {
            let row_bytes = n * ty.block_bytes();
            let w = weights(ty, n * rows.max(1), &seed);
            let w = &w[..row_bytes * rows];
            let acts: Vec<Vec<u8>> = (0..tokens)
                .map(|t| {
                    let v: Vec<f32> = vals.iter().map(|x| x * (1.0 + t as f32 * 0.25)).collect();
                    activations(ty, n, &v)
                })
                .collect();
            let act_refs: Vec<&[u8]> = acts.iter().map(Vec::as_slice).collect();
            for (name, k) in &tables {
                let mut out = vec![f32::NAN; rows * tokens];
                k.matmul(ty, w, &act_refs, &mut out).unwrap();
                for (t, a) in act_refs.iter().enumerate() {
                    for r in 0..rows {
                        let d = k.dot(ty, &w[r * row_bytes..(r + 1) * row_bytes], a).unwrap();
                        let o = out[t * rows + r];
                        prop_assert!(same(o, d), "{} {} row {} token {}: {} vs {}", name, ty, r, t, o, d);
                    }
                }
            }
        }
    }

    /// The batch kernels with arbitrary activation bytes too (NaN and infinite scales,
    /// Q8_K `bsums` anywhere in `i16`, unrelated to their quants).
    #[test]
    fn matmul_with_arbitrary_activation_bytes_is_pairs_of_dots(
        rows in 1usize..12,
        tokens in 1usize..20,
        n in 1usize..3,
        wseed in proptest::collection::vec(any::<u8>(), 1..700),
        aseed in proptest::collection::vec(any::<u8>(), 1..1200),
    ) {
        let tables = tables();
        for ty in [TensorType::Q4_0, TensorType::Q8_0, TensorType::Q4_K, TensorType::Q6_K] {
            let row_bytes = n * ty.block_bytes();
            let w = weights(ty, n * rows, &wseed);
            let act_bytes = n * ty.activation_type().unwrap().block_bytes();
            let acts: Vec<Vec<u8>> = (0..tokens)
                .map(|t| (0..act_bytes).map(|i| aseed[(i + 7 * t) % aseed.len()] ^ (i / aseed.len()) as u8).collect())
                .collect();
            let act_refs: Vec<&[u8]> = acts.iter().map(Vec::as_slice).collect();
            for (name, k) in &tables {
                let mut out = vec![0.0f32; rows * tokens];
                k.matmul(ty, &w, &act_refs, &mut out).unwrap();
                for (t, a) in act_refs.iter().enumerate() {
                    for r in 0..rows {
                        let d = scalar::dot(ty, &w[r * row_bytes..(r + 1) * row_bytes], a).unwrap();
                        prop_assert!(same(out[t * rows + r], d), "{} {} row {} token {}", name, ty, r, t);
                    }
                }
            }
        }
    }

    /// Shapes that do not fit are typed errors at every level: ragged activation rows,
    /// an output that is not a whole number of rows per activation, too few weights.
    #[test]
    fn matmul_shape_errors(rows in 1usize..12, tokens in 1usize..6, n in 1usize..3) {
        for (name, k) in &tables() {
            for ty in [TensorType::Q4_0, TensorType::Q8_0, TensorType::Q4_K, TensorType::F32] {
                let act = ty.activation_type().unwrap();
                let w = vec![0u8; rows * n * ty.block_bytes()];
                let a = vec![0u8; n * act.block_bytes()];
                let short = vec![0u8; (n - 1) * act.block_bytes()];
                let mut refs: Vec<&[u8]> = vec![&a; tokens];
                let mut out = vec![0.0f32; rows * tokens];
                prop_assert!(k.matmul(ty, &w, &refs, &mut out).is_ok(), "{} {}", name, ty);
                let mut longer = vec![0.0f32; rows * tokens + 1];
                let res = k.matmul(ty, &w, &refs, &mut longer);
                prop_assert!(matches!(res, Err(Error::LengthMismatch { .. })), "{} {} out", name, ty);
                let res = k.matmul(ty, &w[1..], &refs, &mut out);
                prop_assert!(matches!(res, Err(Error::LengthMismatch { .. })), "{} {} weights", name, ty);
                refs.push(&short);
                let mut out = vec![0.0f32; rows * refs.len()];
                let res = k.matmul(ty, &w, &refs, &mut out);
                prop_assert!(matches!(res, Err(Error::LengthMismatch { .. })), "{} {} ragged", name, ty);
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
                // The batch kernels too: 9 rows (a partial group) × 17 activation rows.
                let (rows, tokens) = (9, 17);
                let matrix = w.repeat(rows);
                let mut out = vec![0.0f32; rows * tokens];
                k.matmul(ty, &matrix, &vec![&a[..]; tokens], &mut out)
                    .unwrap();
                assert!(
                    out.iter().all(|&o| o == s),
                    "{name} {ty} fill {fill:#x} batch"
                );
            }
        }
    }
}

#[test]
fn levels_and_caps() {
    assert_eq!(Kernels::scalar().level(), Level::Scalar);
    assert_eq!(Kernels::default().level(), Level::Scalar);
    assert_eq!(Kernels::compiled().level(), Level::compiled());
    let compiled = Level::compiled();
    for level in Level::ALL {
        assert_eq!(Level::from_name(level.name()), Some(level));
        // `includes` is exactly inclusion of the feature lists.
        for lower in Level::ALL {
            let subset = lower
                .features()
                .iter()
                .all(|f| level.features().contains(f));
            assert_eq!(level.includes(lower), subset, "{level} includes {lower}");
        }
        // A cap keeps the table within its own features and the cap's: the highest
        // level of the table's architecture the cap allows, else scalar.
        let capped = Kernels::compiled().at_most(level).level();
        let expected = Level::ALL
            .into_iter()
            .rev()
            .find(|&l| compiled.includes(l) && level.includes(l))
            .unwrap_or(Level::Scalar);
        assert_eq!(capped, expected, "{compiled} at most {level}");
    }
    assert_eq!(Level::from_name("sse2"), None);
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

/// Every level `supported_levels` reports (having enforced `MOE_REQUIRE_LEVELS` and
/// `MOE_ABSENT_LEVELS`) builds a table of that level, which caps to each lower level of
/// its architecture and to scalar for the other architecture's levels.
#[test]
fn required_levels_are_tested() {
    for level in supported_levels() {
        // SAFETY: `supported_levels` checked every feature of `level` on this CPU.
        let k = unsafe { Kernels::with_level_unchecked(level) };
        assert_eq!(k.level(), level);
        for cap in Level::ALL {
            let expected = if cap.includes(level) {
                level
            } else if level.includes(cap) {
                cap
            } else {
                Level::Scalar
            };
            assert_eq!(k.at_most(cap).level(), expected, "{level} at most {cap}");
        }
    }
}

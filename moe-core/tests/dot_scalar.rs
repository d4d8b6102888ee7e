//! The scalar dot products against their definition: for every weight type and its
//! activation type, `dot(W, quantize(x))` equals the f64 sum of the dequantized products,
//! up to f32 rounding of the per-block scale products.

use moe_core::kernels::scalar;
use moe_core::quant::{self, ALL_TYPES, q4_1, q5_1, q8_1};
use moe_core::{Error, TensorType};
use proptest::prelude::*;

/// Byte offsets of the f16 scale fields of each weight block format; the test writes
/// finite, moderate values there so products neither overflow nor vanish.
fn f16_scale_offsets(ty: TensorType) -> &'static [usize] {
    use TensorType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[],
    }
}

fn weight_types() -> Vec<TensorType> {
    ALL_TYPES
        .into_iter()
        .filter(|t| t.activation_type().is_some())
        .collect()
}

/// A weight row of `n_blocks` blocks: arbitrary quant bytes with sane f16 scales, or
/// moderate floats for the float types.
fn weight_row(ty: TensorType, n_blocks: usize, bytes: &[u8], scales: &[u16]) -> Vec<u8> {
    if ty.block_len() == 1 {
        let x: Vec<f32> = bytes
            .iter()
            .take(n_blocks)
            .map(|&b| (f32::from(b) - 127.5) / 13.0)
            .collect();
        let mut row = vec![0u8; n_blocks * ty.block_bytes()];
        quant::quantize_row(ty, &x, &mut row).unwrap();
        return row;
    }
    let mut row: Vec<u8> = bytes
        .iter()
        .cycle()
        .take(n_blocks * ty.block_bytes())
        .copied()
        .collect();
    let mut scales = scales.iter().cycle();
    for block in row.chunks_mut(ty.block_bytes()) {
        for &at in f16_scale_offsets(ty) {
            let s = *scales.next().unwrap();
            block[at..at + 2].copy_from_slice(&s.to_le_bytes());
        }
    }
    row
}

fn dequantized(ty: TensorType, bytes: &[u8], n: usize) -> Vec<f64> {
    let mut out = vec![0.0f32; n];
    quant::dequantize_row(ty, bytes, &mut out).unwrap();
    out.into_iter().map(f64::from).collect()
}

/// `|m_w · s_a|` summed over blocks: Q8_1 stores `s` as f16, so the kernel's minimum
/// term carries that rounding (relative 2^-11) where the definition has none.
fn q8_1_sum_slack(ty: TensorType, w: &[u8], a: &[u8]) -> f64 {
    let (a_blocks, _) = a.as_chunks::<{ q8_1::BLOCK_BYTES }>();
    let m: Vec<f32> = match ty {
        TensorType::Q4_1 => w
            .as_chunks::<{ q4_1::BLOCK_BYTES }>()
            .0
            .iter()
            .map(q4_1::m)
            .collect(),
        TensorType::Q5_1 => w
            .as_chunks::<{ q5_1::BLOCK_BYTES }>()
            .0
            .iter()
            .map(q5_1::m)
            .collect(),
        _ => return 0.0,
    };
    m.iter()
        .zip(a_blocks)
        .map(|(&m, a)| f64::from(m).abs() * f64::from(q8_1::s(a)).abs() * 2f64.powi(-10))
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn dot_matches_the_dequantized_sum(
        ty in prop::sample::select(weight_types()),
        n_blocks in 1usize..5,
        bytes in prop::collection::vec(any::<u8>(), 1024),
        // sign, exponent 2^-14..2^3 and mantissa of each f16 scale
        scales in prop::collection::vec((any::<bool>(), 1u16..18, 0u16..1024), 8),
        x in prop::collection::vec(-1.0f32..1.0, 4 * 256),
        x_exp in -6i32..6,
    ) {
        let scales: Vec<u16> =
            scales.iter().map(|&(neg, e, m)| (u16::from(neg) << 15) | (e << 10) | m).collect();
        let act = ty.activation_type().unwrap();
        let n = n_blocks * ty.block_len();
        let w = weight_row(ty, n_blocks, &bytes, &scales);
        let x: Vec<f32> = x.iter().cycle().take(n).map(|v| v * 2f32.powi(x_exp)).collect();
        let mut a = vec![0u8; act.bytes_for(n as u64).unwrap() as usize];
        quant::quantize_row(act, &x, &mut a).unwrap();

        let got = f64::from(scalar::dot(ty, &w, &a).unwrap());

        let wd = dequantized(ty, &w, n);
        let ad = dequantized(act, &a, n);
        let want: f64 = wd.iter().zip(&ad).map(|(w, a)| w * a).sum();
        // Every term is off by a few f32 roundings of its own size, and K-quant weights
        // `d·sc·q - dmin·m` by roundings of either part, each at most about max|w|.
        let w_max = wd.iter().fold(0.0f64, |m, w| m.max(w.abs()));
        let a_abs: f64 = ad.iter().map(|a| a.abs()).sum();
        let tolerance = 1e-5 * w_max * a_abs + q8_1_sum_slack(ty, &w, &a) + 1e-30;
        prop_assert!(
            (got - want).abs() <= tolerance,
            "{ty}: dot {got} but the dequantized sum is {want} (tolerance {tolerance})"
        );
    }

    #[test]
    fn dot_checks_lengths_and_never_panics(
        ty in prop::sample::select(ALL_TYPES.to_vec()),
        w_len in 0usize..900,
        a_len in 0usize..1200,
        fill in any::<u8>(),
    ) {
        let w = vec![fill; w_len];
        let a = vec![fill; a_len];
        let result = scalar::dot(ty, &w, &a);
        let Some(act) = ty.activation_type() else {
            prop_assert_eq!(result, Err(Error::UnsupportedType { ty }));
            return Ok(());
        };
        let whole = w_len % ty.block_bytes() == 0;
        let matching = a_len == w_len / ty.block_bytes() * act.block_bytes();
        prop_assert_eq!(result.is_ok(), whole && matching, "{:?}", result);
    }
}

#[test]
fn activation_only_and_unimplemented_types_have_no_dot() {
    for ty in [
        TensorType::Q8_1,
        TensorType::Q8_K,
        TensorType::IQ2_XXS,
        TensorType::MXFP4,
    ] {
        assert_eq!(ty.activation_type(), None, "{ty}");
        assert_eq!(
            scalar::dot(ty, &[], &[]),
            Err(Error::UnsupportedType { ty })
        );
    }
}

#[test]
fn empty_rows_have_zero_dot() {
    for ty in weight_types() {
        assert_eq!(scalar::dot(ty, &[], &[]), Ok(0.0), "{ty}");
    }
}

#[test]
fn typed_entry_points_check_block_counts() {
    let w = [[0u8; 18]; 2];
    let a = [[0u8; 34]; 3];
    assert_eq!(
        scalar::dot_q4_0_q8_0(&w, &a),
        Err(Error::LengthMismatch {
            expected: 2,
            actual: 3
        })
    );
    assert_eq!(
        scalar::dot_f32(&[[0; 4]; 2], &[1.0]),
        Err(Error::LengthMismatch {
            expected: 2,
            actual: 1
        })
    );
}

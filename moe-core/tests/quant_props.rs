//! Properties of every block format: quantize-then-dequantize stays within the format's
//! error bound, nothing panics on any float or any bytes, and wrong lengths are errors.

use moe_core::quant::{self, ALL_TYPES};
use moe_core::{Error, TensorType};
use proptest::prelude::*;

const QUANTIZABLE: [TensorType; 10] = [
    TensorType::F32,
    TensorType::F16,
    TensorType::BF16,
    TensorType::Q4_0,
    TensorType::Q4_1,
    TensorType::Q5_0,
    TensorType::Q5_1,
    TensorType::Q8_0,
    TensorType::Q8_1,
    TensorType::Q8_K,
];

#[test]
fn capability_lists_are_consistent() {
    for ty in ALL_TYPES {
        assert_eq!(ty.can_quantize(), QUANTIZABLE.contains(&ty), "{ty}");
        if ty.can_quantize() {
            assert!(ty.can_dequantize(), "{ty}");
        }
        let n = ty.block_len();
        let mut src = vec![0u8; ty.block_bytes()];
        let mut dst = vec![0.0f32; n];
        let result = quant::dequantize_row(ty, &src, &mut dst);
        assert_eq!(result.is_ok(), ty.can_dequantize(), "{ty}: {result:?}");
        if !ty.can_dequantize() {
            assert_eq!(result, Err(Error::UnsupportedType { ty }));
        }
        let result = quant::quantize_row(ty, &dst, &mut src);
        assert_eq!(result.is_ok(), ty.can_quantize(), "{ty}: {result:?}");
    }
}

#[test]
fn zero_blocks_round_trip_to_zero() {
    for ty in QUANTIZABLE {
        let x = vec![0.0f32; 2 * ty.block_len().max(32)];
        let mut q = vec![0xa5u8; ty.bytes_for(x.len() as u64).unwrap() as usize];
        quant::quantize_row(ty, &x, &mut q).unwrap();
        let mut y = vec![1.0f32; x.len()];
        quant::dequantize_row(ty, &q, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "{ty}: {y:?}");
    }
}

#[test]
fn empty_rows_are_fine() {
    for ty in ALL_TYPES.into_iter().filter(|t| t.can_dequantize()) {
        assert_eq!(quant::dequantize_row(ty, &[], &mut []), Ok(()), "{ty}");
    }
    for ty in QUANTIZABLE {
        assert_eq!(quant::quantize_row(ty, &[], &mut []), Ok(()), "{ty}");
    }
}

/// The largest error `ty` may make on an element of the block `x` (one block, or one
/// element for float types), with a little slack for f16 rounding of scales.
fn error_bound(ty: TensorType, x: &[f32], v: f32) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let max = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    let min = x.iter().fold(f32::MAX, |m, &v| m.min(v));
    // f16 scales lose relative precision 2^-11 (and absolute 2^-25 when subnormal).
    let f16_slack =
        |scale: f32, steps: f32| steps * (scale.abs() * 2f32.powi(-11) + 2f32.powi(-25));
    match ty {
        TensorType::F32 => 0.0,
        TensorType::F16 => v.abs() * 2f32.powi(-11) + 2f32.powi(-25),
        TensorType::BF16 => v.abs() * 2f32.powi(-8),
        // The extreme value maps to the far end of -8..=7 (-16..=15), and the opposite
        // extreme may be clipped one step short: up to one step `d` off.
        TensorType::Q4_0 => amax / 8.0 + f16_slack(amax / 8.0, 8.0),
        TensorType::Q5_0 => amax / 16.0 + f16_slack(amax / 16.0, 16.0),
        // Rounding to the nearest of 16 (32) steps over [min, max], plus rounding of `m`.
        TensorType::Q4_1 => {
            let d = (max - min) / 15.0;
            d / 2.0 + f16_slack(d, 15.0) + f16_slack(min, 1.0)
        }
        TensorType::Q5_1 => {
            let d = (max - min) / 31.0;
            d / 2.0 + f16_slack(d, 31.0) + f16_slack(min, 1.0)
        }
        TensorType::Q8_0 | TensorType::Q8_1 => {
            let d = amax / 127.0;
            d / 2.0 + f16_slack(d, 127.0)
        }
        // f32 scale: half a step plus float rounding.
        TensorType::Q8_K => amax / 127.0 * 0.5001,
        _ => unreachable!(),
    }
}

/// Rows of `n_blocks` blocks of `block_len`, each block with its own magnitude and offset,
/// kept where the f16 scales neither overflow nor lose all precision.
fn blocks(block_len: usize) -> impl Strategy<Value = Vec<f32>> {
    let block = (
        prop::collection::vec(-1.0f32..1.0, block_len),
        -10i32..12,
        -1.0f32..1.0,
    )
        .prop_map(|(unit, exp, offset)| {
            let scale = 2f32.powi(exp);
            unit.iter()
                .map(|u| (u + offset) * scale)
                .collect::<Vec<f32>>()
        });
    prop::collection::vec(block, 1..4).prop_map(|b| b.concat())
}

fn quantizable() -> impl Strategy<Value = TensorType> {
    prop::sample::select(QUANTIZABLE.to_vec())
}

fn dequantizable() -> impl Strategy<Value = TensorType> {
    prop::sample::select(
        ALL_TYPES
            .into_iter()
            .filter(|t| t.can_dequantize())
            .collect::<Vec<_>>(),
    )
}

fn round_trip(ty: TensorType, x: &[f32]) -> Vec<f32> {
    let mut q = vec![0u8; ty.bytes_for(x.len() as u64).unwrap() as usize];
    quant::quantize_row(ty, x, &mut q).unwrap();
    let mut y = vec![0.0f32; x.len()];
    quant::dequantize_row(ty, &q, &mut y).unwrap();
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip_error_is_bounded(
        (ty, x) in quantizable().prop_flat_map(|ty| (Just(ty), blocks(ty.block_len().max(32))))
    ) {
        let y = round_trip(ty, &x);
        let block_len = ty.block_len().max(32);
        for (b, (xb, yb)) in x.chunks(block_len).zip(y.chunks(block_len)).enumerate() {
            for (i, (&xv, &yv)) in xb.iter().zip(yb).enumerate() {
                let bound = if ty.block_len() == 1 {
                    error_bound(ty, &[xv], xv)
                } else {
                    error_bound(ty, xb, xv)
                };
                prop_assert!(
                    (xv - yv).abs() <= bound,
                    "{ty} block {b} element {i}: {xv} came back as {yv} (bound {bound})"
                );
            }
        }
    }

    #[test]
    fn quantize_accepts_any_float(
        ty in quantizable(),
        bits in prop::collection::vec(
            prop_oneof![
                any::<u32>(),
                Just(f32::NAN.to_bits()),
                Just(f32::INFINITY.to_bits()),
                Just(f32::NEG_INFINITY.to_bits()),
                Just(0x8000_0000u32),
                Just(1u32),
                Just(f32::MAX.to_bits()),
            ],
            256 * 2,
        ),
    ) {
        let x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let mut q = vec![0u8; ty.bytes_for(x.len() as u64).unwrap() as usize];
        prop_assert_eq!(quant::quantize_row(ty, &x, &mut q), Ok(()));
        let mut y = vec![0.0f32; x.len()];
        prop_assert_eq!(quant::dequantize_row(ty, &q, &mut y), Ok(()));
    }

    #[test]
    fn dequantize_accepts_any_bytes(
        ty in dequantizable(),
        n_blocks in 0usize..3,
        seed in prop::collection::vec(any::<u8>(), 1024),
    ) {
        let n = n_blocks * ty.block_len();
        let src: Vec<u8> = seed.iter().cycle().take(n_blocks * ty.block_bytes()).copied().collect();
        let mut dst = vec![0.0f32; n];
        prop_assert_eq!(quant::dequantize_row(ty, &src, &mut dst), Ok(()));
    }

    #[test]
    fn lengths_are_checked(
        ty in prop::sample::select(ALL_TYPES.to_vec()),
        n_elements in 0usize..600,
        n_bytes in 0usize..700,
    ) {
        let mut dst = vec![0.0f32; n_elements];
        let src = vec![0u8; n_bytes];
        let consistent = n_elements % ty.block_len() == 0
            && ty.bytes_for(n_elements as u64) == Some(n_bytes as u64);
        let result = quant::dequantize_row(ty, &src, &mut dst);
        match result {
            Ok(()) => prop_assert!(consistent && ty.can_dequantize()),
            Err(Error::UnsupportedType { .. }) => prop_assert!(!ty.can_dequantize()),
            Err(Error::RowNotBlockMultiple { row_len, block_len, .. }) => {
                prop_assert!(n_elements % ty.block_len() != 0);
                prop_assert_eq!((row_len, block_len), (n_elements as u64, ty.block_len() as u64));
            }
            Err(Error::LengthMismatch { expected, actual }) => {
                prop_assert!(!consistent);
                prop_assert_eq!(actual, n_bytes);
                prop_assert_eq!(Some(expected as u64), ty.bytes_for(n_elements as u64));
            }
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }

        let src = vec![0.5f32; n_elements];
        let mut dst = vec![0u8; n_bytes];
        let result = quant::quantize_row(ty, &src, &mut dst);
        prop_assert_eq!(result.is_ok(), consistent && ty.can_quantize(), "{:?}", result);
    }
}

//! Plain float rows: F32, F16 and BF16, one element per "block", little-endian.
//!
//! The f16 and bf16 conversions here are the ones every block format uses for its
//! scales. They match numpy (gguf-py's oracle) bit for bit, NaN payloads included:
//! numpy keeps a NaN's payload bits and never sets the quiet bit, where `half` does.

use half::f16;

use super::{TensorType, dequantize_blocks, quantize_blocks};
use crate::Result;

/// Decodes IEEE binary16 bits, keeping NaN payloads as numpy does.
///
/// Without branches, so loops over f16 rows (an f16 KV cache, F16 weights) vectorise:
/// the exponent and mantissa moved into an f32's fields and multiplied by 2^112 rebias
/// the exponent (15 → 127) and normalise subnormals, exactly (a power-of-two scaling of
/// a representable value); an all-ones exponent (infinity, NaN) is rebuilt with its
/// payload. Equal to `half`'s conversion for every non-NaN input (tested exhaustively).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    let bits = u32::from(bits);
    let sign = (bits & 0x8000) << 16;
    let magnitude = bits & 0x7fff;
    const TWO_TO_112: f32 = f32::from_bits((127 + 112) << 23);
    let finite = f32::from_bits(magnitude << 13) * TWO_TO_112;
    let special = 0x7f80_0000 | (magnitude & 0x03ff) << 13;
    let abs = if magnitude >= 0x7c00 {
        special
    } else {
        finite.to_bits()
    };
    f32::from_bits(sign | abs)
}

/// Rounds to IEEE binary16 (nearest, ties to even; overflow to infinity), keeping the
/// top payload bits of a NaN and forcing a non-zero payload as numpy does.
pub fn f32_to_f16(x: f32) -> u16 {
    if x.is_nan() {
        let bits = x.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let payload = ((bits & 0x007f_ffff) >> 13) as u16;
        sign | 0x7c00 | payload.max(1)
    } else {
        f16::from_f32(x).to_bits()
    }
}

/// Decodes bfloat16 bits: they are the top half of an f32.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Rounds to bfloat16 as ggml and gguf-py do: NaN becomes a quiet NaN with the top
/// payload bits kept, everything else rounds to nearest, ties to even (overflowing to
/// infinity).
pub fn f32_to_bf16(x: f32) -> u16 {
    let mut n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    // u64 mirrors gguf-py; after the NaN case the sum cannot overflow u32 anyway.
    ((u64::from(n) + 0x7fff + u64::from((n >> 16) & 1)) >> 16) as u16
}

const _: () = assert!(TensorType::F32.block_bytes() == 4 && TensorType::F32.block_len() == 1);
const _: () = assert!(TensorType::F16.block_bytes() == 2 && TensorType::F16.block_len() == 1);
const _: () = assert!(TensorType::BF16.block_bytes() == 2 && TensorType::BF16.block_len() == 1);

/// Copies little-endian f32 values.
pub fn dequantize_row_f32(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(
        TensorType::F32,
        src,
        dst,
        |b: &[u8; 4], out: &mut [f32; 1]| {
            out[0] = f32::from_le_bytes(*b);
        },
    )
}

/// Widens little-endian f16 values.
pub fn dequantize_row_f16(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(
        TensorType::F16,
        src,
        dst,
        |b: &[u8; 2], out: &mut [f32; 1]| {
            out[0] = f16_to_f32(u16::from_le_bytes(*b));
        },
    )
}

/// Widens little-endian bf16 values.
pub fn dequantize_row_bf16(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(
        TensorType::BF16,
        src,
        dst,
        |b: &[u8; 2], out: &mut [f32; 1]| {
            out[0] = bf16_to_f32(u16::from_le_bytes(*b));
        },
    )
}

/// Writes f32 values little-endian.
pub fn quantize_row_f32(src: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_blocks(
        TensorType::F32,
        src,
        dst,
        |x: &[f32; 1], out: &mut [u8; 4]| {
            *out = x[0].to_le_bytes();
        },
    )
}

/// Rounds to f16 with [`f32_to_f16`], written little-endian.
pub fn quantize_row_f16(src: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_blocks(
        TensorType::F16,
        src,
        dst,
        |x: &[f32; 1], out: &mut [u8; 2]| {
            *out = f32_to_f16(x[0]).to_le_bytes();
        },
    )
}

/// Rounds to bf16 with [`f32_to_bf16`], written little-endian.
pub fn quantize_row_bf16(src: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_blocks(
        TensorType::BF16,
        src,
        dst,
        |x: &[f32; 1], out: &mut [u8; 2]| {
            *out = f32_to_bf16(x[0]).to_le_bytes();
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_decoding_is_halfs_for_every_bit_pattern() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let got = f16_to_f32(bits);
            if h.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
                let want = (u32::from(bits & 0x8000) << 16) | 0x7f80_0000;
                assert_eq!(
                    got.to_bits(),
                    want | u32::from(bits & 0x03ff) << 13,
                    "{bits:#06x}"
                );
            } else {
                assert_eq!(got.to_bits(), h.to_f32().to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn nan_payloads_follow_numpy() {
        // Expected bits from numpy 2.4 `astype` on x86-64.
        assert_eq!(f16_to_f32(0x7c01).to_bits(), 0x7f80_2000);
        assert_eq!(f16_to_f32(0xfc01).to_bits(), 0xff80_2000);
        assert_eq!(f16_to_f32(0x7e00).to_bits(), 0x7fc0_0000);
        assert_eq!(f16_to_f32(0x0001).to_bits(), 0x3380_0000);
        assert_eq!(f32_to_f16(f32::from_bits(0x7f80_0001)), 0x7c01);
        assert_eq!(f32_to_f16(f32::from_bits(0x7fc0_0001)), 0x7e00);
        assert_eq!(f32_to_f16(f32::from_bits(0xff81_2345)), 0xfc09);
        assert_eq!(f32_to_f16(f32::MAX), 0x7c00);
        assert_eq!(f32_to_f16(f32::from_bits(0x3300_0001)), 0x0001);
        assert_eq!(f32_to_f16(f32::from_bits(0x3300_0000)), 0x0000);
    }

    #[test]
    fn bf16_rounds_to_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80);
        assert_eq!(bf16_to_f32(0xbf80), -1.0);
    }
}

//! Q4_K: 256 weights in 8 sub-blocks of 32, each with a 6-bit scale and 6-bit minimum
//! under f16 super-scales (4.5 bits/weight).
//!
//! Layout, 144 bytes: `d: f16 @0`, `dmin: f16 @2`, `scales[12] @4` (packed as in
//! [`unpack_scales_mins`]), `qs[128] @16`. Sub-blocks `2c` and `2c + 1` are the low and
//! high nibbles of `qs[32c..32c + 32]`. Element `l` of sub-block `s` is
//! `(d * scale_s) * q - (dmin * min_s)`.

use super::{TensorType, dequantize_blocks, le_f16};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 144;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];
/// Sub-blocks per block, each with its own scale and minimum.
pub const N_SUB: usize = 8;

const D: usize = 0;
const DMIN: usize = 2;
const SCALES: usize = 4;
const QS: usize = 16;

const _: () = assert!(TensorType::Q4_K.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::Q4_K.block_len() == BLOCK_LEN);

/// The super-scale of the sub-block scales.
pub fn d(block: &Block) -> f32 {
    le_f16(block, D)
}

/// The super-scale of the sub-block minimums.
pub fn dmin(block: &Block) -> f32 {
    le_f16(block, DMIN)
}

/// The 6-bit scale and minimum of each sub-block.
pub fn scales_mins(block: &Block) -> ([u8; N_SUB], [u8; N_SUB]) {
    let mut packed = [0u8; 12];
    packed.copy_from_slice(&block[SCALES..QS]);
    unpack_scales_mins(&packed)
}

/// Unpacks the 12 bytes of eight 6-bit scales and eight 6-bit minimums (shared with Q5_K).
///
/// Bytes 0–3 hold scales 0–3 in their low six bits, bytes 4–7 minimums 0–3; scales and
/// minimums 4–7 keep their low four bits in the low and high nibbles of bytes 8–11 and
/// their top two bits in the top bits of bytes 0–3 and 4–7 respectively.
pub fn unpack_scales_mins(packed: &[u8; 12]) -> ([u8; N_SUB], [u8; N_SUB]) {
    let mut scales = [0u8; N_SUB];
    let mut mins = [0u8; N_SUB];
    for j in 0..4 {
        scales[j] = packed[j] & 0x3f;
        mins[j] = packed[j + 4] & 0x3f;
        scales[j + 4] = (packed[j + 8] & 0x0f) | ((packed[j] >> 6) << 4);
        mins[j + 4] = (packed[j + 8] >> 4) | ((packed[j + 4] >> 6) << 4);
    }
    (scales, mins)
}

/// The quants 0..=15 in element order.
pub fn quants(block: &Block) -> [u8; BLOCK_LEN] {
    let mut q = [0u8; BLOCK_LEN];
    for (e, q) in q.iter_mut().enumerate() {
        let (c, nibble, l) = (e / 64, e % 64 / 32, e % 32);
        *q = (block[QS + 32 * c + l] >> (4 * nibble)) & 0x0f;
    }
    q
}

/// Decodes one block.
pub fn dequantize_block(block: &Block, out: &mut [f32; BLOCK_LEN]) {
    let (d, dmin) = (d(block), dmin(block));
    let (scales, mins) = scales_mins(block);
    let q = quants(block);
    for (e, o) in out.iter_mut().enumerate() {
        let s = e / 32;
        let ds = d * f32::from(scales[s]);
        let dm = dmin * f32::from(mins[s]);
        *o = ds * f32::from(q[e]) - dm;
    }
}

/// Decodes whole blocks; `dst.len()` elements from exactly their bytes in `src`.
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(TensorType::Q4_K, src, dst, dequantize_block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_and_mins_unpack_from_split_bits() {
        let mut packed = [0u8; 12];
        packed[0] = 0b11_000001; // scale 0 = 1; top bits of scale 4 = 0b11
        packed[4] = 0b10_000010; // min 0 = 2; top bits of min 4 = 0b10
        packed[8] = 0x5a; // low bits: scale 4 = 0xa, min 4 = 0x5
        let (scales, mins) = unpack_scales_mins(&packed);
        assert_eq!((scales[0], mins[0]), (1, 2));
        assert_eq!((scales[4], mins[4]), (0x3a, 0x25));
    }
}

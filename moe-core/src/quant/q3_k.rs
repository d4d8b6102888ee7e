//! Q3_K: 256 weights in 16 sub-blocks of 16 with signed 6-bit scales under an f16
//! super-scale (3.4375 bits/weight); no minimums, the quants are signed instead.
//!
//! Layout, 110 bytes: `hmask[32] @0` (third bit of each quant), `qs[64] @32` (low two
//! bits), `scales[12] @96` (16 six-bit scales, packed as in [`scales`]), `d: f16 @108`.
//! Element `e` takes bits `2j..2j + 2` of `qs[32h + l]` (`h = e / 128`,
//! `j = e % 128 / 32`, `l = e % 32`) and bit `e / 32` of `hmask[l]`; a *clear* high bit
//! subtracts 4, giving -4..=3. Element `e` is `(d * scale_{e / 16}) * q`.

use super::{TensorType, dequantize_blocks, le_f16};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 110;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];
/// Sub-blocks per block, each with its own scale.
pub const N_SUB: usize = 16;

const HMASK: usize = 0;
const QS: usize = 32;
const SCALES: usize = 96;
const D: usize = 108;

const _: () = assert!(TensorType::Q3_K.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::Q3_K.block_len() == BLOCK_LEN);

/// The super-scale.
pub fn d(block: &Block) -> f32 {
    le_f16(block, D)
}

/// The signed sub-block scales, -32..=31.
///
/// Scale `i`'s low four bits are the low nibble of `scales[i]` (i < 8) or the high nibble
/// of `scales[i - 8]`; its high two bits are bits `2 * (i / 4)..+2` of `scales[8 + i % 4]`.
pub fn scales(block: &Block) -> [i8; N_SUB] {
    let s = |i: usize| block[SCALES + i];
    let mut out = [0i8; N_SUB];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s(i) & 0x0f } else { s(i - 8) >> 4 };
        let high = (s(8 + i % 4) >> (2 * (i / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// The signed quants -4..=3 in element order.
pub fn quants(block: &Block) -> [i8; BLOCK_LEN] {
    let mut q = [0i8; BLOCK_LEN];
    for (e, q) in q.iter_mut().enumerate() {
        let (h, j, l) = (e / 128, e % 128 / 32, e % 32);
        let low = ((block[QS + 32 * h + l] >> (2 * j)) & 3) as i8;
        let high_set = (block[HMASK + l] >> (e / 32)) & 1 == 1;
        *q = if high_set { low } else { low - 4 };
    }
    q
}

/// Decodes one block.
pub fn dequantize_block(block: &Block, out: &mut [f32; BLOCK_LEN]) {
    let d = d(block);
    let scales = scales(block);
    let q = quants(block);
    for (e, o) in out.iter_mut().enumerate() {
        let dl = d * f32::from(scales[e / 16]);
        *o = dl * f32::from(q[e]);
    }
}

/// Decodes whole blocks; `dst.len()` elements from exactly their bytes in `src`.
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(TensorType::Q3_K, src, dst, dequantize_block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_bytes_are_not_zero_weights() {
        // A clear hmask bit means "subtract 4" and a zero 6-bit scale means -32, so an
        // all-zero block with d = 1 decodes to (-32) * (-4) = 128 everywhere.
        let mut block = [0u8; BLOCK_BYTES];
        block[D..D + 2].copy_from_slice(&0x3c00u16.to_le_bytes());
        let mut out = [0.0f32; BLOCK_LEN];
        dequantize_block(&block, &mut out);
        assert!(out.iter().all(|&v| v == 128.0));
    }
}

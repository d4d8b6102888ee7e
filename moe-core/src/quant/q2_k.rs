//! Q2_K: 256 weights in 16 sub-blocks of 16, each with a 4-bit scale and 4-bit minimum
//! under f16 super-scales (2.625 bits/weight).
//!
//! Layout, 84 bytes: `scales[16] @0` (sub-block `k`: scale in the low nibble, minimum in
//! the high nibble), `qs[64] @16` (2-bit quants), `d: f16 @80`, `dmin: f16 @82`.
//! Element `e` takes bits `2j..2j + 2` of `qs[32h + l]` where `h = e / 128`,
//! `j = e % 128 / 32`, `l = e % 32`. Element `e` of sub-block `k = e / 16` is
//! `(d * scale_k) * q - (dmin * min_k)`.

use super::{TensorType, dequantize_blocks, le_f16};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 84;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];
/// Sub-blocks per block, each with its own scale and minimum.
pub const N_SUB: usize = 16;

const SCALES: usize = 0;
const QS: usize = 16;
const D: usize = 80;
const DMIN: usize = 82;

const _: () = assert!(TensorType::Q2_K.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::Q2_K.block_len() == BLOCK_LEN);

/// The super-scale of the sub-block scales.
pub fn d(block: &Block) -> f32 {
    le_f16(block, D)
}

/// The super-scale of the sub-block minimums.
pub fn dmin(block: &Block) -> f32 {
    le_f16(block, DMIN)
}

/// The 4-bit scale and 4-bit minimum of each sub-block.
pub fn scales_mins(block: &Block) -> ([u8; N_SUB], [u8; N_SUB]) {
    let mut scales = [0u8; N_SUB];
    let mut mins = [0u8; N_SUB];
    for k in 0..N_SUB {
        scales[k] = block[SCALES + k] & 0x0f;
        mins[k] = block[SCALES + k] >> 4;
    }
    (scales, mins)
}

/// The quants 0..=3 in element order.
pub fn quants(block: &Block) -> [u8; BLOCK_LEN] {
    let mut q = [0u8; BLOCK_LEN];
    for (e, q) in q.iter_mut().enumerate() {
        let (h, j, l) = (e / 128, e % 128 / 32, e % 32);
        *q = (block[QS + 32 * h + l] >> (2 * j)) & 3;
    }
    q
}

/// Decodes one block.
pub fn dequantize_block(block: &Block, out: &mut [f32; BLOCK_LEN]) {
    let (d, dmin) = (d(block), dmin(block));
    let (scales, mins) = scales_mins(block);
    let q = quants(block);
    for (e, o) in out.iter_mut().enumerate() {
        let k = e / 16;
        let dl = d * f32::from(scales[k]);
        let ml = dmin * f32::from(mins[k]);
        *o = dl * f32::from(q[e]) - ml;
    }
}

/// Decodes whole blocks; `dst.len()` elements from exactly their bytes in `src`.
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(TensorType::Q2_K, src, dst, dequantize_block)
}

//! Q5_K: Q4_K with a fifth bit per weight (5.5 bits/weight).
//!
//! Layout, 176 bytes: `d: f16 @0`, `dmin: f16 @2`, `scales[12] @4` (packed as in Q4_K),
//! `qh[32] @16`, `qs[128] @48`. Low four bits as in Q4_K; the fifth bit of element `l`
//! of sub-block `s` is bit `s` of `qh[l]`. Element `l` of sub-block `s` is
//! `(d * scale_s) * q - (dmin * min_s)`.

use super::{TensorType, dequantize_blocks, le_f16, q4_k};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 176;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];
/// Sub-blocks per block, each with its own scale and minimum.
pub const N_SUB: usize = 8;

const D: usize = 0;
const DMIN: usize = 2;
const SCALES: usize = 4;
const QH: usize = 16;
const QS: usize = 48;

const _: () = assert!(TensorType::Q5_K.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::Q5_K.block_len() == BLOCK_LEN);

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
    packed.copy_from_slice(&block[SCALES..QH]);
    q4_k::unpack_scales_mins(&packed)
}

/// The quants 0..=31 in element order.
pub fn quants(block: &Block) -> [u8; BLOCK_LEN] {
    let mut q = [0u8; BLOCK_LEN];
    for (e, q) in q.iter_mut().enumerate() {
        let (c, nibble, l) = (e / 64, e % 64 / 32, e % 32);
        let low = (block[QS + 32 * c + l] >> (4 * nibble)) & 0x0f;
        let high = (block[QH + l] >> (e / 32)) & 1;
        *q = low | (high << 4);
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
    dequantize_blocks(TensorType::Q5_K, src, dst, dequantize_block)
}

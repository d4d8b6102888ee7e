//! Q5_1: 32 weights as 5-bit steps up from a minimum, with f16 scale and minimum
//! (6 bits/weight).
//!
//! Layout, 24 bytes: `d: f16 @0`, `m: f16 @2`, `qh: u32 LE @4` (bit `i` is the fifth bit
//! of element `i`), `qs[16] @8` (low four bits, nibbles as in Q4_1). Element `i` is
//! `d * q_i + m`.

use super::{TensorType, dequantize_blocks, float::f32_to_f16, le_f16, quantize_blocks, round};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 24;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];

const D: usize = 0;
const M: usize = 2;
const QH: usize = 4;
const QS: usize = 8;

const _: () = assert!(TensorType::Q5_1.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::Q5_1.block_len() == BLOCK_LEN);

/// The block's scale.
pub fn d(block: &Block) -> f32 {
    le_f16(block, D)
}

/// The block's minimum (added to every element).
pub fn m(block: &Block) -> f32 {
    le_f16(block, M)
}

/// The quants 0..=31 in element order.
pub fn quants(block: &Block) -> [u8; BLOCK_LEN] {
    let qh = u32::from_le_bytes([block[QH], block[QH + 1], block[QH + 2], block[QH + 3]]);
    let mut q = [0u8; BLOCK_LEN];
    for j in 0..BLOCK_LEN / 2 {
        let byte = block[QS + j];
        let hi_j = ((qh >> j) & 1) as u8;
        let hi_j16 = ((qh >> (j + 16)) & 1) as u8;
        q[j] = (byte & 0x0f) | (hi_j << 4);
        q[j + 16] = (byte >> 4) | (hi_j16 << 4);
    }
    q
}

/// Decodes one block.
pub fn dequantize_block(block: &Block, out: &mut [f32; BLOCK_LEN]) {
    let (d, m) = (d(block), m(block));
    for (o, q) in out.iter_mut().zip(quants(block)) {
        *o = d * f32::from(q) + m;
    }
}

/// Encodes one block as gguf-py does: `d = (max - min) / 31`,
/// `q = min(31, trunc((x - min) / d + 0.5))`.
pub fn quantize_block(x: &[f32; BLOCK_LEN], out: &mut Block) {
    let max = round::max(x);
    let min = round::min(x);
    let d = (max - min) / 31.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut q = [0u8; BLOCK_LEN];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round::to_u8(libm::truncf((v - min) * id + 0.5)).min(31);
    }
    let mut qh = 0u32;
    for (i, &q) in q.iter().enumerate() {
        qh |= u32::from(q >> 4) << i;
    }
    out[D..M].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    out[M..QH].copy_from_slice(&f32_to_f16(min).to_le_bytes());
    out[QH..QS].copy_from_slice(&qh.to_le_bytes());
    for j in 0..BLOCK_LEN / 2 {
        out[QS + j] = (q[j] & 0x0f) | (q[j + 16] << 4);
    }
}

/// Decodes whole blocks; `dst.len()` elements from exactly their bytes in `src`.
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(TensorType::Q5_1, src, dst, dequantize_block)
}

/// Encodes whole blocks; `src.len()` elements into exactly their bytes in `dst`.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_blocks(TensorType::Q5_1, src, dst, quantize_block)
}

//! Q5_0: 32 weights as 5-bit offsets around zero with one f16 scale (5.5 bits/weight).
//!
//! Layout, 22 bytes: `d: f16 @0`, `qh: u32 LE @2` (bit `i` is the fifth bit of element
//! `i`), `qs[16] @6` (low four bits: element `j` in the low nibble of `qs[j]`, element
//! `j + 16` in the high nibble). Element `i` is `d * (q_i - 16)`.

use super::{TensorType, dequantize_blocks, float::f32_to_f16, le_f16, quantize_blocks, round};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 22;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];

const D: usize = 0;
const QH: usize = 2;
const QS: usize = 6;

const _: () = assert!(TensorType::Q5_0.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::Q5_0.block_len() == BLOCK_LEN);

/// The block's scale.
pub fn d(block: &Block) -> f32 {
    le_f16(block, D)
}

/// The quants in element order, already offset to -16..=15.
pub fn quants(block: &Block) -> [i8; BLOCK_LEN] {
    let qh = u32::from_le_bytes([block[QH], block[QH + 1], block[QH + 2], block[QH + 3]]);
    let mut q = [0i8; BLOCK_LEN];
    for j in 0..BLOCK_LEN / 2 {
        let byte = block[QS + j];
        let hi_j = ((qh >> j) & 1) as u8;
        let hi_j16 = ((qh >> (j + 16)) & 1) as u8;
        q[j] = ((byte & 0x0f) | (hi_j << 4)) as i8 - 16;
        q[j + 16] = ((byte >> 4) | (hi_j16 << 4)) as i8 - 16;
    }
    q
}

/// Decodes one block.
pub fn dequantize_block(block: &Block, out: &mut [f32; BLOCK_LEN]) {
    let d = d(block);
    for (o, q) in out.iter_mut().zip(quants(block)) {
        *o = d * f32::from(q);
    }
}

/// Encodes one block as gguf-py does: the signed value of largest magnitude maps to -16,
/// `d = max / -16`, `q = min(31, trunc(x / d + 16.5))`.
pub fn quantize_block(x: &[f32; BLOCK_LEN], out: &mut Block) {
    let max = x[round::argmax_abs(x)];
    let d = max / -16.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut q = [0u8; BLOCK_LEN];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round::to_u8(libm::truncf(v * id + 16.5)).min(31);
    }
    let mut qh = 0u32;
    for (i, &q) in q.iter().enumerate() {
        qh |= u32::from(q >> 4) << i;
    }
    out[D..QH].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    out[QH..QS].copy_from_slice(&qh.to_le_bytes());
    for j in 0..BLOCK_LEN / 2 {
        out[QS + j] = (q[j] & 0x0f) | (q[j + 16] << 4);
    }
}

/// Decodes whole blocks; `dst.len()` elements from exactly their bytes in `src`.
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(TensorType::Q5_0, src, dst, dequantize_block)
}

/// Encodes whole blocks; `src.len()` elements into exactly their bytes in `dst`.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_blocks(TensorType::Q5_0, src, dst, quantize_block)
}

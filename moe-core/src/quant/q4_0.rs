//! Q4_0: 32 weights as 4-bit offsets around zero with one f16 scale (4.5 bits/weight).
//!
//! Layout, 18 bytes: `d: f16 @0`, `qs[16] @2`. Byte `qs[j]` holds element `j` in its low
//! nibble and element `j + 16` in its high nibble. Element `i` is `d * (nibble_i - 8)`.

use super::{TensorType, dequantize_blocks, le_f16, quantize_blocks, round};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 18;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];

const D: usize = 0;
const QS: usize = 2;

const _: () = assert!(TensorType::Q4_0.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::Q4_0.block_len() == BLOCK_LEN);

/// The block's scale.
pub fn d(block: &Block) -> f32 {
    le_f16(block, D)
}

/// The quants in element order, already offset to -8..=7.
pub fn quants(block: &Block) -> [i8; BLOCK_LEN] {
    let mut q = [0i8; BLOCK_LEN];
    for j in 0..BLOCK_LEN / 2 {
        let byte = block[QS + j];
        q[j] = (byte & 0x0f) as i8 - 8;
        q[j + 16] = (byte >> 4) as i8 - 8;
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

/// Encodes one block as gguf-py does: the signed value of largest magnitude maps to -8,
/// `d = max / -8`, `q = min(15, trunc(x / d + 8.5))`.
pub fn quantize_block(x: &[f32; BLOCK_LEN], out: &mut Block) {
    let max = x[round::argmax_abs(x)];
    let d = max / -8.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut q = [0u8; BLOCK_LEN];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round::to_u8(libm::truncf(v * id + 8.5)).min(15);
    }
    out[D..QS].copy_from_slice(&super::float::f32_to_f16(d).to_le_bytes());
    for j in 0..BLOCK_LEN / 2 {
        out[QS + j] = q[j] | (q[j + 16] << 4);
    }
}

/// Decodes whole blocks; `dst.len()` elements from exactly their bytes in `src`.
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(TensorType::Q4_0, src, dst, dequantize_block)
}

/// Encodes whole blocks; `src.len()` elements into exactly their bytes in `dst`.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_blocks(TensorType::Q4_0, src, dst, quantize_block)
}

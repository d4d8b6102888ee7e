//! Q8_1: Q8_0 plus the scaled sum of the quants; the activation format paired with Q4_1
//! and Q5_1, whose minimum term then costs one multiply per block (`m * s`).
//!
//! Layout, 36 bytes (current ggml; gguf-py 0.19 still lists an old 40-byte layout):
//! `d: f16 @0`, `s: f16 @2` (`d * sum(qs)`, from the f32 `d`), `qs: i8[32] @4`.
//! Element `i` is `d * qs[i]`.

use super::{TensorType, dequantize_blocks, float::f32_to_f16, le_f16, q8_0, quantize_blocks};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 36;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];

const D: usize = 0;
const S: usize = 2;
const QS: usize = 4;

const _: () = assert!(TensorType::Q8_1.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::Q8_1.block_len() == BLOCK_LEN);

/// The block's scale.
pub fn d(block: &Block) -> f32 {
    le_f16(block, D)
}

/// `d * sum(qs)`, as stored.
pub fn s(block: &Block) -> f32 {
    le_f16(block, S)
}

/// The signed quants in element order.
pub fn quants(block: &Block) -> [i8; BLOCK_LEN] {
    let mut q = [0i8; BLOCK_LEN];
    for (q, &byte) in q.iter_mut().zip(&block[QS..]) {
        *q = byte as i8;
    }
    q
}

/// Decodes one block (`s` is redundant and not used).
pub fn dequantize_block(block: &Block, out: &mut [f32; BLOCK_LEN]) {
    let d = d(block);
    for (o, q) in out.iter_mut().zip(quants(block)) {
        *o = f32::from(q) * d;
    }
}

/// Encodes one block: the Q8_0 quantizer (`q = round_half_away(x * 127 / max|x|)`) plus
/// `s = f16(sum(q) * d)` with the f32 `d`, as ggml's reference does.
pub fn quantize_block(x: &[f32; BLOCK_LEN], out: &mut Block) {
    let (d, q) = q8_0::scale_and_quants(x);
    let sum: i32 = q.iter().map(|&q| i32::from(q)).sum();
    out[D..S].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    out[S..QS].copy_from_slice(&f32_to_f16(sum as f32 * d).to_le_bytes());
    for (o, q) in out[QS..].iter_mut().zip(q) {
        *o = q as u8;
    }
}

/// Decodes whole blocks; `dst.len()` elements from exactly their bytes in `src`.
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(TensorType::Q8_1, src, dst, dequantize_block)
}

/// Encodes whole blocks; `src.len()` elements into exactly their bytes in `dst`.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_blocks(TensorType::Q8_1, src, dst, quantize_block)
}

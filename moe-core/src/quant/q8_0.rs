//! Q8_0: 32 values as signed bytes with one f16 scale (8.5 bits/value). Used both for
//! weights and as the activation format paired with Q4_0, Q5_0, Q8_0 and IQ4_NL.
//!
//! Layout, 34 bytes: `d: f16 @0`, `qs: i8[32] @2`. Element `i` is `d * qs[i]`.

use super::{TensorType, dequantize_blocks, float::f32_to_f16, le_f16, quantize_blocks, round};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 34;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];

const D: usize = 0;
const QS: usize = 2;

const _: () = assert!(TensorType::Q8_0.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::Q8_0.block_len() == BLOCK_LEN);

/// The block's scale.
pub fn d(block: &Block) -> f32 {
    le_f16(block, D)
}

/// The signed quants in element order.
pub fn quants(block: &Block) -> [i8; BLOCK_LEN] {
    let mut q = [0i8; BLOCK_LEN];
    for (q, &byte) in q.iter_mut().zip(&block[QS..]) {
        *q = byte as i8;
    }
    q
}

/// Decodes one block.
pub fn dequantize_block(block: &Block, out: &mut [f32; BLOCK_LEN]) {
    let d = d(block);
    for (o, q) in out.iter_mut().zip(quants(block)) {
        // gguf-py multiplies in this order (it matters only for which NaN comes out).
        *o = f32::from(q) * d;
    }
}

/// The scale (before f16 rounding) and the quants of ggml's reference Q8_0/Q8_1
/// quantizer as gguf-py computes it: `d = max|x| / 127`, `q = round_half_away(x / d)`.
pub(crate) fn scale_and_quants(x: &[f32; BLOCK_LEN]) -> (f32, [i8; BLOCK_LEN]) {
    let d = round::max_abs(x) / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut q = [0i8; BLOCK_LEN];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = round::to_i8(round::round_half_away(v * id));
    }
    (d, q)
}

/// Encodes one block as gguf-py does (see [`dequantize_block`] for the layout).
pub fn quantize_block(x: &[f32; BLOCK_LEN], out: &mut Block) {
    let (d, q) = scale_and_quants(x);
    out[D..QS].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for (o, q) in out[QS..].iter_mut().zip(q) {
        *o = q as u8;
    }
}

/// Decodes whole blocks; `dst.len()` elements from exactly their bytes in `src`.
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(TensorType::Q8_0, src, dst, dequantize_block)
}

/// Encodes whole blocks; `src.len()` elements into exactly their bytes in `dst`.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_blocks(TensorType::Q8_0, src, dst, quantize_block)
}

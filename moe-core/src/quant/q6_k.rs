//! Q6_K: 256 weights in 16 sub-blocks of 16 with signed 8-bit scales under an f16
//! super-scale (6.5625 bits/weight).
//!
//! Layout, 210 bytes: `ql[128] @0` (low four bits), `qh[64] @128` (high two bits),
//! `scales: i8[16] @192`, `d: f16 @208`. With `h = e / 128`, `r = e % 128`, element `e`
//! takes nibble `r / 64` of `ql[64h + r % 64]` and bits `2j..2j + 2` of `qh[32h + r % 32]`
//! (`j = r / 32`). Element `e` is `(d * scale_{e / 16}) * (q - 32)`.

use super::{TensorType, dequantize_blocks, le_f16};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 210;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];
/// Sub-blocks per block, each with its own scale.
pub const N_SUB: usize = 16;

const QL: usize = 0;
const QH: usize = 128;
const SCALES: usize = 192;
const D: usize = 208;

const _: () = assert!(TensorType::Q6_K.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::Q6_K.block_len() == BLOCK_LEN);

/// The super-scale.
pub fn d(block: &Block) -> f32 {
    le_f16(block, D)
}

/// The signed sub-block scales.
pub fn scales(block: &Block) -> [i8; N_SUB] {
    let mut out = [0i8; N_SUB];
    for (o, &byte) in out.iter_mut().zip(&block[SCALES..D]) {
        *o = byte as i8;
    }
    out
}

/// The quants in element order, already offset to -32..=31.
pub fn quants(block: &Block) -> [i8; BLOCK_LEN] {
    let mut q = [0i8; BLOCK_LEN];
    for (e, q) in q.iter_mut().enumerate() {
        let (h, r) = (e / 128, e % 128);
        let low = (block[QL + 64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
        let high = (block[QH + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
        *q = (low | (high << 4)) as i8 - 32;
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
    dequantize_blocks(TensorType::Q6_K, src, dst, dequantize_block)
}

//! IQ4_XS: the IQ4_NL codebook in 256-weight super-blocks, 8 sub-blocks of 32 with signed
//! 6-bit scales under one f16 scale (4.25 bits/weight).
//!
//! Layout, 136 bytes: `d: f16 @0`, `scales_h: u16 LE @2` (top two bits of each scale),
//! `scales_l[4] @4` (low four bits, two per byte), `qs[128] @8`. Sub-block `b` uses
//! `qs[16b..16b + 16]`: element `j` in the low nibble, element `j + 16` in the high
//! nibble. Element `j` of sub-block `b` is `(d * scale_b) * KVALUES[nibble]`.

use super::{TensorType, dequantize_blocks, iq4_nl::KVALUES, le_f16, le_u16};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 136;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];
/// Sub-blocks per block, each with its own scale.
pub const N_SUB: usize = 8;

const D: usize = 0;
const SCALES_H: usize = 2;
const SCALES_L: usize = 4;
const QS: usize = 8;

const _: () = assert!(TensorType::IQ4_XS.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::IQ4_XS.block_len() == BLOCK_LEN);

/// The block's scale.
pub fn d(block: &Block) -> f32 {
    le_f16(block, D)
}

/// The signed sub-block scales, -32..=31.
pub fn scales(block: &Block) -> [i8; N_SUB] {
    let scales_h = le_u16(block, SCALES_H);
    let mut out = [0i8; N_SUB];
    for (b, o) in out.iter_mut().enumerate() {
        let low = (block[SCALES_L + b / 2] >> (4 * (b % 2))) & 0x0f;
        let high = ((scales_h >> (2 * b)) & 3) as u8;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// The codebook values in element order.
pub fn quants(block: &Block) -> [i8; BLOCK_LEN] {
    let mut q = [0i8; BLOCK_LEN];
    for (e, q) in q.iter_mut().enumerate() {
        let (b, j) = (e / 32, e % 32);
        let byte = block[QS + 16 * b + j % 16];
        let nibble = if j < 16 { byte & 0x0f } else { byte >> 4 };
        *q = KVALUES[usize::from(nibble)];
    }
    q
}

/// Decodes one block.
pub fn dequantize_block(block: &Block, out: &mut [f32; BLOCK_LEN]) {
    let d = d(block);
    let scales = scales(block);
    let q = quants(block);
    for (e, o) in out.iter_mut().enumerate() {
        let dl = d * f32::from(scales[e / 32]);
        *o = dl * f32::from(q[e]);
    }
}

/// Decodes whole blocks; `dst.len()` elements from exactly their bytes in `src`.
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(TensorType::IQ4_XS, src, dst, dequantize_block)
}

//! IQ4_NL: Q4_0's layout with a non-linear codebook: each nibble indexes [`KVALUES`],
//! whose levels are denser near zero where weights cluster (4.5 bits/weight).
//!
//! Layout, 18 bytes: `d: f16 @0`, `qs[16] @2` (element `j` in the low nibble of `qs[j]`,
//! element `j + 16` in the high nibble). Element `i` is `d * KVALUES[nibble_i]`.

use super::{TensorType, dequantize_blocks, le_f16};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 18;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];

/// The codebook shared by IQ4_NL and IQ4_XS.
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

const D: usize = 0;
const QS: usize = 2;

const _: () = assert!(TensorType::IQ4_NL.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::IQ4_NL.block_len() == BLOCK_LEN);

/// The block's scale.
pub fn d(block: &Block) -> f32 {
    le_f16(block, D)
}

/// The codebook values in element order.
pub fn quants(block: &Block) -> [i8; BLOCK_LEN] {
    let mut q = [0i8; BLOCK_LEN];
    for j in 0..BLOCK_LEN / 2 {
        let byte = block[QS + j];
        q[j] = KVALUES[usize::from(byte & 0x0f)];
        q[j + 16] = KVALUES[usize::from(byte >> 4)];
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

/// Decodes whole blocks; `dst.len()` elements from exactly their bytes in `src`.
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(TensorType::IQ4_NL, src, dst, dequantize_block)
}

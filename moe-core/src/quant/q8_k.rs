//! Q8_K: 256 activations as signed bytes with an f32 scale and the sums of each 16, the
//! activation format paired with every K-quant and IQ4_XS. It never appears in files.
//!
//! Layout, 292 bytes: `d: f32 @0`, `qs: i8[256] @4`, `bsums: i16[16] @260` (LE; `bsums[k]`
//! is the sum of `qs[16k..16k + 16]`, so a weight format's minimum terms need no pass
//! over the quants). Element `i` is `d * qs[i]`; `d` is negative when the largest-magnitude
//! value is positive.

use super::{TensorType, dequantize_blocks, quantize_blocks};
use crate::Result;

/// Elements per block.
pub const BLOCK_LEN: usize = 256;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 292;
/// One block's bytes.
pub type Block = [u8; BLOCK_BYTES];
/// Number of 16-element sums stored.
pub const N_BSUMS: usize = BLOCK_LEN / 16;

const D: usize = 0;
const QS: usize = 4;
const BSUMS: usize = 260;

const _: () = assert!(TensorType::Q8_K.block_bytes() == BLOCK_BYTES);
const _: () = assert!(TensorType::Q8_K.block_len() == BLOCK_LEN);
const _: () = assert!(BSUMS == QS + BLOCK_LEN && BSUMS + 2 * N_BSUMS == BLOCK_BYTES);

/// The block's scale (an f32, unlike the other formats).
pub fn d(block: &Block) -> f32 {
    f32::from_le_bytes([block[D], block[D + 1], block[D + 2], block[D + 3]])
}

/// The signed quants in element order.
pub fn quants(block: &Block) -> [i8; BLOCK_LEN] {
    let mut q = [0i8; BLOCK_LEN];
    for (q, &byte) in q.iter_mut().zip(&block[QS..BSUMS]) {
        *q = byte as i8;
    }
    q
}

/// The stored sums of each 16 quants.
pub fn bsums(block: &Block) -> [i16; N_BSUMS] {
    let mut sums = [0i16; N_BSUMS];
    for (k, sum) in sums.iter_mut().enumerate() {
        let at = BSUMS + 2 * k;
        *sum = i16::from_le_bytes([block[at], block[at + 1]]);
    }
    sums
}

/// Decodes one block (`bsums` is redundant and not used).
pub fn dequantize_block(block: &Block, out: &mut [f32; BLOCK_LEN]) {
    let d = d(block);
    for (o, q) in out.iter_mut().zip(quants(block)) {
        *o = d * f32::from(q);
    }
}

/// Encodes one block as ggml's reference does: `max` is the first value of largest
/// magnitude (NaN never is), `iscale = -127 / max`, `q = min(127, round_half_even(iscale
/// * x))`, `d = 1 / iscale`; a block without a non-zero magnitude is all zeros.
///
/// -127 rather than -128 keeps every quant in -127..=127, which ggml's IQ kernels need.
pub fn quantize_block(x: &[f32; BLOCK_LEN], out: &mut Block) {
    // Written as independent lanes so the compiler vectorises it: activations of every
    // K-quant matrix product pass through here. Same bits as the scalar description.
    let mut lanes = [0.0f32; 8];
    for chunk in x.as_chunks::<8>().0 {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            // `f32::max` ignores NaN, as the description's `a > amax` does.
            *l = l.max(libm::fabsf(*v));
        }
    }
    let amax = lanes.iter().fold(0.0f32, |m, &l| m.max(l));
    // The first value of that magnitude.
    let Some(&max) = x
        .iter()
        .find(|v| libm::fabsf(**v) == amax)
        .filter(|_| amax != 0.0)
    else {
        out.fill(0);
        return;
    };
    let iscale = -127.0 / max;
    let mut q = [0i8; BLOCK_LEN];
    for (q, &v) in q.iter_mut().zip(x) {
        let r = round_half_even_small(iscale * v);
        // `as i32` takes NaN (from an infinite input) to 0, as `round::to_i8` does.
        *q = (if r > 127.0 { 127.0 } else { r }) as i32 as i8;
    }
    out[D..QS].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    for (o, &q) in out[QS..BSUMS].iter_mut().zip(&q) {
        *o = q as u8;
    }
    for (k, group) in q.chunks_exact(16).enumerate() {
        let sum: i16 = group.iter().map(|&q| i16::from(q)).sum();
        let at = BSUMS + 2 * k;
        out[at..at + 2].copy_from_slice(&sum.to_le_bytes());
    }
}

/// `round_half_even(x)` for `|x| < 2^22` (and NaN), by adding and removing `1.5 · 2^23`:
/// the sum's unit in the last place is 1, so the addition itself rounds `x` to an integer,
/// half to even (the default rounding mode; Rust never reassociates float arithmetic).
/// The quantizer's `x` is within ±127.
#[inline]
fn round_half_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Decodes whole blocks; `dst.len()` elements from exactly their bytes in `src`.
pub fn dequantize_row(src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_blocks(TensorType::Q8_K, src, dst, dequantize_block)
}

/// Encodes whole blocks; `src.len()` elements into exactly their bytes in `dst`.
pub fn quantize_row(src: &[f32], dst: &mut [u8]) -> Result<()> {
    quantize_blocks(TensorType::Q8_K, src, dst, quantize_block)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The description in [`quantize_block`]'s docs, element by element.
    fn described(x: &[f32; BLOCK_LEN]) -> Block {
        let (mut max, mut amax) = (0.0f32, 0.0f32);
        for &v in x {
            if libm::fabsf(v) > amax {
                amax = libm::fabsf(v);
                max = v;
            }
        }
        let mut out = [0u8; BLOCK_BYTES];
        if amax == 0.0 {
            return out;
        }
        let iscale = -127.0 / max;
        let q: [i8; BLOCK_LEN] = core::array::from_fn(|i| {
            let r = libm::roundevenf(iscale * x[i]);
            super::super::round::to_i8(if r > 127.0 { 127.0 } else { r })
        });
        out[D..QS].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        for (o, &q) in out[QS..BSUMS].iter_mut().zip(&q) {
            *o = q as u8;
        }
        for (k, group) in q.chunks_exact(16).enumerate() {
            let sum: i16 = group.iter().map(|&q| i16::from(q)).sum();
            out[BSUMS + 2 * k..BSUMS + 2 * k + 2].copy_from_slice(&sum.to_le_bytes());
        }
        out
    }

    #[test]
    fn special_values_quantize_as_described() {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            f32::MIN_POSITIVE / 3.0,
            -f32::MAX,
            2.5,
            -3.5,
            1e-30,
        ];
        let mut state = 0x9e37_79b9u32;
        for case in 0..64 {
            let x: [f32; BLOCK_LEN] = core::array::from_fn(|i| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if (state >> 28) < 3 || case == 0 {
                    specials[(state as usize >> 8) % specials.len()]
                } else {
                    (state >> 8) as f32 / 16_777_216.0 * 254.0 - 127.0 + (i % 2) as f32 * 0.5
                }
            });
            let mut got = [0u8; BLOCK_BYTES];
            quantize_block(&x, &mut got);
            assert_eq!(got, described(&x), "case {case}");
        }
    }
}

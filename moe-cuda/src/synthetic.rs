//! Deterministic random weights in GGUF block formats, for the device tests and the
//! bench (which must run on the GPU machine without a model file).
//!
//! Scales are set to small finite values so outputs stay in a comfortable range; the
//! quants are uniformly random.

use moe_core::TensorType;
use moe_core::quant::float::f32_to_f16;

use crate::error::{GpuError, Result};

/// xorshift64*: a tiny deterministic generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(moe_core::router::splitmix64(seed) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[-1, 1)`.
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Fills `bytes` with random bytes.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// `n` values uniform in `[-scale, scale)`.
pub fn random_f32(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.uniform() * scale).collect()
}

fn put_f16(block: &mut [u8], at: usize, v: f32) {
    block[at..at + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

/// `rows × cols` random weights of type `ty` (`cols` a whole number of blocks), as the
/// bytes of a GGUF tensor `[cols, rows]`. Element magnitudes are about `0.05`.
pub fn random_matrix(ty: TensorType, rows: usize, cols: usize, seed: u64) -> Result<Vec<u8>> {
    if !cols.is_multiple_of(ty.block_len()) {
        return Err(GpuError::LengthMismatch {
            expected: cols / ty.block_len() * ty.block_len(),
            actual: cols,
        });
    }
    let n_blocks = rows * cols / ty.block_len();
    let bb = ty.block_bytes();
    let mut bytes = vec![0u8; n_blocks * bb];
    let mut rng = Rng::new(seed);
    match ty {
        TensorType::F32 | TensorType::F16 | TensorType::BF16 => {
            let values: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() * 0.05).collect();
            match ty {
                TensorType::F32 => {
                    for (d, v) in bytes.chunks_exact_mut(4).zip(&values) {
                        d.copy_from_slice(&v.to_le_bytes());
                    }
                }
                TensorType::F16 => {
                    for (d, v) in bytes.chunks_exact_mut(2).zip(&values) {
                        d.copy_from_slice(&f32_to_f16(*v).to_le_bytes());
                    }
                }
                _ => {
                    for (d, v) in bytes.chunks_exact_mut(2).zip(&values) {
                        d.copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
                    }
                }
            }
        }
        TensorType::Q4_0 => {
            for block in bytes.chunks_exact_mut(bb) {
                rng.fill(block);
                put_f16(block, 0, 0.008 + 0.004 * rng.uniform());
            }
        }
        TensorType::Q8_0 => {
            for block in bytes.chunks_exact_mut(bb) {
                rng.fill(block);
                put_f16(block, 0, 0.0004 + 0.0002 * rng.uniform());
            }
        }
        TensorType::Q4_K => {
            for block in bytes.chunks_exact_mut(bb) {
                rng.fill(block);
                put_f16(block, 0, 0.0003 + 0.0001 * rng.uniform());
                put_f16(block, 2, 0.0003 + 0.0001 * rng.uniform());
            }
        }
        TensorType::Q5_K => {
            for block in bytes.chunks_exact_mut(bb) {
                rng.fill(block);
                // Quants up to 31: half of Q4_K's scales for the same magnitudes.
                put_f16(block, 0, 0.00015 + 0.00005 * rng.uniform());
                put_f16(block, 2, 0.0003 + 0.0001 * rng.uniform());
            }
        }
        TensorType::Q6_K => {
            for block in bytes.chunks_exact_mut(bb) {
                rng.fill(block);
                // Signed scales in -32..=31.
                for s in &mut block[192..208] {
                    *s = ((*s as i8) >> 2) as u8;
                }
                put_f16(block, 208, 0.00008 + 0.00003 * rng.uniform());
            }
        }
        other => {
            // Any type with a quantizer: quantize random values.
            let values: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() * 0.05).collect();
            moe_core::quant::quantize_row(other, &values, &mut bytes)?;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrices_decode_to_small_finite_values() {
        for ty in [
            TensorType::Q4_0,
            TensorType::Q5_0,
            TensorType::Q8_0,
            TensorType::Q4_K,
            TensorType::Q5_K,
            TensorType::Q6_K,
            TensorType::F32,
            TensorType::F16,
            TensorType::BF16,
        ] {
            let bytes = random_matrix(ty, 4, 512, 7).unwrap();
            let mut out = vec![0f32; 4 * 512];
            moe_core::quant::dequantize_row(ty, &bytes, &mut out).unwrap();
            let max = out.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(out.iter().all(|v| v.is_finite()), "{ty}");
            assert!(max > 0.01 && max < 1.0, "{ty}: {max}");
        }
    }

    #[test]
    fn deterministic() {
        assert_eq!(
            random_matrix(TensorType::Q4_0, 2, 64, 3).unwrap(),
            random_matrix(TensorType::Q4_0, 2, 64, 3).unwrap()
        );
        assert_ne!(random_f32(8, 1.0, 1), random_f32(8, 1.0, 2));
    }
}

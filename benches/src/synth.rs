//! Random-weight models written in full (not sparse): every tensor of a [`SparseGguf`]
//! layout filled with deterministic pseudo-random values that a model can run on.
//!
//! The values are garbage, but finite garbage scaled so activations stay O(1):
//!
//! * F32 tensors named `*_norm.weight` are all 1.0; other F32 tensors (the routers,
//!   `ffn_gate_inp`) are uniform in ±[`ROUTER_RANGE`], so different tokens pick different
//!   experts.
//! * Q8_0 and Q4_0 blocks hold uniform quants (Q8_0 a random byte, -128 raised to -127;
//!   Q4_0 every nibble)
//!   and one scale per tensor, with a random sign per block (so the Q4_0 offset `-8..=7`
//!   averages to zero), chosen so that the weights' standard deviation is
//!   `1/sqrt(row length)`: a row's dot product with an O(1) input is O(1).
//!
//! Each tensor draws from its own SplitMix64 stream, seeded from the file's seed and the
//! tensor's index, so a file depends only on its layout and seed.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use moe_core::TensorType;
use moe_core::quant::float::f32_to_f16;

use crate::random::Rng;
use crate::{ALIGNMENT, SparseGguf, TensorSpec};

/// Half-width of the uniform distribution of router (`ffn_gate_inp`) weights.
pub const ROUTER_RANGE: f32 = 0.05;

/// Root mean square of a Q8_0 quant drawn as a random byte with -128 raised to -127:
/// `sqrt((Σ_{q=-127}^{127} q² + 127²) / 256)`.
const Q8_0_RMS: f32 = 73.895;
/// Root mean square of a Q4_0 value `nibble - 8`, nibble uniform in `0..16`:
/// `sqrt(Σ_{v=-8}^{7} v² / 16) = sqrt(21.5)`.
const Q4_0_RMS: f32 = 4.637;

/// Bytes generated per write.
const CHUNK: usize = 1 << 20;

/// Writes `spec` with random tensor data to `out`; returns the bytes written (the
/// layout's [`SparseGguf::file_len`]). Only F32, Q8_0 and Q4_0 tensors can be filled.
pub fn write_random(spec: &SparseGguf, seed: u64, out: &mut impl Write) -> io::Result<u64> {
    if let Some(t) = spec
        .tensors
        .iter()
        .find(|t| !matches!(t.ty, TensorType::F32 | TensorType::Q8_0 | TensorType::Q4_0))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: cannot fill {} tensors (F32, Q8_0 and Q4_0 only)",
                t.name,
                t.ty.name()
            ),
        ));
    }
    let header = spec.header_bytes();
    out.write_all(&header)?;
    let mut written = header.len() as u64;
    let mut buf = Vec::with_capacity(CHUNK);
    for (index, t) in spec.tensors.iter().enumerate() {
        let mut rng = tensor_rng(seed, index);
        let n_bytes = t.n_bytes();
        let mut left = n_bytes;
        let fill = Fill::of(t);
        // Whole blocks (or f32 values) per chunk.
        let unit = t.ty.block_bytes() as u64;
        let per_chunk = (CHUNK as u64 / unit).max(1) * unit;
        while left > 0 {
            let len = left.min(per_chunk);
            buf.clear();
            buf.resize(len as usize, 0);
            fill.fill(&mut rng, &mut buf);
            out.write_all(&buf)?;
            left -= len;
        }
        let padded = n_bytes.next_multiple_of(ALIGNMENT);
        out.write_all(&[0; ALIGNMENT as usize][..(padded - n_bytes) as usize])?;
        written += padded;
    }
    debug_assert_eq!(written, spec.file_len());
    Ok(written)
}

/// [`write_random`] to a new file at `path` (replacing any file there), through a large
/// buffer; returns the file's size.
pub fn write_random_file(spec: &SparseGguf, seed: u64, path: &Path) -> io::Result<u64> {
    let file = fs::File::create(path)?;
    let mut out = BufWriter::with_capacity(8 << 20, file);
    let written = write_random(spec, seed, &mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(written)
}

/// The stream of tensor `index` in a file seeded with `seed`.
fn tensor_rng(seed: u64, index: usize) -> Rng {
    let mut mix = Rng(seed ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    Rng(mix.next_u64())
}

/// How one tensor's bytes are drawn.
enum Fill {
    /// F32 values, all equal.
    Constant(f32),
    /// F32 values uniform in `±range`.
    Uniform(f32),
    /// Q8_0 blocks with the scale's f16 bits.
    Q8_0(u16),
    /// Q4_0 blocks with the scale's f16 bits.
    Q4_0(u16),
}

impl Fill {
    fn of(t: &TensorSpec) -> Fill {
        // Weights of standard deviation 1/sqrt(row length).
        let std = 1.0 / (t.dims.first().copied().unwrap_or(1).max(1) as f32).sqrt();
        match t.ty {
            TensorType::Q8_0 => Fill::Q8_0(f32_to_f16(std / Q8_0_RMS)),
            TensorType::Q4_0 => Fill::Q4_0(f32_to_f16(std / Q4_0_RMS)),
            _ if t.name.ends_with("_norm.weight") => Fill::Constant(1.0),
            _ => Fill::Uniform(ROUTER_RANGE),
        }
    }

    /// Fills `buf` (whole blocks, or whole f32 values).
    fn fill(&self, rng: &mut Rng, buf: &mut [u8]) {
        match *self {
            Fill::Constant(v) => {
                for x in buf.chunks_exact_mut(4) {
                    x.copy_from_slice(&v.to_le_bytes());
                }
            }
            Fill::Uniform(range) => {
                for x in buf.chunks_exact_mut(4) {
                    x.copy_from_slice(&rng.uniform(-range, range).to_le_bytes());
                }
            }
            Fill::Q8_0(d) => {
                let ty = TensorType::Q8_0;
                for block in buf.chunks_exact_mut(ty.block_bytes()) {
                    let (scale, quants) = block.split_at_mut(2);
                    scale.copy_from_slice(&signed(d, rng.next_u64()).to_le_bytes());
                    for eight in quants.chunks_mut(8) {
                        let bits = rng.next_u64().to_le_bytes();
                        for (q, b) in eight.iter_mut().zip(bits) {
                            // -128 is a valid i8, but ggml's quantizers never write it
                            // and sign-trick SIMD kernels cannot negate it.
                            *q = (b as i8).max(-127) as u8;
                        }
                    }
                }
            }
            Fill::Q4_0(d) => {
                let ty = TensorType::Q4_0;
                for block in buf.chunks_exact_mut(ty.block_bytes()) {
                    let (scale, quants) = block.split_at_mut(2);
                    scale.copy_from_slice(&signed(d, rng.next_u64()).to_le_bytes());
                    for eight in quants.chunks_mut(8) {
                        let bits = rng.next_u64().to_le_bytes();
                        eight.copy_from_slice(&bits[..eight.len()]);
                    }
                }
            }
        }
    }
}

/// The f16 `d` with its sign bit from `bits`' lowest bit.
fn signed(d: u16, bits: u64) -> u16 {
    d | (((bits & 1) as u16) << 15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_core::quant::dequantize_row;

    /// Mean and standard deviation of a tensor's dequantized values.
    fn moments(ty: TensorType, row: usize) -> (f64, f64) {
        let spec = TensorSpec {
            name: "w".into(),
            ty,
            dims: vec![row as u64, 64],
        };
        let mut buf = vec![0u8; spec.n_bytes() as usize];
        Fill::of(&spec).fill(&mut tensor_rng(1, 0), &mut buf);
        let mut values = vec![0f32; row * 64];
        dequantize_row(ty, &buf, &mut values).unwrap();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(values.iter().all(|v| v.is_finite()));
        (mean, var.sqrt())
    }

    #[test]
    fn quantized_weights_have_the_target_spread() {
        for ty in [TensorType::Q8_0, TensorType::Q4_0] {
            for row in [256, 2048] {
                let (mean, std) = moments(ty, row);
                let want = 1.0 / (row as f64).sqrt();
                assert!((std / want - 1.0).abs() < 0.05, "{ty:?} {row}: std {std}");
                assert!(mean.abs() < 0.05 * want, "{ty:?} {row}: mean {mean}");
            }
        }
    }

    #[test]
    fn other_types_are_refused() {
        let spec = SparseGguf {
            architecture: "llama".into(),
            tensors: vec![TensorSpec {
                name: "w".into(),
                ty: TensorType::Q4_K,
                dims: vec![256],
            }],
            ..SparseGguf::default()
        };
        let err = write_random(&spec, 0, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("Q4_K"), "{err}");
    }
}

//! Deterministic random inputs shared by the benchmarks.

use moe_core::TensorType;
use moe_core::quant::quantize_row;

/// SplitMix64: a tiny, well-mixed generator for reproducible weights.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in `[lo, hi)` (24 random bits).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
}

/// `n` pseudo-random bytes (a 64-bit LCG's top byte).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

/// A `rows × cols` matrix of random quants of type `ty`, every f16 block scale set to
/// 1/64 so the values stay finite (both of `d` and `m`/`dmin` where a type has a minimum;
/// wherever in the block the type keeps them).
pub fn matvec_weights(ty: TensorType, rows: usize, cols: usize) -> Vec<u8> {
    let block_bytes = ty.block_bytes();
    let mut w = random_bytes(rows * cols / ty.block_len() * block_bytes, 7);
    let scale = 0x2400u16.to_le_bytes();
    let offsets: &[usize] = match ty {
        TensorType::Q4_1 | TensorType::Q5_1 | TensorType::Q4_K | TensorType::Q5_K => &[0, 2],
        TensorType::Q2_K => &[80, 82],
        TensorType::Q3_K => &[108],
        TensorType::Q6_K => &[208],
        _ => &[0],
    };
    for block in w.chunks_exact_mut(block_bytes) {
        for &o in offsets {
            block[o..o + 2].copy_from_slice(&scale);
        }
    }
    w
}

/// A random activation row of `cols` values, quantized to `ty`'s activation format.
pub fn matvec_activations(ty: TensorType, cols: usize) -> Vec<u8> {
    let act = ty
        .activation_type()
        .expect("a weight type with an activation format");
    let x: Vec<f32> = random_bytes(cols, 3)
        .into_iter()
        .map(|b| (f32::from(b) - 127.5) / 64.0)
        .collect();
    let mut a = vec![0u8; cols / act.block_len() * act.block_bytes()];
    quantize_row(act, &x, &mut a).expect("whole blocks");
    a
}

//! The counter-based normal generator of noisy top-k gating: draw `(token, expert)` of a
//! seed is a pure function, so a routing replays exactly whatever order the work runs in.

use super::splitmix64;

/// A standard normal draw for `(seed, token, expert)`: two 24-bit uniforms from
/// SplitMix64 of the key, then Box-Muller (`sqrt(-2 ln u1) · cos(2π u2)`, `u1` in (0, 1]).
pub fn standard_normal(seed: u64, token: u64, expert: u64) -> f32 {
    let key = splitmix64(seed ^ splitmix64(token.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ expert));
    let u1 = ((key >> 40) + 1) as f32 / (1u64 << 24) as f32;
    let u2 = ((key >> 16) & 0xFF_FFFF) as f32 / (1u64 << 24) as f32;
    libm::sqrtf(-2.0 * libm::logf(u1)) * libm::cosf(core::f32::consts::TAU * u2)
}

/// The noisy logit `clean + draw · (softplus(raw_std) + epsilon)`.
#[inline]
pub fn noisy_logit(clean: f32, raw_std: f32, epsilon: f32, draw: f32) -> f32 {
    clean + draw * (super::score::softplus(raw_std) + epsilon)
}

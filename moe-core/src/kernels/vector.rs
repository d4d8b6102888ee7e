//! The f32 helpers of a layer's forward pass, scalar specification: RMSNorm, softmax,
//! SiLU, GELU (tanh and erf forms), SwiGLU and `y += a·x` (axpy).
//!
//! Each is also a [`Kernels`](super::Kernels) method ([`Kernels::rms_norm`](super::Kernels::rms_norm)
//! and its neighbours) that runs the table's level's version, so a layer picks their
//! level once, with the dot products. The
//! functions here are the specification every SIMD version is tested against; the
//! element functions ([`sigmoid`], [`silu_of`], [`gelu_of`], [`gelu_erf_of`]) are also
//! the FFN's [`Activation`](crate::moe::ffn::Activation)s, so a table's activations give
//! the engine's own numbers.
//!
//! What a SIMD level may differ in (each level's module states its measured bounds):
//!
//! - [`axpy`]: nothing; a separate multiply and add (no fused multiply-add) per element
//!   are the same two roundings at every level, so every level returns these bits.
//! - [`rms_norm`]: the order of the f64 sum of squares (exact squares, so at most a
//!   rounding of the mean to f32 changes; results within 2^-22 relative).
//! - [`softmax`], [`silu`], [`swiglu`]: `expf` replaced by a polynomial (a few ulp).
//! - [`gelu`], [`gelu_erf`]: `tanhf` / `erff` replaced by approximations accurate to
//!   about 2^-22 absolute; where `1 + tanh` or `1 + erf` cancels (negative inputs) the
//!   specification itself is only that accurate, so the bound there is absolute,
//!   proportional to `|z|`.
//!
//! Special values and empty slices behave as here at every level: the SIMD versions
//! compute the same formulas, and hand the non-finite softmax cases to
//! [`softmax_non_finite`].

use crate::{Error, Result};

/// The signature of [`rms_norm`] and its table entries.
pub type RmsNormKernel = fn(&[f32], &[f32], f32, &mut [f32]) -> Result<()>;

/// The signature of the in-place helpers ([`softmax`], [`silu`], [`gelu`], [`gelu_erf`]).
pub type InPlaceKernel = fn(&mut [f32]);

/// The signature of [`swiglu`] and its table entries.
pub type SwigluKernel = fn(&[f32], &[f32], &mut [f32]) -> Result<()>;

/// The signature of [`axpy`] and its table entries.
pub type AxpyKernel = fn(f32, &[f32], &mut [f32]) -> Result<()>;

/// The f32 helpers of one level (the signatures of the functions below), as
/// [`Kernels`](super::Kernels)' methods find them.
#[derive(Clone, Copy)]
pub(crate) struct VectorKernels {
    pub(crate) rms_norm: RmsNormKernel,
    pub(crate) softmax: InPlaceKernel,
    pub(crate) silu: InPlaceKernel,
    pub(crate) gelu: InPlaceKernel,
    pub(crate) gelu_erf: InPlaceKernel,
    pub(crate) swiglu: SwigluKernel,
    pub(crate) axpy: AxpyKernel,
}

/// The specification's helpers: the scalar table's, and every level's without SIMD
/// versions of its own (AArch64's for now).
pub(crate) const SCALAR: VectorKernels = VectorKernels {
    rms_norm,
    softmax,
    silu,
    gelu,
    gelu_erf,
    swiglu,
    axpy,
};

/// `Ok` when `actual == expected`, else the crate's length error.
pub(crate) fn same_len(expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::LengthMismatch { expected, actual })
    }
}

/// RMSNorm with a weight, in llama.cpp's order:
/// `scale = 1 / sqrtf(mean + eps)` with `mean = Σ x_i² / n`, then
/// `out_i = (x_i · scale) · weight_i`.
///
/// The sum of squares is taken in f64 from exact squares (`f64(x)²`, no rounding), so it
/// neither overflows for large `|x|` nor loses small terms next to large ones, and SIMD
/// levels differ from it only in summation order (llama.cpp rounds each square to f32
/// first: at most 2^-24 relative apart in the mean). The mean is rounded to f32, and the
/// rest is f32 like llama.cpp. An empty `x` writes nothing. An infinite `x_i` makes the
/// scale 0 and that output NaN; a NaN anywhere makes every output NaN.
///
/// `weight` and `out` must be as long as `x` (`Error::LengthMismatch` otherwise).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    check_rms_norm(x, weight, out)?;
    let sum: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    scale_rows(x, weight, rms_scale(sum, x.len(), eps), out);
    Ok(())
}

/// The length checks of [`rms_norm`].
pub(crate) fn check_rms_norm(x: &[f32], weight: &[f32], out: &[f32]) -> Result<()> {
    same_len(x.len(), weight.len())?;
    same_len(x.len(), out.len())
}

/// `1 / sqrtf(mean + eps)` from the f64 sum of `n > 0` squares, in llama.cpp's order.
pub(crate) fn rms_scale(sum: f64, n: usize, eps: f32) -> f32 {
    let mean = (sum / n as f64) as f32;
    1.0 / libm::sqrtf(mean + eps)
}

/// `out_i = (x_i · scale) · weight_i`, the last step of [`rms_norm`].
pub(crate) fn scale_rows(x: &[f32], weight: &[f32], scale: f32, out: &mut [f32]) {
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

/// Softmax in place: `x_i ← e_i / Σ e` with `e_i = expf(x_i − max)`, as ggml computes it
/// (the sum in f64, then every `e_i` times `(1 / sum)` rounded to f32).
///
/// Subtracting the maximum keeps every `e_i` in `[0, 1]` with the maximum's exactly 1, so
/// nothing overflows and the sum is at least 1. With a finite maximum a NaN entry makes
/// the sum, and so every output, NaN. Rows without a finite maximum have the limits
/// [`softmax_non_finite`] describes: in particular a row of only `-inf` (a fully masked
/// attention row) gives all zeros, not NaN, so it contributes nothing downstream instead
/// of poisoning it — the same choice as the router's softmax. An empty row stays empty.
pub fn softmax(x: &mut [f32]) {
    let max = max_ignoring_nan(x);
    if !max.is_finite() {
        softmax_non_finite(x, max);
        return;
    }
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += f64::from(*v);
    }
    scale_by_inverse(x, sum);
}

/// The largest non-NaN entry (`-inf` when there is none): the maximum a softmax shifts
/// by. Exact, so any lane order gives the same value.
pub(crate) fn max_ignoring_nan(x: &[f32]) -> f32 {
    x.iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// The last step of [`softmax`]: every entry times `(1 / sum)` rounded to f32.
pub(crate) fn scale_by_inverse(x: &mut [f32], sum: f64) {
    let inverse = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inverse;
    }
}

/// [`softmax`] of a row whose largest non-NaN entry, `max`, is not finite (`-inf` for a
/// row of only NaN or an empty row), as the limits of the formula: any NaN entry makes every output NaN; else a `+inf` maximum shares the
/// mass equally among the `+inf` entries (0 elsewhere); else (every entry `-inf`, or an
/// empty row) every output is 0 — no mass at all rather than NaN.
///
/// Every level calls this same function for such rows, so they agree bit for bit.
pub fn softmax_non_finite(x: &mut [f32], max: f32) {
    if x.iter().any(|v| v.is_nan()) {
        x.fill(f32::NAN);
    } else if max == f32::INFINITY {
        let count = x.iter().filter(|&&v| v == f32::INFINITY).count();
        let share = 1.0 / count as f32;
        for v in x.iter_mut() {
            *v = if *v == f32::INFINITY { share } else { 0.0 };
        }
    } else {
        x.fill(0.0);
    }
}

/// The logistic function `1 / (1 + e^-z)`, in the form that neither overflows nor
/// cancels: `1 / (1 + e^-z)` for `z ≥ 0`, `e^z / (1 + e^z)` below (`expf` from libm).
#[inline]
pub fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + libm::expf(-z))
    } else {
        let e = libm::expf(z);
        e / (1.0 + e)
    }
}

/// SiLU (swish) of one value: `z · sigmoid(z)`. `-inf` gives NaN (`-inf · 0`), as the
/// formula does.
#[inline]
pub fn silu_of(z: f32) -> f32 {
    z * sigmoid(z)
}

/// `√(2/π)`, the tanh-GELU's inner scale.
pub(crate) const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// The cubic coefficient of the tanh-GELU.
pub(crate) const GELU_CUBIC: f32 = 0.044_715;

/// GELU of one value, tanh approximation (ggml's `gelu`, HF `gelu_new` /
/// `gelu_pytorch_tanh`): `0.5 · z · (1 + tanh(√(2/π) · (z + 0.044715 · z³)))`, evaluated
/// exactly in that order (`z³` as `((0.044715 · z) · z) · z`).
#[inline]
pub fn gelu_of(z: f32) -> f32 {
    0.5 * z * (1.0 + libm::tanhf(SQRT_2_OVER_PI * (z + GELU_CUBIC * z * z * z)))
}

/// GELU of one value, exact form (HF `gelu`, torch `nn.GELU()`):
/// `0.5 · z · (1 + erf(z / √2))` with libm's `erff`.
#[inline]
pub fn gelu_erf_of(z: f32) -> f32 {
    0.5 * z * (1.0 + libm::erff(z * core::f32::consts::FRAC_1_SQRT_2))
}

/// [`silu_of`] of every element, in place.
pub fn silu(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = silu_of(*v));
}

/// [`gelu_of`] (tanh approximation) of every element, in place.
pub fn gelu(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = gelu_of(*v));
}

/// [`gelu_erf_of`] (exact GELU) of every element, in place.
pub fn gelu_erf(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = gelu_erf_of(*v));
}

/// SwiGLU's gated product: `out_i = silu(gate_i) · up_i`.
///
/// `up` and `out` must be as long as `gate` (`Error::LengthMismatch` otherwise).
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
    check_swiglu(gate, up, out)?;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu_of(g) * u;
    }
    Ok(())
}

/// The length checks of [`swiglu`].
pub(crate) fn check_swiglu(gate: &[f32], up: &[f32], out: &[f32]) -> Result<()> {
    same_len(gate.len(), up.len())?;
    same_len(gate.len(), out.len())
}

/// Scaled accumulate: `y_i ← y_i + a · x_i`, the product rounded before the sum (no fused
/// multiply-add), so every level returns exactly these bits whatever its vector width.
/// This is how a layer adds a weighted expert output into the residual.
///
/// `y` must be as long as `x` (`Error::LengthMismatch` otherwise).
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) -> Result<()> {
    same_len(x.len(), y.len())?;
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
    Ok(())
}

/// The f32 helpers through the table: the level's versions of the functions above, each
/// with its specification's contract (and, at SIMD levels, the accuracy bounds in the
/// module docs).
impl super::Kernels {
    /// The level's entries. A match, not a stored table: inlined into each method it
    /// leaves a choice between that one helper's versions, so a program links only the
    /// helpers it calls. Holding `self` proves the CPU has `self.level()`'s features.
    #[inline(always)]
    const fn vector(&self) -> VectorKernels {
        #[cfg(target_arch = "x86_64")]
        if matches!(self.level(), super::Level::Avx2 | super::Level::Avx512) {
            return super::x86::vector::AVX2;
        }
        SCALAR
    }

    /// [`rms_norm`]: `out_i = (x_i · 1/sqrt(mean(x²) + eps)) · weight_i`.
    pub fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
        (self.vector().rms_norm)(x, weight, eps, out)
    }

    /// [`softmax`] in place (all `-inf` gives zeros).
    pub fn softmax(&self, x: &mut [f32]) {
        (self.vector().softmax)(x)
    }

    /// [`silu`] in place.
    pub fn silu(&self, x: &mut [f32]) {
        (self.vector().silu)(x)
    }

    /// [`gelu`] (tanh approximation) in place.
    pub fn gelu(&self, x: &mut [f32]) {
        (self.vector().gelu)(x)
    }

    /// [`gelu_erf`] (exact GELU) in place.
    pub fn gelu_erf(&self, x: &mut [f32]) {
        (self.vector().gelu_erf)(x)
    }

    /// [`swiglu`]: `out_i = silu(gate_i) · up_i`.
    pub fn swiglu(&self, gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
        (self.vector().swiglu)(gate, up, out)
    }

    /// [`axpy`]: `y_i ← y_i + a · x_i`, the specification's bits at every level.
    pub fn axpy(&self, a: f32, x: &[f32], y: &mut [f32]) -> Result<()> {
        (self.vector().axpy)(a, x, y)
    }
}

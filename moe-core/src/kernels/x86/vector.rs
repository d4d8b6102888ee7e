//! AVX2 + FMA versions of the f32 helpers ([`vector`](crate::kernels::vector) is the
//! specification), used at [`Level::Avx2`](crate::kernels::Level::Avx2) and
//! [`Level::Avx512`](crate::kernels::Level::Avx512) (these loops are bound by the
//! polynomial's arithmetic and the divide, not by width; AVX-512 versions are left until a
//! measurement asks for them).
//!
//! Eight lanes per step; a tail shorter than eight is copied into a padded stack buffer
//! and goes through the same lane code, so every element gets the same formula.
//!
//! Accuracy against the specification (the bounds `tests/kernels_f32.rs` holds every
//! level to over `-100..100`, huge, tiny, subnormal and special inputs; its dense sweep of
//! `-100..100` measured at most 2.3e-7 relative for SiLU, 1.5e-7 for softmax, 2.3e-7 and
//! 4.0e-7 for the tanh and erf GELUs at `z ≥ -0.7`, and `1.2 · 2^-24 · |z|` and
//! `1.3 · 2^-24 · |z|` absolute below):
//!
//! - `axpy`: the same bits (a multiply, then an add, per element: never a fused
//!   multiply-add).
//! - `rms_norm`: the same exact f64 squares summed in another order, so the same bits
//!   unless that order moves the rounding of the mean to f32; within 2^-22 relative.
//! - `softmax`, `silu`, `swiglu`: `expf` is [`exp8`] (Cephes' degree-6 polynomial after
//!   Cody–Waite range reduction, within about 2 ulp, with correctly scaled subnormal
//!   results); within 1e-6 relative, plus `2^-140 · (|z| + 1)` absolute where `e^z` is
//!   subnormal.
//! - `gelu`: `tanhf` is `1 − 2 / (e^{2|u|} + 1)` with the sign of `u`; `gelu_erf`: `erff`
//!   is `1 − erfc`, with `erfc(a) = t · e^{−a² + P(t)}`, `t = 1 / (1 + a/2)` (the Chebyshev
//!   fit of Numerical Recipes, `erfc` within 1.2e-7 relative). Both are within about
//!   2^-22 absolute of `tanhf` / `erff`, so results are within 1e-6 relative where `1 + tanh`/`1 + erf` is at least
//!   about 1/4 (`z ≥ −0.7`); below, the specification's own `1 + tanhf`/`1 + erff` cancels
//!   to an absolute accuracy of `|z| · 2^-25`, and the bound is `|z| · 2^-22` absolute.
//!
//! Special values follow the formulas exactly as the specification evaluates them: NaN
//! stays NaN, `±inf` give the specification's limits (`silu(-inf)` and `gelu(-inf)` are
//! NaN there too), softmax rows without a finite maximum go to the specification's own
//! [`softmax_non_finite`](spec::softmax_non_finite), and empty slices do nothing.

use core::arch::x86_64::*;

use crate::Result;
use crate::kernels::vector::{self as spec, VectorKernels};

/// The AVX2 helpers.
///
/// Private to `kernels`: only [`Kernels`](crate::kernels::Kernels) methods of a table at
/// `Level::Avx2` or above, whose construction proved AVX2 and FMA, call these functions.
pub(in crate::kernels) const AVX2: VectorKernels = VectorKernels {
    rms_norm,
    softmax,
    silu,
    gelu,
    gelu_erf,
    swiglu,
    axpy,
};

// SAFETY (every entry below): the entries are reachable only through the methods of a
// `Kernels` table at `Level::Avx2` or above, and every constructor of such a table
// requires (detected, compiled-in or `unsafe`-promised) AVX2 and FMA.

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    // SAFETY: see above.
    unsafe { rms_norm_unchecked(x, weight, eps, out) }
}

fn softmax(x: &mut [f32]) {
    // SAFETY: see above.
    unsafe { softmax_unchecked(x) }
}

fn silu(x: &mut [f32]) {
    // SAFETY: see above.
    unsafe { silu_unchecked(x) }
}

fn gelu(x: &mut [f32]) {
    // SAFETY: see above.
    unsafe { gelu_unchecked(x) }
}

fn gelu_erf(x: &mut [f32]) {
    // SAFETY: see above.
    unsafe { gelu_erf_unchecked(x) }
}

fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
    // SAFETY: see above.
    unsafe { swiglu_unchecked(gate, up, out) }
}

fn axpy(a: f32, x: &[f32], y: &mut [f32]) -> Result<()> {
    // SAFETY: see above.
    unsafe { axpy_unchecked(a, x, y) }
}

/// Loads eight floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn load8(v: &[f32; 8]) -> __m256 {
    // SAFETY: the reference covers 32 readable bytes; unaligned loads are allowed.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

/// Stores eight floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn store8(v: &mut [f32; 8], x: __m256) {
    // SAFETY: the reference covers 32 writable bytes; unaligned stores are allowed.
    unsafe { _mm256_storeu_ps(v.as_mut_ptr(), x) }
}

/// Up to eight floats in a buffer padded with `pad`.
#[inline]
fn padded(tail: &[f32], pad: f32) -> [f32; 8] {
    let mut buf = [pad; 8];
    for (b, &t) in buf.iter_mut().zip(tail) {
        *b = t;
    }
    buf
}

/// `x ← f(x)`, eight lanes at a time (the tail padded with zeros).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn map8(x: &mut [f32], f: impl Fn(__m256) -> __m256) {
    let (chunks, tail) = x.as_chunks_mut::<8>();
    for c in chunks {
        store8(c, f(load8(c)));
    }
    if !tail.is_empty() {
        let mut buf = padded(tail, 0.0);
        let v = f(load8(&buf));
        store8(&mut buf, v);
        tail.copy_from_slice(&buf[..tail.len()]);
    }
}

/// [`spec::silu`] by [`silu8`].
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_unchecked(x: &mut [f32]) {
    map8(x, |v| silu8(v));
}

/// [`spec::gelu`] by [`gelu8`].
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_unchecked(x: &mut [f32]) {
    map8(x, |v| gelu8(v));
}

/// [`spec::gelu_erf`] by [`gelu_erf8`].
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_erf_unchecked(x: &mut [f32]) {
    map8(x, |v| gelu_erf8(v));
}

/// The sign bit of every lane.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn sign_bits() -> __m256 {
    _mm256_set1_ps(-0.0)
}

/// `e^x` in every lane: `x = n ln2 + r` with `n` the nearest integer to `x / ln2` (ln2 in
/// Cephes' two parts, so `r` is nearly exact) and `|r| ≤ ln2/2`; `e^r` by Cephes' expf
/// polynomial; `2^n` applied as two factors `2^⌊n/2⌋ · 2^{n−⌊n/2⌋}`, both normal, so
/// results below 2^-126 are correctly rounded subnormals (one rounding) and results above
/// `f32::MAX` overflow to `inf`, as `expf`'s do. Within about 2 ulp of `expf` for normal
/// results. `x` is clamped to `[-104, 89]` first (beyond, `expf` is 0 or `inf` and so is
/// this); NaN stays NaN (the clamps return their second operand for a NaN).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_set1_ps(89.0),
        _mm256_max_ps(_mm256_set1_ps(-104.0), x),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(core::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    let y = _mm256_add_ps(y, _mm256_set1_ps(1.0));
    // n is in [-150, 129] (or the integer indefinite for NaN, whose product stays NaN).
    let n = _mm256_cvtps_epi32(n);
    let half = _mm256_srai_epi32::<1>(n);
    let pow2 = |k: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            k,
            _mm256_set1_epi32(127),
        )))
    };
    _mm256_mul_ps(
        _mm256_mul_ps(y, pow2(half)),
        pow2(_mm256_sub_epi32(n, half)),
    )
}

/// [`spec::sigmoid`] in every lane: `1 / (1 + e^-z)` for `z ≥ 0`, `e^z / (1 + e^z)`
/// below, with `e = e^{-|z|}` from [`exp8`] (a NaN takes the second form, as in the
/// specification).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn sigmoid8(z: __m256) -> __m256 {
    let e = exp8(_mm256_or_ps(z, sign_bits()));
    let non_negative = _mm256_cmp_ps::<_CMP_GE_OQ>(z, _mm256_setzero_ps());
    let numerator = _mm256_blendv_ps(e, _mm256_set1_ps(1.0), non_negative);
    _mm256_div_ps(numerator, _mm256_add_ps(_mm256_set1_ps(1.0), e))
}

/// [`spec::silu_of`] in every lane.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn silu8(z: __m256) -> __m256 {
    _mm256_mul_ps(z, sigmoid8(z))
}

/// `tanh(u)` in every lane as `sign(u) · (1 − 2 / (e^{2|u|} + 1))`: within about 2^-22
/// absolute (not relative near 0, where it cancels; GELU adds it to 1), exactly ±1 where
/// `tanhf` is, NaN for NaN.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn tanh8(u: __m256) -> __m256 {
    let sign = _mm256_and_ps(u, sign_bits());
    let a = _mm256_andnot_ps(sign_bits(), u);
    let e = exp8(_mm256_add_ps(a, a));
    let one = _mm256_set1_ps(1.0);
    let t = _mm256_sub_ps(
        one,
        _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
    );
    _mm256_or_ps(t, sign)
}

/// `erf(x)` in every lane as `sign(x) · (1 − erfc(|x|))`, with Numerical Recipes'
/// `erfc(a) = t · exp(−a² − 1.26551223 + t · P(t))`, `t = 1 / (1 + a/2)` (relative error
/// below 1.2e-7 for every `a ≥ 0`): within about 2^-22 absolute, ±1 for large `|x|` (`exp`
/// underflows; `t` is 0 at infinity), NaN for NaN.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn erf8(x: __m256) -> __m256 {
    let sign = _mm256_and_ps(x, sign_bits());
    let a = _mm256_andnot_ps(sign_bits(), x);
    let one = _mm256_set1_ps(1.0);
    let t = _mm256_div_ps(one, _mm256_fmadd_ps(a, _mm256_set1_ps(0.5), one));
    let mut p = _mm256_set1_ps(0.170_872_77);
    for c in [
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ] {
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(c));
    }
    let erfc = _mm256_mul_ps(t, exp8(_mm256_fnmadd_ps(a, a, p)));
    _mm256_or_ps(_mm256_sub_ps(one, erfc), sign)
}

/// [`spec::gelu_of`] in every lane: the specification's operations in its order, with
/// [`tanh8`] for `tanhf`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn gelu8(z: __m256) -> __m256 {
    let cube = _mm256_mul_ps(
        _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(spec::GELU_CUBIC), z), z),
        z,
    );
    let u = _mm256_mul_ps(_mm256_set1_ps(spec::SQRT_2_OVER_PI), _mm256_add_ps(z, cube));
    half_z_times_one_plus(z, tanh8(u))
}

/// [`spec::gelu_erf_of`] in every lane: the specification's operations in its order, with
/// [`erf8`] for `erff`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn gelu_erf8(z: __m256) -> __m256 {
    let x = _mm256_mul_ps(z, _mm256_set1_ps(core::f32::consts::FRAC_1_SQRT_2));
    half_z_times_one_plus(z, erf8(x))
}

/// `(0.5 · z) · (1 + t)`, the GELUs' last step.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn half_z_times_one_plus(z: __m256, t: __m256) -> __m256 {
    _mm256_mul_ps(
        _mm256_mul_ps(_mm256_set1_ps(0.5), z),
        _mm256_add_ps(_mm256_set1_ps(1.0), t),
    )
}

/// [`spec::rms_norm`]: exact squares summed in two f64 accumulators of four lanes, then
/// the specification's own scale and scaling.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn rms_norm_unchecked(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    spec::check_rms_norm(x, weight, out)?;
    let (chunks, tail) = x.as_chunks::<8>();
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    for c in chunks {
        let v = load8(c);
        let (l, h) = (
            _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
        );
        // f32 squares are exact in f64, so the fused form rounds only the sum, as the
        // specification's separate multiply and add do.
        lo = _mm256_fmadd_pd(l, l, lo);
        hi = _mm256_fmadd_pd(h, h, hi);
    }
    let mut sum = hsum_f64(_mm256_add_pd(lo, hi));
    for &v in tail {
        sum += f64::from(v) * f64::from(v);
    }
    let scale = spec::rms_scale(sum, x.len(), eps);
    let scale8 = _mm256_set1_ps(scale);
    let (out_chunks, out_tail) = out.as_chunks_mut::<8>();
    let (w_chunks, w_tail) = weight.as_chunks::<8>();
    for ((o, c), w) in out_chunks.iter_mut().zip(chunks).zip(w_chunks) {
        store8(o, _mm256_mul_ps(_mm256_mul_ps(load8(c), scale8), load8(w)));
    }
    spec::scale_rows(tail, w_tail, scale, out_tail);
    Ok(())
}

/// The sum of four f64 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum_f64(v: __m256d) -> f64 {
    let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
    _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
}

/// [`spec::softmax`]: the same maximum (NaN ignored, exact), [`exp8`] for `expf`, the sum
/// in two f64 accumulators, the specification's scaling; rows without a finite maximum
/// go to the specification.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_unchecked(x: &mut [f32]) {
    let (chunks, tail) = x.as_chunks::<8>();
    let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in chunks {
        // `max_ps` returns its second operand when the first is NaN: NaN is skipped.
        acc = _mm256_max_ps(load8(c), acc);
    }
    let mut lanes = [0.0f32; 8];
    store8(&mut lanes, acc);
    let max = spec::max_ignoring_nan(&lanes).max(spec::max_ignoring_nan(tail));
    if !max.is_finite() {
        spec::softmax_non_finite(x, max);
        return;
    }
    let (chunks, tail) = x.as_chunks_mut::<8>();
    let m = _mm256_set1_ps(max);
    let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    let mut exp_in_place = |c: &mut [f32; 8]| {
        let e = exp8(_mm256_sub_ps(load8(c), m));
        store8(c, e);
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
    };
    chunks.iter_mut().for_each(&mut exp_in_place);
    if !tail.is_empty() {
        // -inf padding: e^-inf = 0 adds nothing to the sum.
        let mut buf = padded(tail, f32::NEG_INFINITY);
        exp_in_place(&mut buf);
        tail.copy_from_slice(&buf[..tail.len()]);
    }
    let sum = hsum_f64(_mm256_add_pd(lo, hi));
    spec::scale_by_inverse(x, sum);
}

/// [`spec::swiglu`]: [`silu8`] of the gate times `up`.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_unchecked(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
    spec::check_swiglu(gate, up, out)?;
    let (g_chunks, g_tail) = gate.as_chunks::<8>();
    let (u_chunks, u_tail) = up.as_chunks::<8>();
    let (o_chunks, o_tail) = out.as_chunks_mut::<8>();
    for ((o, g), u) in o_chunks.iter_mut().zip(g_chunks).zip(u_chunks) {
        store8(o, _mm256_mul_ps(silu8(load8(g)), load8(u)));
    }
    if !o_tail.is_empty() {
        let mut buf = padded(g_tail, 0.0);
        let v = _mm256_mul_ps(silu8(load8(&buf)), load8(&padded(u_tail, 0.0)));
        store8(&mut buf, v);
        o_tail.copy_from_slice(&buf[..o_tail.len()]);
    }
    Ok(())
}

/// [`spec::axpy`]: a multiply, then an add, eight lanes at a time (the specification's
/// bits); the tail by the specification itself.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_unchecked(a: f32, x: &[f32], y: &mut [f32]) -> Result<()> {
    spec::same_len(x.len(), y.len())?;
    let (x_chunks, x_tail) = x.as_chunks::<8>();
    let (y_chunks, y_tail) = y.as_chunks_mut::<8>();
    let a8 = _mm256_set1_ps(a);
    for (y, x) in y_chunks.iter_mut().zip(x_chunks) {
        store8(y, _mm256_add_ps(load8(y), _mm256_mul_ps(a8, load8(x))));
    }
    spec::axpy(a, x_tail, y_tail)
}

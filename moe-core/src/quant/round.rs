//! The float-to-integer steps of the reference quantizers.
//!
//! gguf-py's numpy quantizers are our oracle, so these reproduce numpy's float32
//! semantics exactly, including the corners C leaves undefined: NaN wins `max` and
//! `argmax` (numpy's vectorised `max`/`min` return the default NaN, not the input's), and
//! a float-to-integer cast of NaN or of a value outside `i32` gives
//! `i32::MIN` (x86-64's `cvttss2si`) whose low bits are then kept. Those corners are only
//! reached with non-finite input or scales whose reciprocal overflows.

/// numpy's `astype(int32)` of a float32 on x86-64: truncation toward zero, and
/// `i32::MIN` for NaN and out-of-range values.
pub(crate) fn to_i32(x: f32) -> i32 {
    // 2^31 is exactly representable; everything in [-2^31, 2^31) truncates into range.
    if x.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        i32::MIN
    } else {
        x as i32
    }
}

/// numpy's `astype(uint8)`: the low 8 bits of [`to_i32`].
pub(crate) fn to_u8(x: f32) -> u8 {
    to_i32(x) as u8
}

/// numpy's `astype(int8)`: the low 8 bits of [`to_i32`].
pub(crate) fn to_i8(x: f32) -> i8 {
    to_i32(x) as i8
}

/// gguf-py's `np_roundf`: round half away from zero like C `roundf`, computed as
/// `sign(n) * (floor(|n|) + floor(2 * (|n| - floor(|n|))))` (so ±inf gives NaN).
pub(crate) fn round_half_away(n: f32) -> f32 {
    let a = libm::fabsf(n);
    let floored = libm::floorf(a);
    let b = floored + libm::floorf(2.0 * (a - floored));
    sign(n) * b
}

/// numpy's `sign`: -1, 0 (keeping the zero's sign) or 1, and NaN for NaN.
fn sign(n: f32) -> f32 {
    if n > 0.0 {
        1.0
    } else if n < 0.0 {
        -1.0
    } else {
        n
    }
}

/// numpy's `abs(x).argmax()`: the first index of the largest magnitude, where the first
/// NaN wins outright.
pub(crate) fn argmax_abs(x: &[f32]) -> usize {
    let mut best = 0;
    let mut best_abs = f32::NEG_INFINITY;
    for (i, &v) in x.iter().enumerate() {
        let a = libm::fabsf(v);
        if a.is_nan() {
            return i;
        }
        if a > best_abs {
            best = i;
            best_abs = a;
        }
    }
    best
}

/// numpy's `max()` over a block of float32: the default NaN if any element is NaN.
pub(crate) fn max(x: &[f32]) -> f32 {
    fold_nan(x, |v, m| v > m)
}

/// numpy's `min()` over a block of float32: the default NaN if any element is NaN.
pub(crate) fn min(x: &[f32]) -> f32 {
    fold_nan(x, |v, m| v < m)
}

/// numpy's `max(abs(x))` over a block, as in gguf-py's Q8_0 quantizer: the default NaN
/// if any element is NaN.
pub(crate) fn max_abs(x: &[f32]) -> f32 {
    let mut m = 0.0f32;
    for &v in x {
        let a = libm::fabsf(v);
        if a.is_nan() {
            return f32::NAN;
        }
        if a > m {
            m = a;
        }
    }
    m
}

/// Keeps the element `better` prefers over the current pick; NaN ends the search.
fn fold_nan(x: &[f32], better: fn(f32, f32) -> bool) -> f32 {
    let Some(&first) = x.first() else {
        return f32::NAN;
    };
    let mut m = first;
    for &v in x {
        if v.is_nan() {
            return f32::NAN;
        }
        if better(v, m) {
            m = v;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casts_match_numpy_on_x86() {
        // Values checked against numpy 2.4 `astype` on x86-64.
        assert_eq!(to_u8(f32::NAN), 0);
        assert_eq!(to_u8(f32::INFINITY), 0);
        assert_eq!(to_u8(f32::NEG_INFINITY), 0);
        assert_eq!(to_u8(1e10), 0);
        assert_eq!(to_u8(300.0), 44);
        assert_eq!(to_u8(-1.0), 255);
        assert_eq!(to_i8(-98.7), -98);
        assert_eq!(to_i8(158.0), -98);
    }

    #[test]
    fn round_half_away_from_zero() {
        assert_eq!(round_half_away(2.5), 3.0);
        assert_eq!(round_half_away(-2.5), -3.0);
        assert_eq!(round_half_away(2.4999998), 2.0);
        assert_eq!(round_half_away(-0.5), -1.0);
        assert!(round_half_away(f32::INFINITY).is_nan());
    }

    #[test]
    fn argmax_keeps_first_and_nan_wins() {
        assert_eq!(argmax_abs(&[1.0, -3.0, 3.0]), 1);
        assert_eq!(argmax_abs(&[1.0, f32::NAN, 9.0, f32::NAN]), 1);
        assert_eq!(argmax_abs(&[0.0, 0.0]), 0);
        let payload = f32::from_bits(0xffd8_1234);
        assert_eq!(max(&[1.0, payload, 2.0]).to_bits(), 0x7fc0_0000);
        assert_eq!(max_abs(&[1.0, payload]).to_bits(), 0x7fc0_0000);
        assert_eq!(min(&[1.0, -2.0, 2.0]), -2.0);
        assert_eq!(max_abs(&[1.0, -2.0, 0.5]), 2.0);
    }
}

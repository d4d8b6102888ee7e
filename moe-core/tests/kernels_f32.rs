//! The f32 helpers of every kernel table (RMSNorm, softmax, SiLU, GELU tanh / erf,
//! SwiGLU, axpy) against their scalar specification in `kernels::vector`, and the
//! specification against the engine's FFN activations and a plain f64 RMSNorm.
//!
//! The bounds are the ones `kernels::x86::vector` documents: axpy bit for bit; RMSNorm
//! 2^-22 relative; softmax, SiLU and SwiGLU 1e-6 relative (plus |z| · 2^-140 absolute
//! where `e^z` is subnormal); the GELUs 1e-6 relative plus |z| · 2^-22 absolute (the
//! specification's own `1 + tanh` / `1 + erf` cancels for negative inputs). NaN and
//! infinities must come out as the specification's, length mismatches as its errors.

use moe_core::Error;
use moe_core::kernels::{Kernels, Level, vector};
use moe_core::moe::ffn::Activation;
use proptest::prelude::*;

mod kernel_levels;
use kernel_levels::supported_levels;

/// Every table to test: scalar, compiled, each supported level and its caps.
fn tables() -> Vec<(String, Kernels)> {
    let mut out = vec![
        ("scalar".to_string(), Kernels::scalar()),
        (
            format!("compiled ({})", Level::compiled()),
            Kernels::compiled(),
        ),
    ];
    for level in supported_levels() {
        // SAFETY: `supported_levels` checked every feature of `level` on this CPU.
        let k = unsafe { Kernels::with_level_unchecked(level) };
        for cap in Level::ALL.into_iter().filter(|&c| c < level) {
            out.push((format!("{level} at most {cap}"), k.at_most(cap)));
        }
        out.push((level.to_string(), k));
    }
    out
}

/// Relative and absolute error allowed for one output: `|got − spec| ≤ rel · |spec| +
/// abs_per_z · |z| + abs`, where `z` is the element's input.
#[derive(Clone, Copy, Debug)]
struct Bound {
    rel: f64,
    abs_per_z: f64,
    abs: f64,
}

/// softmax, SiLU, SwiGLU: polynomial `exp`, subnormal `e^z` rounded once.
const EXP_BOUND: Bound = Bound {
    rel: 1e-6,
    abs_per_z: 7.2e-43, // 2^-140
    abs: 7.2e-43,
};

/// The GELUs: `tanh` / `erf` within about 2^-22 absolute, added to 1.
const GELU_BOUND: Bound = Bound {
    rel: 1e-6,
    abs_per_z: 2.384_185_8e-7, // 2^-22
    abs: 0.0,
};

/// RMSNorm: the mean's rounding may move.
const RMS_BOUND: Bound = Bound {
    rel: 2.384_185_8e-7, // 2^-22
    abs_per_z: 0.0,
    abs: 2.9e-45, // two subnormal steps, where the output is subnormal
};

/// Checks `got` against `spec` element by element (`z` the inputs the bound scales by);
/// returns the largest relative error seen among finite nonzero outputs.
fn check(name: &str, what: &str, z: &[f32], spec: &[f32], got: &[f32], bound: Bound) -> f64 {
    assert_eq!(spec.len(), got.len(), "{name} {what}: lengths");
    let mut worst = 0.0f64;
    for (i, ((&s, &g), &z)) in spec.iter().zip(got).zip(z).enumerate() {
        if s.is_nan() || g.is_nan() || s.is_infinite() || g.is_infinite() {
            assert!(
                s.to_bits() == g.to_bits() || (s.is_nan() && g.is_nan()),
                "{name} {what}[{i}] (z = {z:e}): spec {s:e} got {g:e}"
            );
            continue;
        }
        let err = (f64::from(s) - f64::from(g)).abs();
        let tol = bound.rel * f64::from(s).abs() + bound.abs_per_z * f64::from(z).abs() + bound.abs;
        assert!(
            err <= tol,
            "{name} {what}[{i}] (z = {z:e}): spec {s:e} got {g:e} (error {err:e}, tolerance {tol:e})"
        );
        if s != 0.0 && s.is_normal() {
            worst = worst.max(err / f64::from(s).abs());
        }
    }
    worst
}

/// Values that exercise the special paths: zeros, infinities, NaN, subnormals, the
/// edges of `expf`'s range, huge values.
const SPECIALS: [f32; 24] = [
    0.0,
    -0.0,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    f32::MIN_POSITIVE,
    -f32::MIN_POSITIVE,
    1e-45,
    -1e-45,
    3e-39,
    -3e-39,
    88.72,
    89.0,
    -87.3,
    -87.4,
    -103.9,
    -104.5,
    -200.0,
    1e30,
    -1e30,
    f32::MAX,
    f32::MIN,
    9.5,
    -9.5,
];

/// One input: mostly `-100..100`, some small, subnormal, huge or special.
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -100.0f32..100.0,
        2 => -4.0f32..4.0,
        1 => -1e-3f32..1e-3,
        1 => (0u32..0x0080_0000).prop_map(|b| f32::from_bits(b | (b & 1) << 31)),
        1 => -1e30f32..1e30,
        1 => proptest::sample::select(&SPECIALS[..]),
    ]
}

/// A finite input (no infinity or NaN): the rows a softmax or RMSNorm sees in practice.
fn finite_value() -> impl Strategy<Value = f32> {
    value().prop_filter("finite", |v| v.is_finite())
}

fn values(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(value(), len)
}

/// Runs an in-place element-wise helper at every level against the specification.
fn check_map(
    name: &str,
    x: &[f32],
    spec: fn(&mut [f32]),
    entry: fn(&Kernels, &mut [f32]),
    bound: Bound,
) -> f64 {
    let mut want = x.to_vec();
    spec(&mut want);
    let mut worst = 0.0f64;
    for (table, k) in tables() {
        let mut got = x.to_vec();
        entry(&k, &mut got);
        worst = worst.max(check(&table, name, x, &want, &got, bound));
    }
    worst
}

fn check_silu(x: &[f32]) -> f64 {
    check_map("silu", x, vector::silu, Kernels::silu, EXP_BOUND)
}

fn check_gelu(x: &[f32]) -> f64 {
    check_map("gelu", x, vector::gelu, Kernels::gelu, GELU_BOUND)
}

fn check_gelu_erf(x: &[f32]) -> f64 {
    check_map(
        "gelu_erf",
        x,
        vector::gelu_erf,
        Kernels::gelu_erf,
        GELU_BOUND,
    )
}

fn check_softmax(x: &[f32]) -> f64 {
    // The bound scales by the output (the inputs are shifted by the maximum).
    check_map("softmax", x, vector::softmax, Kernels::softmax, EXP_BOUND)
}

fn check_swiglu(gate: &[f32], up: &[f32]) {
    let mut want = vec![0.0; gate.len()];
    vector::swiglu(gate, up, &mut want).unwrap();
    // The bound scales by |gate · up|: silu's error times |up|.
    let z: Vec<f32> = gate.iter().zip(up).map(|(g, u)| g * u).collect();
    for (table, k) in tables() {
        let mut got = vec![0.0; gate.len()];
        k.swiglu(gate, up, &mut got).unwrap();
        check(&table, "swiglu", &z, &want, &got, EXP_BOUND);
    }
}

fn check_rms_norm(x: &[f32], w: &[f32], eps: f32) {
    let mut want = vec![0.0; x.len()];
    vector::rms_norm(x, w, eps, &mut want).unwrap();
    for (table, k) in tables() {
        let mut got = vec![0.0; x.len()];
        k.rms_norm(x, w, eps, &mut got).unwrap();
        check(&table, "rms_norm", x, &want, &got, RMS_BOUND);
    }
}

fn check_axpy(a: f32, x: &[f32], y: &[f32]) {
    let mut want = y.to_vec();
    vector::axpy(a, x, &mut want).unwrap();
    for (table, k) in tables() {
        let mut got = y.to_vec();
        k.axpy(a, x, &mut got).unwrap();
        for (i, (s, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                s.to_bits() == g.to_bits() || (s.is_nan() && g.is_nan()),
                "{table} axpy[{i}]: spec {s:e} got {g:e}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn activations_match_the_spec(x in values(0..300)) {
        check_silu(&x);
        check_gelu(&x);
        check_gelu_erf(&x);
    }

    #[test]
    fn softmax_matches_the_spec(x in prop::collection::vec(finite_value(), 0..300)) {
        check_softmax(&x);
    }

    #[test]
    fn softmax_with_specials_matches_the_spec(x in values(0..40)) {
        check_softmax(&x);
    }

    #[test]
    fn swiglu_matches_the_spec(
        (gate, up) in (0usize..300).prop_flat_map(|n| (
            prop::collection::vec(value(), n),
            prop::collection::vec(value(), n),
        ))
    ) {
        check_swiglu(&gate, &up);
    }

    #[test]
    fn rms_norm_matches_the_spec(
        (x, w) in (0usize..300).prop_flat_map(|n| (
            prop::collection::vec(value(), n),
            prop::collection::vec(-10.0f32..10.0, n),
        )),
        eps in prop_oneof![Just(0.0f32), 1e-6f32..1e-5],
    ) {
        check_rms_norm(&x, &w, eps);
    }

    #[test]
    fn axpy_is_bit_exact(
        a in value(),
        (x, y) in (0usize..300).prop_flat_map(|n| (
            prop::collection::vec(value(), n),
            prop::collection::vec(value(), n),
        )),
    ) {
        check_axpy(a, &x, &y);
    }

    #[test]
    fn spec_activations_are_the_ffn_activations(z in any::<f32>()) {
        for (act, f) in [
            (Activation::Silu, vector::silu_of as fn(f32) -> f32),
            (Activation::Gelu, vector::gelu_of),
            (Activation::GeluErf, vector::gelu_erf_of),
        ] {
            let (a, b) = (act.apply(z), f(z));
            prop_assert!(a.to_bits() == b.to_bits(), "{act:?}({z:e}): ffn {a:e} spec {b:e}");
        }
    }

    #[test]
    fn spec_rms_norm_is_the_f64_formula(
        (x, w) in (1usize..300).prop_flat_map(|n| (
            prop::collection::vec(-100.0f32..100.0, n),
            prop::collection::vec(-10.0f32..10.0, n),
        )),
        eps in 1e-6f32..1e-5,
    ) {
        let mut got = vec![0.0; x.len()];
        vector::rms_norm(&x, &w, eps, &mut got).unwrap();
        let mean = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64;
        let scale = 1.0 / (mean + f64::from(eps)).sqrt();
        for (i, ((&v, &w), &g)) in x.iter().zip(&w).zip(&got).enumerate() {
            let want = f64::from(v) * scale * f64::from(w);
            // Six f32 roundings (mean, + eps, sqrt, 1/, two products), each 2^-24.
            let tol = 8.0 * 2f64.powi(-24) * want.abs() + 1e-37;
            prop_assert!((want - f64::from(g)).abs() <= tol, "[{i}]: f64 {want:e} spec {g:e}");
        }
    }
}

/// Every length from 0 to 40 (all tails) and every special value in every lane position.
#[test]
fn specials_in_every_lane() {
    for len in 0..=40 {
        for shift in 0..SPECIALS.len() {
            let x: Vec<f32> = (0..len)
                .map(|i| SPECIALS[(i + shift) % SPECIALS.len()])
                .collect();
            check_silu(&x);
            check_gelu(&x);
            check_gelu_erf(&x);
            check_softmax(&x);
            check_swiglu(&x, &x.iter().rev().copied().collect::<Vec<_>>());
            check_rms_norm(&x, &vec![1.5; len], 1e-6);
            check_axpy(-0.75, &x, &vec![1.0; len]);
            check_axpy(f32::NAN, &x, &vec![1.0; len]);
        }
    }
}

/// The softmax limits: all `-inf` gives zeros (a fully masked row has no mass), `+inf`
/// entries share the mass, any NaN gives NaN everywhere; every level agrees.
#[test]
fn softmax_limits() {
    let cases: [(&[f32], &[f32]); 5] = [
        (&[], &[]),
        (&[f32::NEG_INFINITY; 11], &[0.0; 11]),
        (
            &[f32::INFINITY, 3.0, f32::INFINITY, f32::NEG_INFINITY],
            &[0.5, 0.0, 0.5, 0.0],
        ),
        (&[1.0, f32::NAN, 2.0], &[f32::NAN; 3]),
        (&[f32::NEG_INFINITY, f32::NAN], &[f32::NAN; 2]),
    ];
    for (x, want) in cases {
        for (table, k) in tables() {
            let mut got = x.to_vec();
            k.softmax(&mut got);
            let same = got
                .iter()
                .zip(want)
                .all(|(g, w)| g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()));
            assert!(same, "{table} softmax({x:?}) = {got:?}, want {want:?}");
        }
    }
    // A long row of one finite value among -inf: exactly uniform over the finite ones.
    let mut x = vec![f32::NEG_INFINITY; 37];
    x[5] = -3.0;
    x[30] = -3.0;
    for (table, k) in tables() {
        let mut got = x.clone();
        k.softmax(&mut got);
        assert_eq!(got[5], 0.5, "{table}");
        assert_eq!(got[30], 0.5, "{table}");
        assert_eq!(got.iter().sum::<f32>(), 1.0, "{table}");
    }
}

/// Wrong lengths are the specification's typed errors at every level, and nothing is
/// written.
#[test]
fn length_mismatches_are_errors() {
    let x = [1.0f32; 9];
    for (table, k) in tables() {
        let mut out = [7.0f32; 8];
        assert_eq!(
            k.rms_norm(&x, &[1.0; 9], 1e-6, &mut out),
            Err(Error::LengthMismatch {
                expected: 9,
                actual: 8
            }),
            "{table}"
        );
        assert_eq!(
            k.rms_norm(&x, &[1.0; 10], 1e-6, &mut [0.0; 9]),
            Err(Error::LengthMismatch {
                expected: 9,
                actual: 10
            }),
            "{table}"
        );
        assert_eq!(
            k.swiglu(&x, &[1.0; 8], &mut [0.0; 9]),
            Err(Error::LengthMismatch {
                expected: 9,
                actual: 8
            }),
            "{table}"
        );
        assert_eq!(
            k.swiglu(&x, &[1.0; 9], &mut out),
            Err(Error::LengthMismatch {
                expected: 9,
                actual: 8
            }),
            "{table}"
        );
        assert_eq!(
            k.axpy(2.0, &x, &mut out),
            Err(Error::LengthMismatch {
                expected: 9,
                actual: 8
            }),
            "{table}"
        );
        assert_eq!(out, [7.0; 8], "{table}: written on error");
    }
}

/// A dense sweep of `-100..100` (and `-10..10` finer) through every function, held to
/// the bounds; prints (`--nocapture`) the largest relative error where each bound is
/// relative (SiLU: `e^z` normal, `z ≥ -87`; GELUs: `z ≥ -0.7`) and the largest
/// `|error| / |z|` of the GELUs below, the numbers the module docs quote.
#[test]
fn dense_sweep_within_bounds() {
    let coarse = (0..200_000).map(|i| -100.0 + i as f32 * 1e-3);
    let fine = (0..200_000).map(|i| -10.0 + i as f32 * 1e-4);
    let x: Vec<f32> = coarse.chain(fine).collect();
    check_silu(&x);
    check_gelu(&x);
    check_gelu_erf(&x);
    let above = |lo: f32| -> Vec<f32> { x.iter().copied().filter(|&z| z >= lo).collect() };
    let silu = check_silu(&above(-87.0));
    let gelu = check_gelu(&above(-0.7));
    let gelu_erf = check_gelu_erf(&above(-0.7));
    let below: Vec<f32> = x.iter().copied().filter(|&z| z < -0.7).collect();
    let per_z = |f: fn(&mut [f32]), entry: fn(&Kernels, &mut [f32])| {
        let mut want = below.clone();
        f(&mut want);
        let mut worst = 0.0f64;
        for (_, k) in tables() {
            let mut got = below.clone();
            entry(&k, &mut got);
            for ((w, g), z) in want.iter().zip(&got).zip(&below) {
                worst = worst.max(f64::from((w - g).abs() / z.abs()));
            }
        }
        worst * 2f64.powi(24)
    };
    let gelu_below = per_z(vector::gelu, Kernels::gelu);
    let gelu_erf_below = per_z(vector::gelu_erf, Kernels::gelu_erf);
    // Softmax rows of 4096 logits over a range of 20 (no subnormal shares).
    let mut softmax = 0.0f64;
    for row in x.chunks(4096) {
        let row: Vec<f32> = row.iter().map(|v| v * 0.1).collect();
        softmax = softmax.max(check_softmax(&row));
    }
    eprintln!(
        "largest relative error: silu {silu:.2e}, softmax {softmax:.2e}, gelu {gelu:.2e}, \
         gelu_erf {gelu_erf:.2e}; below z = -0.7, |error| / |z|: gelu {gelu_below:.2} · 2^-24, \
         gelu_erf {gelu_erf_below:.2} · 2^-24"
    );
}

//! Token sampling (`moe_core::sample`) against a plain reference written here: full sorts
//! and `f64` softmaxes following llama.cpp's chain (penalties → top-k → top-p → min-p →
//! temperature → softmax), a chi-square test of the draws, seeds, greedy, the penalty
//! arithmetic by hand, and errors instead of panics on bad configs and odd logits.

use std::collections::HashMap;

use moe_core::Error;
use moe_core::sample::{Candidate, Rng, Sampler, SamplerConfig};
use proptest::prelude::*;

/// Every filter off, temperature 1: the plain softmax.
fn plain() -> SamplerConfig {
    SamplerConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..SamplerConfig::default()
    }
}

/// One draw with a fresh sampler: the token and the surviving candidates.
fn sample_once(config: SamplerConfig, logits: &[f32], recent: &[u32]) -> (u32, Vec<Candidate>) {
    let mut ws = vec![Candidate::default(); Sampler::workspace_len(logits.len())];
    let mut sampler = Sampler::new(config, &mut ws).unwrap();
    let token = sampler.sample(logits, recent).unwrap();
    (token, sampler.candidates().to_vec())
}

/// The reference chain's result: surviving ids with their final probabilities, and how
/// close the filter decisions sat to their thresholds (where `f32` and `f64` arithmetic
/// may legitimately decide differently).
struct Reference {
    survivors: Vec<(u32, f64)>,
    /// Distance of the top-p running sum to `top_p` at the cut, just before and at it
    /// (infinite when top-p is off).
    top_p_margin: f64,
    /// Distance of the nearest logit to min-p's threshold (infinite when min-p is off).
    min_p_margin: f64,
}

impl Reference {
    /// Decisions far enough from their thresholds for a small vocabulary.
    fn clear(&self) -> bool {
        self.top_p_margin > 1e-5 && self.min_p_margin > 1e-4
    }
}

/// llama.cpp's penalties, in `f32` exactly as its code computes them.
fn reference_penalties(config: &SamplerConfig, logits: &[f32], recent: &[u32]) -> Vec<f32> {
    let mut out: Vec<f32> = logits
        .iter()
        .map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l })
        .collect();
    if config.penalty_last_n == 0 {
        return out;
    }
    let start = recent.len().saturating_sub(config.penalty_last_n);
    let mut count: HashMap<u32, u32> = HashMap::new();
    for &t in &recent[start..] {
        *count.entry(t).or_default() += 1;
    }
    for (id, l) in out.iter_mut().enumerate() {
        if let Some(&c) = count.get(&(id as u32)) {
            let mut v = *l;
            if v <= 0.0 {
                v *= config.repeat_penalty;
            } else {
                v /= config.repeat_penalty;
            }
            v -= c as f32 * config.frequency_penalty + config.presence_penalty;
            *l = if v.is_nan() { f32::NEG_INFINITY } else { v };
        }
    }
    out
}

/// The whole chain for `temperature > 0` with full sorts and `f64` softmaxes.
fn reference(config: &SamplerConfig, logits: &[f32], recent: &[u32]) -> Reference {
    let penalised = reference_penalties(config, logits, recent);
    let mut top_p_margin = f64::INFINITY;
    let mut min_p_margin = f64::INFINITY;
    let mut c: Vec<(u32, f32)> = penalised
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l))
        .collect();
    // Descending logit, ties by lower id: the sampler's documented order.
    c.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    if config.top_k > 0 {
        c.truncate(config.top_k);
    }
    if config.top_p < 1.0 {
        let max = c[0].1 as f64;
        let w: Vec<f64> = c.iter().map(|x| (x.1 as f64 - max).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut running = 0.0;
        let mut keep = c.len();
        for (i, wi) in w.iter().enumerate() {
            let before = running;
            running += wi / total;
            if running >= config.top_p as f64 {
                let p = config.top_p as f64;
                top_p_margin = (p - before).abs().min((running - p).abs());
                keep = i + 1;
                break;
            }
        }
        c.truncate(keep);
    }
    if config.min_p > 0.0 {
        let max = c[0].1 as f64;
        let min_logit = max + (config.min_p as f64).ln();
        min_p_margin = c
            .iter()
            .skip(1)
            .map(|x| (x.1 as f64 - min_logit).abs())
            .fold(f64::INFINITY, f64::min);
        let first = c[0];
        c.retain(|x| x.1 as f64 >= min_logit);
        if c.is_empty() {
            c.push(first);
        }
    }
    let t = config.temperature as f64;
    let max = c
        .iter()
        .map(|x| x.1 as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = c.iter().map(|x| ((x.1 as f64 - max) / t).exp()).collect();
    let total: f64 = w.iter().sum();
    Reference {
        survivors: c.iter().zip(&w).map(|(x, wi)| (x.0, wi / total)).collect(),
        top_p_margin,
        min_p_margin,
    }
}

/// The sampler's survivors equal the reference's: same ids, probabilities within 1e-6.
fn check_against_reference(
    config: SamplerConfig,
    logits: &[f32],
    recent: &[u32],
) -> Result<(), TestCaseError> {
    let want = reference(&config, logits, recent);
    prop_assume!(want.clear());
    let (token, got) = sample_once(config, logits, recent);
    let mut got: Vec<(u32, f64)> = got.iter().map(|c| (c.id, c.p as f64)).collect();
    got.sort_by_key(|x| x.0);
    let mut want = want.survivors;
    want.sort_by_key(|x| x.0);
    let got_ids: Vec<u32> = got.iter().map(|x| x.0).collect();
    let want_ids: Vec<u32> = want.iter().map(|x| x.0).collect();
    prop_assert_eq!(&got_ids, &want_ids, "{:?}", config);
    for (g, w) in got.iter().zip(&want) {
        prop_assert!(
            (g.1 - w.1).abs() <= 1e-6,
            "token {}: {} vs {}",
            g.0,
            g.1,
            w.1
        );
    }
    prop_assert!(want_ids.contains(&token));
    Ok(())
}

/// Logits as a model might give them: mostly spread, some equal.
fn logits() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![
            8 => -20.0f32..20.0,
            1 => prop::sample::select(vec![0.0f32, 1.0, -1.0, 5.0]),
        ],
        1..300,
    )
}

fn history(n_vocab: usize) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0..n_vocab as u32 + 3, 0..100)
}

proptest! {
    #[test]
    fn top_k_matches_reference(logits in logits(), k in 1usize..50, t in 0.2f32..3.0) {
        let config = SamplerConfig { top_k: k, temperature: t, ..plain() };
        check_against_reference(config, &logits, &[])?;
    }

    #[test]
    fn top_p_matches_reference(logits in logits(), p in 0.05f32..1.0, t in 0.2f32..3.0) {
        let config = SamplerConfig { top_p: p, temperature: t, ..plain() };
        check_against_reference(config, &logits, &[])?;
    }

    #[test]
    fn min_p_matches_reference(logits in logits(), p in 0.0001f32..1.0, t in 0.2f32..3.0) {
        let config = SamplerConfig { min_p: p, temperature: t, ..plain() };
        check_against_reference(config, &logits, &[])?;
    }

    /// Top-p without top-k on more logits than one sort run (32) leaves its survivors
    /// unordered; min-p after it must still find the maximum.
    #[test]
    fn top_p_then_min_p_matches_reference(
        logits in prop::collection::vec(-20.0f32..20.0, 33..400),
        p in 0.05f32..1.0,
        min_p in 0.001f32..0.9,
        t in 0.2f32..3.0,
    ) {
        let config = SamplerConfig { top_p: p, min_p, temperature: t, ..plain() };
        check_against_reference(config, &logits, &[])?;
    }

    #[test]
    fn temperature_matches_reference(logits in logits(), t in 0.05f32..5.0) {
        let config = SamplerConfig { temperature: t, ..plain() };
        check_against_reference(config, &logits, &[])?;
    }

    #[test]
    fn whole_chain_matches_reference(
        (logits, recent) in logits().prop_flat_map(|l| { let n = l.len(); (Just(l), history(n)) }),
        k in prop_oneof![Just(0usize), 1usize..60],
        p in 0.05f32..=1.0,
        min_p in 0.0f32..0.5,
        t in 0.1f32..3.0,
        repeat in 0.5f32..2.0,
        freq in -1.0f32..1.0,
        presence in -1.0f32..1.0,
        last_n in 0usize..120,
        seed in any::<u64>(),
    ) {
        let config = SamplerConfig {
            temperature: t,
            top_k: k,
            top_p: p,
            min_p,
            repeat_penalty: repeat,
            frequency_penalty: freq,
            presence_penalty: presence,
            penalty_last_n: last_n,
            seed,
        };
        check_against_reference(config, &logits, &recent)?;
    }

    /// Greedy is the argmax of the penalised logits, the first among equals, whatever the
    /// seed and the filters.
    #[test]
    fn greedy_is_the_argmax(
        (logits, recent) in logits().prop_flat_map(|l| { let n = l.len(); (Just(l), history(n)) }),
        k in 0usize..10,
        repeat in 0.5f32..2.0,
        seed in any::<u64>(),
    ) {
        let config = SamplerConfig {
            temperature: 0.0,
            top_k: k,
            repeat_penalty: repeat,
            seed,
            ..SamplerConfig::default()
        };
        let penalised = reference_penalties(&config, &logits, &recent);
        let max = penalised.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let first = penalised.iter().position(|&l| l == max).unwrap() as u32;
        let (token, kept) = sample_once(config, &logits, &recent);
        prop_assert_eq!(token, first);
        prop_assert_eq!(kept, vec![Candidate { id: first, logit: max, p: 1.0 }]);
    }

    /// Any bit pattern as a logit (NaN, infinities, subnormals) and any history: a token
    /// or a typed error, never a panic; a token is never one whose logit is NaN or -inf
    /// while a better one exists.
    #[test]
    fn arbitrary_bits_never_panic(
        bits in prop::collection::vec(
            prop_oneof![
                3 => any::<u32>(),
                1 => prop::sample::select(vec![
                    f32::NAN.to_bits(), f32::INFINITY.to_bits(), f32::NEG_INFINITY.to_bits(),
                    f32::MAX.to_bits(), f32::MIN.to_bits(), 0x8000_0000,
                ]),
            ],
            0..200,
        ),
        recent in prop::collection::vec(any::<u32>(), 0..50),
        k in 0usize..20,
        p in prop::sample::select(vec![1e-7f32, 0.3, 0.9, 1.0]),
        min_p in prop::sample::select(vec![0.0f32, 1e-7, 0.1, 1.0]),
        t in prop::sample::select(vec![-1.0f32, 0.0, 1e-30, 0.5, 1.0, 1e30]),
        repeat in prop::sample::select(vec![1e-30f32, 0.5, 1.0, 1e30]),
        freq in prop::sample::select(vec![-1e38f32, -1.0, 0.0, 1.0, 1e38]),
        presence in prop::sample::select(vec![-1e38f32, 0.0, 1e38]),
        last_n in prop::sample::select(vec![0usize, 1, 64, usize::MAX]),
        seed in any::<u64>(),
    ) {
        let logits: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let config = SamplerConfig {
            temperature: t,
            top_k: k,
            top_p: p,
            min_p,
            repeat_penalty: repeat,
            frequency_penalty: freq,
            presence_penalty: presence,
            penalty_last_n: last_n,
            seed,
        };
        let mut ws = vec![Candidate::default(); logits.len()];
        let mut sampler = Sampler::new(config, &mut ws).unwrap();
        for _ in 0..3 {
            match sampler.sample(&logits, &recent) {
                Ok(token) => {
                    prop_assert!((token as usize) < logits.len());
                    let kept = sampler.candidates();
                    prop_assert!(!kept.is_empty());
                    let sum: f64 = kept.iter().map(|c| c.p as f64).sum();
                    prop_assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to {}", sum);
                    let chosen = kept.iter().find(|c| c.id == token).unwrap();
                    prop_assert!(chosen.p > 0.0);
                    prop_assert!(!chosen.logit.is_nan());
                }
                Err(e) => prop_assert!(
                    matches!(e, Error::CannotSample { .. } | Error::BufferTooSmall { .. }),
                    "{:?}", e
                ),
            }
        }
    }
}

#[test]
fn rng_is_xoshiro256starstar() {
    // rand_xoshiro's test vector for the state [1, 2, 3, 4]; the first two by hand:
    // rotl(2 * 5, 7) * 9 = 11520, then s[1] becomes 0.
    let mut rng = Rng::from_state([1, 2, 3, 4]);
    let want: [u64; 10] = [
        11520,
        0,
        1509978240,
        1215971899390074240,
        1216172134540287360,
        607988272756665600,
        16172922978634559625,
        8476171486693032832,
        10595114339597558777,
        2904607092377533576,
    ];
    for w in want {
        assert_eq!(rng.next_u64(), w);
    }
}

#[test]
fn rng_floats_are_in_the_unit_interval() {
    let mut rng = Rng::new(42);
    let (mut sum32, mut sum64) = (0.0f64, 0.0f64);
    let n = 100_000;
    for _ in 0..n {
        let a = rng.next_f32();
        let b = rng.next_f64();
        assert!((0.0..1.0).contains(&a) && (0.0..1.0).contains(&b));
        // 24 bits: an exact multiple of 2^-24.
        assert_eq!((a * 16_777_216.0).fract(), 0.0);
        sum32 += a as f64;
        sum64 += b;
    }
    // The mean of n uniforms has standard deviation 1/sqrt(12 n) ≈ 0.0009.
    assert!((sum32 / n as f64 - 0.5).abs() < 0.005);
    assert!((sum64 / n as f64 - 0.5).abs() < 0.005);
}

/// 32 logits spread over about 5 nats, none equal.
fn small_vocab() -> Vec<f32> {
    (0..32)
        .map(|i| ((i * 13 % 32) as f32 - 16.0) * 0.12 + (i as f32 * 0.37).sin() * 0.5)
        .collect()
}

fn draw_sequence(config: SamplerConfig, n: usize) -> Vec<u32> {
    let logits = small_vocab();
    let mut ws = vec![Candidate::default(); logits.len()];
    let mut sampler = Sampler::new(config, &mut ws).unwrap();
    let mut out: Vec<u32> = Vec::new();
    for _ in 0..n {
        let t = sampler.sample(&logits, &out).unwrap();
        out.push(t);
    }
    out
}

#[test]
fn same_seed_same_tokens_and_reseed_restarts() {
    let config = SamplerConfig {
        seed: 1234,
        repeat_penalty: 1.1,
        ..SamplerConfig::default()
    };
    let a = draw_sequence(config, 200);
    assert_eq!(a, draw_sequence(config, 200));
    let b = draw_sequence(
        SamplerConfig {
            seed: 1235,
            ..config
        },
        200,
    );
    assert_ne!(a, b);

    // Reseeding mid-way restarts the sequence of a fresh sampler with that seed.
    let logits = small_vocab();
    let mut ws = vec![Candidate::default(); logits.len()];
    let mut sampler = Sampler::new(
        SamplerConfig {
            seed: 99,
            ..plain()
        },
        &mut ws,
    )
    .unwrap();
    let first: Vec<u32> = (0..50)
        .map(|_| sampler.sample(&logits, &[]).unwrap())
        .collect();
    let _ = sampler.sample(&logits, &[]).unwrap();
    sampler.reseed(99);
    let again: Vec<u32> = (0..50)
        .map(|_| sampler.sample(&logits, &[]).unwrap())
        .collect();
    assert_eq!(first, again);
    sampler.reseed(7);
    assert_eq!(sampler.config().seed, 7);
    let other: Vec<u32> = (0..50)
        .map(|_| sampler.sample(&logits, &[]).unwrap())
        .collect();
    assert_ne!(first, other);
}

#[test]
fn greedy_ignores_the_seed_and_takes_the_first_maximum() {
    let logits = [1.0, 3.0, f32::NAN, 3.0, -2.0];
    for seed in [0, 1, u64::MAX] {
        let config = SamplerConfig {
            seed,
            ..SamplerConfig::greedy()
        };
        assert_eq!(sample_once(config, &logits, &[]).0, 1);
        // Negative temperature is greedy too.
        let config = SamplerConfig {
            temperature: -0.5,
            ..config
        };
        assert_eq!(sample_once(config, &logits, &[]).0, 1);
    }
    // The penalty decides: token 1 divided by 2 falls to 1.5 < 3.0 of token 3.
    let config = SamplerConfig {
        repeat_penalty: 2.0,
        ..SamplerConfig::greedy()
    };
    assert_eq!(sample_once(config, &logits, &[1]).0, 3);
}

#[test]
fn penalties_by_hand() {
    let logits = [2.0f32, -1.0, 0.5, 3.0, 0.0, -4.0];
    // Oldest first; the window of the last 6 is [4, 1, 1, 3, 1, 9]: token 1 three times,
    // 3 and 4 once, 9 outside the vocabulary; the 0 and 5 before it are out of the window.
    let recent = [0, 5, 4, 1, 1, 3, 1, 9];
    let config = SamplerConfig {
        repeat_penalty: 2.0,
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        penalty_last_n: 6,
        ..plain()
    };
    let (_, kept) = sample_once(config, &logits, &recent);
    let got: Vec<f32> = kept.iter().map(|c| c.logit).collect();
    let want = [
        2.0,   // not in the window
        -3.75, // -1 is not positive: -1 * 2 = -2, then 3 occurrences: -(3 * 0.5 + 0.25)
        0.5,   // never seen
        0.75,  // 3 is positive: 3 / 2 = 1.5, then -(1 * 0.5 + 0.25)
        -0.75, // 0 counts as not positive (llama.cpp's <=): 0 * 2, then -(0.5 + 0.25)
        -4.0,  // only before the window
    ];
    assert_eq!(got, want);
    // The probabilities are the softmax of those.
    let z: f64 = want.iter().map(|&l| (l as f64).exp()).sum();
    for (c, l) in kept.iter().zip(want) {
        assert!((c.p as f64 - (l as f64).exp() / z).abs() < 1e-7);
    }

    // penalty_last_n = 0 turns them off; a window longer than the history takes it all.
    let off = SamplerConfig {
        penalty_last_n: 0,
        ..config
    };
    let (_, kept) = sample_once(off, &logits, &recent);
    assert_eq!(kept.iter().map(|c| c.logit).collect::<Vec<_>>(), logits);
    let all = SamplerConfig {
        penalty_last_n: usize::MAX,
        repeat_penalty: 1.0,
        frequency_penalty: 1.0,
        presence_penalty: 0.0,
        ..config
    };
    let (_, kept) = sample_once(all, &logits, &recent);
    let got: Vec<f32> = kept.iter().map(|c| c.logit).collect();
    assert_eq!(got, [1.0, -4.0, 0.5, 2.0, -1.0, -5.0]);
}

/// Wilson–Hilferty: the chi-square quantile for `df` degrees of freedom at the standard
/// normal quantile `z` (3.0902 for 0.999). Within about 2% of the exact value, and above
/// it, for the degrees of freedom used here (20.75 against 20.52 at df 5; 11.2 against
/// 10.83 at df 1), so the test errs towards accepting by that much.
fn chi_square_quantile(df: usize, z: f64) -> f64 {
    let d = df as f64;
    let a = 2.0 / (9.0 * d);
    d * (1.0 - a + z * a.sqrt()).powi(3)
}

#[test]
fn chi_square_quantile_matches_the_table() {
    // Table values at 0.999: df 5 → 20.515, 10 → 29.588, 30 → 59.703.
    for (df, want) in [(5, 20.515), (10, 29.588), (30, 59.703)] {
        let got = chi_square_quantile(df, 3.0902);
        assert!(
            got >= want && (got - want) / want < 0.02,
            "df {df}: {got} vs {want}"
        );
    }
}

/// Draws `n` tokens with a fixed seed and compares their counts to the reference's
/// filtered softmax with a chi-square statistic; tokens the filters drop never appear.
fn chi_square(name: &str, config: SamplerConfig, recent: &[u32], n: usize) {
    let logits = small_vocab();
    let want = reference(&config, &logits, recent);
    assert!(want.clear(), "{name}: pick logits away from thresholds");
    let mut expected = vec![0.0f64; logits.len()];
    for &(id, p) in &want.survivors {
        expected[id as usize] = p;
    }
    let mut counts = vec![0u64; logits.len()];
    let mut ws = vec![Candidate::default(); logits.len()];
    let mut sampler = Sampler::new(config, &mut ws).unwrap();
    for _ in 0..n {
        counts[sampler.sample(&logits, recent).unwrap() as usize] += 1;
    }
    let mut stat = 0.0;
    for (id, (&c, &p)) in counts.iter().zip(&expected).enumerate() {
        if p == 0.0 {
            assert_eq!(c, 0, "{name}: filtered-out token {id} was drawn");
            continue;
        }
        let e = p * n as f64;
        assert!(
            e >= 5.0,
            "{name}: expected count {e} too small for chi-square"
        );
        stat += (c as f64 - e).powi(2) / e;
    }
    let df = want.survivors.len() - 1;
    let limit = chi_square_quantile(df, 3.0902);
    eprintln!(
        "chi-square {name}: {stat:.2} (df {df}, 0.999 quantile {limit:.2}, {} survivors)",
        want.survivors.len()
    );
    assert!(
        stat < limit,
        "{name}: chi-square {stat} >= {limit} (df {df})"
    );
}

#[test]
fn draws_follow_the_filtered_softmax() {
    let n = 200_000;
    chi_square(
        "temperature 1",
        SamplerConfig { seed: 1, ..plain() },
        &[],
        n,
    );
    chi_square(
        "temperature 0.7",
        SamplerConfig {
            temperature: 0.7,
            seed: 2,
            ..plain()
        },
        &[],
        n,
    );
    chi_square(
        "top-k 8, temperature 1.5",
        SamplerConfig {
            top_k: 8,
            temperature: 1.5,
            seed: 3,
            ..plain()
        },
        &[],
        n,
    );
    chi_square(
        "top-p 0.8",
        SamplerConfig {
            top_p: 0.8,
            seed: 4,
            ..plain()
        },
        &[],
        n,
    );
    chi_square(
        "min-p 0.1, temperature 1.2",
        SamplerConfig {
            min_p: 0.1,
            temperature: 1.2,
            seed: 5,
            ..plain()
        },
        &[],
        n,
    );
    chi_square(
        "llama.cpp defaults",
        SamplerConfig {
            seed: 6,
            ..SamplerConfig::default()
        },
        &[],
        n,
    );
    chi_square(
        "top-k 20, top-p 0.9, min-p 0.02, temperature 0.9, penalties",
        SamplerConfig {
            top_k: 20,
            top_p: 0.9,
            min_p: 0.02,
            temperature: 0.9,
            repeat_penalty: 1.3,
            frequency_penalty: 0.2,
            presence_penalty: 0.1,
            penalty_last_n: 8,
            seed: 7,
        },
        &[3, 17, 17, 5, 28, 3, 3, 12, 0],
        n,
    );
}

/// Top-p without top-k on a 150k vocabulary: the selection rounds find the same
/// survivors as a full sort, for a peaked and a flat distribution.
#[test]
fn top_p_over_a_large_vocabulary() {
    let mut rng = Rng::new(5);
    for (spread, p) in [(12.0f32, 0.95f32), (0.5, 0.6), (3.0, 0.999)] {
        let logits: Vec<f32> = (0..150_000)
            .map(|_| (rng.next_f32() - 0.5) * spread + rng.next_f32() * rng.next_f32())
            .collect();
        // 150k probabilities of about 1e-5 each put some running sum near any top_p:
        // nudge top_p (deterministically) until the cut is clear of f32 rounding (the
        // f32 weights summed in f64 are within about 1e-8 of the f64 sums here).
        let (config, want) = (0..100)
            .map(|j| {
                let config = SamplerConfig {
                    top_p: p - j as f32 * 1e-6,
                    seed: 3,
                    ..plain()
                };
                (config, reference(&config, &logits, &[]))
            })
            .find(|(_, want)| want.top_p_margin > 2e-7)
            .unwrap();
        let (_, mut got) = sample_once(config, &logits, &[]);
        assert_eq!(got.len(), want.survivors.len(), "spread {spread}");
        got.sort_by_key(|c| c.id);
        let mut want = want.survivors;
        want.sort_by_key(|w| w.0);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.id, w.0);
            assert!((g.p as f64 - w.1).abs() < 1e-6);
        }
    }
}

#[test]
fn infinite_logits_take_all_the_probability() {
    let logits = [0.0, f32::INFINITY, 5.0, f32::INFINITY, f32::NAN];
    for config in [
        plain(),
        SamplerConfig::default(),
        SamplerConfig {
            temperature: 1e-20,
            ..plain()
        },
    ] {
        let mut seen = [0u32; 5];
        let mut ws = [Candidate::default(); 5];
        let mut sampler = Sampler::new(config, &mut ws).unwrap();
        for _ in 0..200 {
            seen[sampler.sample(&logits, &[]).unwrap() as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2] + seen[4], 0, "{seen:?}");
        assert!(seen[1] > 50 && seen[3] > 50, "{seen:?}");
    }
}

#[test]
fn nan_logits_are_never_drawn() {
    let logits = [f32::NAN, -1.0, f32::NAN, -1.0];
    let mut ws = [Candidate::default(); 4];
    let mut sampler = Sampler::new(plain(), &mut ws).unwrap();
    for _ in 0..500 {
        let t = sampler.sample(&logits, &[]).unwrap();
        assert!(t == 1 || t == 3);
    }
    let greedy = SamplerConfig::greedy();
    assert_eq!(sample_once(greedy, &logits, &[]).0, 1);
}

#[test]
fn bad_configs_are_errors() {
    let good = SamplerConfig::default();
    good.validate().unwrap();
    SamplerConfig::greedy().validate().unwrap();
    let bad = [
        SamplerConfig {
            temperature: f32::NAN,
            ..good
        },
        SamplerConfig {
            temperature: f32::INFINITY,
            ..good
        },
        SamplerConfig { top_p: 0.0, ..good },
        SamplerConfig { top_p: 1.5, ..good },
        SamplerConfig {
            top_p: f32::NAN,
            ..good
        },
        SamplerConfig {
            min_p: -0.1,
            ..good
        },
        SamplerConfig {
            min_p: 1.01,
            ..good
        },
        SamplerConfig {
            min_p: f32::NAN,
            ..good
        },
        SamplerConfig {
            repeat_penalty: 0.0,
            ..good
        },
        SamplerConfig {
            repeat_penalty: -1.1,
            ..good
        },
        SamplerConfig {
            repeat_penalty: f32::INFINITY,
            ..good
        },
        SamplerConfig {
            frequency_penalty: f32::NAN,
            ..good
        },
        SamplerConfig {
            presence_penalty: f32::NEG_INFINITY,
            ..good
        },
    ];
    for config in bad {
        let e = config.validate().unwrap_err();
        assert!(matches!(e, Error::CannotSample { .. }), "{config:?}: {e:?}");
        let mut ws = [Candidate::default(); 4];
        assert_eq!(Sampler::new(config, &mut ws).unwrap_err(), e);
        // The message names the field.
        let field = format!("{e}");
        assert!(field.starts_with("cannot sample a token: "), "{field}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let mut ws = [Candidate::default(); 3];
    let mut sampler = Sampler::new(SamplerConfig::default(), &mut ws).unwrap();
    assert_eq!(
        sampler.sample(&[], &[]),
        Err(Error::BufferTooSmall {
            needed: 1,
            actual: 0
        })
    );
    assert_eq!(
        sampler.sample(&[1.0; 4], &[]),
        Err(Error::BufferTooSmall {
            needed: 4,
            actual: 3
        })
    );
    assert!(sampler.candidates().is_empty());
    // Debug shows the sizes, not the workspace.
    let debug = format!("{sampler:?}");
    assert!(debug.contains("workspace_len: 3") && !debug.contains("Candidate"));
    for logits in [[f32::NAN; 3], [f32::NEG_INFINITY; 3]] {
        assert!(matches!(
            sampler.sample(&logits, &[]),
            Err(Error::CannotSample { .. })
        ));
    }
    // A shorter vocabulary than the workspace is fine.
    assert!(sampler.sample(&[0.5, 0.25], &[]).unwrap() < 2);
    assert_eq!(Sampler::workspace_len(151_936), 151_936);

    let mut greedy_ws = [Candidate::default(); 2];
    let mut greedy = Sampler::new(SamplerConfig::greedy(), &mut greedy_ws).unwrap();
    assert!(matches!(
        greedy.sample(&[f32::NAN, f32::NAN], &[]),
        Err(Error::CannotSample { .. })
    ));
    // A penalty that pushes the only finite logit to -inf leaves nothing either.
    let config = SamplerConfig {
        frequency_penalty: f32::MAX,
        ..SamplerConfig::greedy()
    };
    let mut ws = [Candidate::default(); 2];
    let mut s = Sampler::new(config, &mut ws).unwrap();
    assert!(matches!(
        s.sample(&[f32::NEG_INFINITY, -1.0], &[1, 1]),
        Err(Error::CannotSample { .. })
    ));
}

#[test]
fn defaults_are_llama_cpps() {
    let d = SamplerConfig::default();
    assert_eq!(
        (d.temperature, d.top_k, d.top_p, d.min_p),
        (0.8, 40, 0.95, 0.05)
    );
    assert_eq!(
        (
            d.repeat_penalty,
            d.frequency_penalty,
            d.presence_penalty,
            d.penalty_last_n,
            d.seed
        ),
        (1.0, 0.0, 0.0, 64, 0)
    );
}

//! `RouterStats` against direct computation from the logits and the selections.

#[path = "router_support.rs"]
mod support;

use moe_core::router::{Router, RouterConfig, RouterStats, ScoreFunc, Selection};
use proptest::prelude::*;
use support::Rng;

proptest! {
    #[test]
    fn stats_match_direct_computation(
        n_expert in 1usize..=64,
        n_tokens in 1usize..=40,
        sigmoid in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let k = 1 + rng.below(n_expert.min(6));
        let config = RouterConfig {
            score: if sigmoid { ScoreFunc::Sigmoid } else { ScoreFunc::Softmax },
            ..RouterConfig::mixtral(1, n_expert, k)
        };
        let router = Router::new(config).unwrap();
        let logits: Vec<f32> = (0..n_tokens * n_expert).map(|_| rng.uniform(-4.0, 4.0)).collect();
        let (mut counts, mut drops, mut probs, mut weights) =
            (vec![7u32; n_expert], vec![7u32; n_expert], vec![7f64; n_expert], vec![7f64; n_expert]);
        let mut stats = RouterStats::new(&mut counts, &mut drops, &mut probs, &mut weights).unwrap();
        let mut scratch = vec![0.0; router.logits_scratch_len(n_tokens)];
        let mut out = vec![Selection::new(); n_tokens];
        // Two half batches accumulate like one.
        let half = n_tokens / 2;
        router.route_logits(&logits[..half * n_expert], &[], &mut scratch, &mut out[..half], Some(&mut stats)).unwrap();
        router.route_logits(&logits[half * n_expert..], &[], &mut scratch, &mut out[half..], Some(&mut stats)).unwrap();

        let mut want_count = vec![0u32; n_expert];
        let mut want_weight = vec![0f64; n_expert];
        let mut want_p = vec![0f64; n_expert];
        let (mut z, mut h) = (0f64, 0f64);
        for t in 0..n_tokens {
            let row: Vec<f64> = logits[t * n_expert..(t + 1) * n_expert].iter().map(|&x| f64::from(x)).collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let zsum: f64 = row.iter().map(|l| (l - m).exp()).sum();
            let lse = m + zsum.ln();
            z += lse * lse;
            for e in 0..n_expert {
                let p = (row[e] - lse).exp();
                want_p[e] += p;
                h -= p * p.ln();
            }
            for c in out[t].iter() {
                want_count[c.expert as usize] += 1;
                want_weight[c.expert as usize] += f64::from(c.weight);
            }
        }
        let n = n_tokens as f64;
        prop_assert_eq!(stats.tokens(), n_tokens as u64);
        prop_assert_eq!(stats.assignments(), (n_tokens * k) as u64);
        prop_assert_eq!(stats.tokens_per_expert(), &want_count[..]);
        let mut lb = 0.0;
        for e in 0..n_expert {
            let p = want_p[e] / n;
            prop_assert!((stats.mean_probability(e) - p).abs() < 1e-5);
            let f = f64::from(want_count[e]) / (n * k as f64);
            prop_assert!((stats.fraction(e) - f).abs() < 1e-12);
            lb += f * p;
            if want_count[e] > 0 {
                prop_assert!((stats.mean_weight(e) - want_weight[e] / f64::from(want_count[e])).abs() < 1e-6);
            }
        }
        prop_assert!((stats.load_balancing() - n_expert as f64 * lb).abs() < 1e-4);
        prop_assert!((stats.z_loss() - z / n).abs() < 1e-3 * (z / n).max(1.0));
        prop_assert!((stats.router_entropy() - h / n).abs() < 1e-4);
        // Renormalised weights average 1/k per assignment.
        prop_assert!((stats.mean_weight_overall() - 1.0 / k as f64).abs() < 1e-5);
        let le = stats.load_entropy();
        prop_assert!(le >= -1e-12 && le <= (n_expert as f64).ln() + 1e-9);
    }
}

#[test]
fn uniform_router_balances_to_one_and_drops_count() {
    let router = Router::new(RouterConfig::mixtral(1, 8, 2)).unwrap();
    let (mut a, mut b, mut c, mut d) = ([0u32; 8], [0u32; 8], [0f64; 8], [0f64; 8]);
    let mut stats = RouterStats::new(&mut a, &mut b, &mut c, &mut d).unwrap();
    let mut scratch = vec![0.0; router.logits_scratch_len(16)];
    let mut out = vec![Selection::new(); 16];
    router
        .route_logits(&[0.0; 128], &[], &mut scratch, &mut out, Some(&mut stats))
        .unwrap();
    // Uniform probabilities: N · Σ f P = 1 whatever f is.
    assert!((stats.load_balancing() - 1.0).abs() < 1e-9);
    assert!((stats.router_entropy() - 8f64.ln()).abs() < 1e-6);
    assert!((stats.z_loss() - 8f64.ln().powi(2)).abs() < 1e-5);
    // Ties give every token experts 0 and 1: the load entropy of two equal experts.
    assert!((stats.load_entropy() - 2f64.ln()).abs() < 1e-12);
    stats.record_drop(1).unwrap();
    stats.record_drop(1).unwrap();
    stats.record_drop(5).unwrap();
    assert_eq!(stats.drops(), 3);
    assert_eq!(stats.drops_per_expert(), &[0, 2, 0, 0, 0, 1, 0, 0]);
    stats.reset();
    assert_eq!(stats.tokens(), 0);
    assert_eq!(stats.drops(), 0);
}

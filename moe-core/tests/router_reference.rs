//! The fast router against `reference::router` for random configurations of every kind:
//! E from 1 to 1024, k up to min(E, 64), scores, biases, groups, masks, renormalisation,
//! scale, and the top-k, greedy, hash and S-BASE methods.

#[path = "router_support.rs"]
mod support;

use moe_core::Error;
use moe_core::TensorType;
use moe_core::reference::router as reference;
use moe_core::router::{Method, Router, RouterConfig, Selection};
use moe_core::tensor::TensorView;
use proptest::prelude::*;
use support::{Rng, check_same, f32_bytes, random_case};

/// Expert counts: small ones often, real ones (8, 60, 64, 160, 256) and the 1024 limit.
fn n_expert() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..=16,
        17usize..=300,
        prop::sample::select(vec![8usize, 60, 64, 128, 160, 256, 384, 512, 1000, 1024]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// Identical ids except at near-ties (1e-6 relative), weights within 1e-6.
    #[test]
    fn fast_equals_reference(n_expert in n_expert(), seed in any::<u64>()) {
        let case = random_case(n_expert, seed);
        let (fast, report) = case.route_fast();
        let (reference, ranked) = case.route_reference();
        // S-BASE ranks by l + log d1, whose Sinkhorn sums run in different orders.
        let tie = if matches!(case.config.method, Method::SBase { .. }) { 1e-4 } else { 1e-6 };
        for t in 0..case.n_tokens {
            if let Err(msg) = check_same(&fast[t], &reference[t], &ranked[t], tie, 1e-6) {
                prop_assert!(false, "token {t}: {msg}\n{:?}", case.config);
            }
        }
        let k = case.config.experts_per_token();
        let short = reference.iter().filter(|s| s.len() < k).count();
        prop_assert_eq!(report.short_selections, short);
        let nan_logits = case
            .logits
            .chunks(n_expert)
            .flat_map(|row| row.iter().enumerate().filter(|(e, l)| case.active[*e] && l.is_nan()))
            .count();
        if case.config.needs_logits() {
            prop_assert!(report.nan_scores >= nan_logits);
        }
    }

    /// `Router::token_choice` builds the very router `Router::new` builds for top-k and
    /// greedy configs (bit for bit, reports included) and refuses the other methods.
    #[test]
    fn token_choice_routers_equal_new_ones(n_expert in n_expert(), seed in any::<u64>()) {
        let case = random_case(n_expert, seed);
        let built = Router::token_choice(case.config);
        if !matches!(case.config.method, Method::TopK | Method::Greedy) {
            let refused = matches!(built, Err(Error::InvalidRouterConfig { .. }));
            prop_assert!(refused, "{:?}", case.config.method);
            return Ok(());
        }
        let t = case.tensors();
        let (general, special) = (case.router(&t), case.router_from(&t, built.unwrap()));
        let route = |router: &Router| {
            let mut scratch = vec![f32::NAN; router.logits_scratch_len(case.n_tokens)];
            let mut out = vec![Selection::new(); case.n_tokens];
            let report = router
                .route_logits(&case.logits, &case.token_ids, &mut scratch, &mut out, None)
                .unwrap();
            let bits: Vec<Vec<(u32, u32)>> = out
                .iter()
                .map(|s| s.iter().map(|c| (c.expert, c.weight.to_bits())).collect())
                .collect();
            (bits, report)
        };
        prop_assert_eq!(route(&general), route(&special));
    }

    /// Routing from hidden states (logits computed from a quantized or float router
    /// weight) agrees with the reference logits, up to the summation order.
    #[test]
    fn route_from_hidden_matches_reference_logits(
        n_expert in 1usize..=64,
        ty in prop::sample::select(vec![TensorType::F32, TensorType::F16, TensorType::BF16, TensorType::Q8_0, TensorType::Q4_0, TensorType::Q5_1]),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let n_embd = 256;
        let mut case = random_case(n_expert, seed);
        case.config.n_embd = n_embd;
        let weights: Vec<f32> = (0..n_embd * n_expert).map(|_| rng.uniform(-0.2, 0.2)).collect();
        let mut bytes = vec![0u8; ty.bytes_for((n_embd * n_expert) as u64).unwrap() as usize];
        let row_bytes = bytes.len() / n_expert;
        for e in 0..n_expert {
            moe_core::quant::quantize_row(
                ty,
                &weights[e * n_embd..(e + 1) * n_embd],
                &mut bytes[e * row_bytes..(e + 1) * row_bytes],
            )
            .unwrap();
        }
        let view = TensorView::new(ty, &[n_embd as u64, n_expert as u64], &bytes).unwrap();
        let hidden: Vec<f32> = (0..case.n_tokens * n_embd).map(|_| rng.uniform(-1.0, 1.0)).collect();
        // Reference logits (inactive experts read as -inf, as the fast path leaves them).
        let mut row = vec![0.0; n_embd];
        let mut logits = vec![0.0; case.n_tokens * n_expert];
        for t in 0..case.n_tokens {
            reference::logits(&view, &hidden[t * n_embd..(t + 1) * n_embd], None, &mut row, &mut logits[t * n_expert..(t + 1) * n_expert]).unwrap();
        }
        for (i, l) in logits.iter_mut().enumerate() {
            if !case.active[i % n_expert] {
                *l = f32::NEG_INFINITY;
            }
        }
        case.logits = logits;
        let (reference, ranked) = case.route_reference();
        let tensors = case.tensors();
        let router = case.router(&tensors).with_weight(view).unwrap();
        let mut scratch = vec![0.0; router.scratch_len(case.n_tokens)];
        let mut out = vec![Selection::new(); case.n_tokens];
        router.route(&hidden, &case.token_ids, &mut scratch, &mut out, None).unwrap();
        // The fast path and the reference sum the 256 products of a logit in different
        // orders: they may differ by up to about 2·n·ε·Σ|w·x| = 2·256·2^-24·(256·0.2·1)
        // ≈ 1.6e-3, which moves a softmax or sigmoid score by at most that much
        // relatively. Rankings closer than that may legitimately differ, and weights may
        // differ by that much; the selection logic itself is held to 1e-6 from identical
        // logits in `fast_equals_reference`.
        const SUMMATION_BOUND: f32 = 2e-3;
        for t in 0..case.n_tokens {
            if let Err(msg) = check_same(&out[t], &reference[t], &ranked[t], SUMMATION_BOUND, SUMMATION_BOUND) {
                prop_assert!(false, "token {t}: {msg}");
            }
        }
    }
}

/// Every combination of the small configuration space, exhaustively, on one seed each.
#[test]
fn many_seeds_small_e() {
    for seed in 0..3000u64 {
        let case = random_case(
            1 + (seed % 24) as usize,
            seed.wrapping_mul(0x2545_F491_4F6C_DD1D),
        );
        let (fast, _) = case.route_fast();
        let (reference, ranked) = case.route_reference();
        let tie = if matches!(case.config.method, Method::SBase { .. }) {
            1e-4
        } else {
            1e-6
        };
        for t in 0..case.n_tokens {
            check_same(&fast[t], &reference[t], &ranked[t], tie, 1e-6)
                .unwrap_or_else(|m| panic!("seed {seed} token {t}: {m}\n{case:?}"));
        }
    }
}

/// The reference logits are the plain sum, and the fast router's use them: a hand case.
#[test]
fn reference_logits_by_hand() {
    let w = f32_bytes(&[1.0, 2.0, 3.0, -1.0, 0.0, 0.5]);
    let view = TensorView::new(TensorType::F32, &[3, 2], &w).unwrap();
    let mut row = [0.0; 3];
    let mut out = [0.0; 2];
    reference::logits(&view, &[1.0, 1.0, 2.0], None, &mut row, &mut out).unwrap();
    assert_eq!(out, [9.0, 0.0]);
    let router = Router::new(RouterConfig::top_k(3, 2, 1))
        .unwrap()
        .with_weight(view)
        .unwrap();
    let mut scratch = vec![0.0; router.scratch_len(1)];
    let mut sel = [Selection::new()];
    router
        .route(&[1.0, 1.0, 2.0], &[], &mut scratch, &mut sel, None)
        .unwrap();
    assert_eq!(sel[0][0].expert, 0);
    let p0 = 1.0 / (1.0 + (-9.0f32).exp());
    assert!((sel[0][0].weight - p0).abs() < 1e-6);
}

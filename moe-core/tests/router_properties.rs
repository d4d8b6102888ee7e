//! Properties every router must have, independent of the reference: the Mixtral identity,
//! bias only for selection, group limits, hash routing by token id alone, masks that
//! reproduce the pre-append router bit for bit, Sinkhorn balance, and the tie rule.

#![allow(clippy::needless_range_loop)]

#[path = "router_support.rs"]
mod support;

use moe_core::TensorType;
use moe_core::reference::router as reference;
use moe_core::router::{
    ExpertMask, GroupLimit, GroupScore, HashGate, Method, NoisyGating, Normalize, Router,
    RouterConfig, ScoreFunc, Selection, sinkhorn,
};
use moe_core::tensor::TensorView;
use proptest::prelude::*;
use support::{Rng, close, f32_bytes};

fn random_logits(rng: &mut Rng, n: usize, spread: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-spread, spread)).collect()
}

fn route_logits(router: &Router, logits: &[f32], token_ids: &[u32]) -> Vec<Selection> {
    let n_tokens = logits.len() / router.config().n_expert;
    let mut scratch = vec![0.0; router.logits_scratch_len(n_tokens)];
    let mut out = vec![Selection::new(); n_tokens];
    router
        .route_logits(logits, token_ids, &mut scratch, &mut out, None)
        .unwrap();
    out
}

fn ids(sel: &Selection) -> Vec<u32> {
    sel.iter().map(|c| c.expert).collect()
}

/// The k-th and (k+1)-th values of `v` (descending) differ by more than 1e-6 relative.
fn clear_gap(v: &[f32], k: usize) -> bool {
    let mut s = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    k >= s.len() || (s[k - 1] - s[k]).abs() > 1e-6 * s[k - 1].abs().max(s[k].abs())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Softmax over all → top-k → renormalise equals softmax over the selected logits.
    #[test]
    fn mixtral_identity(n_expert in 1usize..=512, k_pick in 0usize..64, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let k = 1 + k_pick % n_expert.min(64);
        let logits = random_logits(&mut rng, 4 * n_expert, 10.0);
        let all = Router::new(RouterConfig::mixtral(1, n_expert, k)).unwrap();
        let selected = Router::new(RouterConfig {
            score: ScoreFunc::SoftmaxSelected,
            ..RouterConfig::top_k(1, n_expert, k)
        })
        .unwrap();
        let (a, b) = (route_logits(&all, &logits, &[]), route_logits(&selected, &logits, &[]));
        for t in 0..4 {
            let row = &logits[t * n_expert..(t + 1) * n_expert];
            // Probabilities can tie by rounding where logits do not: compare where clear.
            if !clear_gap(row, k) {
                continue;
            }
            prop_assert_eq!(ids(&a[t]), ids(&b[t]));
            for (x, y) in a[t].iter().zip(b[t].iter()) {
                prop_assert!(close(x.weight, y.weight, 1e-6), "{:?} vs {:?}", a[t], b[t]);
            }
            let sum: f32 = a[t].iter().map(|c| c.weight).sum();
            prop_assert!((sum - 1.0).abs() < 1e-5);
        }
    }

    /// The bias moves the selection but the weights are the unbiased scores of whatever
    /// was selected (DeepSeek-V3); a zero bias changes nothing, bit for bit.
    #[test]
    fn bias_changes_only_selection(n_expert in 2usize..=256, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let k = 1 + rng.below(n_expert.min(8));
        let config = RouterConfig {
            score: ScoreFunc::Sigmoid,
            normalize: Normalize::Sum { epsilon: 1e-20 },
            scale: 2.5,
            ..RouterConfig::top_k(1, n_expert, k)
        };
        let logits = random_logits(&mut rng, 3 * n_expert, 4.0);
        let bias: Vec<f32> = (0..n_expert).map(|_| rng.uniform(-3.0, 3.0)).collect();
        let (bias_bytes, zero_bytes) = (f32_bytes(&bias), f32_bytes(&vec![0.0; n_expert]));
        let view = |b| TensorView::new(TensorType::F32, &[n_expert as u64], b).unwrap();
        let plain = Router::new(config).unwrap();
        let biased = plain.with_bias(view(&bias_bytes)).unwrap();
        let zero = plain.with_bias(view(&zero_bytes)).unwrap();
        let (p, b, z) = (
            route_logits(&plain, &logits, &[]),
            route_logits(&biased, &logits, &[]),
            route_logits(&zero, &logits, &[]),
        );
        prop_assert_eq!(&p, &z);
        for t in 0..3 {
            let row = &logits[t * n_expert..(t + 1) * n_expert];
            let s: Vec<f32> = row.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect();
            let sum: f32 = b[t].iter().map(|c| s[c.expert as usize]).sum();
            for c in b[t].iter() {
                let want = s[c.expert as usize] / (sum + 1e-20) * 2.5;
                prop_assert!(close(c.weight, want, 1e-5), "{} vs {want}", c.weight);
            }
            // The selection is the top-k of s + b.
            let keys: Vec<f32> = s.iter().zip(&bias).map(|(s, b)| s + b).collect();
            if clear_gap(&keys, k) {
                let mut order: Vec<usize> = (0..n_expert).collect();
                order.sort_by(|&x, &y| keys[y].total_cmp(&keys[x]).then(x.cmp(&y)));
                let want: Vec<u32> = order[..k].iter().map(|&e| e as u32).collect();
                prop_assert_eq!(ids(&b[t]), want);
            }
        }
    }

    /// Every chosen expert lies in one of the `topk_group` best groups, and
    /// `topk_group = n_group` is ungrouped top-k.
    #[test]
    fn groups_limit_selection(
        n_group in prop::sample::select(vec![2usize, 4, 8, 16]),
        per_group in 1usize..=32,
        sum_top in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let n_expert = n_group * per_group;
        let topk_group = 1 + rng.below(n_group);
        let k = 1 + rng.below((topk_group * per_group).min(64));
        let m = 1 + rng.below(per_group.min(2));
        let score = if sum_top { GroupScore::SumTop(m as u32) } else { GroupScore::Max };
        let base = RouterConfig {
            score: ScoreFunc::Sigmoid,
            normalize: Normalize::Sum { epsilon: 0.0 },
            ..RouterConfig::top_k(1, n_expert, k)
        };
        let grouped = RouterConfig {
            groups: Some(GroupLimit { n_group: n_group as u32, topk_group: topk_group as u32, score }),
            ..base
        };
        let all_groups = RouterConfig {
            groups: Some(GroupLimit { n_group: n_group as u32, topk_group: n_group as u32, score }),
            ..base
        };
        let logits = random_logits(&mut rng, 4 * n_expert, 6.0);
        let g = route_logits(&Router::new(grouped).unwrap(), &logits, &[]);
        let u = route_logits(&Router::new(base).unwrap(), &logits, &[]);
        let a = route_logits(&Router::new(all_groups).unwrap(), &logits, &[]);
        prop_assert_eq!(&u, &a);
        for t in 0..4 {
            let row = &logits[t * n_expert..(t + 1) * n_expert];
            let s: Vec<f32> = row.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect();
            let group_score: Vec<f32> = (0..n_group)
                .map(|grp| {
                    let mut v = s[grp * per_group..(grp + 1) * per_group].to_vec();
                    v.sort_by(|a, b| b.total_cmp(a));
                    if sum_top { v[..m].iter().sum() } else { v[0] }
                })
                .collect();
            let mut order: Vec<usize> = (0..n_group).collect();
            order.sort_by(|&x, &y| group_score[y].total_cmp(&group_score[x]).then(x.cmp(&y)));
            if !clear_gap(&group_score, topk_group) {
                continue;
            }
            let chosen = &order[..topk_group];
            prop_assert_eq!(g[t].len(), k);
            for c in g[t].iter() {
                prop_assert!(chosen.contains(&(c.expert as usize / per_group)));
            }
        }
    }

    /// Hash routing depends on the token id alone (table or seeded hash): different
    /// hidden states, same experts; constant gates give the same weights too.
    #[test]
    fn hash_depends_on_token_id_only(n_expert in 1usize..=300, seed in any::<u64>(), use_table in any::<bool>()) {
        let mut rng = Rng(seed);
        let k = 1 + rng.below(n_expert.min(8));
        let n_vocab = 40;
        let n_embd = 8;
        let config = RouterConfig {
            method: Method::Hash { seed: rng.next(), gate: HashGate::Constant },
            normalize: Normalize::Sum { epsilon: 0.0 },
            ..RouterConfig::top_k(n_embd, n_expert, k)
        };
        let mut table = Vec::new();
        for _ in 0..n_vocab {
            let mut ids: Vec<i32> = (0..n_expert as i32).collect();
            for j in 0..k {
                let pick = j + rng.below(n_expert - j);
                ids.swap(j, pick);
                table.push(ids[j]);
            }
        }
        let table_bytes = support::i32_bytes(&table);
        let mut router = Router::new(config).unwrap();
        if use_table {
            let view = TensorView::new(TensorType::I32, &[k as u64, n_vocab as u64], &table_bytes).unwrap();
            router = router.with_hash_table(view).unwrap();
        }
        let tokens: Vec<u32> = (0..6).map(|_| rng.below(n_vocab) as u32).collect();
        let route = |hidden: &[f32]| {
            let mut scratch = vec![0.0; router.scratch_len(6)];
            let mut out = vec![Selection::new(); 6];
            router.route(hidden, &tokens, &mut scratch, &mut out, None).unwrap();
            out
        };
        let h1: Vec<f32> = (0..6 * n_embd).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let h2: Vec<f32> = (0..6 * n_embd).map(|_| rng.uniform(-5.0, 5.0)).collect();
        let (a, b) = (route(&h1), route(&h2));
        prop_assert_eq!(&a, &b);
        for (t, sel) in a.iter().enumerate() {
            prop_assert_eq!(sel.len(), k);
            for c in sel.iter() {
                prop_assert!((c.weight - 1.0 / k as f32).abs() < 1e-6);
            }
            if use_table {
                let row = &table[tokens[t] as usize * k..(tokens[t] as usize + 1) * k];
                prop_assert_eq!(ids(sel), row.iter().map(|&x| x as u32).collect::<Vec<_>>());
            }
            // The same token id always routes the same way.
            for (u, other) in a.iter().enumerate() {
                if tokens[u] == tokens[t] {
                    prop_assert_eq!(sel, other);
                }
            }
        }
    }

    /// Lifelong-MoE: appending experts and router rows, then routing with the mask set to
    /// the original experts, reproduces the old router bit for bit (weights and ids).
    #[test]
    fn mask_reproduces_pre_append_router(
        n_old in 1usize..=128,
        n_new in 1usize..=64,
        score in prop::sample::select(vec![ScoreFunc::Softmax, ScoreFunc::Sigmoid, ScoreFunc::SoftmaxSelected]),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let n_embd = 32;
        let n_expert = n_old + n_new;
        let k = 1 + rng.below(n_old.min(8));
        let old_w: Vec<f32> = (0..n_embd * n_old).map(|_| rng.uniform(-0.5, 0.5)).collect();
        let mut new_w = old_w.clone();
        new_w.extend((0..n_embd * n_new).map(|_| rng.uniform(-2.0, 2.0)));
        let (old_b, new_b) = (f32_bytes(&old_w), f32_bytes(&new_w));
        let config = |n| RouterConfig { score, normalize: Normalize::Sum { epsilon: 0.0 }, ..RouterConfig::top_k(n_embd, n, k) };
        let old = Router::new(config(n_old)).unwrap()
            .with_weight(TensorView::new(TensorType::F32, &[n_embd as u64, n_old as u64], &old_b).unwrap()).unwrap();
        let grown = Router::new(config(n_expert)).unwrap()
            .with_weight(TensorView::new(TensorType::F32, &[n_embd as u64, n_expert as u64], &new_b).unwrap()).unwrap();
        let mut bits = vec![0u64; n_expert.div_ceil(64)];
        for e in 0..n_old {
            bits[e / 64] |= 1 << (e % 64);
        }
        let first = grown.with_mask(ExpertMask::First(n_old)).unwrap();
        let bitset = grown.with_mask(ExpertMask::Bits(&bits)).unwrap();
        let hidden: Vec<f32> = (0..5 * n_embd).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let route = |r: &Router| {
            let mut scratch = vec![0.0; r.scratch_len(5)];
            let mut out = vec![Selection::new(); 5];
            r.route(&hidden, &[], &mut scratch, &mut out, None).unwrap();
            out.iter().map(|s| s.iter().map(|c| (c.expert, c.weight.to_bits())).collect::<Vec<_>>()).collect::<Vec<_>>()
        };
        let want = route(&old);
        prop_assert_eq!(&route(&first), &want);
        prop_assert_eq!(&route(&bitset), &want);
    }

    /// Sinkhorn: the balanced plan has row sums 1/T and column sums 1/E, the fast and
    /// reference scalings agree, and S-BASE takes each row's argmax of the plan.
    ///
    /// Sinkhorn's convergence slows down without bound as the logits spread (a 2 × 2
    /// matrix with logits ±7.8 is still 1e-5 off after 2000 iterations, a saved case), so
    /// convergence is required only where the plan is well conditioned (spread ≤ 2); a run
    /// that stops unconverged must say so, use every iteration, and agree with the
    /// reference, which stops at the same point.
    #[test]
    fn sinkhorn_balances(n_tokens in 1usize..=64, n_expert in 1usize..=64, spread in 0.1f32..8.0, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let logits = random_logits(&mut rng, n_tokens * n_expert, spread);
        let (mut d0, mut d1, mut work) = (vec![0.0; n_tokens], vec![0.0; n_expert], vec![0.0; n_expert]);
        let report = sinkhorn::balance(&logits, &ExpertMask::All, 2000, 1e-5, &mut d0, &mut d1, &mut work).unwrap();
        if !report.converged {
            prop_assert!(spread > 2.0, "{report:?}");
            prop_assert_eq!(report.iterations, 2000);
            prop_assert!(report.error > 1e-5, "{report:?}");
            let (mut r0, mut r1) = (vec![0.0; n_tokens], vec![0.0; n_expert]);
            let r = reference::sinkhorn(&logits, &reference::Inputs::default(), 2000, 1e-5, &mut r0, &mut r1);
            prop_assert_eq!(r.iterations, report.iterations);
            return Ok(());
        }
        let plan = |t: usize, e: usize| f64::from(d0[t] + logits[t * n_expert + e] + d1[e]).exp();
        for t in 0..n_tokens {
            let row: f64 = (0..n_expert).map(|e| plan(t, e)).sum();
            prop_assert!((row * n_tokens as f64 - 1.0).abs() < 1e-4, "row {t}: {row}");
        }
        for e in 0..n_expert {
            let col: f64 = (0..n_tokens).map(|t| plan(t, e)).sum();
            prop_assert!((col * n_expert as f64 - 1.0).abs() < 1e-4, "col {e}: {col}");
        }
        let (mut r0, mut r1) = (vec![0.0; n_tokens], vec![0.0; n_expert]);
        let inputs = reference::Inputs::default();
        let r = reference::sinkhorn(&logits, &inputs, 2000, 1e-5, &mut r0, &mut r1);
        prop_assert_eq!(r.iterations, report.iterations);
        for e in 0..n_expert {
            prop_assert!((r1[e] - d1[e]).abs() < 1e-3 * d1[e].abs().max(1.0));
        }
        // S-BASE picks argmax_e P[t, e] (where the row's best is clear).
        let config = RouterConfig {
            method: Method::SBase { iterations: 2000, tolerance: 1e-5 },
            ..RouterConfig::top_k(1, n_expert, 1)
        };
        let out = route_logits(&Router::new(config).unwrap(), &logits, &[]);
        for t in 0..n_tokens {
            let p: Vec<f32> = (0..n_expert).map(|e| plan(t, e) as f32).collect();
            if clear_gap(&p, 1) {
                let best = (0..n_expert).max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a))).unwrap();
                prop_assert_eq!(out[t][0].expert as usize, best);
            }
        }
    }

    /// Noisy gating: the fast router adds the same seeded noise as the reference and
    /// replays it exactly.
    #[test]
    fn noisy_gating_matches_reference(n_expert in 2usize..=64, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let n_embd = 16;
        let k = 1 + rng.below(n_expert.min(4));
        let w: Vec<f32> = (0..n_embd * n_expert).map(|_| rng.uniform(-0.5, 0.5)).collect();
        let wn: Vec<f32> = (0..n_embd * n_expert).map(|_| rng.uniform(-0.5, 0.5)).collect();
        let (wb, wnb) = (f32_bytes(&w), f32_bytes(&wn));
        let dims = [n_embd as u64, n_expert as u64];
        let noise = NoisyGating { seed: rng.next(), epsilon: 1e-2 };
        let config = RouterConfig {
            score: ScoreFunc::SoftmaxSelected,
            noise: Some(noise),
            ..RouterConfig::top_k(n_embd, n_expert, k)
        };
        let view = |b| TensorView::new(TensorType::F32, &dims, b).unwrap();
        let noisy = Router::new(config).unwrap().with_weight(view(&wb)).unwrap().with_noise_weight(view(&wnb)).unwrap();
        let hidden: Vec<f32> = (0..3 * n_embd).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let mut scratch = vec![0.0; noisy.scratch_len(3)];
        let mut out = vec![Selection::new(); 3];
        noisy.route(&hidden, &[], &mut scratch, &mut out, None).unwrap();
        let mut row = vec![0.0; n_embd];
        let (mut l, mut s, mut c, mut o) = (vec![0.0; n_expert], vec![0.0; n_expert], vec![0.0; n_expert], vec![0; n_expert]);
        for t in 0..3 {
            reference::logits(&view(&wb), &hidden[t * n_embd..(t + 1) * n_embd], Some((noise.seed, t as u64, noise.epsilon, &view(&wnb))), &mut row, &mut l).unwrap();
            let want = reference::route_token(&config, &l, 0, &reference::Inputs::default(), &mut s, &mut c, &mut o);
            let sel = &out[t];
            support::check_same(sel, &want, &c, 1e-5, 1e-5).map_err(TestCaseError::fail)?;
        }
        // The same seed replays the same routing, bit for bit.
        let mut again = vec![Selection::new(); 3];
        noisy.route(&hidden, &[], &mut scratch, &mut again, None).unwrap();
        prop_assert_eq!(&out, &again);
    }
}

/// Ties: equal scores rank by lower index, and -0 equals +0.
#[test]
fn ties_go_to_the_lower_index() {
    let router = Router::new(RouterConfig::top_k(1, 6, 3)).unwrap();
    let out = route_logits(&router, &[1.0, 2.0, 1.0, 2.0, 2.0, 0.0], &[]);
    assert_eq!(ids(&out[0]), [1, 3, 4]);
    let sig = Router::new(RouterConfig {
        score: ScoreFunc::SoftmaxSelected,
        ..RouterConfig::top_k(1, 4, 2)
    })
    .unwrap();
    let out = route_logits(&sig, &[-1.0, 0.0, -0.0, -2.0], &[]);
    assert_eq!(ids(&out[0]), [1, 2]);
    let out = route_logits(&sig, &[-1.0, -0.0, 0.0, -2.0], &[]);
    assert_eq!(ids(&out[0]), [1, 2]);
    // k = 64 of 1024 equal logits: the first 64 experts in order.
    let big = Router::new(RouterConfig::top_k(1, 1024, 64)).unwrap();
    let out = route_logits(&big, &vec![0.5; 1024], &[]);
    assert_eq!(ids(&out[0]), (0..64).collect::<Vec<u32>>());
}

/// NaN logits count as -inf (never beating a finite score) and are reported; a token with
/// no finite logit still gets k experts (the lowest ids) with weight 0.
#[test]
fn nan_counts_as_negative_infinity() {
    let router = Router::new(RouterConfig::mixtral(1, 5, 2)).unwrap();
    let logits = [f32::NAN, -50.0, f32::NAN, -60.0, f32::NAN];
    let mut scratch = vec![0.0; router.logits_scratch_len(1)];
    let mut out = vec![Selection::new(); 1];
    let report = router
        .route_logits(&logits, &[], &mut scratch, &mut out, None)
        .unwrap();
    assert_eq!(report.nan_scores, 3);
    assert_eq!(ids(&out[0]), [1, 3]);
    assert!(out[0].iter().all(|c| c.weight.is_finite()));
    let all_nan = [f32::NAN; 5];
    let report = router
        .route_logits(&all_nan, &[], &mut scratch, &mut out, None)
        .unwrap();
    assert_eq!(report.nan_scores, 5);
    assert_eq!(ids(&out[0]), [0, 1]);
    assert!(out[0].iter().all(|c| c.weight == 0.0));
    // +inf takes all the mass.
    router
        .route_logits(
            &[0.0, f32::INFINITY, 1.0, 0.0, 0.0],
            &[],
            &mut scratch,
            &mut out,
            None,
        )
        .unwrap();
    assert_eq!(out[0][0].expert, 1);
    assert_eq!(out[0][0].weight, 1.0);
    // A NaN hidden state makes every logit NaN; sigmoid routing reports them all.
    let w = f32_bytes(&[1.0; 10]);
    let sig = Router::new(RouterConfig {
        score: ScoreFunc::Sigmoid,
        ..RouterConfig::top_k(2, 5, 2)
    })
    .unwrap()
    .with_weight(TensorView::new(TensorType::F32, &[2, 5], &w).unwrap())
    .unwrap();
    let mut scratch = vec![0.0; sig.scratch_len(1)];
    let report = sig
        .route(&[f32::NAN, 1.0], &[], &mut scratch, &mut out, None)
        .unwrap();
    assert_eq!(report.nan_scores, 5);
    assert_eq!(ids(&out[0]), [0, 1]);
}

/// Greedy top-1 (BASE / RL-R at inference): the argmax with its unnormalised score.
#[test]
fn greedy_is_top1_with_raw_score() {
    let config = RouterConfig {
        method: Method::Greedy,
        normalize: Normalize::Sum { epsilon: 0.0 },
        ..RouterConfig::top_k(1, 4, 3)
    };
    let out = route_logits(&Router::new(config).unwrap(), &[0.0, 3.0, 1.0, 3.0], &[]);
    assert_eq!(ids(&out[0]), [1]);
    let z = 1.0 + 3f32.exp() * 2.0 + 1f32.exp();
    assert!((out[0][0].weight - 3f32.exp() / z).abs() < 1e-6);
    let sig = RouterConfig {
        score: ScoreFunc::Sigmoid,
        ..config
    };
    let out = route_logits(&Router::new(sig).unwrap(), &[0.0, 3.0, 1.0, 3.0], &[]);
    assert!((out[0][0].weight - 1.0 / (1.0 + (-3f32).exp())).abs() < 1e-6);
}

/// The seeded hash spreads tokens over the active experts only.
#[test]
fn seeded_hash_uses_active_experts() {
    let bits = [0b1010_1010u64];
    let config = RouterConfig {
        method: Method::Hash {
            seed: 7,
            gate: HashGate::Constant,
        },
        ..RouterConfig::top_k(1, 8, 2)
    };
    let router = Router::new(config)
        .unwrap()
        .with_mask(ExpertMask::Bits(&bits))
        .unwrap();
    let tokens: Vec<u32> = (0..200).collect();
    let out = route_logits(&router, &vec![0.0; 8 * 200], &tokens);
    let mut seen = [0usize; 8];
    for sel in &out {
        assert_eq!(sel.len(), 2);
        assert_ne!(sel[0].expert, sel[1].expert);
        for c in sel.iter() {
            assert!(c.expert % 2 == 1);
            seen[c.expert as usize] += 1;
        }
    }
    assert!(seen.iter().skip(1).step_by(2).all(|&n| n > 50), "{seen:?}");
}

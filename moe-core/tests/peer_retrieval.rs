//! Product-key retrieval against brute force over all N = n² keys.
//!
//! On sub-key scores the two compute the same f32 sums, so the comparison is exact: the
//! product-key top `k_final ≤ k` has the same scores as the brute-force top always, and the
//! same experts whenever the `k_final`-th and next scores of all N keys differ. At the
//! layer, the reference scores every full key as one dot product (other rounding), so ids
//! must agree wherever the reference's boundary gap exceeds the rounding.

mod moe_util;
mod peer_util;

use moe_core::peer::{IndexMajor, ScoreActivation, TopList, product_key_topk};
use moe_core::reference::peer::brute_force_topk;
use moe_util::Rng;
use peer_util::{Extras, Model, Types, config, forward, reference_forward};
use proptest::prelude::*;

/// Sub-key scores: continuous, or drawn from a few values so ties are common.
fn scores(rng: &mut Rng, n: usize, tied: bool) -> Vec<f32> {
    (0..n)
        .map(|_| {
            if tied {
                (rng.below(5) as f32 - 2.0) * 0.25
            } else {
                rng.uniform(-2.0, 2.0)
            }
        })
        .collect()
}

fn top(scores: &[f32], k: usize) -> TopList {
    let mut t = TopList::new(k);
    for (i, &s) in scores.iter().enumerate() {
        t.push(s, i as u32);
    }
    t
}

/// All n² sums sorted best first (score descending), for the tie check.
fn all_sums_sorted(a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut all: Vec<f32> = a
        .iter()
        .flat_map(|x| b.iter().map(move |y| x + y))
        .collect();
    all.sort_by(|x, y| y.total_cmp(x));
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// N = n² up to 2^16: same scores always, same experts unless the boundary is tied.
    #[test]
    fn product_key_equals_brute_force(
        n in prop_oneof![1usize..=16, 17usize..=256],
        seed in any::<u64>(),
        tied in any::<bool>(),
        second in any::<bool>(),
    ) {
        let mut rng = Rng(seed);
        let k = 1 + rng.below(n.min(64));
        let k_final = 1 + rng.below(k);
        let major = if second { IndexMajor::Second } else { IndexMajor::First };
        let (a, b) = (scores(&mut rng, n, tied), scores(&mut rng, n, tied));
        let fast = product_key_topk(&top(&a, k), &top(&b, k), n as u32, major, k_final);
        let brute = brute_force_topk(&a, &b, major, k_final);
        prop_assert_eq!(fast.len(), brute.len());
        for (f, r) in fast.as_slice().iter().zip(&brute) {
            prop_assert_eq!(f.score, r.score);
        }
        let all = all_sums_sorted(&a, &b);
        if all.len() == k_final || all[k_final - 1] != all[k_final] {
            prop_assert_eq!(fast.as_slice(), &brute[..]);
        }
        // Ids are in range and distinct.
        let mut ids: Vec<u32> = fast.as_slice().iter().map(|s| s.index).collect();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), fast.len());
        prop_assert!(ids.iter().all(|&i| (i as usize) < n * n));
    }

    /// The bounded list equals sorting everything and taking the first k.
    #[test]
    fn top_list_is_a_sorted_prefix(n in 0usize..300, k in 1usize..=64, seed in any::<u64>(),
                                   tied in any::<bool>()) {
        let mut rng = Rng(seed);
        let s = scores(&mut rng, n, tied);
        // Push in a scrambled order: the result must not depend on it.
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut t = TopList::new(k);
        for &i in &order {
            t.push(s[i], i as u32);
        }
        let mut all: Vec<(f32, u32)> = s.iter().enumerate().map(|(i, &x)| (x, i as u32)).collect();
        all.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        let got: Vec<(f32, u32)> = t.as_slice().iter().map(|x| (x.score, x.index)).collect();
        prop_assert_eq!(&got[..], &all[..k.min(n)]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The layer's retrieval equals brute force over all N full keys (N up to 2^16),
    /// except where the reference's k_final-th and next scores are within rounding.
    #[test]
    fn layer_retrieval_equals_brute_force(n_keys in 2usize..=256, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let key_length = [4, 8][rng.below(2)];
        let k = 1 + rng.below(n_keys.min(16));
        let k_final = 1 + rng.below(k);
        let mut c = config(32, 1 + rng.below(3), n_keys, key_length, k, k_final);
        c.index_major = if rng.below(2) == 0 { IndexMajor::First } else { IndexMajor::Second };
        c.shared_keys = rng.below(2) == 0;
        c.score_activation = ScoreActivation::Relu;
        let extras = Extras { bias: rng.below(2) == 0, batch_norm: rng.below(2) == 0, norm: false };
        let model = Model::random(&mut rng, c, Types::F32, extras);
        let hidden: Vec<f32> = (0..2 * 32).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let (_, mut fast) = forward(&model.layer(), &hidden);
        let reference = model.reference();
        let (_, mut slow) = reference_forward(&reference, &hidden);
        fast.sort_by_key(|r| (r.token, r.head));
        slow.sort_by_key(|r| (r.token, r.head));
        // The reference's boundary gap, from its top k_final + 1.
        let mut wider = c;
        wider.experts_per_head = (k_final + 1).min(c.n_expert).min(k * k);
        let wide_model = moe_core::reference::peer::Peer { config: wider, ..reference };
        let (_, mut wide) = reference_forward(&wide_model, &hidden);
        wide.sort_by_key(|r| (r.token, r.head));
        for ((f, s), w) in fast.iter().zip(&slow).zip(&wide) {
            let scale = s.experts.iter().fold(1.0f32, |m, e| m.max(e.1.abs()));
            let tol = 1e-4 * scale;
            let gap_ok = w.experts.len() == k_final
                || w.experts[k_final - 1].1 - w.experts[k_final].1 > tol;
            prop_assert_eq!(f.experts.len(), s.experts.len());
            for (a, b) in f.experts.iter().zip(&s.experts) {
                prop_assert!((a.1 - b.1).abs() <= tol, "{:?} {:?}", f, s);
            }
            if gap_ok {
                let ids = |r: &peer_util::Retrieval| r.experts.iter().map(|e| e.0).collect::<Vec<_>>();
                prop_assert_eq!(ids(f), ids(s));
            }
        }
    }
}

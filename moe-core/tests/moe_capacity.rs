//! Capacity and dropping: no expert over capacity; a capacity of T·k drops nothing; the
//! kept pairs are exactly those the reference's definition keeps (sequence priority keeps
//! the earliest tokens, batch priority the most confident, every first choice before any
//! second); a dropped pair contributes zero and is counted and reported.

mod moe_util;

use moe_core::moe::capacity::{Capacity, CapacityPolicy, DropPriority};
use moe_core::moe::{Activation, Dispatch};
use moe_core::reference::moe::kept;
use moe_core::router::{Choice, Selection};
use moe_core::{Error, TensorType};
use moe_util::{Matrices, Model, Rng, SharedKind, random_hidden};
use proptest::prelude::*;

fn selection(choices: &[(u32, f32)]) -> Selection {
    let mut s = Selection::new();
    for &(expert, weight) in choices {
        s.push(Choice { expert, weight }).unwrap();
    }
    s
}

fn policy(capacity: Capacity, priority: DropPriority) -> CapacityPolicy {
    CapacityPolicy {
        capacity,
        min_capacity: 0,
        priority,
    }
}

/// Plans a dispatch, returning it with the experts reported to the drop hook.
fn plan<'w>(
    selections: &[Selection],
    n_expert: usize,
    k: usize,
    p: &CapacityPolicy,
    ws: &'w mut Vec<u8>,
) -> (Dispatch<'w>, Vec<u32>) {
    ws.resize(Dispatch::workspace_bytes(selections.len(), k, n_expert), 0);
    let mut drops = Vec::new();
    let d = Dispatch::plan(selections, n_expert, k, p, ws, |e| drops.push(e)).unwrap();
    (d, drops)
}

#[test]
fn sequence_priority_keeps_the_earliest_tokens() {
    // Four tokens all want expert 0 first; capacity 2.
    let sel: Vec<Selection> = (0..4)
        .map(|t| selection(&[(0, 0.1 * (t + 1) as f32), (1, 0.05)]))
        .collect();
    let mut ws = Vec::new();
    let p = policy(Capacity::Fixed(2), DropPriority::Sequence);
    let (d, drops) = plan(&sel, 2, 2, &p, &mut ws);
    let kept0: Vec<usize> = d.expert_pairs(0).map(|p| p.token).collect();
    assert_eq!(kept0, [0, 1]);
    let kept1: Vec<usize> = d.expert_pairs(1).map(|p| p.token).collect();
    assert_eq!(kept1, [0, 1]);
    assert_eq!(d.report().dropped, 4);
    assert_eq!(drops, [0, 0, 1, 1]);

    // Batch-prioritised: the most confident first choices win (tokens 3 and 2); second
    // choices then go in the same token order.
    let p = policy(Capacity::Fixed(2), DropPriority::BatchPrioritized);
    let (d, _) = plan(&sel, 2, 2, &p, &mut ws);
    let kept0: Vec<usize> = d.expert_pairs(0).map(|p| p.token).collect();
    assert_eq!(kept0, [2, 3]);
    let kept1: Vec<usize> = d.expert_pairs(1).map(|p| p.token).collect();
    assert_eq!(kept1, [2, 3]);
}

#[test]
fn first_choices_are_placed_before_second_choices() {
    // Token 0's second choice is expert 1; tokens 1 and 2 choose expert 1 first.
    // With capacity 2 the later first choices beat the earlier second choice.
    let sel = vec![
        selection(&[(0, 0.6), (1, 0.4)]),
        selection(&[(1, 0.7), (0, 0.3)]),
        selection(&[(1, 0.9), (0, 0.1)]),
    ];
    let mut ws = Vec::new();
    let p = policy(Capacity::Fixed(2), DropPriority::Sequence);
    let (d, _) = plan(&sel, 2, 2, &p, &mut ws);
    assert!(d.is_kept(1, 0) && d.is_kept(2, 0) && d.is_kept(0, 0));
    assert!(
        d.is_dropped(0, 1),
        "token 0's second choice must lose to first choices"
    );
    assert!(d.is_kept(1, 1) && !d.is_kept(2, 1));
}

#[test]
fn capacity_formulas_reach_dispatch() {
    // T = 8, k = 2, E = 4: Megatron cf 1 → ceil(4) = 4; Mesh-TF cf 1 → floor(2) = 2, with
    // min capacity 3 → 3.
    let sel: Vec<Selection> = (0..8).map(|_| selection(&[(0, 0.5), (1, 0.5)])).collect();
    let mut ws = Vec::new();
    for (p, c) in [
        (
            policy(Capacity::Megatron { factor: 1.0 }, DropPriority::Sequence),
            4,
        ),
        (
            policy(Capacity::MeshTf { factor: 1.0 }, DropPriority::Sequence),
            2,
        ),
        (
            CapacityPolicy {
                min_capacity: 3,
                ..policy(Capacity::MeshTf { factor: 1.0 }, DropPriority::Sequence)
            },
            3,
        ),
    ] {
        let (d, drops) = plan(&sel, 4, 2, &p, &mut ws);
        assert_eq!(d.report().capacity, Some(c));
        assert_eq!(d.load(0), c);
        assert_eq!(drops.len(), 2 * (8 - c));
    }
}

#[test]
fn bad_selections_are_errors() {
    let mut ws = vec![0u8; Dispatch::workspace_bytes(1, 1, 2)];
    let p = CapacityPolicy::DROPLESS;
    let out_of_range = [selection(&[(2, 1.0)])];
    assert!(matches!(
        Dispatch::plan(&out_of_range, 2, 1, &p, &mut ws, |_| {}),
        Err(Error::ExpertOutOfRange { .. })
    ));
    let too_many = [selection(&[(0, 1.0), (1, 1.0)])];
    assert!(matches!(
        Dispatch::plan(&too_many, 2, 1, &p, &mut ws, |_| {}),
        Err(Error::TooManyChoices { .. })
    ));
    let ok = [selection(&[(1, 1.0)])];
    let n = ws.len();
    assert!(matches!(
        Dispatch::plan(&ok, 2, 1, &p, &mut ws[..n - 1], |_| {}),
        Err(Error::WorkspaceTooSmall { .. })
    ));
    let bad_factor = policy(Capacity::Megatron { factor: -1.0 }, DropPriority::Sequence);
    assert!(matches!(
        Dispatch::plan(&ok, 2, 1, &bad_factor, &mut ws, |_| {}),
        Err(Error::InvalidMoeConfig { .. })
    ));
}

fn any_policy() -> impl Strategy<Value = CapacityPolicy> {
    let capacity = prop_oneof![
        Just(Capacity::Dropless),
        (0.1f32..3.0).prop_map(|factor| Capacity::Megatron { factor }),
        (0.1f32..3.0).prop_map(|factor| Capacity::MeshTf { factor }),
        (0.1f32..3.0).prop_map(|factor| Capacity::Flaxformer { factor }),
        (0.1f32..3.0).prop_map(|factor| Capacity::Tutel { factor }),
        (0u32..6).prop_map(Capacity::Fixed),
    ];
    let priority = prop_oneof![
        Just(DropPriority::Sequence),
        Just(DropPriority::BatchPrioritized)
    ];
    (capacity, 0u32..4, priority).prop_map(|(capacity, min_capacity, priority)| CapacityPolicy {
        capacity,
        min_capacity,
        priority,
    })
}

/// Selections of up to k distinct experts; weights from a small set so that ties occur.
fn any_selections(
    n_tokens: usize,
    n_expert: usize,
    k: usize,
) -> impl Strategy<Value = Vec<Selection>> {
    let token = (
        proptest::sample::subsequence((0..n_expert as u32).collect::<Vec<_>>(), 0..=k)
            .prop_shuffle(),
        proptest::collection::vec(0u8..4, k),
    )
        .prop_map(|(experts, w)| {
            let mut s = Selection::new();
            for (e, w) in experts.into_iter().zip(w) {
                s.push(Choice {
                    expert: e,
                    weight: 0.25 * f32::from(w),
                })
                .unwrap();
            }
            s
        });
    proptest::collection::vec(token, n_tokens)
}

fn any_case() -> impl Strategy<Value = (usize, usize, Vec<Selection>, CapacityPolicy)> {
    (1usize..9, 1usize..5, 1usize..40).prop_flat_map(|(n_expert, k_raw, n_tokens)| {
        let k = k_raw.min(n_expert);
        (
            Just(n_expert),
            Just(k),
            any_selections(n_tokens, n_expert, k),
            any_policy(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn dispatch_keeps_exactly_what_the_definition_keeps(
        (n_expert, k, selections, p) in any_case()
    ) {
        let mut ws = Vec::new();
        let (d, drops) = plan(&selections, n_expert, k, &p, &mut ws);
        let n_tokens = selections.len();
        let capacity = p.limit(n_tokens, k, n_expert).unwrap();
        let report = d.report();

        // The kept set is the reference's, pair by pair.
        let mut n_dropped = 0;
        for (t, sel) in selections.iter().enumerate() {
            for j in 0..k {
                let want = kept(&selections, t, j, k, n_expert, &p).unwrap();
                prop_assert_eq!(d.is_kept(t, j), want, "token {} slot {}", t, j);
                prop_assert_eq!(d.is_dropped(t, j), j < sel.len() && !want);
                n_dropped += usize::from(d.is_dropped(t, j));
            }
        }
        prop_assert_eq!(report.dropped, n_dropped);
        prop_assert_eq!(drops.len(), n_dropped);
        prop_assert_eq!(report.pairs, selections.iter().map(|s| s.len()).sum::<usize>());

        for e in 0..n_expert {
            // No expert over capacity; pairs in batch order, each naming expert e.
            if let Some(c) = capacity {
                prop_assert!(d.load(e) <= c);
            }
            let pairs: Vec<_> = d.expert_pairs(e).collect();
            prop_assert_eq!(pairs.len(), d.load(e));
            for w in pairs.windows(2) {
                prop_assert!((w[0].token, w[0].slot) < (w[1].token, w[1].slot));
            }
            for p in &pairs {
                prop_assert_eq!(selections[p.token][p.slot].expert as usize, e);
                prop_assert_eq!(selections[p.token][p.slot].weight, p.weight);
            }
            // The drop hook saw each expert's drops.
            let dropped_e = selections
                .iter()
                .enumerate()
                .flat_map(|(t, s)| s.iter().enumerate().map(move |(j, c)| (t, j, c.expert)))
                .filter(|&(t, j, x)| x as usize == e && d.is_dropped(t, j))
                .count();
            prop_assert_eq!(drops.iter().filter(|&&x| x as usize == e).count(), dropped_e);
        }

        // First choices before second: a kept slot-j pair of expert e means every
        // slot-i < j pair of e is kept.
        for (t, sel) in selections.iter().enumerate() {
            for (j, c) in sel.iter().enumerate() {
                if !d.is_kept(t, j) { continue; }
                for (u, other) in selections.iter().enumerate() {
                    for (i, o) in other.iter().enumerate().take(j) {
                        if o.expert == c.expert {
                            prop_assert!(d.is_kept(u, i), "({},{}) kept but ({},{}) dropped", t, j, u, i);
                        }
                    }
                }
            }
        }

        // Sequence priority: within one slot, the kept tokens of an expert are its earliest.
        if p.priority == DropPriority::Sequence {
            for e in 0..n_expert as u32 {
                for j in 0..k {
                    let mut seen_drop = false;
                    for (t, sel) in selections.iter().enumerate() {
                        if sel.get(j).is_some_and(|c| c.expert == e) {
                            if d.is_dropped(t, j) { seen_drop = true; }
                            else { prop_assert!(!seen_drop, "token {} kept after an earlier drop", t); }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_capacity_of_t_times_k_drops_nothing(
        (n_expert, k, selections, p) in any_case()
    ) {
        let all = (selections.len() * k) as u32;
        for capacity in [
            Capacity::Fixed(all),
            Capacity::Megatron { factor: n_expert as f32 },
            Capacity::Dropless,
        ] {
            let p = CapacityPolicy { capacity, ..p };
            let mut ws = Vec::new();
            let (d, drops) = plan(&selections, n_expert, k, &p, &mut ws);
            prop_assert_eq!(d.report().dropped, 0);
            prop_assert!(drops.is_empty());
        }
    }
}

fn tiny_model(capacity: CapacityPolicy) -> Model {
    let mut rng = Rng(11);
    Model {
        experts: Matrices::random(
            &mut rng,
            (Some(TensorType::Q8_0), TensorType::Q8_0, TensorType::Q4_0),
            [64, 64, 3],
            Activation::Silu,
        ),
        shared: None,
        shared_kind: SharedKind::None,
        shared_gate: (Vec::new(), Vec::new()),
        k: 2,
        capacity,
    }
}

#[test]
fn dropped_pairs_contribute_zero_and_nothing_is_renormalised() {
    let mut rng = Rng(12);
    let t = 9;
    let mut capped = tiny_model(policy(Capacity::Fixed(3), DropPriority::Sequence));
    let hidden = random_hidden(&mut rng, t, 64);
    let selections: Vec<Selection> = (0..t)
        .map(|i| selection(&[((i % 3) as u32, 0.7), (((i + 1) % 3) as u32, 0.2)]))
        .collect();
    let out = capped.forward(&hidden, &selections);

    // The same batch, dropless, with the dropped choices removed from the selections:
    // bit for bit the same output (the survivors keep their weights).
    let mut ws = Vec::new();
    let p = capped.capacity;
    let (d, drops) = plan(&selections, 3, 2, &p, &mut ws);
    assert!(!drops.is_empty());
    let pruned: Vec<Selection> = selections
        .iter()
        .enumerate()
        .map(|(t, s)| {
            s.iter()
                .enumerate()
                .filter(|&(j, _)| d.is_kept(t, j))
                .map(|(_, c)| *c)
                .collect()
        })
        .collect();
    capped.capacity = CapacityPolicy::DROPLESS;
    assert_eq!(out, capped.forward(&hidden, &pruned));

    // A token whose every choice is dropped gets exactly zero.
    let all_dropped: Vec<Selection> = (0..t).map(|_| selection(&[(0, 1.0)])).collect();
    capped.capacity = policy(Capacity::Fixed(4), DropPriority::Sequence);
    let layer = capped.layer();
    let mut out = vec![f32::NAN; t * 64];
    let mut ws = vec![0u8; layer.workspace_bytes(t)];
    let report = layer
        .forward_selected(&hidden, &all_dropped, &mut out, &mut ws)
        .unwrap();
    assert_eq!(report.dispatch.dropped, t - 4);
    assert_eq!(report.dispatch.capacity, Some(4));
    assert!(out[4 * 64..].iter().all(|&v| v == 0.0));
    assert!(out[..4 * 64].iter().any(|&v| v != 0.0));
}

#[test]
fn drops_reach_the_router_statistics() {
    use moe_core::moe::{MoeLayer, Workspace};
    use moe_core::router::{Router, RouterConfig, RouterStats};
    use moe_core::tensor::TensorView;

    let m = tiny_model(policy(
        Capacity::MeshTf { factor: 1.0 },
        DropPriority::BatchPrioritized,
    ));
    let mut rng = Rng(13);
    let (d, e, t) = (64usize, 3usize, 12usize);
    // A router that prefers expert 0 for most tokens, so it overflows.
    let mut w: Vec<f32> = (0..d * e).map(|_| rng.uniform(-0.1, 0.1)).collect();
    for x in &mut w[..d] {
        *x += 0.5;
    }
    let w_bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let router = Router::new(RouterConfig::mixtral(d, e, 2))
        .unwrap()
        .with_weight(TensorView::new(TensorType::F32, &[d as u64, e as u64], &w_bytes).unwrap())
        .unwrap();
    let layer: MoeLayer = m.layer().with_router(router).unwrap();
    let hidden: Vec<f32> = random_hidden(&mut rng, t, d)
        .iter()
        .map(|x| x.abs())
        .collect();

    let (mut tokens, mut drops) = (vec![0u32; e], vec![0u32; e]);
    let (mut probs, mut weights) = (vec![0f64; e], vec![0f64; e]);
    let mut stats = RouterStats::new(&mut tokens, &mut drops, &mut probs, &mut weights).unwrap();
    let size = layer.workspace_size(t);
    let mut sel = vec![Selection::new(); size.selections];
    let mut scratch = vec![0.0; size.router];
    let mut bytes = vec![0u8; size.bytes];
    let mut out = vec![0.0; t * d];
    let report = layer
        .forward_with_stats(
            &hidden,
            &[],
            &mut out,
            &mut Workspace {
                selections: &mut sel,
                router: &mut scratch,
                bytes: &mut bytes,
            },
            Some(&mut stats),
        )
        .unwrap();
    assert_eq!(report.dispatch.capacity, Some(4)); // floor(12 · 1 / 3)
    assert!(report.dispatch.dropped > 0);
    assert_eq!(stats.drops(), report.dispatch.dropped as u64);
    let mut expected = vec![0u32; e];
    let mut ws = Vec::new();
    let (_, hook) = plan(&sel, e, 2, &layer.capacity().clone(), &mut ws);
    for x in hook {
        expected[x as usize] += 1;
    }
    assert_eq!(stats.drops_per_expert(), expected.as_slice());

    // Statistics for another expert count are refused.
    let (mut a, mut b, mut c, mut dd) =
        (vec![0u32; 2], vec![0u32; 2], vec![0f64; 2], vec![0f64; 2]);
    let mut wrong = RouterStats::new(&mut a, &mut b, &mut c, &mut dd).unwrap();
    assert!(
        layer
            .forward_with_stats(
                &hidden,
                &[],
                &mut out,
                &mut Workspace {
                    selections: &mut sel,
                    router: &mut scratch,
                    bytes: &mut bytes,
                },
                Some(&mut wrong),
            )
            .is_err()
    );
}

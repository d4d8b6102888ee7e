//! Bad inputs are typed errors, never panics: configurations, tensor shapes, hash tables,
//! buffers, token ids, masks and statistics.

#[path = "router_support.rs"]
mod support;

use moe_core::router::{
    ExpertMask, GroupLimit, GroupScore, HashGate, Method, Router, RouterConfig, RouterStats,
    Selection,
};
use moe_core::tensor::TensorView;
use moe_core::{Error, TensorType};
use proptest::prelude::*;
use support::{f32_bytes, i32_bytes};

fn invalid(config: RouterConfig) -> bool {
    matches!(Router::new(config), Err(Error::InvalidRouterConfig { .. }))
}

#[test]
fn bad_configurations() {
    let ok = RouterConfig::top_k(4, 8, 2);
    assert!(Router::new(ok).is_ok());
    assert!(invalid(RouterConfig { k: 0, ..ok }));
    assert!(invalid(RouterConfig { k: 9, ..ok }));
    assert!(invalid(RouterConfig::top_k(4, 1024, 65)));
    assert!(invalid(RouterConfig { n_expert: 0, ..ok }));
    assert!(invalid(RouterConfig { n_embd: 0, ..ok }));
    assert!(invalid(RouterConfig {
        scale: f32::NAN,
        ..ok
    }));
    let groups = |n_group, topk_group, score| RouterConfig {
        groups: Some(GroupLimit {
            n_group,
            topk_group,
            score,
        }),
        ..ok
    };
    assert!(invalid(groups(3, 1, GroupScore::Max)));
    assert!(invalid(groups(4, 0, GroupScore::Max)));
    assert!(invalid(groups(4, 5, GroupScore::Max)));
    assert!(invalid(groups(8, 1, GroupScore::Max))); // k = 2 > one group of 1 expert
    assert!(invalid(groups(4, 2, GroupScore::SumTop(3))));
    assert!(invalid(RouterConfig {
        method: Method::SBase {
            iterations: 0,
            tolerance: 0.0
        },
        ..ok
    }));
    assert!(invalid(RouterConfig {
        method: Method::SBase {
            iterations: 5,
            tolerance: -1.0
        },
        ..ok
    }));
}

#[test]
fn bad_tensors() {
    let config = RouterConfig::top_k(4, 8, 2);
    let w = f32_bytes(&[0.0; 32]);
    let router = Router::new(config).unwrap();
    // [8, 4] instead of [4, 8].
    let wrong = TensorView::new(TensorType::F32, &[8, 4], &w).unwrap();
    assert!(matches!(
        router.with_weight(wrong),
        Err(Error::BadTensorShape { dim: 0, .. })
    ));
    let bias = f32_bytes(&[0.0; 7]);
    let bias = TensorView::new(TensorType::F32, &[7], &bias).unwrap();
    assert!(matches!(
        router.with_bias(bias),
        Err(Error::BadTensorShape { .. })
    ));
    let i32_bias = i32_bytes(&[0; 8]);
    let i32_bias = TensorView::new(TensorType::I32, &[8], &i32_bias).unwrap();
    assert!(matches!(
        router.with_bias(i32_bias),
        Err(Error::UnsupportedType { .. })
    ));
    // Routing without the weight it needs.
    let mut scratch = vec![0.0; router.scratch_len(1)];
    let mut out = [Selection::new()];
    assert!(matches!(
        router.route(&[0.0; 4], &[], &mut scratch, &mut out, None),
        Err(Error::MissingTensor { .. })
    ));
}

fn view(b: &[u8], n: u64) -> TensorView<'_> {
    TensorView::new(TensorType::I32, &[2, n], b).unwrap()
}

#[test]
fn bad_hash_tables_and_tokens() {
    let config = RouterConfig {
        method: Method::Hash {
            seed: 0,
            gate: HashGate::Constant,
        },
        ..RouterConfig::top_k(4, 8, 2)
    };
    let router = Router::new(config).unwrap();
    let table = |ids: &[i32]| i32_bytes(ids);
    let out_of_range = table(&[0, 1, 8, 2]);
    assert!(matches!(
        router.with_hash_table(view(&out_of_range, 2)),
        Err(Error::ExpertOutOfRange { expert: 8, .. })
    ));
    let negative = table(&[0, -1]);
    assert!(matches!(
        router.with_hash_table(view(&negative, 1)),
        Err(Error::ExpertOutOfRange { expert: -1, .. })
    ));
    let repeat = table(&[3, 3]);
    assert!(matches!(
        router.with_hash_table(view(&repeat, 1)),
        Err(Error::InvalidRouterConfig { .. })
    ));
    let wrong_k = table(&[1, 2, 3]);
    let wrong_k = TensorView::new(TensorType::I32, &[3, 1], &wrong_k).unwrap();
    assert!(matches!(
        router.with_hash_table(wrong_k),
        Err(Error::BadTensorShape { .. })
    ));
    // A table pointing at an expert the mask excludes.
    let good = table(&[0, 5, 6, 7]);
    let routed = router.with_hash_table(view(&good, 2)).unwrap();
    assert!(matches!(
        routed.with_mask(ExpertMask::First(6)),
        Err(Error::ExpertOutOfRange { expert: 6, .. })
    ));
    // Token ids: outside the table, missing, or too few.
    let mut scratch = vec![0.0; routed.scratch_len(2)];
    let mut out = vec![Selection::new(); 2];
    assert_eq!(
        routed.route(&[0.0; 8], &[0, 2], &mut scratch, &mut out, None),
        Err(Error::TokenOutOfRange {
            token: 2,
            n_vocab: 2
        })
    );
    assert!(matches!(
        routed.route(&[0.0; 8], &[], &mut scratch, &mut out, None),
        Err(Error::LengthMismatch { .. })
    ));
    let ok = routed
        .route(&[0.0; 8], &[1, 0], &mut scratch, &mut out, None)
        .unwrap();
    assert_eq!(ok.n_tokens, 2);
    assert_eq!(out[0].iter().map(|c| c.expert).collect::<Vec<_>>(), [6, 7]);
}

#[test]
fn bad_buffers_and_masks() {
    let config = RouterConfig::top_k(4, 8, 2);
    let w = f32_bytes(&[0.5; 32]);
    let router = Router::new(config)
        .unwrap()
        .with_weight(TensorView::new(TensorType::F32, &[4, 8], &w).unwrap())
        .unwrap();
    let need = router.scratch_len(3);
    assert_eq!(need, 8 * 4 + 3 * 8 + 2 * 8);
    let mut scratch = vec![0.0; need];
    let mut out = vec![Selection::new(); 3];
    let hidden = [0.1; 12];
    assert_eq!(
        router.route(&hidden, &[], &mut scratch[..need - 1], &mut out, None),
        Err(Error::BufferTooSmall {
            needed: need,
            actual: need - 1
        })
    );
    assert_eq!(
        router.route(&hidden, &[], &mut scratch, &mut out[..2], None),
        Err(Error::BufferTooSmall {
            needed: 3,
            actual: 2
        })
    );
    assert!(matches!(
        router.route(&hidden[..11], &[], &mut scratch, &mut out, None),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        router.route(&hidden, &[1, 2], &mut scratch, &mut out, None),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(
        router
            .route(&hidden, &[1, 2, 3], &mut scratch, &mut out, None)
            .is_ok()
    );
    assert!(router.route(&[], &[], &mut [], &mut [], None).is_ok());
    // Masks.
    assert!(matches!(
        router.with_mask(ExpertMask::First(1)),
        Err(Error::InvalidRouterConfig { .. })
    ));
    assert!(matches!(
        router.with_mask(ExpertMask::First(9)),
        Err(Error::InvalidRouterConfig { .. })
    ));
    assert!(matches!(
        router.with_mask(ExpertMask::Bits(&[0b11, 0])),
        Err(Error::InvalidRouterConfig { .. })
    ));
    assert!(matches!(
        router.with_mask(ExpertMask::Bits(&[0x100])),
        Err(Error::InvalidRouterConfig { .. })
    ));
    assert!(router.with_mask(ExpertMask::Bits(&[0b1001])).is_ok());
    // Statistics of the wrong width.
    let (mut a, mut b, mut c, mut d) = ([0u32; 7], [0u32; 7], [0f64; 7], [0f64; 7]);
    let mut stats = RouterStats::new(&mut a, &mut b, &mut c, &mut d).unwrap();
    assert!(matches!(
        router.route(&hidden, &[], &mut scratch, &mut out, Some(&mut stats)),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        stats.record_drop(7),
        Err(Error::ExpertOutOfRange { .. })
    ));
    let (mut a, mut b, mut c, mut d) = ([0u32; 7], [0u32; 6], [0f64; 7], [0f64; 7]);
    assert!(RouterStats::new(&mut a, &mut b, &mut c, &mut d).is_err());
}

proptest! {
    /// Arbitrary configurations, tensors and inputs never panic: every call returns.
    #[test]
    fn never_panics(
        n_embd in 0usize..8, n_expert in 0usize..40, k in 0usize..70,
        n_group in 0u32..10, topk_group in 0u32..10, sum_top in 0u32..4,
        method in 0u8..4, hidden_len in 0usize..40, ids_len in 0usize..6,
        scratch_len in 0usize..400, out_len in 0usize..6, seed in any::<u64>(),
        table in prop::collection::vec(-3i32..45, 0..24),
        logits in prop::collection::vec(prop::num::f32::ANY, 0..200),
    ) {
        let config = RouterConfig {
            groups: (n_group > 0).then_some(GroupLimit {
                n_group,
                topk_group,
                score: if sum_top == 0 { GroupScore::Max } else { GroupScore::SumTop(sum_top) },
            }),
            method: match method {
                0 => Method::TopK,
                1 => Method::Greedy,
                2 => Method::Hash { seed, gate: HashGate::Scores },
                _ => Method::SBase { iterations: 3, tolerance: 1e-4 },
            },
            ..RouterConfig::top_k(n_embd, n_expert, k)
        };
        let Ok(mut router) = Router::new(config) else { return Ok(()); };
        let w = f32_bytes(&vec![0.25; n_embd * n_expert]);
        router = router.with_weight(TensorView::new(TensorType::F32, &[n_embd as u64, n_expert as u64], &w).unwrap()).unwrap();
        let tb = i32_bytes(&table);
        if k > 0 && table.len() % k == 0 && !table.is_empty() {
            let view = TensorView::new(TensorType::I32, &[k as u64, (table.len() / k) as u64], &tb).unwrap();
            if let Ok(r) = router.with_hash_table(view) {
                router = r;
            }
        }
        let hidden = vec![0.5; hidden_len];
        let ids: Vec<u32> = (0..ids_len as u32).collect();
        let mut scratch = vec![0.0; scratch_len];
        let mut out = vec![Selection::new(); out_len];
        let _ = router.route(&hidden, &ids, &mut scratch, &mut out, None);
        let _ = router.route_logits(&logits, &ids, &mut scratch, &mut out, None);
    }
}

//! Hand-checked routing cases: the plain softmax top-k path end to end.

use moe_core::TensorType;
use moe_core::router::{Router, RouterConfig, Selection};
use moe_core::tensor::TensorView;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn mixtral_top2_by_hand() {
    // 4 experts, n_embd 2: logits = (x0, x1, x0 + x1, -x0).
    let w = f32_bytes(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.0]);
    let view = TensorView::new(TensorType::F32, &[2, 4], &w).unwrap();
    let router = Router::new(RouterConfig::mixtral(2, 4, 2))
        .unwrap()
        .with_weight(view)
        .unwrap();
    let hidden = [1.0f32, 0.5];
    let mut scratch = vec![0.0; router.scratch_len(1)];
    let mut out = [Selection::new()];
    let report = router
        .route(&hidden, &[], &mut scratch, &mut out, None)
        .unwrap();
    assert_eq!(report.n_tokens, 1);
    let ids: Vec<u32> = out[0].iter().map(|c| c.expert).collect();
    assert_eq!(ids, [2, 0]);
    // Renormalised weights = softmax over the two selected logits (1.5, 1.0).
    let w0 = 1.0 / (1.0 + (-0.5f32).exp());
    assert!((out[0][0].weight - w0).abs() < 1e-6);
    assert!((out[0][1].weight - (1.0 - w0)).abs() < 1e-6);
}

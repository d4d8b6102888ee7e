//! The quantized MoE layer against the f32 reference (`reference::moe`), for every weight
//! type the kernels support, within a bound derived from the activation quantization
//! (`moe_util::ffn_bound`); plus the layer's contract: exact workspace, errors instead of
//! panics, batch invariance.

mod moe_util;

use moe_core::moe::capacity::{Capacity, CapacityPolicy, DropPriority};
use moe_core::moe::{Activation, ExpertStack, MoeLayer};
use moe_core::router::{Choice, Selection};
use moe_core::tensor::TensorView;
use moe_core::{Error, TensorType};
use moe_util::{
    Matrices, Model, Rng, SharedKind, WEIGHT_TYPES, random_hidden, random_selection, worst_ratio,
};
use proptest::prelude::*;

/// A width that is a whole number of blocks of every type in `types`.
fn width(types: &[TensorType], rng: &mut Rng) -> usize {
    let block = types.iter().map(|t| t.block_len()).max().unwrap();
    if block == 256 {
        256
    } else {
        32 * (1 + rng.below(3))
    }
}

/// What a random model is made of.
struct Spec {
    /// (gate/up, down, shared gate/up, shared down).
    types: [TensorType; 4],
    n_expert: usize,
    k: usize,
    gated: bool,
    activation: Activation,
    shared: SharedKind,
    capacity: CapacityPolicy,
}

impl Spec {
    /// Gated SiLU experts of one type, dropless.
    fn simple(ty: TensorType, n_expert: usize, k: usize, shared: SharedKind) -> Self {
        Spec {
            types: [ty; 4],
            n_expert,
            k,
            gated: true,
            activation: Activation::Silu,
            shared,
            capacity: CapacityPolicy::DROPLESS,
        }
    }
}

fn model(rng: &mut Rng, spec: Spec) -> Model {
    let [gu, down, sgu, sdown] = spec.types;
    let with_shared = spec.shared != SharedKind::None;
    let input_types: Vec<TensorType> = if with_shared { vec![gu, sgu] } else { vec![gu] };
    let n_embd = width(&input_types, rng);
    let n_ff = width(&[down], rng);
    let experts = Matrices::random(
        rng,
        (spec.gated.then_some(gu), gu, down),
        [n_embd, n_ff, spec.n_expert],
        spec.activation,
    );
    let shared = with_shared.then(|| {
        let n_ff_sh = width(&[sdown], rng);
        Matrices::random(
            rng,
            (Some(sgu), sgu, sdown),
            [n_embd, n_ff_sh, 1],
            spec.activation,
        )
    });
    let gate: Vec<f32> = (0..n_embd).map(|_| rng.uniform(-0.3, 0.3)).collect();
    let gate_bytes = gate.iter().flat_map(|v| v.to_le_bytes()).collect();
    Model {
        experts,
        shared,
        shared_kind: spec.shared,
        shared_gate: (gate_bytes, gate),
        k: spec.k,
        capacity: spec.capacity,
    }
}

fn check_against_reference(m: &Model, hidden: &[f32], selections: &[Selection], what: &str) {
    let out = m.forward(hidden, selections);
    let expected = m.reference_forward(hidden, selections);
    let bound = m.bound(hidden, selections);
    let ratio = worst_ratio(&out, &expected, &bound);
    if std::env::var_os("MOE_SHOW_RATIO").is_some() {
        eprintln!("{what}: worst error / bound = {ratio:.3}");
    }
    assert!(
        ratio <= 1.0,
        "{what}: error reaches {ratio:.3} of the derived bound"
    );
    assert!(out.iter().all(|v| v.is_finite()), "{what}");
}

#[test]
fn every_weight_type_matches_the_reference() {
    let mut rng = Rng(1);
    for ty in WEIGHT_TYPES {
        for shared in [SharedKind::None, SharedKind::Gated] {
            let m = model(&mut rng, Spec::simple(ty, 4, 2, shared));
            let t = 3;
            let hidden = random_hidden(&mut rng, t, m.experts.n_embd);
            let selections: Vec<Selection> =
                (0..t).map(|_| random_selection(&mut rng, 4, 2)).collect();
            check_against_reference(&m, &hidden, &selections, &format!("{ty} {shared:?}"));
        }
    }
}

#[test]
fn the_bound_is_tight_enough_to_catch_a_wrong_expert() {
    // Routing token 0 to a different expert than the reference must exceed the bound.
    let mut rng = Rng(7);
    for ty in [TensorType::Q4_0, TensorType::Q4_K, TensorType::F16] {
        let m = model(&mut rng, Spec::simple(ty, 4, 1, SharedKind::None));
        let hidden = random_hidden(&mut rng, 1, m.experts.n_embd);
        let sel = |e| {
            let mut s = Selection::new();
            s.push(Choice {
                expert: e,
                weight: 1.0,
            })
            .unwrap();
            vec![s]
        };
        let out = m.forward(&hidden, &sel(1));
        let expected = m.reference_forward(&hidden, &sel(0));
        let bound = m.bound(&hidden, &sel(0));
        assert!(worst_ratio(&out, &expected, &bound) > 1.0, "{ty}");
    }
}

fn any_type() -> impl Strategy<Value = TensorType> {
    (0..WEIGHT_TYPES.len()).prop_map(|i| WEIGHT_TYPES[i])
}

fn any_activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Silu),
        Just(Activation::Gelu),
        Just(Activation::GeluErf),
        Just(Activation::Relu),
    ]
}

fn any_capacity() -> impl Strategy<Value = CapacityPolicy> {
    let capacity = prop_oneof![
        Just(Capacity::Dropless),
        (0.25f32..2.0).prop_map(|factor| Capacity::Megatron { factor }),
        (0.25f32..2.0).prop_map(|factor| Capacity::MeshTf { factor }),
        (0.25f32..2.0).prop_map(|factor| Capacity::Flaxformer { factor }),
        (0u32..4).prop_map(Capacity::Fixed),
    ];
    let priority = prop_oneof![
        Just(DropPriority::Sequence),
        Just(DropPriority::BatchPrioritized)
    ];
    (capacity, 0u32..3, priority).prop_map(|(capacity, min_capacity, priority)| CapacityPolicy {
        capacity,
        min_capacity,
        priority,
    })
}

proptest! {
    // 48 cases unless PROPTEST_CASES says otherwise.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    /// Random weight types (each matrix its own), FFN forms, shared experts, capacity,
    /// batch sizes and routes.
    #[test]
    fn random_layers_match_the_reference(
        types in [any_type(), any_type(), any_type(), any_type()],
        n_expert in 1usize..7,
        k_raw in 1usize..4,
        n_tokens in 1usize..6,
        gated in any::<bool>(),
        activation in any_activation(),
        shared in prop_oneof![Just(SharedKind::None), Just(SharedKind::AlwaysOn), Just(SharedKind::Gated)],
        capacity in any_capacity(),
        seed in any::<u64>(),
    ) {
        let k = k_raw.min(n_expert);
        let mut rng = Rng(seed);
        let spec = Spec { types, n_expert, k, gated, activation, shared, capacity };
        let m = model(&mut rng, spec);
        let hidden = random_hidden(&mut rng, n_tokens, m.experts.n_embd);
        let selections: Vec<Selection> = (0..n_tokens)
            .map(|_| {
                let kt = 1 + rng.below(k);
                random_selection(&mut rng, n_expert, kt)
            })
            .collect();
        check_against_reference(&m, &hidden, &selections, &format!("{types:?}"));
    }
}

fn small_model(seed: u64, ty: TensorType) -> Model {
    model(&mut Rng(seed), Spec::simple(ty, 5, 2, SharedKind::Gated))
}

#[test]
fn workspace_bytes_is_exact_at_any_alignment() {
    let m = small_model(3, TensorType::Q8_0);
    let layer = m.layer();
    let mut rng = Rng(4);
    for t in 1..5 {
        let hidden = random_hidden(&mut rng, t, layer.n_embd());
        let sel: Vec<Selection> = (0..t).map(|_| random_selection(&mut rng, 5, 2)).collect();
        let need = layer.workspace_bytes(t);
        let mut buf = vec![0u8; need + 8];
        let mut first: Option<Vec<f32>> = None;
        for offset in 0..8 {
            let mut out = vec![0.0; hidden.len()];
            layer
                .forward_selected(&hidden, &sel, &mut out, &mut buf[offset..offset + need])
                .unwrap();
            match &first {
                None => first = Some(out),
                Some(f) => assert_eq!(f, &out),
            }
        }
        let mut out = vec![0.0; hidden.len()];
        let err = layer
            .forward_selected(&hidden, &sel, &mut out, &mut buf[..need - 1])
            .unwrap_err();
        assert_eq!(
            err,
            Error::WorkspaceTooSmall {
                needed: need,
                actual: need - 1
            }
        );
        // A workspace sized for more tokens also works.
        assert!(layer.workspace_bytes(t + 1) > need);
    }
}

#[test]
fn a_batch_gives_each_token_what_it_gets_alone() {
    for ty in [TensorType::Q4_K, TensorType::Q5_1, TensorType::BF16] {
        let m = small_model(5, ty);
        let mut rng = Rng(6);
        let t = 6;
        let hidden = random_hidden(&mut rng, t, m.experts.n_embd);
        let sel: Vec<Selection> = (0..t).map(|_| random_selection(&mut rng, 5, 2)).collect();
        let batch = m.forward(&hidden, &sel);
        let d = m.experts.n_embd;
        for i in 0..t {
            let alone = m.forward(&hidden[i * d..(i + 1) * d], &sel[i..i + 1]);
            assert_eq!(
                &batch[i * d..(i + 1) * d],
                alone.as_slice(),
                "{ty} token {i}"
            );
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let m = small_model(8, TensorType::Q4_0);
    let layer = m.layer();
    let d = layer.n_embd();
    let mut rng = Rng(9);
    let hidden = random_hidden(&mut rng, 2, d);
    let sel: Vec<Selection> = (0..2).map(|_| random_selection(&mut rng, 5, 2)).collect();
    let mut ws = vec![0u8; layer.workspace_bytes(2)];
    let mut out = vec![0.0; 2 * d];

    // Shapes.
    assert!(matches!(
        layer.forward_selected(&hidden[1..], &sel, &mut out, &mut ws),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        layer.forward_selected(&hidden, &sel, &mut out[1..], &mut ws),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        layer.forward_selected(&hidden, &sel[..1], &mut out, &mut ws),
        Err(Error::LengthMismatch { .. })
    ));
    // An expert out of range, a selection longer than k.
    let mut bad = sel.clone();
    bad[1][0].expert = 5;
    assert!(matches!(
        layer.forward_selected(&hidden, &bad, &mut out, &mut ws),
        Err(Error::ExpertOutOfRange { expert: 5, .. })
    ));
    let mut long = sel.clone();
    long[0]
        .push(Choice {
            expert: 4,
            weight: 0.1,
        })
        .unwrap();
    assert!(matches!(
        layer.forward_selected(&hidden, &long, &mut out, &mut ws),
        Err(Error::TooManyChoices {
            token: 0,
            count: 3,
            k: 2
        })
    ));
    // Non-finite inputs and weights: no panic, errors or NaNs only.
    let mut nan = hidden.clone();
    nan[3] = f32::NAN;
    nan[d + 1] = f32::INFINITY;
    let mut weird = sel.clone();
    weird[0][1].weight = f32::NAN;
    layer
        .forward_selected(&nan, &weird, &mut out, &mut ws)
        .unwrap();
    // No tokens at all.
    layer.forward_selected(&[], &[], &mut [], &mut []).unwrap();
    // k out of range.
    assert!(MoeLayer::new(m.experts.stack(), 0).is_err());
    assert!(MoeLayer::new(m.experts.stack(), 6).is_err());
}

#[test]
fn mismatched_stacks_are_errors() {
    let m = small_model(10, TensorType::Q8_0);
    let (d, f, e) = (
        m.experts.n_embd as u64,
        m.experts.n_ff as u64,
        m.experts.n_expert as u64,
    );
    let up = TensorView::new(TensorType::Q8_0, &[d, f, e], &m.experts.up.1).unwrap();
    let down = TensorView::new(m.experts.down.0, &[f, d, e], &m.experts.down.1).unwrap();
    // down read with the wrong shape: [d, f, e] instead of [f, d, e].
    if d != f {
        let wrong = TensorView::new(m.experts.down.0, &[d, f, e], &m.experts.down.1).unwrap();
        assert!(matches!(
            ExpertStack::new(None, up, wrong, Activation::Silu),
            Err(Error::BadTensorShape { .. })
        ));
    }
    // Fewer experts in down than in up.
    let rows = (f * d / 32 * 34 * (e - 1)) as usize;
    let short =
        TensorView::new(TensorType::Q8_0, &[f, d, e - 1], &m.experts.down.1[..rows]).unwrap();
    assert!(matches!(
        ExpertStack::new(None, up, short, Activation::Silu),
        Err(Error::BadTensorShape { dim: 2, .. })
    ));
    // A type without a dot product.
    let zeros = vec![0u8; (d * f / 32 * 36) as usize];
    let q8_1 = TensorView::new(TensorType::Q8_1, &[d, f], &zeros).unwrap();
    assert!(matches!(
        moe_core::moe::Ffn::new(None, q8_1, down, Activation::Silu),
        Err(Error::UnsupportedType { .. }) | Err(Error::BadTensorShape { .. })
    ));
}

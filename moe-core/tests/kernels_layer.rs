//! The MoE layer through every kernel table this CPU supports: the same models as
//! `moe_layer.rs`, run with `MoeLayer::with_kernels`, held to the same bound against the
//! f32 reference, and (for quantized weights without an F32 shared-expert gate: those
//! kernels are bit-exact) equal to the default scalar layer's output.

mod kernel_levels;
mod moe_util;

use moe_core::kernels::{Kernels, Level};
use moe_core::moe::capacity::CapacityPolicy;
use moe_core::router::Selection;
use moe_core::{TensorType, moe::Activation};
use moe_util::{
    Matrices, Model, Rng, SharedKind, WEIGHT_TYPES, random_hidden, random_selection, worst_ratio,
};

/// Every level this CPU supports, each as a table.
fn detected_tables() -> Vec<Kernels> {
    let mut out = vec![Kernels::scalar(), Kernels::compiled()];
    for level in kernel_levels::supported_levels() {
        if level != Level::Scalar {
            // SAFETY: `supported_levels` checked every feature of `level` on this CPU.
            out.push(unsafe { Kernels::with_level_unchecked(level) });
        }
    }
    out
}

fn model(rng: &mut Rng, ty: TensorType, shared: SharedKind) -> Model {
    let n_embd = if ty.block_len() == 256 { 256 } else { 64 };
    let n_ff = if ty.block_len() == 256 { 256 } else { 96 };
    let experts = Matrices::random(rng, (Some(ty), ty, ty), [n_embd, n_ff, 4], Activation::Silu);
    let shared_m = (shared != SharedKind::None)
        .then(|| Matrices::random(rng, (Some(ty), ty, ty), [n_embd, n_ff, 1], Activation::Silu));
    let gate: Vec<f32> = (0..n_embd).map(|_| rng.uniform(-0.3, 0.3)).collect();
    let gate_bytes = gate.iter().flat_map(|v| v.to_le_bytes()).collect();
    Model {
        experts,
        shared: shared_m,
        shared_kind: shared,
        shared_gate: (gate_bytes, gate),
        k: 2,
        capacity: CapacityPolicy::DROPLESS,
    }
}

fn forward_with(m: &Model, k: &Kernels, hidden: &[f32], selections: &[Selection]) -> Vec<f32> {
    let layer = m.layer().with_kernels(k);
    let mut out = vec![f32::NAN; hidden.len()];
    let mut ws = vec![0u8; layer.workspace_bytes(selections.len())];
    layer
        .forward_selected(hidden, selections, &mut out, &mut ws)
        .unwrap();
    out
}

#[test]
fn every_weight_type_through_every_table() {
    let mut rng = Rng(11);
    let tables = detected_tables();
    for ty in WEIGHT_TYPES {
        for shared in [SharedKind::None, SharedKind::Gated] {
            let m = model(&mut rng, ty, shared);
            let t = 3;
            let hidden = random_hidden(&mut rng, t, m.experts.n_embd);
            let selections: Vec<Selection> =
                (0..t).map(|_| random_selection(&mut rng, 4, 2)).collect();
            let scalar = m.forward(&hidden, &selections);
            let expected = m.reference_forward(&hidden, &selections);
            let bound = m.bound(&hidden, &selections);
            for k in &tables {
                let out = forward_with(&m, k, &hidden, &selections);
                let what = format!("{ty} {shared:?} {:?}", k.level());
                assert!(out.iter().all(|v| v.is_finite()), "{what}");
                let ratio = worst_ratio(&out, &expected, &bound);
                assert!(
                    ratio <= 1.0,
                    "{what}: error reaches {ratio:.3} of the bound"
                );
                // The gated shared expert's gate is an F32 row, so only ungated layers of
                // quantized weights are exact.
                let float = matches!(ty, TensorType::F32 | TensorType::F16 | TensorType::BF16);
                if !float && shared == SharedKind::None {
                    assert_eq!(out, scalar, "{what}: quantized kernels are bit-exact");
                }
            }
        }
    }
}

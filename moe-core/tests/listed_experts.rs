//! `ExpertStack::listed`: experts kept one matrix per expert (as Hugging Face stores them)
//! give each expert exactly the matrices a GGUF-style 3-D stack of the same bytes gives,
//! and lists that disagree (length, shape, type) are errors.

use moe_core::moe::{Activation, ExpertStack};
use moe_core::tensor::TensorView;
use moe_core::{Error, TensorType};

const D: u64 = 32;
const F: u64 = 64;
const E: u64 = 4;

/// Deterministic f32 bytes.
fn bytes(n: u64, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ((x % 2000) as f32 / 1000.0 - 1.0).to_le_bytes()
        })
        .collect()
}

/// Expert `e`'s `[cols, rows]` matrix of a stack's bytes.
fn slice(data: &[u8], cols: u64, rows: u64, e: u64) -> TensorView<'_> {
    let size = (cols * rows * 4) as usize;
    TensorView::new(
        TensorType::F32,
        &[cols, rows],
        &data[e as usize * size..][..size],
    )
    .unwrap()
}

#[test]
fn listed_experts_are_the_stacked_experts() {
    let (gate, up, down) = (
        bytes(D * F * E, 1),
        bytes(D * F * E, 2),
        bytes(F * D * E, 3),
    );
    let stack = |data, dims: &[u64]| TensorView::new(TensorType::F32, dims, data).unwrap();
    let stacked = ExpertStack::new(
        Some(stack(&gate, &[D, F, E])),
        stack(&up, &[D, F, E]),
        stack(&down, &[F, D, E]),
        Activation::Silu,
    )
    .unwrap();
    let list = |data, cols, rows| -> Vec<TensorView<'_>> {
        (0..E).map(|e| slice(data, cols, rows, e)).collect()
    };
    let (g, u, d) = (list(&gate, D, F), list(&up, D, F), list(&down, F, D));
    let listed = ExpertStack::listed(Some(&g), &u, &d, Activation::Silu).unwrap();
    assert_eq!(
        (listed.n_expert(), listed.n_embd(), listed.n_ff()),
        (E as usize, D as usize, F as usize)
    );
    for e in 0..E as usize {
        let (a, b) = (stacked.expert(e).unwrap(), listed.expert(e).unwrap());
        assert_eq!(a.gate(), b.gate());
        assert_eq!(a.up(), b.up());
        assert_eq!(a.down(), b.down());
    }
    assert!(matches!(
        listed.expert(E as usize),
        Err(Error::ExpertOutOfRange { .. })
    ));
    // Without a gate: the two-matrix FFN.
    let ungated = ExpertStack::listed(None, &u, &d, Activation::Silu).unwrap();
    assert!(ungated.expert(1).unwrap().gate().is_none());
}

#[test]
fn disagreeing_lists_are_errors() {
    let (up, down) = (bytes(D * F * E, 2), bytes(F * D * E, 3));
    let u: Vec<_> = (0..E).map(|e| slice(&up, D, F, e)).collect();
    let d: Vec<_> = (0..E).map(|e| slice(&down, F, D, e)).collect();
    // Fewer down matrices than up matrices.
    assert!(matches!(
        ExpertStack::listed(None, &u, &d[..3], Activation::Silu),
        Err(Error::BadTensorShape { dim: 2, .. })
    ));
    // Down with the up shape.
    assert!(matches!(
        ExpertStack::listed(None, &u, &u, Activation::Silu),
        Err(Error::BadTensorShape { .. })
    ));
    // One expert of another shape.
    let mut odd = u.clone();
    odd[2] = TensorView::new(TensorType::F32, &[D, F / 2], &up[..(D * F * 2) as usize]).unwrap();
    assert!(matches!(
        ExpertStack::listed(None, &odd, &d, Activation::Silu),
        Err(Error::BadTensorShape { .. })
    ));
    // One expert of another type.
    let mut mixed = u.clone();
    mixed[1] = TensorView::new(TensorType::F16, &[D, F], &up[..(D * F * 2) as usize]).unwrap();
    assert!(matches!(
        ExpertStack::listed(None, &mixed, &d, Activation::Silu),
        Err(Error::UnsupportedType { .. })
    ));
    // No experts.
    assert!(matches!(
        ExpertStack::listed(None, &[], &[], Activation::Silu),
        Err(Error::InvalidMoeConfig { .. })
    ));
}

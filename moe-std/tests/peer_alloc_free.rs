//! Zero allocation is a property we test: a counting global allocator watches
//! `PeerLayer::forward` on the peer-pytorch fixtures (F32; F16/Q8_0 with a BatchNorm; a
//! pre-norm with separate expert sets) and on a quantized layer built here, with the
//! scalar kernels and with the detected SIMD table, and any heap allocation on the calling
//! thread during a forward pass fails the test.

use moe_core::TensorType;
use moe_core::gguf::File;
use moe_core::moe::Activation;
use moe_core::peer::{IndexMajor, PeerConfig, PeerLayer, PeerTensors, ScoreActivation};
use moe_core::quant::quantize_row;
use moe_core::tensor::TensorView;

mod counting;

use counting::allocations_in;

/// Runs `layer` on `t` tokens, asserting no allocation and a non-zero output.
fn check(layer: &PeerLayer, t: usize) -> Vec<f32> {
    let hidden: Vec<f32> = (0..t * layer.n_embd())
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let mut ws = vec![0u8; layer.workspace_bytes(t)];
    let mut out = vec![0.0f32; hidden.len()];
    let mut selected = 0usize;
    let (n, result) = allocations_in(|| {
        layer.forward_with(&hidden, &mut out, &mut ws, |s| selected += s.experts.len())
    });
    result.unwrap();
    assert_eq!(n, 0, "forward allocated {n} times");
    assert_eq!(
        selected,
        t * layer.config().n_head * layer.config().experts_per_head
    );
    assert!(out.iter().any(|&v| v != 0.0));
    out
}

#[test]
fn the_counter_sees_allocations() {
    let (n, v) = allocations_in(|| vec![1u8; 10]);
    assert_eq!(v.len(), 10);
    assert!(n >= 1);
}

#[test]
fn forward_allocates_nothing_on_the_peer_pytorch_fixtures() {
    for name in ["competing", "noncompeting", "batchnorm"] {
        let path = format!(
            "{}/../moe-core/tests/fixtures/peer/{name}.gguf",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let file = File::parse(&bytes).unwrap();
        let layer = PeerLayer::from_gguf(&file, 0).unwrap();
        check(&layer, 1);
        check(&layer, 5);
        // The best kernels this CPU runs: no allocation either, and the same output as
        // the scalar specification to float rounding (no fixture sits on a near-tie).
        let best = layer.with_kernels(&moe_std::kernels::detect());
        let scalar = check(&layer, 5);
        let simd = check(&best, 5);
        let scale = scalar.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in simd.iter().zip(&scalar) {
            assert!((a - b).abs() <= 1e-4 * scale, "{name}: {a} vs {b}");
        }
    }
}

#[test]
fn forward_allocates_nothing_with_quantized_tables() {
    let (d, h, n, dk) = (64usize, 4usize, 16usize, 32usize);
    let values = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 7919 % 1009) as f32 - 504.0) / 1009.0)
            .collect()
    };
    let quantized = |ty: TensorType, v: &[f32]| {
        let mut out = vec![0u8; v.len() / ty.block_len() * ty.block_bytes()];
        quantize_row(ty, v, &mut out).unwrap();
        out
    };
    let q_len = 2 * h * dk;
    let query = quantized(TensorType::Q8_0, &values(d * q_len, 1));
    let keys = quantized(TensorType::F16, &values(h * n * 2 * dk, 2));
    let down = quantized(TensorType::Q4_0, &values(n * n * d, 3));
    let up = quantized(TensorType::Q8_0, &values(n * n * d, 4));
    let (d64, n64) = (d as u64, n as u64);
    let config = PeerConfig {
        n_embd: d,
        n_head: h,
        n_expert: n * n,
        key_length: dk,
        product_key_topk: 8,
        experts_per_head: 8,
        score_activation: ScoreActivation::Softmax,
        index_major: IndexMajor::First,
        shared_keys: false,
        separate_embed_per_head: false,
        activation: Activation::GeluErf,
        query_norm_epsilon: 1e-5,
    };
    let tensors = PeerTensors {
        query: TensorView::new(TensorType::Q8_0, &[d64, q_len as u64], &query).unwrap(),
        query_bias: None,
        query_norm: None,
        norm: None,
        keys: TensorView::new(TensorType::F16, &[dk as u64, 2, n64, h as u64], &keys).unwrap(),
        down: TensorView::new(TensorType::Q4_0, &[d64, n64 * n64], &down).unwrap(),
        up: TensorView::new(TensorType::Q8_0, &[d64, n64 * n64], &up).unwrap(),
    };
    let layer = PeerLayer::new(config, tensors).unwrap();
    check(&layer, 1);
    check(&layer, 9);
    check(&layer.with_kernels(&moe_std::kernels::detect()), 9);
}

//! `PeerLayer` against the f32 reference for random layers: every u type with a dot
//! kernel and every v type that dequantizes, both index conventions, shared or per-head
//! sub-keys, separate expert sets, bias, BatchNorm, pre-norm, the three score activations.
//! Plus: the workspace size is exact, a batch equals its tokens run one by one, and bad
//! buffers are errors.

mod moe_util;
mod peer_util;

use moe_core::peer::{IndexMajor, PeerLayer, ScoreActivation};
use moe_core::quant::{dequantize_row, quantize_row};
use moe_core::{Error, TensorType};
use moe_util::{Rng, WEIGHT_TYPES};
use peer_util::{Extras, Model, Types, config, forward, reference_forward, relative_error};
use proptest::prelude::*;

fn random_model(rng: &mut Rng, types: Types) -> Model {
    let n_keys = 2 + rng.below(15);
    let k = 1 + rng.below(n_keys.min(8));
    let k_final = 1 + rng.below(k);
    // d and d_key multiples of 256 would be slow in debug builds; 32 covers the
    // 32-element block formats, K-quants need 256.
    let block = [types.query, types.down, types.up]
        .iter()
        .map(|t| t.block_len())
        .max()
        .unwrap();
    let d = block.max(32);
    let key_length = types.keys.block_len().max([4, 8][rng.below(2)]);
    let mut c = config(d, 1 + rng.below(3), n_keys, key_length, k, k_final);
    c.index_major = [IndexMajor::First, IndexMajor::Second][rng.below(2)];
    c.score_activation = [
        ScoreActivation::Softmax,
        ScoreActivation::Sigmoid,
        ScoreActivation::Relu,
    ][rng.below(3)];
    c.shared_keys = rng.below(2) == 0;
    c.separate_embed_per_head = rng.below(2) == 0;
    let extras = Extras {
        bias: rng.below(2) == 0,
        batch_norm: rng.below(2) == 0,
        norm: rng.below(2) == 0,
    };
    Model::random(rng, c, types, extras)
}

/// Whether the fast and reference runs retrieved the same experts everywhere.
fn same_retrieval(fast: &mut [peer_util::Retrieval], slow: &mut [peer_util::Retrieval]) -> bool {
    fast.sort_by_key(|r| (r.token, r.head));
    slow.sort_by_key(|r| (r.token, r.head));
    fast.iter().zip(slow.iter()).all(|(f, s)| {
        f.experts
            .iter()
            .map(|e| e.0)
            .eq(s.experts.iter().map(|e| e.0))
    })
}

/// Per-element bound of |fast − reference|: the u dot reads the (pre-normed) input
/// quantized to u's activation format, so each retrieved expert's `u·x` may be off by
/// `Σ |u_e| · |x_e − x̂_e|`, GELU scales that by at most 1.13 and the weight and `|v|`
/// carry it to the output; plus 1e-4 of the output scale for float rounding.
fn bound(
    model: &Model,
    hidden: &[f32],
    slow: &[peer_util::Retrieval],
    expected: &[f32],
) -> Vec<f32> {
    let c = &model.config;
    let d = c.n_embd;
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut bound = vec![1e-4 * scale; hidden.len()];
    let act = model.down.ty.activation_type().unwrap();
    for r in slow {
        let x = &hidden[r.token * d..(r.token + 1) * d];
        let xn: Vec<f32> = match &model.norm {
            Some(w) => {
                let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                x.iter()
                    .zip(&w.values)
                    .map(|(v, w)| v / norm * (d as f32).sqrt() * w)
                    .collect()
            }
            None => x.to_vec(),
        };
        let mut bytes = vec![0u8; d / act.block_len() * act.block_bytes()];
        quantize_row(act, &xn, &mut bytes).unwrap();
        let mut xq = vec![0.0; d];
        dequantize_row(act, &bytes, &mut xq).unwrap();
        let offset = if c.separate_embed_per_head {
            r.head * c.n_expert
        } else {
            0
        };
        for (&(id, _), &w) in r.experts.iter().zip(&r.weights) {
            let row = (offset + id as usize) * d;
            let u = &model.down.values[row..row + d];
            let v = &model.up.values[row..row + d];
            let du: f32 = u
                .iter()
                .zip(xn.iter().zip(&xq))
                .map(|(u, (a, b))| u.abs() * (a - b).abs())
                .sum();
            for (b, v) in bound[r.token * d..(r.token + 1) * d].iter_mut().zip(v) {
                *b += w.abs() * 1.13 * du * v.abs() * 1.01;
            }
        }
    }
    bound
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Float query and keys (so retrieval sees the same numbers); u and v of any type.
    /// Float u: 1e-4 of the output scale; quantized u within the activation-quantization
    /// bound above.
    #[test]
    fn layer_equals_reference(
        seed in any::<u64>(),
        down in proptest::sample::select(WEIGHT_TYPES.to_vec()),
        up in proptest::sample::select(WEIGHT_TYPES.to_vec()),
    ) {
        let mut rng = Rng(seed);
        let float = [TensorType::F32, TensorType::F16, TensorType::BF16];
        let types = Types { query: float[rng.below(3)], keys: float[rng.below(3)], down, up };
        let model = random_model(&mut rng, types);
        let d = model.config.n_embd;
        let hidden: Vec<f32> = (0..3 * d).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let (out, mut fast) = forward(&model.layer(), &hidden);
        let (expected, mut slow) = reference_forward(&model.reference(), &hidden);
        // Retrieval differs only at near-ties (covered in peer_retrieval); skip those.
        prop_assume!(same_retrieval(&mut fast, &mut slow));
        if float.contains(&down) {
            let err = relative_error(&out, &expected);
            prop_assert!(err <= 1e-4, "{:?}: {}", model.config, err);
        } else {
            let bound = bound(&model, &hidden, &slow, &expected);
            for (i, ((a, e), b)) in out.iter().zip(&expected).zip(&bound).enumerate() {
                prop_assert!((a - e).abs() <= *b, "{:?} [{}]: {} vs {} (bound {})", model.config, i, a, e, b);
            }
        }
    }

    /// A batch gives, bit for bit, what its tokens give one at a time.
    #[test]
    fn batch_equals_tokens(seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let types = Types {
            query: TensorType::Q8_0,
            keys: TensorType::F16,
            down: TensorType::Q4_0,
            up: TensorType::Q8_0,
        };
        let model = random_model(&mut rng, types);
        let layer = model.layer();
        let d = layer.n_embd();
        let n = 1 + rng.below(5);
        let hidden: Vec<f32> = (0..n * d).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let (batch, _) = forward(&layer, &hidden);
        for (x, y) in hidden.chunks_exact(d).zip(batch.chunks_exact(d)) {
            let (alone, _) = forward(&layer, x);
            prop_assert_eq!(&alone[..], y);
        }
    }
}

#[test]
fn workspace_is_exact_and_checked() {
    let mut rng = Rng(7);
    let types = Types {
        query: TensorType::Q8_0,
        keys: TensorType::Q8_0,
        down: TensorType::Q4_K,
        up: TensorType::F16,
    };
    let mut c = config(256, 2, 8, 32, 4, 4);
    c.separate_embed_per_head = true;
    let model = Model::random(&mut rng, c, types, Extras::default());
    let layer = model.layer();
    assert_eq!(layer.workspace_bytes(0), 0);
    for n_tokens in [1usize, 3] {
        let hidden: Vec<f32> = (0..n_tokens * 256)
            .map(|_| rng.uniform(-1.0, 1.0))
            .collect();
        let mut out = vec![0.0; hidden.len()];
        let need = layer.workspace_bytes(n_tokens);
        // Q8_0 and Q8_K input rows, 2·H·d_key query words, Q8_0 halves, 2·n score words.
        let expected = n_tokens * (8 * 34 + 292)
            + n_tokens * 128 * 4
            + n_tokens * 2 * 34
            + n_tokens * 2 * 8 * 4;
        assert_eq!(need, expected);
        let mut ws = vec![0u8; need];
        layer.forward(&hidden, &mut out, &mut ws).unwrap();
        let mut short = vec![0u8; need - 1];
        assert_eq!(
            layer.forward(&hidden, &mut out, &mut short),
            Err(Error::WorkspaceTooSmall {
                needed: need,
                actual: need - 1
            })
        );
        // A longer workspace is fine (only the front is used).
        let mut long = vec![0u8; need + 13];
        let mut again = vec![0.0; hidden.len()];
        layer.forward(&hidden, &mut again, &mut long).unwrap();
        assert_eq!(out, again);
    }
}

#[test]
fn bad_buffers_are_errors() {
    let mut rng = Rng(3);
    let model = Model::random(
        &mut rng,
        config(32, 2, 4, 8, 2, 2),
        Types::F32,
        Extras::default(),
    );
    let layer = model.layer();
    let mut ws = vec![0u8; layer.workspace_bytes(2)];
    let mut out = vec![0.0; 64];
    assert!(matches!(
        layer.forward(&[0.0; 63], &mut out, &mut ws),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        layer.forward(&[0.0; 64], &mut out[..32], &mut ws),
        Err(Error::LengthMismatch { .. })
    ));
    // An empty batch is fine with an empty workspace.
    layer.forward(&[], &mut [], &mut []).unwrap();
    // Non-finite inputs give non-finite outputs, never a panic.
    let mut x = [0.0f32; 64];
    x[3] = f32::NAN;
    x[40] = f32::INFINITY;
    layer.forward(&x, &mut out, &mut ws).unwrap();
}

#[test]
fn a_zero_weight_expert_is_skipped_but_counts_as_retrieved() {
    // ReLU scores: with a large positive query bias and negative keys every score is
    // negative, so every weight is 0 and nothing is added.
    let mut rng = Rng(11);
    let mut c = config(32, 2, 4, 8, 2, 1);
    c.score_activation = ScoreActivation::Relu;
    let extras = Extras {
        bias: true,
        ..Extras::default()
    };
    let mut model = Model::random(&mut rng, c, Types::F32, extras);
    let q_len = c.query_length().unwrap();
    model.bias = Some(peer_util::Tensor::f32(vec![20.0; q_len]));
    let keys: Vec<f32> = model.keys.values.iter().map(|v| -v.abs() - 0.05).collect();
    model.keys = peer_util::Tensor {
        dims: model.keys.dims.clone(),
        ..peer_util::Tensor::f32(keys)
    };
    let x: Vec<f32> = (0..32).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let (out, seen) = forward(&model.layer(), &x);
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.experts.len(), 1);
        assert!(s.experts[0].1 < 0.0);
        assert_eq!(s.weights, [0.0]);
    }
    assert!(out.iter().all(|&v| v == 0.0));
    let (expected, _) = reference_forward(&model.reference(), &x);
    assert_eq!(out, expected);
}

#[test]
fn unsupported_types_are_errors() {
    let mut rng = Rng(5);
    let model = Model::random(
        &mut rng,
        config(32, 1, 4, 8, 2, 2),
        Types::F32,
        Extras::default(),
    );
    let mut t = model.tensors();
    let bytes = vec![0u8; 32 * 16 * 4];
    // I32 has neither a dot kernel nor a dequantizer.
    let i32_view = moe_core::tensor::TensorView::new(TensorType::I32, &[32, 16], &bytes).unwrap();
    t.up = i32_view;
    assert_eq!(
        PeerLayer::new(model.config, t).err(),
        Some(Error::UnsupportedType {
            ty: TensorType::I32
        })
    );
    let mut t = model.tensors();
    t.down = i32_view;
    assert_eq!(
        PeerLayer::new(model.config, t).err(),
        Some(Error::UnsupportedType {
            ty: TensorType::I32
        })
    );
}

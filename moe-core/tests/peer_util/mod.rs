//! Shared by the `peer_*` tests: a random PEER layer held in owned buffers (weight bytes of
//! any type plus their f32 dequantization), viewed as a `PeerLayer` and as the f32
//! `reference::peer::Peer`.
#![allow(dead_code)]

use moe_core::TensorType;
use moe_core::moe::Activation;
use moe_core::peer::{BatchNorm, IndexMajor, PeerConfig, PeerLayer, PeerTensors, ScoreActivation};
use moe_core::reference::peer as reference;
use moe_core::tensor::TensorView;

use crate::moe_util::{Rng, dequantize, random_weights};

/// Weight types of one layer.
#[derive(Clone, Copy, Debug)]
pub struct Types {
    pub query: TensorType,
    pub keys: TensorType,
    pub down: TensorType,
    pub up: TensorType,
}

impl Types {
    pub const F32: Types = Types {
        query: TensorType::F32,
        keys: TensorType::F32,
        down: TensorType::F32,
        up: TensorType::F32,
    };
}

/// Bytes of some type and their f32 values.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub ty: TensorType,
    pub dims: Vec<u64>,
    pub bytes: Vec<u8>,
    pub values: Vec<f32>,
}

impl Tensor {
    /// `rows` random rows of `cols` (GGUF dims `[cols, rows…]` given by `dims`).
    pub fn random(rng: &mut Rng, ty: TensorType, dims: &[u64]) -> Self {
        let cols = dims[0] as usize;
        let rows: usize = dims[1..].iter().product::<u64>() as usize;
        let bytes = random_weights(rng, ty, rows, cols);
        let values = dequantize(ty, &bytes, rows * cols);
        Tensor {
            ty,
            dims: dims.to_vec(),
            bytes,
            values,
        }
    }

    /// An F32 vector.
    pub fn f32(values: Vec<f32>) -> Self {
        Tensor {
            ty: TensorType::F32,
            dims: vec![values.len() as u64],
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            values,
        }
    }

    pub fn view(&self) -> TensorView<'_> {
        TensorView::new(self.ty, &self.dims, &self.bytes).unwrap()
    }
}

/// Optional parts of a layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extras {
    pub bias: bool,
    pub batch_norm: bool,
    pub norm: bool,
}

/// A whole random layer.
pub struct Model {
    pub config: PeerConfig,
    pub query: Tensor,
    pub bias: Option<Tensor>,
    pub bn: Option<[Tensor; 4]>,
    pub norm: Option<Tensor>,
    pub keys: Tensor,
    pub down: Tensor,
    pub up: Tensor,
}

/// A configuration with the given shape and defaults elsewhere.
pub fn config(
    n_embd: usize,
    n_head: usize,
    n_keys: usize,
    key_length: usize,
    k: usize,
    k_final: usize,
) -> PeerConfig {
    PeerConfig {
        n_embd,
        n_head,
        n_expert: n_keys * n_keys,
        key_length,
        product_key_topk: k,
        experts_per_head: k_final,
        score_activation: ScoreActivation::Softmax,
        index_major: IndexMajor::First,
        shared_keys: false,
        separate_embed_per_head: false,
        activation: Activation::GeluErf,
        query_norm_epsilon: 1e-5,
    }
}

impl Model {
    pub fn random(rng: &mut Rng, config: PeerConfig, types: Types, extras: Extras) -> Self {
        let c = &config;
        let (d, q_len) = (c.n_embd as u64, c.query_length().unwrap() as u64);
        let rows = c.expert_rows().unwrap() as u64;
        let mut vector =
            |n: u64, lo: f32, hi: f32| Tensor::f32((0..n).map(|_| rng.uniform(lo, hi)).collect());
        let bias = extras.bias.then(|| vector(q_len, -0.3, 0.3));
        let bn = extras.batch_norm.then(|| {
            [
                vector(q_len, -0.3, 0.3),
                vector(q_len, 0.5, 2.0),
                vector(q_len, 0.5, 1.5),
                vector(q_len, -0.3, 0.3),
            ]
        });
        let norm = extras.norm.then(|| vector(d, 0.5, 1.5));
        let keys_dims = [
            c.key_length as u64,
            2,
            c.n_keys() as u64,
            c.key_sets() as u64,
        ];
        Model {
            config,
            query: Tensor::random(rng, types.query, &[d, q_len]),
            bias,
            bn,
            norm,
            keys: Tensor::random(rng, types.keys, &keys_dims),
            down: Tensor::random(rng, types.down, &[d, rows]),
            up: Tensor::random(rng, types.up, &[d, rows]),
        }
    }

    pub fn tensors(&self) -> PeerTensors<'_> {
        PeerTensors {
            query: self.query.view(),
            query_bias: self.bias.as_ref().map(Tensor::view),
            query_norm: self.bn.as_ref().map(|[mean, var, w, b]| BatchNorm {
                weight: Some(w.view()),
                bias: Some(b.view()),
                running_mean: mean.view(),
                running_var: var.view(),
            }),
            norm: self.norm.as_ref().map(Tensor::view),
            keys: self.keys.view(),
            down: self.down.view(),
            up: self.up.view(),
        }
    }

    pub fn layer(&self) -> PeerLayer<'_> {
        PeerLayer::new(self.config, self.tensors()).unwrap()
    }

    pub fn reference(&self) -> reference::Peer<'_> {
        reference::Peer {
            config: self.config,
            query: &self.query.values,
            query_bias: self.bias.as_ref().map(|t| &t.values[..]),
            query_norm: self
                .bn
                .as_ref()
                .map(|[mean, var, w, b]| reference::BatchNorm {
                    weight: Some(&w.values),
                    bias: Some(&b.values),
                    running_mean: &mean.values,
                    running_var: &var.values,
                }),
            norm: self.norm.as_ref().map(|t| &t.values[..]),
            keys: &self.keys.values,
            down: &self.down.values,
            up: &self.up.values,
        }
    }
}

/// One head's retrieval of one token, as the fast layer reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Retrieval {
    pub token: usize,
    pub head: usize,
    pub experts: Vec<(u32, f32)>,
    pub weights: Vec<f32>,
}

/// Runs the fast layer on `hidden` with an exactly sized workspace.
pub fn forward(layer: &PeerLayer, hidden: &[f32]) -> (Vec<f32>, Vec<Retrieval>) {
    let n_tokens = hidden.len() / layer.n_embd();
    let mut ws = vec![0u8; layer.workspace_bytes(n_tokens)];
    let mut out = vec![f32::NAN; hidden.len()];
    let mut seen = Vec::new();
    layer
        .forward_with(hidden, &mut out, &mut ws, |s| {
            seen.push(Retrieval {
                token: s.token,
                head: s.head,
                experts: s.experts.iter().map(|e| (e.index, e.score)).collect(),
                weights: s.weights.to_vec(),
            })
        })
        .unwrap();
    (out, seen)
}

/// Runs the reference token by token.
pub fn reference_forward(model: &reference::Peer, hidden: &[f32]) -> (Vec<f32>, Vec<Retrieval>) {
    let d = model.config.n_embd;
    let mut out = vec![0.0; hidden.len()];
    let mut scratch = vec![0.0; model.scratch_len()];
    let mut seen = Vec::new();
    for (t, (x, y)) in hidden
        .chunks_exact(d)
        .zip(out.chunks_exact_mut(d))
        .enumerate()
    {
        model
            .forward_token(x, y, &mut scratch, |head, experts, weights| {
                seen.push(Retrieval {
                    token: t,
                    head,
                    experts: experts.iter().map(|e| (e.index, e.score)).collect(),
                    weights: weights.to_vec(),
                })
            })
            .unwrap();
    }
    (out, seen)
}

/// Max |a − b| over max |b|.
pub fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len());
    let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = actual
        .iter()
        .zip(expected)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    err / scale.max(f32::MIN_POSITIVE)
}

//! `MoeLayer::from_gguf` on files written here: the fused `ffn_gate_up_exps` stack gives
//! the same layer as separate gate and up stacks, and metadata that contradicts the
//! tensors (or missing tensors) is an error.

mod common;
mod moe_util;

use common::{F32, Gguf, Q8_0, kv, kv_str, kv_u32, tensor_info};
use moe_core::gguf::File;
use moe_core::moe::{MoeLayer, SharedExpert, Workspace};
use moe_core::router::Selection;
use moe_core::{Error, TensorType};
use moe_util::{Rng, random_hidden, random_weights};

const BOOL: u32 = 7;
const N_EMBD: u64 = 32;
const N_FF: u64 = 32;
const N_EXPERT: u64 = 4;

/// A file under construction: metadata pairs and tensors with aligned offsets.
struct Builder {
    g: Gguf,
}

impl Builder {
    fn new(arch: &str, keys: &[(&str, u32)]) -> Self {
        let mut g = Gguf::new();
        g.kvs.push(kv_str("general.architecture", arch));
        for (k, v) in keys {
            g.kvs.push(kv_u32(&format!("{arch}.{k}"), *v));
        }
        g.kvs
            .push(kv(&format!("{arch}.expert_weights_norm"), BOOL, &[1]));
        Builder { g }
    }

    fn tensor(&mut self, name: &str, dims: &[u64], type_id: u32, data: &[u8]) {
        let offset = self.g.data.len().next_multiple_of(32);
        self.g.data.resize(offset, 0);
        self.g.data.extend_from_slice(data);
        self.g
            .tensors
            .push(tensor_info(name, dims, type_id, offset as u64));
    }

    fn build(&self) -> Vec<u8> {
        self.g.build()
    }
}

struct Parts {
    router: Vec<u8>,
    gate: Vec<u8>,
    up: Vec<u8>,
    down: Vec<u8>,
}

fn parts(seed: u64) -> Parts {
    let mut rng = Rng(seed);
    let stack = (N_FF * N_EXPERT) as usize;
    Parts {
        router: (0..N_EMBD * N_EXPERT)
            .flat_map(|_| rng.uniform(-0.5, 0.5).to_le_bytes())
            .collect(),
        gate: random_weights(&mut rng, TensorType::Q8_0, stack, N_EMBD as usize),
        up: random_weights(&mut rng, TensorType::Q8_0, stack, N_EMBD as usize),
        down: random_weights(
            &mut rng,
            TensorType::Q8_0,
            (N_EMBD * N_EXPERT) as usize,
            N_FF as usize,
        ),
    }
}

fn keys() -> Vec<(&'static str, u32)> {
    vec![
        ("expert_count", N_EXPERT as u32),
        ("expert_used_count", 2),
        ("embedding_length", N_EMBD as u32),
        ("expert_feed_forward_length", N_FF as u32),
    ]
}

fn split_file(p: &Parts, keys: &[(&str, u32)]) -> Builder {
    let mut b = Builder::new("qwen3moe", keys);
    b.tensor(
        "blk.0.ffn_gate_inp.weight",
        &[N_EMBD, N_EXPERT],
        F32,
        &p.router,
    );
    b.tensor(
        "blk.0.ffn_gate_exps.weight",
        &[N_EMBD, N_FF, N_EXPERT],
        Q8_0,
        &p.gate,
    );
    b.tensor(
        "blk.0.ffn_up_exps.weight",
        &[N_EMBD, N_FF, N_EXPERT],
        Q8_0,
        &p.up,
    );
    b.tensor(
        "blk.0.ffn_down_exps.weight",
        &[N_FF, N_EMBD, N_EXPERT],
        Q8_0,
        &p.down,
    );
    b
}

fn forward(bytes: &[u8], hidden: &[f32]) -> Vec<f32> {
    let file = File::parse(bytes).unwrap();
    let layer = MoeLayer::from_gguf(&file, 0).unwrap();
    let t = hidden.len() / layer.n_embd();
    let size = layer.workspace_size(t);
    let mut sel = vec![Selection::new(); size.selections];
    let mut router = vec![0.0; size.router];
    let mut ws = vec![0u8; size.bytes];
    let mut out = vec![f32::NAN; hidden.len()];
    layer
        .forward(
            hidden,
            &[],
            &mut out,
            &mut Workspace {
                selections: &mut sel,
                router: &mut router,
                bytes: &mut ws,
            },
        )
        .unwrap();
    out
}

#[test]
fn a_fused_gate_up_stack_is_the_same_layer() {
    let p = parts(1);
    let split = split_file(&p, &keys()).build();

    // Fused: each expert's gate rows, then its up rows.
    let expert_bytes = p.gate.len() / N_EXPERT as usize;
    let mut fused = Vec::new();
    for e in 0..N_EXPERT as usize {
        fused.extend_from_slice(&p.gate[e * expert_bytes..(e + 1) * expert_bytes]);
        fused.extend_from_slice(&p.up[e * expert_bytes..(e + 1) * expert_bytes]);
    }
    let mut b = Builder::new("qwen3moe", &keys());
    b.tensor(
        "blk.0.ffn_gate_inp.weight",
        &[N_EMBD, N_EXPERT],
        F32,
        &p.router,
    );
    b.tensor(
        "blk.0.ffn_gate_up_exps.weight",
        &[N_EMBD, 2 * N_FF, N_EXPERT],
        Q8_0,
        &fused,
    );
    b.tensor(
        "blk.0.ffn_down_exps.weight",
        &[N_FF, N_EMBD, N_EXPERT],
        Q8_0,
        &p.down,
    );
    let fused = b.build();

    let hidden = random_hidden(&mut Rng(2), 5, N_EMBD as usize);
    assert_eq!(forward(&split, &hidden), forward(&fused, &hidden));
}

fn error_of(bytes: &[u8]) -> Error {
    let file = File::parse(bytes).unwrap();
    MoeLayer::from_gguf(&file, 0).unwrap_err()
}

#[test]
fn metadata_that_contradicts_the_tensors_is_an_error() {
    let p = parts(3);
    let with = |key: &'static str, value: u32| {
        let mut k = keys();
        k.retain(|(name, _)| *name != key);
        k.push((key, value));
        split_file(&p, &k).build()
    };
    assert!(matches!(
        error_of(&with("expert_count", 5)),
        Error::BadTensorShape { dim: 2, .. } | Error::BadTensorShape { dim: 1, .. }
    ));
    assert!(matches!(
        error_of(&with("embedding_length", 64)),
        Error::BadTensorShape { dim: 0, .. }
    ));
    assert!(matches!(
        error_of(&with("expert_feed_forward_length", 16)),
        Error::BadTensorShape { dim: 1, .. }
    ));
    assert!(matches!(
        error_of(&with("expert_used_count", 5)),
        Error::InvalidRouterConfig { .. } | Error::InvalidMoeConfig { .. }
    ));

    // No down stack.
    let mut b = Builder::new("qwen3moe", &keys());
    b.tensor(
        "blk.0.ffn_gate_inp.weight",
        &[N_EMBD, N_EXPERT],
        F32,
        &p.router,
    );
    b.tensor(
        "blk.0.ffn_up_exps.weight",
        &[N_EMBD, N_FF, N_EXPERT],
        Q8_0,
        &p.up,
    );
    assert!(matches!(error_of(&b.build()), Error::MissingTensor { .. }));

    // A layer that is not there.
    let file_bytes = split_file(&p, &keys()).build();
    let file = File::parse(&file_bytes).unwrap();
    assert!(matches!(
        MoeLayer::from_gguf(&file, 1),
        Err(Error::MissingTensor { .. })
    ));
}

#[test]
fn shared_experts_follow_the_keys() {
    let p = parts(4);
    let mut rng = Rng(5);
    let shexp = |rng: &mut Rng, n_ff: u64| {
        (
            random_weights(rng, TensorType::Q8_0, n_ff as usize, N_EMBD as usize),
            random_weights(rng, TensorType::Q8_0, N_EMBD as usize, n_ff as usize),
        )
    };
    let with_shared = |count: u32, n_ff: u64, rng: &mut Rng| {
        let mut k = keys();
        k.push(("expert_shared_count", count));
        let mut b = split_file(&p, &k);
        let (gu, down) = shexp(rng, n_ff);
        b.tensor("blk.0.ffn_gate_shexp.weight", &[N_EMBD, n_ff], Q8_0, &gu);
        b.tensor("blk.0.ffn_up_shexp.weight", &[N_EMBD, n_ff], Q8_0, &gu);
        b.tensor("blk.0.ffn_down_shexp.weight", &[n_ff, N_EMBD], Q8_0, &down);
        b.build()
    };
    // DeepSeek wiring: width n_ff · expert_shared_count, always on.
    let ok = with_shared(2, 2 * N_FF, &mut rng);
    let file = File::parse(&ok).unwrap();
    let layer = MoeLayer::from_gguf(&file, 0).unwrap();
    assert!(matches!(layer.shared(), SharedExpert::AlwaysOn(_)));
    // The wrong width.
    assert!(matches!(
        error_of(&with_shared(2, N_FF, &mut rng)),
        Error::BadTensorShape { dim: 1, .. }
    ));
    // A shared count without shared tensors.
    let mut k = keys();
    k.push(("expert_shared_count", 1));
    assert!(matches!(
        error_of(&split_file(&p, &k).build()),
        Error::MissingTensor { .. }
    ));
}

//! Builds MoE and PEER layers and whole models from arbitrary GGUF bytes, and runs one
//! forward pass through every layer or model that builds: the configuration and shape
//! checks of `from_gguf` must turn any file into a typed error or something that runs
//! without panicking or reading out of bounds. Seeded with the fixtures (including the
//! Hugging Face, peer-pytorch and whole-model ones).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_core::gguf::File;
use moe_core::model::{KvCache, Model, ModelWorkspace};
use moe_core::moe::{MoeLayer, Workspace};
use moe_core::peer::PeerLayer;
use moe_core::router::Selection;

/// Layers tried per file.
const LAYERS: usize = 2;
/// Largest model width and workspace a run is given (keeps each execution fast).
const MAX_EMBD: usize = 4096;
const MAX_WORKSPACE: usize = 1 << 24;
const N_TOKENS: usize = 2;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = File::parse(data) else {
        return;
    };
    for layer in 0..LAYERS {
        if let Ok(moe) = MoeLayer::from_gguf(&file, layer) {
            run_moe(&moe);
        }
        if let Ok(peer) = PeerLayer::from_gguf(&file, layer) {
            run_peer(&peer);
        }
    }
    if let Ok(model) = Model::<'_, 8>::from_gguf(&file) {
        run_model(&model);
    }
});

/// Context (KV-cache positions) a model run gets.
const CONTEXT: usize = 4;

fn run_model(model: &Model<'_, 8>) {
    let size = model.workspace_size(N_TOKENS, CONTEXT);
    let n_vocab = model.config().n_vocab;
    if [size.kv_cache, size.floats, size.bytes, n_vocab * N_TOKENS]
        .into_iter()
        .any(|n| n > MAX_WORKSPACE)
    {
        return;
    }
    let mut kv = vec![0u16; size.kv_cache];
    let mut floats = vec![0f32; size.floats];
    let mut selections = vec![Selection::new(); size.selections];
    let mut bytes = vec![0u8; size.bytes];
    let mut ws = ModelWorkspace {
        kv_cache: KvCache::F16(&mut kv),
        floats: &mut floats,
        selections: &mut selections,
        bytes: &mut bytes,
    };
    let mut logits = vec![0f32; N_TOKENS * n_vocab];
    // A prompt then one decoded token; token ids past the vocabulary are typed errors.
    let _ = model.forward(&[1, 2], 0, &mut logits, &mut ws);
    let _ = model.forward(&[3], N_TOKENS, &mut logits[..n_vocab], &mut ws);
}

/// A fixed, finite input of `N_TOKENS` rows.
fn input(n_embd: usize) -> Vec<f32> {
    (0..N_TOKENS * n_embd)
        .map(|i| (i % 7) as f32 * 0.25 - 0.75)
        .collect()
}

fn run_moe(layer: &MoeLayer<'_>) {
    let n_embd = layer.n_embd();
    let size = layer.workspace_size(N_TOKENS);
    if n_embd > MAX_EMBD || size.bytes > MAX_WORKSPACE || size.router > MAX_WORKSPACE {
        return;
    }
    let mut selections = vec![Selection::new(); size.selections];
    let mut router = vec![0f32; size.router];
    let mut bytes = vec![0u8; size.bytes];
    let mut workspace = Workspace {
        selections: &mut selections,
        router: &mut router,
        bytes: &mut bytes,
    };
    let hidden = input(n_embd);
    let mut out = vec![0f32; hidden.len()];
    let token_ids = [0u32, 1];
    // Errors are fine (for example a hash router without a table); panics are not.
    let _ = layer.forward(&hidden, &token_ids, &mut out, &mut workspace);
}

fn run_peer(layer: &PeerLayer<'_>) {
    let n_embd = layer.n_embd();
    let bytes = layer.workspace_bytes(N_TOKENS);
    if n_embd > MAX_EMBD || bytes > MAX_WORKSPACE {
        return;
    }
    let mut workspace = vec![0u8; bytes];
    let hidden = input(n_embd);
    let mut out = vec![0f32; hidden.len()];
    let _ = layer.forward(&hidden, &mut out, &mut workspace);
}

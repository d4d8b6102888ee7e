//! Whole models on the GPU ([`GpuModel`]) against moe-core's CPU path (`Model::forward`)
//! on the fixture models of `moe-core/tests/fixtures/models`: a 12-token prompt batch
//! (every position's logits), then two single-token decode steps (the last position's),
//! the same argmax at every position and max |gpu − cpu| ≤ 1e-3 × the logit range.
//!
//! Without a CUDA device the comparison prints `skipped: no CUDA device`
//! (`MOE_REQUIRE_GPU=1` makes that a failure). What runs everywhere: `GpuModel::check`
//! accepts every block of these fixtures and refuses DeepSeek's latent attention with a
//! reason that names it.
//!
//! The fixtures are found next to this crate, or under `moe-core/tests/fixtures/models`
//! of the current directory (the carried test binary of `cargo xtask cuda-check`).

use std::path::PathBuf;

use moe_core::gguf::File;
use moe_core::model::{KvCache, Model, ModelWorkspace};
use moe_core::router::Selection;
use moe_cuda::{GpuDevice, GpuError, GpuModel};

/// The fixtures every block of which the GPU model runs: Q4_0, Q8_0, Q4_K_M (Q4_K with
/// Q6_K), F16 and F32 weights; Mixtral, Qwen3-MoE (per-head QK norms), Qwen2-MoE (QKV
/// biases, NeoX RoPE, gated shared expert), OLMoE (QK norms over the whole projection),
/// GraniteMoE (embedding/residual/attention/logit scales), dense Mistral, Mixtral with
/// YaRN.
const GPU_MODELS: [&str; 12] = [
    "mixtral-tiny-q4_0",
    "mixtral-tiny-q8_0",
    "mixtral-k-tiny-q4_k_m",
    "qwen3moe-tiny-q8_0",
    "qwen2moe-tiny-f16",
    "mixtral-tiny",
    "mixtral-yarn-tiny",
    "qwen2moe-tiny",
    "qwen3moe-tiny",
    "olmoe-tiny",
    "granitemoe-tiny",
    "mistral-tiny",
];

/// Largest |gpu − cpu| allowed, relative to the CPU logits' range.
const TOLERANCE: f32 = 1e-3;

fn fixture(name: &str) -> PathBuf {
    let beside = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../moe-core/tests/fixtures/models"
    ));
    let dir = if beside.is_dir() {
        beside
    } else {
        PathBuf::from("moe-core/tests/fixtures/models")
    };
    dir.join(format!("{name}.gguf"))
}

fn read(name: &str) -> Vec<u8> {
    let path = fixture(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The prompt (as the llama.cpp comparisons use), then two decode tokens.
const PROMPT: [u32; 12] = [1, 5, 17, 42, 3, 77, 9, 60, 31, 2, 88, 14];
const DECODE: [u32; 2] = [23, 8];
const CONTEXT: usize = 16;

#[test]
fn check_accepts_every_block_of_the_fixtures() {
    for name in GPU_MODELS {
        let bytes = read(name);
        let file = File::parse(&bytes).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        GpuModel::check(&model).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn check_refuses_latent_attention_with_a_reason() {
    for name in ["deepseek2-kvb-tiny-q8_0", "deepseek2-tiny"] {
        let bytes = read(name);
        let file = File::parse(&bytes).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        match GpuModel::check(&model) {
            Err(e @ GpuError::Unsupported { reason }) => {
                assert!(reason.contains("latent attention"), "{name}: {reason}");
                println!("{name}: {e}");
            }
            other => panic!("{name}: expected Unsupported, got {other:?}"),
        }
    }
}

fn device_or_skip() -> Option<GpuDevice> {
    match GpuDevice::first() {
        Some(Ok(d)) => {
            println!(
                "device {} (kernels cached: {})",
                d.arch(),
                d.kernels_cached()
            );
            Some(d)
        }
        Some(Err(e)) => panic!("a CUDA device is present but could not be opened: {e}"),
        None => {
            assert!(
                std::env::var_os("MOE_REQUIRE_GPU").is_none(),
                "MOE_REQUIRE_GPU is set but there is no CUDA device"
            );
            println!("skipped: no CUDA device");
            None
        }
    }
}

/// The CPU path's logits: the prompt (every position), then each decode token (the last).
fn cpu_logits(model: &Model<'_>) -> Vec<Vec<f32>> {
    let n_vocab = model.config().n_vocab;
    let size = model.workspace_size(PROMPT.len(), CONTEXT);
    let mut kv = vec![0f32; size.kv_cache];
    let mut floats = vec![0f32; size.floats];
    let mut selections = vec![Selection::new(); size.selections];
    let mut bytes = vec![0u8; size.bytes];
    let mut ws = ModelWorkspace {
        kv_cache: KvCache::F32(&mut kv),
        floats: &mut floats,
        selections: &mut selections,
        bytes: &mut bytes,
    };
    let mut out = Vec::new();
    let mut logits = vec![0f32; PROMPT.len() * n_vocab];
    model.forward(&PROMPT, 0, &mut logits, &mut ws).unwrap();
    out.push(logits);
    for (i, &token) in DECODE.iter().enumerate() {
        let mut logits = vec![0f32; n_vocab];
        model
            .forward(&[token], PROMPT.len() + i, &mut logits, &mut ws)
            .unwrap();
        out.push(logits);
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv { (i, x) } else { (bi, bv) }
        })
        .0
}

/// Same argmax per position, max |diff| ≤ TOLERANCE × the CPU logits' range.
fn compare(label: &str, gpu: &[f32], cpu: &[f32], n_vocab: usize) {
    assert_eq!(gpu.len(), cpu.len(), "{label}");
    let (lo, hi) = cpu
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = (hi - lo).max(1e-6);
    let worst = gpu
        .iter()
        .zip(cpu)
        .map(|(a, b)| (a - b).abs())
        .fold(
            0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        );
    println!("{label}: max |diff| {worst:.3e}, logit range {range:.3}");
    assert!(
        worst <= TOLERANCE * range,
        "{label}: max |diff| {worst} > {TOLERANCE} × {range}"
    );
    for (p, (g, c)) in gpu
        .chunks_exact(n_vocab)
        .zip(cpu.chunks_exact(n_vocab))
        .enumerate()
    {
        assert_eq!(argmax(g), argmax(c), "{label}: argmax at row {p}");
    }
}

#[test]
fn gpu_model_matches_the_cpu_forward_on_the_fixtures() {
    let Some(device) = device_or_skip() else {
        return;
    };
    for name in GPU_MODELS {
        let bytes = read(name);
        let file = File::parse(&bytes).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let n_vocab = model.config().n_vocab;
        let cpu = cpu_logits(&model);
        let mut gpu = GpuModel::new(&device, &model, CONTEXT, PROMPT.len())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        println!("{name}: {} weight bytes on the device", gpu.weight_bytes());
        let mut logits = vec![0f32; PROMPT.len() * n_vocab];
        gpu.forward(&PROMPT, 0, &mut logits).unwrap();
        compare(&format!("{name} prompt"), &logits, &cpu[0], n_vocab);
        for (i, &token) in DECODE.iter().enumerate() {
            let mut logits = vec![0f32; n_vocab];
            gpu.forward(&[token], PROMPT.len() + i, &mut logits)
                .unwrap();
            compare(&format!("{name} decode {i}"), &logits, &cpu[i + 1], n_vocab);
        }
    }
}

#[test]
fn gpu_model_refuses_bad_input_with_typed_errors() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let bytes = read("mixtral-tiny-q8_0");
    let file = File::parse(&bytes).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let n_vocab = model.config().n_vocab;
    let mut gpu = GpuModel::new(&device, &model, 8, 4).unwrap();
    let mut one = vec![0f32; n_vocab];
    // Beyond the context.
    assert!(matches!(
        gpu.forward(&[1, 2], 7, &mut one),
        Err(GpuError::Core(moe_core::Error::PositionOutOfRange { .. }))
    ));
    // A token outside the vocabulary.
    assert!(matches!(
        gpu.forward(&[n_vocab as u32], 0, &mut one),
        Err(GpuError::Core(moe_core::Error::TokenOutOfRange { .. }))
    ));
    // A batch over max_batch, logits of the wrong length.
    assert!(matches!(
        gpu.forward(&[1, 2, 3, 4, 5], 0, &mut one),
        Err(GpuError::LengthMismatch { .. })
    ));
    assert!(matches!(
        gpu.forward(&[1], 0, &mut one[..n_vocab - 1]),
        Err(GpuError::LengthMismatch { .. })
    ));
    // An empty batch does nothing; a good one still runs.
    gpu.forward(&[], 0, &mut []).unwrap();
    gpu.forward(&[1, 2], 0, &mut one).unwrap();
    assert!(one.iter().all(|v| v.is_finite()));
}

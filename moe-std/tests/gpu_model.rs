//! Whole models on the GPU (`Session::offload_to_gpu`, `--gpu`) against the same models
//! on the CPU path: the fixture models of `moe-core/tests/fixtures/models` that the GPU
//! kernels read (Q4_0, Q8_0, Q4_K_M, F16, F32; Mixtral, Qwen3-MoE, Qwen2-MoE with its
//! gated shared expert, DeepSeek with a dense first block, shared experts, group-limited
//! routing and a selection bias, OLMoE, GraniteMoE, dense Mistral), three ways: the
//! whole model on the device (DeepSeek's latent attention: its FFN blocks), the FFN
//! blocks with every expert (attention on the CPU), and hybrid (half the routed experts'
//! bytes as the budget, the rest on the CPU): the same experts chosen in every block
//! where routing is reported, logits within 1e-3 of the logit range, the same argmax.
//!
//! Without a CUDA device the GPU comparison prints `skipped: no CUDA device`
//! (`MOE_REQUIRE_GPU=1` makes that a failure); what runs everywhere: the GPU path
//! accepts every block of these fixtures, and a model whose blocks it cannot run stays
//! on the CPU (with the reason) instead of failing.
//!
//! The CLI: `--gpu`, `--gpu-budget`, `--gpu-stats` are parsed by run, bench, route and
//! logits; without a device `--gpu` is a one-line error, a bad budget or statistics file
//! a message naming it; with one, `moe logits --gpu` agrees with the CPU path.
//!
//! The fixtures are found next to this crate, or under `moe-core/tests/fixtures/models`
//! of the current directory (the carried test binary of `cargo xtask cuda-check`).

use std::path::PathBuf;

use moe_core::model::Model;
use moe_core::router::Selection;
use moe_cuda::{GpuModel, GpuMoeLayer};
use moe_std::GgufFile;
use moe_std::gpu::{BlockWeights, GpuOptions};
use moe_std::pool::ThreadPool;
use moe_std::session::{KvType, Session};

mod run_moe;

use run_moe::{moe, ok};

/// The fixtures every block of which the GPU path runs.
const GPU_MODELS: [&str; 13] = [
    "mixtral-tiny-q4_0",
    "mixtral-tiny-q8_0",
    "mixtral-k-tiny-q4_k_m",
    "qwen3moe-tiny-q8_0",
    "qwen2moe-tiny-f16",
    "deepseek2-kvb-tiny-q8_0",
    "mixtral-tiny",
    "qwen2moe-tiny",
    "deepseek2-tiny",
    "olmoe-tiny",
    "granitemoe-tiny",
    "qwen3moe-tiny",
    "mistral-tiny",
];

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

/// The fixture's token sequence (as the llama.cpp comparisons use).
fn tokens() -> Vec<u32> {
    vec![1, 5, 17, 42, 3, 77, 9, 60, 31, 2, 88, 14]
}

/// Every position's logits and every MoE block's routing (`routes[layer][position]`;
/// `None` for a whole model on the GPU, which reports none).
type Run = (Vec<f32>, Option<Vec<Vec<Vec<u32>>>>);

/// Evaluates the tokens as one prompt batch, then one token more as a decode step, on
/// the CPU or with `gpu`.
fn evaluate(gguf: &GgufFile, gpu: Option<&GpuOptions>) -> Run {
    let pool = ThreadPool::new(2);
    let tokens = tokens();
    let mut session = Session::new(gguf, &pool, 64, tokens.len(), KvType::F32).unwrap();
    let mut whole = false;
    if let Some(options) = gpu {
        let offload = session.offload_to_gpu(options).unwrap();
        assert!(offload.skipped().is_empty(), "{:?}", offload.skipped());
        whole = offload.is_whole();
    }
    let c = session.model().config();
    let (n_vocab, n_layer) = (c.n_vocab, c.n_layer);
    let mut routes = vec![vec![Vec::new(); tokens.len() + 1]; n_layer];
    let mut record = |layer: usize, first: usize, selections: &[Selection]| {
        for (i, s) in selections.iter().enumerate() {
            let mut experts: Vec<u32> = s.iter().map(|c| c.expert).collect();
            experts.sort_unstable();
            routes[layer][first + i] = experts;
        }
    };
    let (prompt, last) = tokens.split_at(tokens.len() - 1);
    let mut logits = vec![0.0; prompt.len() * n_vocab];
    session
        .eval_routed(prompt, &mut logits, &mut [], &mut record)
        .unwrap();
    let mut step = vec![0.0; n_vocab];
    session
        .eval_routed(last, &mut step, &mut [], &mut record)
        .unwrap();
    logits.extend_from_slice(&step);
    (logits, (!whole).then_some(routes))
}

fn compare(name: &str, what: &str, cpu: &Run, gpu: &Run, n_vocab: usize) {
    if let (Some(cpu), Some(gpu)) = (&cpu.1, &gpu.1) {
        for (l, (c, g)) in cpu.iter().zip(gpu).enumerate() {
            for (pos, (c, g)) in c.iter().zip(g).enumerate() {
                assert_eq!(c, g, "{name} ({what}): block {l}, position {pos}: experts");
            }
        }
    }
    for (pos, (c, g)) in cpu.0.chunks(n_vocab).zip(gpu.0.chunks(n_vocab)).enumerate() {
        let lo = c.iter().fold(f32::INFINITY, |m, &v| m.min(v));
        let hi = c.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let diff = c
            .iter()
            .zip(g)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff <= 1e-3 * (hi - lo),
            "{name} ({what}): position {pos}: logits differ by {diff} (range {})",
            hi - lo
        );
        let argmax = |r: &[f32]| (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b });
        assert_eq!(
            argmax(c),
            argmax(g),
            "{name} ({what}): position {pos}: argmax"
        );
    }
}

#[test]
fn the_gpu_path_accepts_every_block_of_the_gpu_fixtures() {
    for name in GPU_MODELS {
        let gguf = GgufFile::open(fixture(name)).unwrap();
        let model: Model<'_> = Model::from_gguf(gguf.file()).unwrap();
        for l in 0..model.config().n_layer {
            let ffn = model.ffn(l).unwrap();
            GpuMoeLayer::check(ffn, ffn.router().is_some())
                .unwrap_or_else(|e| panic!("{name}: block {l}: {e}"));
        }
        // The whole model goes too, except DeepSeek's latent attention.
        let whole = GpuModel::check(&model);
        assert_eq!(
            whole.is_ok(),
            !name.starts_with("deepseek2"),
            "{name}: {whole:?}"
        );
    }
}

/// The vocabulary and the bytes of all routed experts (in its own frame: a model value
/// beside a session's evaluation overflows a debug test thread's stack).
fn vocab_and_routed_bytes(gguf: &GgufFile) -> (usize, u64) {
    let model: Model<'_> = Model::from_gguf(gguf.file()).unwrap();
    let routed = (0..model.config().n_layer)
        .map(|l| BlockWeights::of(model.ffn(l).unwrap()).unwrap())
        .filter(|b| !b.dense)
        .map(|b| b.experts.iter().sum::<u64>())
        .sum();
    (model.config().n_vocab, routed)
}

#[test]
fn gpu_models_match_the_cpu_path_resident_and_hybrid() {
    if moe_cuda::devices().is_empty() {
        assert!(
            std::env::var_os("MOE_REQUIRE_GPU").is_none(),
            "MOE_REQUIRE_GPU is set but there is no CUDA device"
        );
        println!("skipped: no CUDA device");
        return;
    }
    for name in GPU_MODELS {
        let gguf = GgufFile::open(fixture(name)).unwrap();
        let (n_vocab, routed) = vocab_and_routed_bytes(&gguf);
        let cpu = evaluate(&gguf, None);
        // The whole model when the GPU path covers it (else its FFN blocks), the FFN
        // blocks alone with every expert, and hybrid: half of the routed experts' bytes
        // (dense blocks and shared experts are placed first, so they take part of it).
        let modes = [
            ("default", GpuOptions::default()),
            (
                "ffn blocks",
                GpuOptions {
                    ffn_only: true,
                    ..GpuOptions::default()
                },
            ),
            (
                "hybrid",
                GpuOptions {
                    budget: Some(routed / 2),
                    ..GpuOptions::default()
                },
            ),
        ];
        for (what, options) in &modes {
            compare(name, what, &cpu, &evaluate(&gguf, Some(options)), n_vocab);
        }
        println!("{name}: whole, FFN blocks and hybrid match the CPU path");
    }
}

/// A copy of fixture `name` (in the temporary folder, as `file`) with every block's FFN
/// matrices (`ffn_gate`, `ffn_up`, `ffn_down`, F32 in the fixtures) re-encoded as Q4_1,
/// a type the CPU reads and the GPU kernels do not: each tensor's type id is rewritten in
/// its tensor-info record and its new, smaller data written at its old offset.
fn with_q4_1_ffns(name: &str, file: &str) -> PathBuf {
    use moe_core::TensorType;
    let bytes = std::fs::read(fixture(name)).unwrap();
    let parsed = moe_core::gguf::File::parse(&bytes).unwrap();
    let data_at = parsed.data_offset();
    let mut out = bytes.clone();
    let mut n = 0;
    for t in parsed.tensors() {
        let ffn = ["ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]
            .iter()
            .any(|m| t.name.ends_with(m));
        if !t.name.starts_with("blk.") || !ffn {
            continue;
        }
        assert_eq!(t.view.ty(), TensorType::F32, "{}", t.name);
        // The record: name (u64 length, bytes), n_dims (u32), dims (u64 each), type
        // (u32), offset (u64).
        let mut key = (t.name.len() as u64).to_le_bytes().to_vec();
        key.extend_from_slice(t.name.as_bytes());
        let at = bytes[..data_at]
            .windows(key.len())
            .position(|w| w == key)
            .unwrap();
        let ty_at = at + key.len() + 4 + 8 * t.view.dims().len();
        assert_eq!(bytes[ty_at..ty_at + 4], 0u32.to_le_bytes(), "{}", t.name);
        assert_eq!(bytes[ty_at + 4..ty_at + 12], t.offset.to_le_bytes());
        out[ty_at..ty_at + 4].copy_from_slice(&TensorType::Q4_1.id().to_le_bytes());
        let values: Vec<f32> = t
            .view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut q = vec![0u8; values.len() / 32 * TensorType::Q4_1.block_bytes()];
        moe_core::quant::quantize_row(TensorType::Q4_1, &values, &mut q).unwrap();
        let start = data_at + t.offset as usize;
        out[start..start + q.len()].copy_from_slice(&q);
        n += 1;
    }
    assert!(n > 0, "{name}: no FFN matrices");
    let path = std::env::temp_dir().join(format!("{file}-{}.gguf", std::process::id()));
    std::fs::write(&path, out).unwrap();
    path
}

/// Asserts the GPU path refuses every block of `gguf` with an error naming `ty`; returns
/// the number of blocks and the vocabulary size. (A function of its own, so that the
/// model's frame is gone before the caller evaluates: debug builds keep every local of a
/// function in one frame, too deep for a test thread with a session's beside it.)
fn refused_blocks(gguf: &GgufFile, ty: &str) -> (usize, usize) {
    let model: Model<'_> = Model::from_gguf(gguf.file()).unwrap();
    for l in 0..model.config().n_layer {
        let err = GpuMoeLayer::check(model.ffn(l).unwrap(), false).unwrap_err();
        assert!(err.to_string().contains(ty), "block {l}: {err}");
    }
    (model.config().n_layer, model.config().n_vocab)
}

#[test]
fn blocks_the_gpu_cannot_run_stay_on_the_cpu() {
    // Q4_1 FFN weights (read with Q8_1 activations): no GPU kernel reads them. The
    // fixtures hold none, so a copy of mistral-tiny is re-encoded.
    let path = with_q4_1_ffns("mistral-tiny", "moe-gpu-mistral-tiny-q4_1");
    let gguf = GgufFile::open(&path).unwrap();
    let (n_layer, n_vocab) = refused_blocks(&gguf, "Q4_1");
    // The CPU path runs the copy.
    let cpu = evaluate(&gguf, None);
    assert!(cpu.0.iter().all(|v| v.is_finite()));
    if moe_cuda::devices().is_empty() {
        let _ = std::fs::remove_file(&path);
        println!("skipped: no CUDA device");
        return;
    }
    let pool = ThreadPool::new(2);
    let mut session = Session::new(&gguf, &pool, 64, 12, KvType::F32).unwrap();
    let offload = session.offload_to_gpu(&GpuOptions::default()).unwrap();
    assert_eq!(offload.skipped().len(), n_layer);
    let mut logits = vec![0.0; 11 * n_vocab];
    session.eval(&tokens()[..11], &mut logits).unwrap();
    assert_eq!(logits, cpu.0[..logits.len()]);
    // Where the open file blocks removal, the temporary folder keeps it.
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_gpu_flags_of_the_cli() {
    let path = fixture("mixtral-tiny-q4_0");
    let path = path.to_str().unwrap();
    let stats = std::env::temp_dir().join(format!("moe-gpu-stats-{}.json", std::process::id()));
    let route = ok(&["route", path, "--tokens", "1,5,17", "--json"]);
    std::fs::write(&stats, &route.stdout).unwrap();
    let stats = stats.to_str().unwrap();
    let bad_stats = std::env::temp_dir().join(format!("moe-gpu-bad-{}.json", std::process::id()));
    std::fs::write(&bad_stats, "{\"file\": 1}").unwrap();
    let bad_stats = bad_stats.to_str().unwrap();
    // Usage errors (status 2) whether or not there is a device.
    for budget in ["12X", "-1", "lots", ""] {
        let out = moe(&["bench", path, "--gpu-budget", budget]);
        assert_eq!(out.status.code(), Some(2), "--gpu-budget {budget:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--gpu-budget"));
    }
    // The statistics file is read before the device is opened.
    for (file, says) in [
        (bad_stats, "layers"),
        ("no-such-stats.json", "no-such-stats"),
    ] {
        let out = moe(&["logits", path, "--tokens", "1", "--gpu-stats", file]);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("moe: ") && stderr.contains(says),
            "{stderr}"
        );
    }
    let commands: [&[&str]; 5] = [
        &["run", path, "--tokens", "1,5", "-n", "2", "--gpu"],
        &["logits", path, "--tokens", "1,5", "--gpu-ffn-only"],
        &[
            "bench",
            path,
            "--prompt",
            "4",
            "--gen",
            "2",
            "--reps",
            "1",
            "--gpu-budget",
            "64K",
        ],
        &["route", path, "--tokens", "1,5", "--gpu-stats", stats],
        &[
            "logits",
            path,
            "--tokens",
            "1,5",
            "--gpu",
            "--gpu-budget",
            "1.5M",
            "--gpu-stats",
            stats,
        ],
    ];
    if moe_cuda::devices().is_empty() {
        for args in commands {
            let out = moe(args);
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.starts_with("moe: ") && stderr.contains("GPU: "),
                "{args:?}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        }
        println!("skipped: no CUDA device (the flags were checked)");
        return;
    }
    for args in commands {
        let out = ok(args);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("gpu: sm_"),
            "{args:?}"
        );
    }
    let cpu = ok(&["logits", path, "--tokens", "1,5,17,42"]).stdout;
    let gpu = ok(&[
        "logits",
        path,
        "--tokens",
        "1,5,17,42",
        "--gpu-budget",
        "64K",
    ])
    .stdout;
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (cpu, gpu) = (f32s(&cpu), f32s(&gpu));
    assert_eq!(cpu.len(), gpu.len());
    let range = cpu.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
        - cpu.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let diff = cpu
        .iter()
        .zip(&gpu)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        diff <= 1e-3 * range,
        "logits differ by {diff} (range {range})"
    );
}

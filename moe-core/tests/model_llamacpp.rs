//! Whole models against llama.cpp: the tiny fixtures of `tests/fixtures/models` (a dense
//! Mistral-style `llama` model and one MoE model per supported architecture — Mixtral,
//! Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE, DeepSeek-V3-style with latent attention —
//! all F32, plus llama.cpp's own Q8_0/Q4_0
//! quantizations of two of them (`generate_models.py`) and a wider Mixtral in Q4_K_M
//! (`generate_kquant.py`)) evaluated on a fixed token
//! sequence, against llama.cpp's logits (llama-cpp-python 0.3.36 with an f32 KV cache,
//! `llamacpp_logits.py`).
//!
//! - F32 models: every logit within 1e-3 of the logit range of llama.cpp's.
//! - Quantized models: the same argmax at every position and mean KL(llama.cpp ‖ ours)
//!   ≤ 1e-3 (the bar: argmax at ≥ 99 % of positions).
//! - Greedy generation: the same tokens as llama.cpp up to the first step whose top-1/top-2
//!   margin is below 1e-3.
//! - A batch gives the same bits as the same tokens one call at a time.
//! - The FFN offload hook (`Model::forward_offloaded`): an offload that runs the CPU path
//!   gives the same bits and routing; its output is what the model uses; its error names
//!   the block.

use moe_core::gguf::File;
use moe_core::model::{FfnOffload, KvCache, Model, ModelWorkspace, OffloadError, WorkspaceSize};
use moe_core::moe::{MoeLayer, Workspace};
use moe_core::router::Selection;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models");

/// The float fixtures: dense Llama, one MoE model per supported architecture, two with YaRN
/// RoPE scaling (llama's and DeepSeek's variants), all F32, an F16 conversion by
/// llama.cpp's own tool, and DeepSeek with the combined `attn_kv_b` of older files (which
/// llama.cpp runs non-absorbed, with per-head K/V in its cache).
const FLOAT_MODELS: [&str; 11] = [
    "mistral-tiny",
    "mixtral-tiny",
    "qwen2moe-tiny",
    "qwen3moe-tiny",
    "olmoe-tiny",
    "granitemoe-tiny",
    "deepseek2-tiny",
    "mixtral-yarn-tiny",
    "deepseek2-yarn-tiny",
    "qwen2moe-tiny-f16",
    "deepseek2-kvb-tiny",
];

/// Fixtures quantized by llama.cpp's own quantizer.
const QUANTIZED_MODELS: [&str; 5] = [
    "mixtral-tiny-q8_0",
    "mixtral-tiny-q4_0",
    "qwen3moe-tiny-q8_0",
    "mixtral-k-tiny-q4_k_m",
    // Q8_0 attn_kv_b: its rows dequantized one at a time for the absorbed query.
    "deepseek2-kvb-tiny-q8_0",
];

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn reference(model: &str) -> (Vec<u32>, Vec<f32>, serde_json::Value) {
    let json: serde_json::Value =
        serde_json::from_slice(&read(&format!("{model}.logits.json"))).unwrap();
    let tokens = json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let logits = f32s(&read(&format!("{model}.logits-kvf32.f32")));
    (tokens, logits, json)
}

/// Owned workspace buffers (an f32 KV cache, and an f16 one used instead when non-empty).
struct Buffers {
    kv_cache: Vec<f32>,
    kv_f16: Vec<u16>,
    floats: Vec<f32>,
    selections: Vec<Selection>,
    bytes: Vec<u8>,
}

impl Buffers {
    fn new(size: WorkspaceSize) -> Self {
        Buffers {
            kv_cache: vec![0.0; size.kv_cache],
            kv_f16: Vec::new(),
            floats: vec![0.0; size.floats],
            selections: vec![Selection::new(); size.selections],
            bytes: vec![0; size.bytes],
        }
    }

    fn workspace(&mut self) -> ModelWorkspace<'_> {
        let kv_cache = if self.kv_f16.is_empty() {
            KvCache::F32(&mut self.kv_cache)
        } else {
            KvCache::F16(&mut self.kv_f16)
        };
        ModelWorkspace {
            kv_cache,
            floats: &mut self.floats,
            selections: &mut self.selections,
            bytes: &mut self.bytes,
        }
    }
}

/// All logits of `tokens` evaluated as one batch from position 0.
fn logits_of(model: &Model<'_>, tokens: &[u32], context: usize) -> Vec<f32> {
    let mut buffers = Buffers::new(model.workspace_size(tokens.len(), context));
    let mut logits = vec![0.0; tokens.len() * model.config().n_vocab];
    model
        .forward(tokens, 0, &mut logits, &mut buffers.workspace())
        .unwrap();
    logits
}

/// The largest |got − expected| and the range of `expected`.
fn max_diff_and_range(got: &[f32], expected: &[f32]) -> (f32, f32) {
    let lo = expected.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let hi = expected.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let max_diff = got
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    (max_diff, hi - lo)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    row.iter().map(|&v| v as f64 - lse).collect()
}

#[test]
fn f32_models_match_llama_cpp_logits() {
    for name in FLOAT_MODELS {
        let bytes = read(&format!("{name}.gguf"));
        let file = File::parse(&bytes).unwrap();
        let model: Model<'_> = Model::from_gguf(&file).unwrap();
        let (tokens, expected, _) = reference(name);
        let got = logits_of(&model, &tokens, 64);
        let (max_diff, range) = max_diff_and_range(&got, &expected);
        eprintln!(
            "{name}: max |ours − llama.cpp| = {max_diff:e}, logit range {}",
            range
        );
        assert!(max_diff <= 1e-3 * (range), "{name}: max diff {max_diff}");
    }
}

#[test]
fn quantized_models_match_llama_cpp_argmax_and_kl() {
    for name in QUANTIZED_MODELS {
        let bytes = read(&format!("{name}.gguf"));
        let file = File::parse(&bytes).unwrap();
        let model: Model<'_> = Model::from_gguf(&file).unwrap();
        let (tokens, expected, _) = reference(name);
        let got = logits_of(&model, &tokens, 64);
        let n_vocab = model.config().n_vocab;
        let mut kl = 0.0;
        for (g, e) in got
            .chunks_exact(n_vocab)
            .zip(expected.chunks_exact(n_vocab))
        {
            assert_eq!(argmax(g), argmax(e), "{name}: argmax");
            let (lg, le) = (log_softmax(g), log_softmax(e));
            kl += le
                .iter()
                .zip(&lg)
                .map(|(p, q)| p.exp() * (p - q))
                .sum::<f64>();
        }
        let mean_kl = kl / tokens.len() as f64;
        eprintln!("{name}: mean KL = {mean_kl:e}");
        assert!(mean_kl <= 1e-3, "{name}: mean KL {mean_kl}");
    }
}

#[test]
fn greedy_generation_follows_llama_cpp() {
    for name in [
        "mistral-tiny",
        "mixtral-tiny",
        "mixtral-tiny-q8_0",
        "mixtral-tiny-q4_0",
        "mixtral-k-tiny-q4_k_m",
        "deepseek2-kvb-tiny",
        "deepseek2-kvb-tiny-q8_0",
    ] {
        let bytes = read(&format!("{name}.gguf"));
        let file = File::parse(&bytes).unwrap();
        let model: Model<'_> = Model::from_gguf(&file).unwrap();
        let (tokens, _, json) = reference(name);
        let greedy: Vec<u32> = json["greedy_kvf32"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let margins: Vec<f64> = json["greedy_margins_kvf32"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let n_vocab = model.config().n_vocab;
        let mut buffers = Buffers::new(model.workspace_size(tokens.len(), 64));
        let mut logits = vec![0.0; n_vocab];
        model
            .forward(&tokens, 0, &mut logits, &mut buffers.workspace())
            .unwrap();
        for (step, (&want, &margin)) in greedy.iter().zip(&margins).enumerate() {
            let pos = tokens.len() + step;
            let next = argmax(&logits) as u32;
            if margin < 1e-3 {
                break;
            }
            assert_eq!(next, want, "{name}: step {step}");
            model
                .forward(&[next], pos, &mut logits, &mut buffers.workspace())
                .unwrap();
        }
    }
}

#[test]
fn a_batch_equals_the_same_tokens_one_at_a_time() {
    for name in ["mistral-tiny", "mixtral-tiny-q4_0"] {
        let bytes = read(&format!("{name}.gguf"));
        let file = File::parse(&bytes).unwrap();
        let model: Model<'_> = Model::from_gguf(&file).unwrap();
        let (tokens, _, _) = reference(name);
        let batch = logits_of(&model, &tokens, 32);
        let n_vocab = model.config().n_vocab;
        let mut buffers = Buffers::new(model.workspace_size(1, 32));
        let mut row = vec![0.0; n_vocab];
        for (pos, &token) in tokens.iter().enumerate() {
            model
                .forward(&[token], pos, &mut row, &mut buffers.workspace())
                .unwrap();
            let want = &batch[pos * n_vocab..(pos + 1) * n_vocab];
            assert!(
                row.iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: position {pos}"
            );
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let bytes = read("mixtral-tiny.gguf");
    let file = File::parse(&bytes).unwrap();
    let model: Model<'_> = Model::from_gguf(&file).unwrap();
    let n_vocab = model.config().n_vocab;
    let mut buffers = Buffers::new(model.workspace_size(4, 8));
    let mut logits = vec![0.0; n_vocab];
    // A token outside the vocabulary.
    let e = model.forward(&[n_vocab as u32], 0, &mut logits, &mut buffers.workspace());
    assert!(
        matches!(e, Err(moe_core::Error::TokenOutOfRange { .. })),
        "{e:?}"
    );
    // Past the context.
    let e = model.forward(&[1, 2], 7, &mut logits, &mut buffers.workspace());
    assert!(
        matches!(e, Err(moe_core::Error::PositionOutOfRange { .. })),
        "{e:?}"
    );
    // A batch larger than the workspace was sized for.
    let e = model.forward(&[1; 5], 0, &mut logits, &mut buffers.workspace());
    assert!(e.is_err());
    // A logits buffer of the wrong length.
    let mut wrong = vec![0.0; n_vocab + 1];
    let e = model.forward(&[1], 0, &mut wrong, &mut buffers.workspace());
    assert!(
        matches!(e, Err(moe_core::Error::LengthMismatch { .. })),
        "{e:?}"
    );
    // An architecture the engine does not run is refused by name.
    let bytes = read("../metadata.gguf");
    let file = File::parse(&bytes).unwrap();
    let e = Model::<'_, 4>::from_gguf(&file).map(|_| ());
    assert!(
        matches!(e, Err(moe_core::Error::UnsupportedArchitecture { .. })),
        "{e:?}"
    );
    // A supported one missing its attention metadata (a single MoE block) names the key.
    let bytes = read("../hf/qwen2moe.gguf");
    let file = File::parse(&bytes).unwrap();
    let e = Model::<'_, 4>::from_gguf(&file).map(|_| ());
    assert!(
        matches!(&e, Err(moe_core::Error::MissingKey { key }) if key.starts_with("qwen2moe.")),
        "{e:?}"
    );
}

#[test]
fn an_f16_kv_cache_matches_llama_cpp_default_logits() {
    // llama.cpp's default context keeps K and V in f16 too; its other f16 roundings (the
    // query and the softmax probabilities) differ from ours: measured ≤ 5.3e-4 of the range.
    for name in FLOAT_MODELS {
        let bytes = read(&format!("{name}.gguf"));
        let file = File::parse(&bytes).unwrap();
        let model: Model<'_> = Model::from_gguf(&file).unwrap();
        let (tokens, _, _) = reference(name);
        let expected = f32s(&read(&format!("{name}.logits.f32")));
        let size = model.workspace_size(tokens.len(), 64);
        let mut buffers = Buffers::new(size);
        buffers.kv_f16 = vec![0; size.kv_cache];
        let mut got = vec![0.0; tokens.len() * model.config().n_vocab];
        model
            .forward(&tokens, 0, &mut got, &mut buffers.workspace())
            .unwrap();
        let (max_diff, range) = max_diff_and_range(&got, &expected);
        eprintln!(
            "{name} (f16 KV): max |ours − llama.cpp| = {max_diff:e}, range {}",
            range
        );
        assert!(max_diff <= 1e-3 * (range), "{name}: max diff {max_diff}");
    }
}

/// A GGUF file with some tensors replaced, added or hidden (for the combined-KV tests).
struct Patched<'a> {
    file: &'a File<'a>,
    replace: Vec<(String, Option<moe_core::tensor::TensorView<'a>>)>,
}

impl<'a> moe_core::source::TensorSource<'a> for Patched<'a> {
    fn value(&self, key: &str) -> Option<moe_core::gguf::Value<'a>> {
        self.file.get(key)
    }

    fn tensor(&self, name: &str) -> Option<moe_core::tensor::TensorView<'a>> {
        match self.replace.iter().find(|(n, _)| n == name) {
            Some((_, view)) => *view,
            None => self.file.tensor(name).map(|t| t.view),
        }
    }
}

fn patched_model<'a>(source: &Patched<'a>) -> moe_core::Result<Model<'a>> {
    let config = moe_core::model::ModelConfig::from_source(source)?;
    Model::from_source(config, source)
}

#[test]
fn combined_kv_b_agrees_with_the_split_tensors() {
    // Three 128-block models at once: more than a test thread's default stack.
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(combined_vs_split)
        .unwrap()
        .join()
        .unwrap();
}

fn combined_vs_split() {
    // The same weights, split (attn_k_b / attn_v_b, absorbed by llama.cpp too) and combined
    // (attn_kv_b, which llama.cpp runs non-absorbed): ours agree to rounding.
    let split_bytes = read("deepseek2-tiny.gguf");
    let split_file = File::parse(&split_bytes).unwrap();
    let split: Model<'_> = Model::from_gguf(&split_file).unwrap();
    let kvb_bytes = read("deepseek2-kvb-tiny.gguf");
    let kvb_file = File::parse(&kvb_bytes).unwrap();
    let kvb: Model<'_> = Model::from_gguf(&kvb_file).unwrap();
    assert_eq!(split.config(), kvb.config());
    // The combined form needs one more row of scratch (one dequantized attn_kv_b row).
    let (a, b) = (split.workspace_size(12, 64), kvb.workspace_size(12, 64));
    assert_eq!(b.floats, a.floats + 32);
    assert_eq!((b.kv_cache, b.bytes), (a.kv_cache, a.bytes));
    let (tokens, _, _) = reference("deepseek2-kvb-tiny");
    let (x, y) = (logits_of(&split, &tokens, 64), logits_of(&kvb, &tokens, 64));
    let (max_diff, range) = max_diff_and_range(&y, &x);
    eprintln!("deepseek2 combined vs split: max diff {max_diff:e}, range {range}");
    assert!(max_diff <= 1e-5 * range, "{max_diff}");

    // A batch equals the same tokens one at a time, bit for bit, in the combined form too.
    let n_vocab = kvb.config().n_vocab;
    let mut buffers = Buffers::new(kvb.workspace_size(1, 64));
    let mut row = vec![0.0; n_vocab];
    for (pos, &token) in tokens.iter().enumerate() {
        kvb.forward(&[token], pos, &mut row, &mut buffers.workspace())
            .unwrap();
        let want = &y[pos * n_vocab..(pos + 1) * n_vocab];
        assert!(
            row.iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "position {pos}"
        );
    }

    // With both forms present the split tensors are used (as llama.cpp prefers them).
    let both = Patched {
        file: &split_file,
        replace: (0..2)
            .map(|l| {
                let name = format!("blk.{l}.attn_kv_b.weight");
                let view = kvb_file.tensor(&name).unwrap().view;
                (name, Some(view))
            })
            .collect(),
    };
    let model = patched_model(&both).unwrap();
    assert_eq!(model.workspace_size(12, 64), a);
    let got = logits_of(&model, &tokens, 64);
    assert!(got.iter().zip(&x).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn a_bad_combined_kv_b_is_refused_by_name() {
    let bytes = read("deepseek2-kvb-tiny.gguf");
    let file = File::parse(&bytes).unwrap();
    let kv_b = file.tensor("blk.1.attn_kv_b.weight").unwrap().view;
    // One head's rows short: 4 · (16 + 16) − 1 rows of 32.
    let short =
        moe_core::tensor::TensorView::new(kv_b.ty(), &[32, 127], &kv_b.data()[..32 * 127 * 4])
            .unwrap();
    let source = Patched {
        file: &file,
        replace: vec![("blk.1.attn_kv_b.weight".into(), Some(short))],
    };
    let e = patched_model(&source).map(|_| ());
    assert!(
        matches!(&e, Err(moe_core::Error::BadTensorShape { tensor, dim: 1, expected: 128, actual: 127 })
            if tensor.as_str() == "blk.1.attn_kv_b.weight"),
        "{e:?}"
    );
    // Rows of the wrong width.
    let wide = moe_core::tensor::TensorView::new(kv_b.ty(), &[64, 64], kv_b.data()).unwrap();
    let source = Patched {
        file: &file,
        replace: vec![("blk.0.attn_kv_b.weight".into(), Some(wide))],
    };
    let e = patched_model(&source).map(|_| ());
    assert!(
        matches!(&e, Err(moe_core::Error::BadTensorShape { tensor, dim: 0, .. })
            if tensor.as_str() == "blk.0.attn_kv_b.weight"),
        "{e:?}"
    );
    // Neither form: the missing split tensor is named.
    let source = Patched {
        file: &file,
        replace: vec![("blk.0.attn_kv_b.weight".into(), None)],
    };
    let e = patched_model(&source).map(|_| ());
    assert!(
        matches!(&e, Err(moe_core::Error::MissingTensor { tensor }) if tensor.as_str() == "blk.0.attn_k_b.weight"),
        "{e:?}"
    );
}

/// An offload that takes every other block (or all) and runs each on the CPU path as the
/// model would, counting its calls; `zero` writes zeros instead, `fail` refuses.
struct CpuMirror {
    every_other: bool,
    zero: bool,
    fail: bool,
    calls: usize,
    router_scratch: Vec<f32>,
}

impl CpuMirror {
    fn new(every_other: bool) -> Self {
        CpuMirror {
            every_other,
            zero: false,
            fail: false,
            calls: 0,
            router_scratch: Vec::new(),
        }
    }
}

impl FfnOffload for CpuMirror {
    type Error = &'static str;

    fn takes(&self, layer: usize) -> bool {
        !self.every_other || layer.is_multiple_of(2)
    }

    fn forward(
        &mut self,
        _layer: usize,
        cpu: &MoeLayer<'_>,
        input: &[f32],
        selections: &mut [Selection],
        out: &mut [f32],
        workspace: &mut [u8],
    ) -> Result<(), Self::Error> {
        self.calls += 1;
        if self.fail {
            return Err("refused");
        }
        if self.zero {
            out.fill(0.0);
            return Ok(());
        }
        let n_tokens = selections.len();
        let ran = match cpu.router() {
            None => cpu.forward_selected(input, selections, out, workspace),
            Some(_) => {
                self.router_scratch
                    .resize(cpu.workspace_size(n_tokens).router, 0.0);
                let mut ws = Workspace {
                    selections,
                    router: &mut self.router_scratch,
                    bytes: workspace,
                };
                cpu.forward(input, &[], out, &mut ws)
            }
        };
        ran.map(|_| ()).map_err(|_| "the CPU path failed")
    }
}

/// Each routed block's selections, in the order the model reported them.
type Routes = Vec<(usize, Vec<Selection>)>;

/// Logits of `tokens` as one batch and every MoE block's routing, with `offload`.
fn offloaded_logits(
    model: &Model<'_>,
    tokens: &[u32],
    offload: &mut CpuMirror,
) -> Result<(Vec<f32>, Routes), OffloadError<&'static str>> {
    let mut buffers = Buffers::new(model.workspace_size(tokens.len(), 32));
    let mut logits = vec![0.0; tokens.len() * model.config().n_vocab];
    let mut routes = Vec::new();
    model.forward_offloaded(
        tokens,
        0,
        &mut logits,
        &mut buffers.workspace(),
        &mut [],
        |layer, sel| routes.push((layer, sel.to_vec())),
        offload,
    )?;
    Ok((logits, routes))
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn an_offload_running_the_cpu_path_gives_the_same_bits_and_routing() {
    // Dense, Mixtral (quantized), a gated shared expert, DeepSeek (leading dense block,
    // groups, selection bias, shared experts).
    for name in [
        "mistral-tiny",
        "mixtral-tiny-q4_0",
        "qwen2moe-tiny",
        "deepseek2-tiny",
    ] {
        let bytes = read(&format!("{name}.gguf"));
        let file = File::parse(&bytes).unwrap();
        let model: Model<'_> = Model::from_gguf(&file).unwrap();
        let (tokens, _, _) = reference(name);
        let mut buffers = Buffers::new(model.workspace_size(tokens.len(), 32));
        let mut plain = vec![0.0; tokens.len() * model.config().n_vocab];
        let mut plain_routes = Vec::new();
        model
            .forward_routed(
                &tokens,
                0,
                &mut plain,
                &mut buffers.workspace(),
                &mut [],
                |layer, sel| plain_routes.push((layer, sel.to_vec())),
            )
            .unwrap();
        for every_other in [true, false] {
            let mut offload = CpuMirror::new(every_other);
            let (logits, routes) = offloaded_logits(&model, &tokens, &mut offload).unwrap();
            let n_layer = model.config().n_layer;
            let taken = if every_other {
                n_layer.div_ceil(2)
            } else {
                n_layer
            };
            assert_eq!(offload.calls, taken, "{name}: one call per block taken");
            assert!(same_bits(&logits, &plain), "{name}: logits");
            assert_eq!(routes.len(), plain_routes.len(), "{name}: routed blocks");
            for ((l, got), (l2, want)) in routes.iter().zip(&plain_routes) {
                assert_eq!(l, l2);
                for (g, w) in got.iter().zip(want) {
                    let pairs = |s: &Selection| {
                        s.iter()
                            .map(|c| (c.expert, c.weight.to_bits()))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(pairs(g), pairs(w), "{name}: block {l}");
                }
            }
        }
    }
}

#[test]
fn the_model_uses_the_offloads_output_and_names_its_failing_block() {
    let bytes = read("mixtral-tiny-q4_0.gguf");
    let file = File::parse(&bytes).unwrap();
    let model: Model<'_> = Model::from_gguf(&file).unwrap();
    let (tokens, _, _) = reference("mixtral-tiny-q4_0");
    let plain = logits_of(&model, &tokens, 32);

    let mut zero = CpuMirror::new(true);
    zero.zero = true;
    let (logits, _) = offloaded_logits(&model, &tokens, &mut zero).unwrap();
    assert!(
        !same_bits(&logits, &plain),
        "zeroed FFNs must change the logits"
    );

    let mut fail = CpuMirror::new(true);
    fail.fail = true;
    let err = offloaded_logits(&model, &tokens, &mut fail).unwrap_err();
    assert_eq!(
        err,
        OffloadError::Offload {
            layer: 0,
            error: "refused"
        }
    );
    assert_eq!(err.to_string(), "block 0's offloaded FFN: refused");
    // A bad batch is still the model's own error.
    let mut buffers = Buffers::new(model.workspace_size(1, 4));
    let mut logits = vec![0.0; model.config().n_vocab];
    let err = model
        .forward_offloaded(
            &[0, 1, 2, 3, 4],
            0,
            &mut logits,
            &mut buffers.workspace(),
            &mut [],
            |_, _| {},
            &mut CpuMirror::new(false),
        )
        .unwrap_err();
    assert!(matches!(err, OffloadError::Model(_)), "{err:?}");
}

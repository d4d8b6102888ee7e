//! Hugging Face checkpoints (`moe_std::hf`, `moe_std::checkpoint`) against transformers,
//! on the tiny random models of `tests/fixtures/hf` (made by `make_fixtures.py` there):
//!
//! - Mixtral in float32, sharded with an index: every position's logits equal
//!   transformers' float32 logits within 1e-4 of the logit range, and our GGUF path on the
//!   same weights converted by llama.cpp's `convert_hf_to_gguf.py` (q/k rows permuted,
//!   llama.cpp's RoPE layout) within 1e-5 of the range;
//! - Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3 (latent attention from `kv_b_proj` in
//!   place, interleaved RoPE, group-limited sigmoid routing with a selection bias; also
//!   with DeepSeek's YaRN) and
//!   DeepSeek-V2 (full q_proj, group-limited softmax routing) in float32 within 1e-4 of
//!   transformers;
//! - Mixtral in bfloat16 and float16 (norms included) against transformers' float32 run
//!   of the same rounded weights, within 1e-4 of the range (half-precision weights multiply
//!   float32 activations);
//! - `moe logits / run / route / bench DIR` work on a checkpoint directory (logits equal
//!   to the library's), and a text prompt without a tokenizer is a clear error;
//! - bad checkpoints (missing shard, missing tensor, config disagreeing with the tensors,
//!   truncated or garbage safetensors, an unsupported dtype) are errors naming the file
//!   and the tensor or key, never panics.

use std::fs;
use std::path::{Path, PathBuf};

use moe_std::checkpoint::Checkpoint;
use moe_std::pool::ThreadPool;
use moe_std::session::{KvType, Session};
use moe_std::{Error, GgufFile};

mod run_moe;

use run_moe::{moe, ok};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn tokens(name: &str) -> Vec<u32> {
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(fixture(&format!("{name}.json"))).unwrap()).unwrap();
    meta["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn reference(name: &str) -> Vec<f32> {
    fs::read(fixture(&format!("{name}.logits.f32")))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Every position's logits through a session, the whole prompt as one batch.
fn logits(session: &mut Session<'_>, tokens: &[u32]) -> Vec<f32> {
    let mut out = vec![0.0; tokens.len() * session.model().config().n_vocab];
    session.eval(tokens, &mut out).unwrap();
    out
}

fn hf_logits(dir: &str, tokens: &[u32], threads: usize) -> Vec<f32> {
    let checkpoint = Checkpoint::open(fixture(dir)).unwrap();
    let pool = ThreadPool::new(threads);
    let mut session =
        Session::from_checkpoint(&checkpoint, &pool, 64, tokens.len(), KvType::F32).unwrap();
    logits(&mut session, tokens)
}

/// The largest difference between `a` and `b` at any position, as a fraction of that
/// position's logit range in `b`.
fn relative_error(a: &[f32], b: &[f32], n_vocab: usize) -> f32 {
    assert_eq!(a.len(), b.len());
    a.chunks(n_vocab)
        .zip(b.chunks(n_vocab))
        .map(|(a, b)| {
            let range = b.iter().fold(f32::MIN, |m, &v| m.max(v))
                - b.iter().fold(f32::MAX, |m, &v| m.min(v));
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            diff / range
        })
        .fold(0.0, f32::max)
}

fn check_against_transformers(name: &str, dir: &str, tolerance: f32) -> f32 {
    let tokens = tokens(name);
    let expected = reference(dir);
    let n_vocab = expected.len() / tokens.len();
    let mut worst = 0.0f32;
    for threads in [1, 3] {
        let ours = hf_logits(dir, &tokens, threads);
        let err = relative_error(&ours, &expected, n_vocab);
        println!("{dir}: {threads} threads, max |ours − transformers| / range = {err:.2e}");
        assert!(err <= tolerance, "{dir}: {err} > {tolerance}");
        worst = worst.max(err);
    }
    worst
}

#[test]
fn mixtral_f32_matches_transformers() {
    check_against_transformers("mixtral", "mixtral", 1e-4);
}

#[test]
fn mixtral_f32_matches_our_gguf_path_on_llama_cpp_conversion() {
    let tokens = tokens("mixtral");
    let hf = hf_logits("mixtral", &tokens, 1);
    let gguf = GgufFile::open(fixture("mixtral.gguf")).unwrap();
    let pool = ThreadPool::new(1);
    let mut session = Session::new(&gguf, &pool, 64, tokens.len(), KvType::F32).unwrap();
    let from_gguf = logits(&mut session, &tokens);
    let n_vocab = session.model().config().n_vocab;
    let err = relative_error(&hf, &from_gguf, n_vocab);
    println!("mixtral: max |safetensors − GGUF| / range = {err:.2e}");
    assert!(err <= 1e-5, "{err}");
    // And the GGUF path against transformers, for the record.
    let err = relative_error(&from_gguf, &reference("mixtral"), n_vocab);
    println!("mixtral.gguf: max |ours − transformers| / range = {err:.2e}");
    assert!(err <= 1e-4, "{err}");
    // A file of the checkpoint opens the directory.
    for file in ["config.json", "model.safetensors.index.json"] {
        let checkpoint = Checkpoint::open(fixture("mixtral").join(file)).unwrap();
        assert!(matches!(checkpoint, Checkpoint::Hf(_)));
        assert_eq!(checkpoint.path(), fixture("mixtral"));
    }
    // The same checkpoint through `Checkpoint::open` of the file.
    let checkpoint = Checkpoint::open(fixture("mixtral.gguf")).unwrap();
    let mut session =
        Session::from_checkpoint(&checkpoint, &pool, 64, tokens.len(), KvType::F32).unwrap();
    assert_eq!(logits(&mut session, &tokens), from_gguf);
}

#[test]
fn mixtral_bf16_matches_transformers_on_the_rounded_weights() {
    check_against_transformers("mixtral", "mixtral-bf16", 1e-4);
}

#[test]
fn mixtral_f16_matches_transformers_on_the_rounded_weights() {
    check_against_transformers("mixtral", "mixtral-f16", 1e-4);
}

#[test]
fn qwen2_moe_matches_transformers() {
    check_against_transformers("qwen2_moe", "qwen2_moe", 1e-4);
}

#[test]
fn qwen3_moe_matches_transformers() {
    check_against_transformers("qwen3_moe", "qwen3_moe", 1e-4);
}

#[test]
fn olmoe_matches_transformers() {
    check_against_transformers("olmoe", "olmoe", 1e-4);
}

#[test]
fn deepseek_v3_matches_transformers() {
    // Latent attention from kv_b_proj used in place (attn_kv_b), interleaved RoPE pairs,
    // a leading dense layer, sigmoid routing with a selection bias over expert groups.
    check_against_transformers("deepseek_v3", "deepseek_v3", 1e-4);
    // One token at a time too (the absorbed query from the combined matrix, decode path).
    let tokens = tokens("deepseek_v3");
    let checkpoint = Checkpoint::open(fixture("deepseek_v3")).unwrap();
    let pool = ThreadPool::new(2);
    let mut session = Session::from_checkpoint(&checkpoint, &pool, 64, 1, KvType::F32).unwrap();
    let n_vocab = session.model().config().n_vocab;
    let mut last = vec![0.0; n_vocab];
    let mut all = Vec::new();
    for &t in &tokens {
        session.eval(&[t], &mut last).unwrap();
        all.extend_from_slice(&last);
    }
    let err = relative_error(&all, &reference("deepseek_v3"), n_vocab);
    assert!(err <= 1e-4, "{err}");
}

#[test]
fn deepseek_v3_with_yarn_matches_transformers() {
    // The deepseek_v3 weights (same seed) with DeepSeek's YaRN: the ramp between
    // extrapolated and interpolated frequencies and the mscale² on the logits.
    check_against_transformers("deepseek_v3_yarn", "deepseek_v3_yarn", 1e-4);
    let plain = reference("deepseek_v3");
    let yarn = reference("deepseek_v3_yarn");
    let err = relative_error(&plain, &yarn, plain.len() / tokens("deepseek_v3").len());
    println!("deepseek_v3: yarn vs none {err:.2e} of the range");
    assert!(err > 1e-2, "{err}");
}

#[test]
fn deepseek_v2_matches_transformers() {
    // A full q_proj (no q LoRA), softmax routing limited to the best group, weights scaled
    // and not renormalised, no selection bias.
    check_against_transformers("deepseek_v2", "deepseek_v2", 1e-4);
    // Routing greedily instead changes the answer (the group limit is exercised).
    let dir = scratch_copy("deepseek_v2", "greedy");
    let config = fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace("\"group_limited_greedy\"", "\"greedy\"");
    fs::write(dir.join("config.json"), config).unwrap();
    let tokens = tokens("deepseek_v2");
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let pool = ThreadPool::new(1);
    let mut session =
        Session::from_checkpoint(&checkpoint, &pool, 64, tokens.len(), KvType::F32).unwrap();
    let greedy = logits(&mut session, &tokens);
    let n_vocab = session.model().config().n_vocab;
    drop(session);
    drop(checkpoint);
    let _ = fs::remove_dir_all(&dir);
    let err = relative_error(&greedy, &reference("deepseek_v2"), n_vocab);
    println!("deepseek_v2 routed greedily: {err:.2e} of the range");
    assert!(err > 1e-3, "{err}");
    // norm_topk_prob true is what transformers ignores for V2: refused.
    let dir = scratch_copy("deepseek_v2", "norm");
    let config = fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace("\"norm_topk_prob\": false", "\"norm_topk_prob\": true");
    fs::write(dir.join("config.json"), config).unwrap();
    let text = open_error(&dir).to_string();
    assert!(text.contains("norm_topk_prob"), "{text}");
}

#[test]
fn deepseek_v3_bad_configs_are_errors_naming_the_key_or_tensor() {
    // kv_b_proj of the wrong shape for the config.
    let dir = scratch_copy("deepseek_v3", "kvb");
    let config = fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace("\"v_head_dim\": 8", "\"v_head_dim\": 4");
    fs::write(dir.join("config.json"), config).unwrap();
    let text = open_error(&dir).to_string();
    assert!(
        text.contains("kv_b_proj.weight") && text.contains("[48, 16]"),
        "{text}"
    );
    // YaRN variants llama.cpp's deepseek2 does not compute are refused by key.
    for (from, to, key) in [
        ("\"mscale\": 1.0", "\"mscale\": 0.5", "mscale"),
        ("\"beta_fast\": 32.0", "\"beta_fast\": 16.0", "beta_fast"),
        (
            "\"original_max_position_embeddings\": 16",
            "\"original_max_position_embeddingz\": 16",
            "original_max_position_embeddings",
        ),
        ("\"factor\": 4.0", "\"factor\": 0.5", "factor"),
    ] {
        let dir = scratch_copy("deepseek_v3_yarn", key);
        let config = fs::read_to_string(dir.join("config.json")).unwrap();
        assert!(config.contains(from), "{from}");
        fs::write(dir.join("config.json"), config.replace(from, to)).unwrap();
        let text = open_error(&dir).to_string();
        assert!(text.contains(&format!("'rope_parameters.{key}'")), "{text}");
    }
    // Other scaling types are refused by name.
    let dir = scratch_copy("deepseek_v3", "scaling");
    let config = fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace("\"rope_type\": \"default\"", "\"rope_type\": \"longrope\"");
    fs::write(dir.join("config.json"), config).unwrap();
    let text = open_error(&dir).to_string();
    assert!(text.contains("'longrope' is not supported"), "{text}");
    // Softmax scoring is not DeepSeek-V3's.
    let dir = scratch_copy("deepseek_v3", "scoring");
    let config = fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace("\"n_group\"", "\"scoring_func\": \"softmax\", \"n_group\"");
    fs::write(dir.join("config.json"), config).unwrap();
    let text = open_error(&dir).to_string();
    assert!(text.contains("scoring_func"), "{text}");
}

#[test]
fn decoding_one_token_at_a_time_matches_the_batch() {
    let tokens = tokens("mixtral");
    let checkpoint = Checkpoint::open(fixture("mixtral")).unwrap();
    let pool = ThreadPool::new(2);
    let mut session = Session::from_checkpoint(&checkpoint, &pool, 64, 1, KvType::F32).unwrap();
    let n_vocab = session.model().config().n_vocab;
    let mut last = vec![0.0; n_vocab];
    let mut all = Vec::new();
    for &t in &tokens {
        session.eval(&[t], &mut last).unwrap();
        all.extend_from_slice(&last);
    }
    let err = relative_error(&all, &reference("mixtral"), n_vocab);
    assert!(err <= 1e-4, "{err}");
}

/// A copy of fixture `name` in a fresh temporary directory, for breaking.
fn scratch_copy(name: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-hf-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn open_error(dir: &Path) -> Error {
    let e = Checkpoint::open(dir).unwrap_err();
    let _ = fs::remove_dir_all(dir);
    e
}

/// Replaces `from` with `to` (same length) in the safetensors header of `file`.
fn edit_header(file: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut bytes = fs::read(file).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + len].to_vec()).unwrap();
    assert!(
        header.contains(from),
        "{from} not in the header of {file:?}"
    );
    let header = header.replacen(from, to, 1);
    bytes[8..8 + len].copy_from_slice(header.as_bytes());
    fs::write(file, bytes).unwrap();
}

#[test]
fn missing_shard_is_an_error_naming_it() {
    let dir = scratch_copy("mixtral", "shard");
    fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    let e = open_error(&dir);
    let text = e.to_string();
    assert!(matches!(e, Error::Checkpoint { .. }), "{text}");
    assert!(text.contains("model-00002-of-00003.safetensors") && text.contains("missing shard"));
}

#[test]
fn config_disagreeing_with_the_tensors_is_an_error_naming_both() {
    let dir = scratch_copy("mixtral", "config");
    let config = fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace("\"intermediate_size\": 32", "\"intermediate_size\": 48");
    fs::write(dir.join("config.json"), config).unwrap();
    let text = open_error(&dir).to_string();
    assert!(
        text.contains("experts.0.w1.weight") && text.contains("[48, 32]"),
        "{text}"
    );

    let dir = scratch_copy("mixtral", "layers");
    let config = fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    fs::write(dir.join("config.json"), config).unwrap();
    let text = open_error(&dir).to_string();
    assert!(
        text.contains("model.layers.2.input_layernorm.weight") && text.contains("missing"),
        "{text}"
    );

    let dir = scratch_copy("mixtral", "huge");
    let config = fs::read_to_string(dir.join("config.json")).unwrap();
    let config = config.replace(
        "\"num_local_experts\": 8",
        "\"num_local_experts\": 4000000000",
    );
    fs::write(dir.join("config.json"), config).unwrap();
    let text = open_error(&dir).to_string();
    assert!(text.contains("far more tensors"), "{text}");

    let dir = scratch_copy("mixtral", "type");
    let config = fs::read_to_string(dir.join("config.json")).unwrap();
    fs::write(
        dir.join("config.json"),
        config.replace("\"mixtral\"", "\"gpt2\""),
    )
    .unwrap();
    let text = open_error(&dir).to_string();
    assert!(
        text.contains("model_type") && text.contains("gpt2"),
        "{text}"
    );

    let dir = scratch_copy("mixtral", "json");
    fs::write(dir.join("config.json"), "{\"model_type\": ").unwrap();
    let text = open_error(&dir).to_string();
    assert!(
        text.contains("config.json") && text.contains("not JSON"),
        "{text}"
    );
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let dir = scratch_copy("mixtral-bf16", "tensor");
    edit_header(
        &dir.join("model.safetensors"),
        "lm_head.weight",
        "lm_heaX.weight",
    );
    let text = open_error(&dir).to_string();
    assert!(
        text.contains("'lm_head.weight'") && text.contains("missing"),
        "{text}"
    );
}

#[test]
fn tensor_missing_from_the_shard_the_index_names_is_an_error_naming_both() {
    let dir = scratch_copy("mixtral", "indexed");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let shard = index["weight_map"]["model.norm.weight"].as_str().unwrap();
    edit_header(&dir.join(shard), "model.norm.weight", "model.norX.weight");
    let text = open_error(&dir).to_string();
    assert!(
        text.contains(shard) && text.contains("'model.norm.weight'") && text.contains("index"),
        "{text}"
    );
}

#[test]
fn unsupported_dtype_is_an_error_naming_the_tensor() {
    let dir = scratch_copy("mixtral-bf16", "dtype");
    // I16 has BF16's element size: the header stays consistent, the dtype is not a weight.
    edit_header(
        &dir.join("model.safetensors"),
        "\"dtype\":\"BF16\"",
        "\"dtype\":\"I16\" ",
    );
    let e = open_error(&dir);
    let text = e.to_string();
    assert!(matches!(e, Error::Safetensors { .. }), "{text}");
    assert!(text.contains("I16") && text.contains("tensor '"), "{text}");
}

#[test]
fn truncated_or_garbage_safetensors_are_errors() {
    let dir = scratch_copy("mixtral-bf16", "truncated");
    let file = dir.join("model.safetensors");
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let e = open_error(&dir);
    assert!(matches!(e, Error::Safetensors { .. }), "{e}");
    assert!(e.to_string().contains("data_offsets"), "{e}");

    for (tag, garbage) in [
        ("short", &b"\x10\0\0"[..]),
        ("huge", &b"\xff\xff\xff\xff\xff\xff\xff\xff{}"[..]),
        ("notjson", &b"\x04\0\0\0\0\0\0\0{{{{"[..]),
    ] {
        let dir = scratch_copy("mixtral-bf16", tag);
        fs::write(dir.join("model.safetensors"), garbage).unwrap();
        let e = open_error(&dir);
        assert!(matches!(e, Error::Safetensors { .. }), "{tag}: {e}");
        assert!(e.to_string().contains("model.safetensors"), "{e}");
    }
}

#[test]
fn the_cli_runs_a_checkpoint_directory() {
    let dir = fixture("mixtral");
    let dir = dir.to_str().unwrap();
    let tokens = tokens("mixtral");
    let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
    let list = list.join(",");
    let out = ok(&["logits", dir, "--tokens", &list]);
    let logits: Vec<f32> = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let n_vocab = logits.len() / tokens.len();
    let err = relative_error(&logits, &reference("mixtral"), n_vocab);
    assert!(err <= 1e-4, "moe logits: {err}");

    let out = ok(&["run", dir, "--tokens", &list, "-n", "4", "--temp", "0"]);
    assert!(!out.stdout.is_empty());
    let out = ok(&["route", dir, "--tokens", &list, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["layers"].as_array().unwrap().len(), 2);
    ok(&["bench", dir, "--prompt", "4", "--gen", "2", "--reps", "1"]);

    let out = moe(&["run", dir, "-p", "hello"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--tokens"),
        "{stderr}"
    );
    let out = moe(&["logits", "/nonexistent-dir/", "--tokens", "1"]);
    assert!(!out.status.success());
}

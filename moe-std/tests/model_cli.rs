//! Whole models from the command line and through `Session`, on the tiny `llama`
//! fixtures of `moe-core/tests/fixtures/models` (whose llama.cpp logits and greedy tokens
//! were recorded by `llamacpp_logits.py`):
//!
//! - `moe run` generates llama.cpp's greedy tokens; `moe logits` writes llama.cpp's
//!   logits (within 1e-3 of the logit range) as `n_tokens × n_vocab` little-endian f32;
//! - `moe bench --json` and `moe route --json` print the documented keys;
//! - weights read into memory (the default for a small file, `--no-mmap`) and mapped
//!   (`--mmap`) give the same logits, for GGUF and Hugging Face checkpoints;
//! - bad input (no such file, a token outside the vocabulary, a context too small) is a
//!   message and a failing status, not a panic;
//! - decoding a token (sampling included) allocates nothing on the calling thread once the
//!   session exists.

use std::path::{Path, PathBuf};

use moe_core::sample::{Candidate, Sampler, SamplerConfig};
use moe_std::GgufFile;
use moe_std::pool::ThreadPool;
use moe_std::session::{KvType, Session, argmax};
use serde_json::Value as Json;

mod counting;
mod run_moe;

use run_moe::{moe, ok};

const TOKENS: &str = "1,5,17,42,3,77,9,60,31,2,88,14";

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../moe-core/tests/fixtures/models/{name}"))
}

fn reference(name: &str) -> Json {
    serde_json::from_slice(&std::fs::read(model(&format!("{name}.logits.json"))).unwrap()).unwrap()
}

fn ids(json: &Json) -> Vec<u64> {
    json.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn run_generates_llama_cpp_greedy_tokens() {
    for name in [
        "mistral-tiny",
        "mixtral-tiny",
        "mixtral-tiny-q8_0",
        "mixtral-tiny-q4_0",
        "mixtral-k-tiny-q4_k_m",
        "qwen2moe-tiny",
        "qwen3moe-tiny-q8_0",
        "olmoe-tiny",
        "granitemoe-tiny",
        "deepseek2-tiny",
    ] {
        let path = model(&format!("{name}.gguf"));
        let out = ok(&[
            "run",
            path.to_str().unwrap(),
            "--tokens",
            TOKENS,
            "-n",
            "12",
            "--temp",
            "0",
            "--ignore-eos",
        ]);
        let got: Vec<u64> = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        let r = reference(name);
        let (want, margins) = (ids(&r["greedy_kvf32"]), &r["greedy_margins_kvf32"]);
        // Up to the first step where llama.cpp's top-1/top-2 margin is below 1e-3.
        let trusted = (0..got.len())
            .take_while(|&i| margins[i].as_f64().unwrap() >= 1e-3)
            .count();
        assert_eq!(got[..trusted], want[..trusted], "{name}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("tokens/s"));
    }
}

#[test]
fn logits_are_llama_cpp_logits() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("logits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("mixtral.f32");
    let path = model("mixtral-tiny.gguf");
    ok(&[
        "logits",
        path.to_str().unwrap(),
        "--tokens",
        TOKENS,
        "-o",
        out_path.to_str().unwrap(),
    ]);
    let f32s = |bytes: Vec<u8>| -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let got = f32s(std::fs::read(&out_path).unwrap());
    let want = f32s(std::fs::read(model("mixtral-tiny.logits-kvf32.f32")).unwrap());
    assert_eq!(got.len(), want.len());
    let range = want.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
        - want.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let max_diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(max_diff <= 1e-3 * range, "max diff {max_diff}");
}

#[test]
fn mapped_and_loaded_weights_give_the_same_logits() {
    // The default (read into memory: the fixture fits), --no-mmap and --mmap.
    let path = model("mixtral-k-tiny-q4_k_m.gguf");
    let logits = |flag: Option<&str>| {
        let mut args = vec!["logits", path.to_str().unwrap(), "--tokens", TOKENS];
        args.extend(flag);
        ok(&args).stdout
    };
    let default = logits(None);
    assert!(!default.is_empty());
    assert_eq!(logits(Some("--no-mmap")), default);
    assert_eq!(logits(Some("--mmap")), default);
    let hf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/mixtral");
    let hf_logits = |flag: &str| ok(&["logits", hf.to_str().unwrap(), "--tokens", "1,2,3", flag]);
    assert_eq!(hf_logits("--no-mmap").stdout, hf_logits("--mmap").stdout);
}

#[test]
fn bench_and_route_print_their_keys() {
    let path = model("mixtral-tiny-q4_0.gguf");
    let out = ok(&[
        "bench",
        path.to_str().unwrap(),
        "--prompt",
        "8",
        "--gen",
        "4",
        "--reps",
        "1",
        "--json",
    ]);
    let j: Json = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "threads",
        "prompt_tokens",
        "gen_tokens",
        "weight_bytes_per_token",
    ] {
        assert!(j[key].is_number(), "bench --json lacks {key}: {j}");
    }
    // The tiny file fits in memory: read by default, mapped with --mmap.
    assert_eq!(j["weights"], "loaded", "{j}");
    let mapped = ok(&[
        "bench",
        path.to_str().unwrap(),
        "--prompt",
        "8",
        "--gen",
        "1",
        "--reps",
        "1",
        "--json",
        "--mmap",
    ]);
    let mapped: Json = serde_json::from_slice(&mapped.stdout).unwrap();
    assert_eq!(mapped["weights"], "mapped", "{mapped}");
    let out = ok(&[
        "route",
        path.to_str().unwrap(),
        "--tokens",
        "1,5,17",
        "--json",
    ]);
    let j: Json = serde_json::from_slice(&out.stdout).unwrap();
    let layers = j["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for layer in layers {
        let tokens = layer["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 3);
        assert!(tokens.iter().all(|t| t.as_array().unwrap().len() == 2));
        let per_expert: u64 = ids(&layer["tokens_per_expert"]).iter().sum();
        assert_eq!(per_expert, 6);
    }
}

#[test]
fn bad_input_is_a_message_not_a_panic() {
    let path = model("mixtral-tiny.gguf");
    let path = path.to_str().unwrap();
    for args in [
        vec!["run", "no-such-file.gguf", "--tokens", "1"],
        vec!["run", path, "--tokens", "96"],
        vec!["run", path, "--tokens", "1,2,3", "--ctx", "2", "-n", "0"],
        vec!["run", path],
        vec!["logits", path, "--tokens", "x"],
        vec![
            "run",
            model("../hf/qwen2moe.gguf").to_str().unwrap(),
            "--tokens",
            "1",
        ],
    ] {
        let out = moe(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("moe: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn decoding_allocates_nothing_after_the_session_exists() {
    let gguf = GgufFile::open(model("mixtral-tiny-q4_0.gguf")).unwrap();
    let pool = ThreadPool::new(2);
    let mut session = Session::new(&gguf, &pool, 32, 16, KvType::F16).unwrap();
    let mut logits = vec![0.0f32; session.model().config().n_vocab];
    session.eval(&[1, 5, 17, 42], &mut logits).unwrap();
    // Sampling (llama.cpp's default chain) in its own workspace is part of the step.
    let mut candidates = vec![Candidate::default(); Sampler::workspace_len(logits.len())];
    let config = SamplerConfig {
        repeat_penalty: 1.1,
        seed: 7,
        ..SamplerConfig::default()
    };
    let mut sampler = Sampler::new(config, &mut candidates).unwrap();
    let mut history = [0u32; 12];
    history[..4].copy_from_slice(&[1, 5, 17, 42]);
    let (n, result) = counting::allocations_in(|| {
        for i in 0..8 {
            let next = if i % 2 == 0 {
                argmax(&logits)
            } else {
                sampler.sample(&logits, &history[..4 + i]).unwrap()
            };
            history[4 + i] = next;
            session.eval(&[next], &mut logits)?;
        }
        Ok::<(), moe_std::Error>(())
    });
    result.unwrap();
    assert_eq!(n, 0, "decoding allocated {n} times");
}

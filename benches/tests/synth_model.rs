//! `moe-synth-model` end to end: small models of both types are written by the binary,
//! parse, load and run in `moe_core`, route different tokens differently, report their
//! expert bytes right, and are reproducible from their seed.

use std::path::{Path, PathBuf};
use std::process::Command;

use moe_core::gguf::File;
use moe_core::model::{KvCache, Model, ModelWorkspace};
use moe_core::router::Selection;

const SMALL: &str = "--embd 256 --layers 2 --ff 512 --vocab 300 --heads 4 --kv-heads 2";

fn out_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("synth-{}-{name}", std::process::id()))
}

/// Runs the binary; its exit status and stdout.
fn synth(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe-synth-model"))
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

/// Writes a small model of `ty` with `seed`; its bytes and the binary's JSON line.
fn small_model(ty: &str, seed: &str, name: &str) -> (Vec<u8>, String) {
    let path = out_path(name);
    let mut args = vec![path.to_str().unwrap(), "--type", ty, "--seed", seed];
    args.extend(SMALL.split_whitespace());
    let (code, stdout) = synth(&args);
    assert_eq!(code, Some(0), "{args:?}");
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let line = stdout.trim_end().replace(path.to_str().unwrap(), "OUT");
    (bytes, line)
}

/// The last position's logits of `tokens` and each MoE block's selections.
fn run(model: &Model<'_>, tokens: &[u32]) -> (Vec<f32>, Vec<(usize, Vec<Selection>)>) {
    let size = model.workspace_size(tokens.len(), tokens.len());
    let mut kv = vec![0.0f32; size.kv_cache];
    let mut floats = vec![0.0f32; size.floats];
    let mut selections = vec![Selection::new(); size.selections];
    let mut bytes = vec![0u8; size.bytes];
    let mut ws = ModelWorkspace {
        kv_cache: KvCache::F32(&mut kv),
        floats: &mut floats,
        selections: &mut selections,
        bytes: &mut bytes,
    };
    let mut logits = vec![0.0; tokens.len() * model.config().n_vocab];
    let mut routes = Vec::new();
    model
        .forward_routed(tokens, 0, &mut logits, &mut ws, &mut [], |layer, sel| {
            routes.push((layer, sel.to_vec()))
        })
        .unwrap();
    (logits, routes)
}

#[test]
fn small_models_load_run_and_route() {
    for (ty, block_bytes) in [("q4_0", 18u64), ("q8_0", 34)] {
        let (bytes, line) = small_model(ty, "11", &format!("{ty}.gguf"));

        let file = File::parse(&bytes).unwrap();
        assert_eq!(file.architecture(), Some("llama"));
        // token_embd, 10 per block, output_norm and output.
        assert_eq!(file.tensor_count(), 23);
        let mut exps = 0u64;
        for t in file.tensors() {
            if t.name.ends_with("_exps.weight") {
                exps += t.view.data().len() as u64;
            }
        }
        // gate + up + down: 3 × 256 × 512 × 8 experts per block, 2 blocks, 32 per block.
        assert_eq!(exps, 2 * 3 * 256 * 512 * 8 / 32 * block_bytes);
        assert_eq!(
            line,
            format!(
                r#"{{"path":"OUT","bytes":{},"routed_expert_bytes":{exps},"type":"{ty}"}}"#,
                bytes.len()
            )
        );

        let model: Model<'_> = Model::from_gguf(&file).unwrap();
        let c = model.config();
        assert_eq!((c.n_embd, c.n_layer, c.n_vocab), (256, 2, 300));
        assert_eq!((c.n_head, c.n_head_kv, c.head_dim), (4, 2, 64));
        assert_eq!(c.rope.base, 1e6);
        assert_eq!(c.n_ctx_train, 4096);
        for l in 0..2 {
            assert_eq!(model.is_dense(l), Some(false));
            assert_eq!(model.ffn(l).unwrap().experts().n_expert(), 8);
        }

        let tokens = [1, 17, 42, 99, 150, 299];
        let (logits, routes) = run(&model, &tokens);
        assert!(logits.iter().all(|v| v.is_finite()), "{ty}: finite logits");
        let spread = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            spread > 1e-3 && spread < 1e3,
            "{ty}: logits O(1), max |l| {spread}"
        );
        assert_eq!(routes.len(), 2, "{ty}: both blocks route");
        for (layer, sel) in &routes {
            assert_eq!(sel.len(), tokens.len());
            assert!(sel.iter().all(|s| s.len() == 2));
            let experts = |s: &Selection| {
                let mut e: Vec<u32> = s.iter().map(|c| c.expert).collect();
                e.sort_unstable();
                e
            };
            let first = experts(&sel[0]);
            assert!(
                sel.iter().any(|s| experts(s) != first),
                "{ty}: block {layer} routes every token to {first:?}"
            );
        }
    }
}

#[test]
fn the_seed_decides_the_bytes() {
    let (a, _) = small_model("q4_0", "5", "seed-a.gguf");
    let (b, _) = small_model("q4_0", "5", "seed-b.gguf");
    let (c, _) = small_model("q4_0", "6", "seed-c.gguf");
    assert!(a == b, "the same seed writes the same file");
    assert_eq!(a.len(), c.len());
    assert!(a != c, "another seed writes other weights");
}

#[test]
fn usage_errors_exit_2_and_write_nothing() {
    let path = out_path("bad.gguf");
    let p = path.to_str().unwrap();
    for args in [
        vec![],
        vec![p, "--type", "q4_k"],
        vec![p, "--heads", "5"],
        vec![p, "--layers"],
    ] {
        let (code, stdout) = synth(&args);
        assert_eq!(code, Some(2), "{args:?}");
        assert!(stdout.is_empty());
        assert!(!path.exists());
    }
    let (code, stdout) = synth(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("usage: moe-synth-model"));
}

#[test]
fn an_unwritable_path_fails_with_status_1() {
    let path = out_path("no-such-dir").join("x.gguf");
    let (code, stdout) = synth(&[path.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
}

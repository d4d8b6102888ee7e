//! `moe tokenize` / `moe run -p TEXT [--chat]` on a Hugging Face checkpoint directory: the
//! tiny Mixtral of `fixtures/hf/mixtral` with the 256-token Mistral-style tokenizer.json
//! and tokenizer_config.json (chat template) of `fixtures/hf-tokenizer/tiny-mixtral`,
//! whose `expected.json` holds Hugging Face `tokenizers`' ids for the prompts.

use std::path::{Path, PathBuf};
use std::process::Output;

use moe_std::checkpoint::Checkpoint;
use serde_json::Value;

mod run_moe;

use run_moe::{moe, ok};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A checkpoint directory: the Mixtral fixture's files linked, the tokenizer files copied
/// (unless `with_tokenizer` is false).
fn checkpoint(name: &str, with_tokenizer: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-hftok-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures().join("hf/mixtral")).unwrap() {
        let path = entry.unwrap().path();
        std::os::unix::fs::symlink(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    if with_tokenizer {
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(
                fixtures().join("hf-tokenizer/tiny-mixtral").join(file),
                dir.join(file),
            )
            .unwrap();
        }
    }
    dir
}

fn expected() -> Value {
    let path = fixtures().join("hf-tokenizer/tiny-mixtral/expected.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

fn joined(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The number after `prefill:` in the statistics (`prefill: 13 tokens`).
fn prefill(out: &Output) -> usize {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let at = err.find("prefill:").unwrap_or_else(|| panic!("{err}")) + "prefill:".len();
    err[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

const GREEDY: [&str; 6] = [
    "--temp",
    "0",
    "-n",
    "4",
    "--ignore-eos",
    "--no-display-prompt",
];

#[test]
fn text_prompts_run_on_a_directory_with_hugging_face_ids() {
    let dir = checkpoint("run", true);
    let d = dir.to_str().unwrap();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let tokenizer = checkpoint.tokenizer().unwrap().unwrap();
    assert_eq!((tokenizer.bos(), tokenizer.eos()), (Some(1), Some(2)));
    assert!(tokenizer.is_end_of_generation(2));
    let expected = expected();
    assert_eq!(expected["vocab_size"], 256);
    for prompt in expected["prompts"].as_array().unwrap() {
        let text = prompt["text"].as_str().unwrap();
        let want = ids(&prompt["ids"]);
        let got = ok(&["tokenize", d, "-p", text, "--ids-only"]);
        assert_eq!(stdout(&got).trim(), joined(&want), "{text:?}");

        // The text run prefills Hugging Face's ids and prints the greedy continuation
        // that the ids run generates, decoded.
        let by_text = ok(&[&["run", d, "-p", text][..], &GREEDY].concat());
        assert_eq!(prefill(&by_text), want.len(), "{text:?}");
        let by_ids = ok(&[&["run", d, "--tokens", &joined(&want)][..], &GREEDY].concat());
        let generated: Vec<u32> = stdout(&by_ids)
            .trim()
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(generated.len(), 4);
        let decoded =
            String::from_utf8_lossy(&tokenizer.decode_bytes(&generated, false, false)).into_owned();
        assert_eq!(stdout(&by_text), format!("{decoded}\n"), "{text:?}");

        // --chat: tokenizer_config.json's template, rendered as transformers renders it.
        let chat = ok(&[&["run", d, "-p", text, "--chat"][..], &GREEDY].concat());
        let chat_ids = ids(&prompt["chat_ids"]);
        assert_eq!(prefill(&chat), chat_ids.len(), "{text:?}");
        let by_chat_ids = ok(&[&["run", d, "--tokens", &joined(&chat_ids)][..], &GREEDY].concat());
        let generated: Vec<u32> = stdout(&by_chat_ids)
            .trim()
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        let decoded =
            String::from_utf8_lossy(&tokenizer.decode_bytes(&generated, false, false)).into_owned();
        assert_eq!(stdout(&chat), format!("{decoded}\n"), "{text:?}");
    }
    let template = checkpoint.chat_template().unwrap().unwrap();
    assert!(template.starts_with("{{ bos_token }}"));
    drop(checkpoint);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_without_tokenizer_json_asks_for_ids() {
    let dir = checkpoint("none", false);
    let d = dir.to_str().unwrap();
    let out = moe(&["run", d, "-p", "Hello", "-n", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokenizer.json") && err.contains("--tokens"),
        "{err}"
    );
    assert!(Checkpoint::open(&dir).unwrap().tokenizer().is_none());
    // A broken tokenizer.json is a message naming the file.
    std::fs::write(
        dir.join("tokenizer.json"),
        b"{\"model\": {\"type\": \"Unigram\"}}",
    )
    .unwrap();
    let out = moe(&["run", d, "-p", "Hello", "-n", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tokenizer.json") && err.contains("Unigram"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

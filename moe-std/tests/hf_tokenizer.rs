//! `Tokenizer::from_tokenizer_json` against Hugging Face `tokenizers`: every case that
//! `tests/fixtures/hf-tokenizer/make_cases.py` recorded, for every tokenizer.json there
//! and every variant of `variants.json`, encoded with and without special tokens and
//! decoded (at once and streamed).

use std::path::PathBuf;

use moe_std::tokenizer::{Model, Tokenizer, TokenizerError};
use serde_json::Value;

/// The fixtures, or (to check tokenizer.json files too large to commit) the folder named
/// by `MOE_HF_TOKENIZER_DIR`, laid out the same way (`variants.json` optional).
fn dir() -> PathBuf {
    match std::env::var_os("MOE_HF_TOKENIZER_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-tokenizer"),
    }
}

fn read_json(path: &PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Every tokenizer.json under test: the files and the variants, by name.
fn tokenizers() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(base) = name.strip_suffix(".tokenizer.json") {
            out.push((base.to_string(), std::fs::read(&path).unwrap()));
        }
    }
    let variants = dir().join("variants.json");
    let variants = if variants.exists() {
        read_json(&variants)
    } else {
        Value::Object(Default::default())
    };
    for (name, spec) in variants.as_object().unwrap() {
        let base = spec["base"].as_str().unwrap();
        let mut json = read_json(&dir().join(format!("{base}.tokenizer.json")));
        for (key, value) in spec["set"].as_object().unwrap() {
            json[key] = value.clone();
        }
        if let Some(model) = spec.get("set_model") {
            for (key, value) in model.as_object().unwrap() {
                json["model"][key] = value.clone();
            }
        }
        out.push((name.clone(), serde_json::to_vec(&json).unwrap()));
    }
    out.sort();
    out
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn every_case_matches_hugging_face_tokenizers() {
    let all = tokenizers();
    assert!(!all.is_empty());
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, json) in &all {
        let tok = Tokenizer::from_tokenizer_json(json).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tok.model(), Model::HfBpe);
        let cases = read_json(&dir().join(format!("cases-{name}.json")));
        let cases = cases["cases"].as_array().unwrap();
        let mut matched = 0;
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want = ids(&case["ids"]);
            let mut ok = true;
            for (key, add, special) in [
                ("ids", false, true),
                ("ids_no_special", false, false),
                ("ids_add_special", true, true),
            ] {
                let got = tok.encode(text, add, special);
                let expected = ids(&case[key]);
                if got != expected {
                    ok = false;
                    failures.push(format!("{name} {key} {text:?}: {got:?} != {expected:?}"));
                }
            }
            let decoded = case["decoded"].as_str().unwrap();
            if tok.decode(&want) != decoded {
                ok = false;
                failures.push(format!(
                    "{name} decode {text:?}: {:?} != {decoded:?}",
                    tok.decode(&want)
                ));
            }
            let mut stream = tok.stream_decoder(true);
            let mut streamed: String = want.iter().map(|&id| stream.push(id)).collect();
            streamed.push_str(&stream.finish());
            if streamed != decoded {
                ok = false;
                failures.push(format!(
                    "{name} stream {text:?}: {streamed:?} != {decoded:?}"
                ));
            }
            matched += usize::from(ok);
        }
        report.push(format!("{name}: {matched}/{}", cases.len()));
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures[..failures.len().min(40)].join("\n")
    );
}

#[test]
fn the_fixtures_cover_both_kinds_and_the_variants() {
    if std::env::var_os("MOE_HF_TOKENIZER_DIR").is_none() {
        assert_eq!(tokenizers().len(), 7);
    }
}

#[test]
fn bos_eos_and_end_of_generation_from_the_configs() {
    let json = std::fs::read(dir().join("llama-spm.tokenizer.json")).unwrap();
    let mut tok = Tokenizer::from_tokenizer_json(&json).unwrap();
    // From the post-processor: `<s>` before the text, nothing after.
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), None);
    assert_eq!(tok.encode("Hi", true, true).first(), Some(&1));
    tok.apply_hf_config(
        Some(br#"{"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_eos_token": true}"#),
        Some(br#"{"eos_token_id": [2, 0]}"#),
    )
    .unwrap();
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    let ids = tok.encode("Hi", true, true);
    assert_eq!((ids.first(), ids.last()), (Some(&1), Some(&2)));
    assert!(tok.is_end_of_generation(2) && tok.is_end_of_generation(0));
    assert!(!tok.is_end_of_generation(1));
    tok.apply_hf_config(Some(br#"{"add_bos_token": false}"#), None)
        .unwrap();
    assert_ne!(tok.encode("Hi", true, true).first(), Some(&1));
    assert!(matches!(
        tok.apply_hf_config(Some(b"{"), None),
        Err(TokenizerError::Json(_))
    ));
}

#[test]
fn unsupported_kinds_are_refused_by_name() {
    let json = read_json(&dir().join("deepseek-coder.tokenizer.json"));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut j = json.clone();
        f(&mut j);
        Tokenizer::from_tokenizer_json(&serde_json::to_vec(&j).unwrap()).unwrap_err()
    };
    let e = with(&|j| j["model"]["type"] = "WordPiece".into());
    assert_eq!(e, TokenizerError::UnknownModel("WordPiece".into()));
    let e = with(&|j| j["model"]["type"] = "Unigram".into());
    assert_eq!(e, TokenizerError::UnknownModel("Unigram".into()));
    let e = with(&|j| j["normalizer"] = serde_json::json!({"type": "NFKC"}));
    assert!(
        matches!(&e, TokenizerError::Unsupported(w) if w.contains("NFKC")),
        "{e}"
    );
    let e = with(&|j| j["decoder"] = serde_json::json!({"type": "WordPiece"}));
    assert!(
        matches!(&e, TokenizerError::Unsupported(w) if w.contains("WordPiece")),
        "{e}"
    );
    // A look-ahead expression that is none of the known ones.
    let e = with(&|j| {
        j["pre_tokenizer"] = serde_json::json!({"type": "Split",
            "pattern": {"Regex": "\\s+(?!\\S)|x"}, "behavior": "Isolated", "invert": false})
    });
    assert_eq!(e, TokenizerError::UnknownPre("\\s+(?!\\S)|x".into()));
    let e = with(&|j| j["model"]["merges"][0] = "nonexistent token".into());
    assert!(matches!(e, TokenizerError::Json(_)), "{e}");
    let e = Tokenizer::from_tokenizer_json(b"not json").unwrap_err();
    assert!(matches!(e, TokenizerError::Json(_)), "{e}");
    let e = with(&|j| j["added_tokens"][0]["id"] = 4_000_000_000u64.into());
    assert!(matches!(e, TokenizerError::TooManyTokens(_)), "{e}");
}

#[test]
fn nfc_is_hugging_face_nfc() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf-tokenizer/nfc-cases.json");
    let cases = read_json(&path);
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 400);
    for case in cases {
        let (text, want) = (
            case["text"].as_str().unwrap(),
            case["nfc"].as_str().unwrap(),
        );
        assert_eq!(moe_std::tokenizer::nfc(text), want, "{text:?}");
    }
}

/// DeepSeek-V3's own tokenizer.json writes the line breaks of its third expression as the
/// characters themselves: the same expression as with `\r` / `\n` escapes.
#[test]
fn split_expressions_with_literal_line_breaks_are_known() {
    let (_, escaped) = tokenizers()
        .into_iter()
        .find(|(name, _)| name == "deepseek-v3-split")
        .unwrap();
    let mut json: Value = serde_json::from_slice(&escaped).unwrap();
    let pattern = &mut json["pre_tokenizer"]["pretokenizers"][2]["pattern"]["Regex"];
    let literal = pattern
        .as_str()
        .unwrap()
        .replace("\\r", "\r")
        .replace("\\n", "\n");
    assert!(literal.contains("\r\n"));
    *pattern = literal.into();
    let a = Tokenizer::from_tokenizer_json(&escaped).unwrap();
    let b = Tokenizer::from_tokenizer_json(&serde_json::to_vec(&json).unwrap()).unwrap();
    let cases = read_json(&dir().join("cases-deepseek-v3-split.json"));
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            b.encode(text, false, true),
            a.encode(text, false, true),
            "{text:?}"
        );
    }
}

//! The GGUF tokenizers against llama.cpp: every case of llama.cpp's own tokenizer tests
//! (`ggml-vocab-*.gguf` with `.inp` / `.out`) and our own strings recorded from llama.cpp by
//! `tests/fixtures/tokenizer/make_cases.py` (encode three ways, decode).

use std::path::{Path, PathBuf};

use moe_std::GgufFile;
use moe_std::tokenizer::{Model, Tokenizer, TokenizerError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer")
        .join(name)
}

fn load(vocab: &str) -> Tokenizer {
    let gguf = GgufFile::open(fixture(&format!("ggml-vocab-{vocab}.gguf"))).unwrap();
    Tokenizer::from_gguf(gguf.file()).unwrap()
}

/// llama.cpp's `test-tokenizer-0`: cases separated by `\n__ggml_vocab_test__\n`, one line
/// of space-separated ids per case, tokenized without BOS/EOS and without special tokens.
/// Returns the number of cases checked.
fn llama_cpp_cases(vocab: &str) -> usize {
    let tok = load(vocab);
    let inp = std::fs::read_to_string(fixture(&format!("ggml-vocab-{vocab}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(fixture(&format!("ggml-vocab-{vocab}.gguf.out"))).unwrap();
    let mut inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    // The file ends with the separator: the last piece is empty.
    assert_eq!(inputs.pop(), Some(""));
    let outputs: Vec<&str> = out.lines().collect();
    assert_eq!(inputs.len(), outputs.len());
    let mut failures = Vec::new();
    for (text, line) in inputs.iter().zip(&outputs) {
        let expected: Vec<u32> = line
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        let got = tok.encode(text, false, false);
        if got != expected {
            failures.push(format!("{text:?}: got {got:?}, llama.cpp {expected:?}"));
        }
    }
    assert!(failures.is_empty(), "{vocab}:\n{}", failures.join("\n"));
    inputs.len()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Our own strings (`cases-<vocab>.json`): encode with and without special-token parsing
/// and with BOS/EOS, decode, and the streaming decoder. Returns the number of cases.
fn our_cases(vocab: &str) -> usize {
    let tok = load(vocab);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("cases-{vocab}.json"))).unwrap(),
    )
    .unwrap();
    let cases = json["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        for (key, add, special) in [
            ("ids", false, true),
            ("ids_no_special", false, false),
            ("ids_add_special", true, true),
        ] {
            let expected = ids(&case[key]);
            let got = tok.encode(text, add, special);
            if got != expected {
                failures.push(format!(
                    "{key} {text:?}: got {got:?}, llama.cpp {expected:?}"
                ));
            }
        }
        let id_list = ids(&case["ids"]);
        let expected = hex(case["decoded_hex"].as_str().unwrap());
        let got = tok.decode_bytes(&id_list, false, true);
        if got != expected {
            failures.push(format!(
                "decode {text:?}: got {:?}, llama.cpp {:?}",
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&expected)
            ));
        }
        // Streaming gives the pieces (SentencePiece: less the first one's space prefix),
        // cut only at character boundaries.
        let mut stream = tok.stream_decoder(true);
        let mut streamed = String::new();
        for &id in &id_list {
            streamed.push_str(&stream.push(id));
        }
        streamed.push_str(&stream.finish());
        let mut pieces: Vec<u8> = id_list
            .iter()
            .flat_map(|&id| tok.piece(id, true).to_vec())
            .collect();
        if tok.model() == Model::Spm && pieces.first() == Some(&b' ') {
            pieces.remove(0);
        }
        let want = String::from_utf8_lossy(&pieces);
        if streamed != want {
            failures.push(format!("stream {text:?}: got {streamed:?}, want {want:?}"));
        }
        let whole = String::from_utf8_lossy(&expected);
        if tok.decode(&id_list) != whole {
            failures.push(format!("decode (lossy) {text:?}"));
        }
    }
    assert!(failures.is_empty(), "{vocab}:\n{}", failures.join("\n"));
    cases.len()
}

#[test]
fn llama_spm_llama_cpp_cases() {
    assert_eq!(llama_cpp_cases("llama-spm"), 46);
}

#[test]
fn llama_spm_our_cases() {
    assert!(our_cases("llama-spm") >= 50);
}

#[test]
fn gpt_2_llama_cpp_cases() {
    assert!(llama_cpp_cases("gpt-2") > 40);
}

#[test]
fn gpt_2_our_cases() {
    assert!(our_cases("gpt-2") >= 50);
}

/// GPT-2's decoding drops the space before punctuation and some contractions
/// (llama.cpp's clean-up); streaming keeps the pieces as they are.
#[test]
fn gpt_2_clean_up_spaces() {
    let tok = load("gpt-2");
    let ids = tok.encode("a , b ' c 's d .", false, false);
    assert_eq!(tok.decode(&ids), "a, b'c's d.");
    let mut stream = tok.stream_decoder(true);
    let streamed: String = ids.iter().map(|&id| stream.push(id)).collect();
    assert_eq!(streamed, "a , b ' c 's d .");
}

#[test]
fn qwen2_llama_cpp_cases() {
    assert!(llama_cpp_cases("qwen2") > 40);
}

#[test]
fn deepseek_coder_llama_cpp_cases() {
    assert!(llama_cpp_cases("deepseek-coder") > 40);
}

#[test]
fn deepseek_coder_our_cases() {
    assert!(our_cases("deepseek-coder") >= 200);
}

/// `is_end_of_generation` against llama.cpp's `llama_vocab_is_eog`, token by token, for
/// every vocabulary `make_eog.py` recorded whose file is here (the uncommitted ones too,
/// when they have been copied in).
#[test]
fn end_of_generation_tokens() {
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("eog.json")).unwrap()).unwrap();
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../moe-core/tests/fixtures/models");
    let mut checked = 0;
    for (name, want) in recorded.as_object().unwrap() {
        let path = [fixture(name), models.join(name)]
            .into_iter()
            .find(|p| p.exists());
        let Some(path) = path else { continue };
        let gguf = GgufFile::open(path).unwrap();
        let tok = Tokenizer::from_gguf(gguf.file()).unwrap();
        assert_eq!(
            tok.len() as u64,
            want["n_tokens"].as_u64().unwrap(),
            "{name}"
        );
        let got: Vec<u32> = (0..tok.len() as u32)
            .filter(|&id| tok.is_end_of_generation(id))
            .collect();
        assert_eq!(got, ids(&want["eog"]), "{name}");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} vocabularies checked");
}

#[test]
fn qwen2_our_cases() {
    assert!(our_cases("qwen2") >= 50);
}

/// A character split over byte-fallback tokens comes out of the streaming decoder only
/// when its last byte arrives.
#[test]
fn stream_holds_split_characters() {
    let tok = load("llama-spm");
    // 🦙 is not in the vocabulary: four byte tokens.
    let ids = tok.encode("🦙", false, false);
    let bytes: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&id| tok.token_text(id).is_some_and(|t| t.starts_with("<0x")))
        .collect();
    assert_eq!(bytes.len(), 4, "{ids:?}");
    let mut stream = tok.stream_decoder(false);
    let mut outputs = Vec::new();
    for &id in &ids {
        outputs.push(stream.push(id));
    }
    assert_eq!(outputs.last().map(String::as_str), Some("🦙"));
    assert!(outputs[..outputs.len() - 1].iter().all(|s| s.is_empty()));
    // A stream cut in the middle of a character ends with U+FFFD.
    let mut stream = tok.stream_decoder(false);
    let partial: String = ids[..ids.len() - 1]
        .iter()
        .map(|&id| stream.push(id))
        .collect();
    assert_eq!(partial, "");
    assert_eq!(stream.finish(), "\u{FFFD}");
}

/// Unknown ids decode to nothing instead of panicking (llama.cpp throws); such an id still
/// counts as the first token, whose leading space the space prefix removes.
#[test]
fn out_of_range_ids() {
    let tok = load("llama-spm");
    assert_eq!(tok.decode(&[u32::MAX, 15043]), " Hello");
    assert_eq!(tok.decode(&[15043, u32::MAX]), "Hello");
    assert!(tok.piece(u32::MAX, true).is_empty());
}

/// The whole-model fixtures carry small `llama` vocabularies: they load, and text
/// round-trips through them.
#[test]
fn model_fixture_vocabularies() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../moe-core/tests/fixtures/models");
    for name in [
        "mixtral-tiny-q4_0.gguf",
        "qwen2moe-tiny.gguf",
        "deepseek2-tiny.gguf",
    ] {
        let gguf = GgufFile::open(dir.join(name)).unwrap();
        let tok = Tokenizer::from_gguf(gguf.file()).unwrap();
        assert_eq!(tok.model(), Model::Spm, "{name}");
        let ids = tok.encode("Hello world", true, true);
        // Without the BOS, the first token's space prefix is dropped; llama.cpp keeps it
        // when it removes the BOS itself (remove_special).
        let text = tok.decode_bytes(&ids[1..], false, false);
        assert_eq!(text, b"Hello world", "{name}");
        let text = tok.decode_bytes(&ids, true, false);
        assert_eq!(text, b" Hello world", "{name}");
    }
}

/// `moe tokenize`: ids as a list, `id<TAB>piece` lines, usage errors exit 2.
#[test]
fn cli_tokenize() {
    let moe = env!("CARGO_BIN_EXE_moe");
    let file = fixture("ggml-vocab-llama-spm.gguf");
    let run = |args: &[&str]| {
        std::process::Command::new(moe)
            .arg("tokenize")
            .arg(&file)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["-p", "Hello world", "--ids-only"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1,15043,3186\n");
    let out = run(&["-p", "Hi\n🦙", "--no-bos"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("6324\t Hi\n13\t\\n\n"), "{text}");
    assert!(text.contains("\t\\xF0\n"), "{text}");
    let out = run(&["--ids-only"]);
    assert_eq!(out.status.code(), Some(2));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Any text survives encode → decode unchanged where llama.cpp's decoding is lossless
    /// (SentencePiece with its space prefix, Qwen2 without space clean-up), and nothing
    /// panics, special tokens parsed or not.
    #[test]
    fn round_trip(text in "\\PC{0,40}|[ \\t\\n<>/|a-z0-9]{0,40}|(<s>|</s>|<\\|endoftext\\|>| |a|🦙){0,8}") {
        static VOCABS: std::sync::OnceLock<Vec<(&str, Tokenizer)>> = std::sync::OnceLock::new();
        let vocabs = VOCABS.get_or_init(|| {
            ["llama-spm", "qwen2"].into_iter().map(|v| (v, load(v))).collect()
        });
        for (vocab, tok) in vocabs {
            let ids = tok.encode(&text, false, false);
            proptest::prop_assert_eq!(tok.decode(&ids), text.clone(), "{}", vocab);
            let ids = tok.encode(&text, true, true);
            let _ = tok.decode_bytes(&ids, true, false);
        }
    }
}

/// A GGUF v3 file with no tensors and the given metadata (`key`, type id, encoded value).
fn gguf(kvs: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (key, ty, value) in kvs {
        out.extend((key.len() as u64).to_le_bytes());
        out.extend(key.as_bytes());
        out.extend(ty.to_le_bytes());
        out.extend(value);
    }
    out
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend(s.as_bytes());
    out
}

/// An array value: element type, count, elements.
fn array(elem: u32, items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = elem.to_le_bytes().to_vec();
    out.extend((items.len() as u64).to_le_bytes());
    items.iter().for_each(|i| out.extend(i));
    out
}

/// Malformed or unsupported tokenizer metadata gives typed errors, never a panic.
#[test]
fn typed_errors() {
    const STR: u32 = 8;
    const ARR: u32 = 9;
    const I32: u32 = 5;
    const F32: u32 = 6;
    let model = |m: &str| ("tokenizer.ggml.model", STR, string(m));
    let tokens = || {
        (
            "tokenizer.ggml.tokens",
            ARR,
            array(STR, &[string("<unk>"), string("a"), string("b")]),
        )
    };
    let build = |kvs: &[(&str, u32, Vec<u8>)]| {
        let bytes = gguf(kvs);
        let file = moe_core::gguf::File::parse(&bytes).unwrap();
        Tokenizer::from_gguf(&file)
    };
    assert!(matches!(build(&[]), Err(TokenizerError::Missing(_))));
    assert!(matches!(
        build(&[("tokenizer.ggml.model", I32, 1i32.to_le_bytes().to_vec())]),
        Err(TokenizerError::WrongType { .. })
    ));
    assert!(matches!(
        build(&[model("bert"), tokens()]),
        Err(TokenizerError::UnknownModel(m)) if m == "bert"
    ));
    assert!(matches!(
        build(&[model("llama")]),
        Err(TokenizerError::Missing("tokenizer.ggml.tokens"))
    ));
    assert!(matches!(
        build(&[
            model("llama"),
            ("tokenizer.ggml.tokens", ARR, array(I32, &[vec![0; 4]]))
        ]),
        Err(TokenizerError::WrongType { .. })
    ));
    assert!(matches!(
        build(&[
            model("llama"),
            tokens(),
            ("tokenizer.ggml.scores", ARR, array(F32, &[vec![0; 4]]))
        ]),
        Err(TokenizerError::TooShort {
            len: 1,
            tokens: 3,
            ..
        })
    ));
    assert!(matches!(
        build(&[model("gpt2"), tokens(), ("tokenizer.ggml.pre", STR, string("x"))]),
        Err(TokenizerError::UnknownPre(p)) if p == "x"
    ));
    assert!(matches!(
        build(&[
            model("gpt2"),
            tokens(),
            ("tokenizer.ggml.pre", STR, string("gpt-2"))
        ]),
        Err(TokenizerError::Missing("tokenizer.ggml.merges"))
    ));
    // A minimal vocabulary works: without byte tokens each byte of an unknown character
    // becomes <unk> (where llama.cpp throws); BOS is the default id 1.
    let tok = build(&[model("llama"), tokens()]).unwrap();
    assert_eq!(
        tok.encode("ab€", true, true),
        vec![1, 0, 0, 0, 1, 2, 0, 0, 0]
    );
    assert_eq!(tok.decode(&[0, 1, 2, 7]), "<unk>ab");
}

/// The vocabularies too large to commit, checked the same way when their files are put
/// here (see `tests/fixtures/tokenizer/README.md`): `cargo test -- --ignored`.
#[test]
#[ignore = "needs llama.cpp's larger ggml-vocab-*.gguf files and make_cases.py output"]
fn uncommitted_vocabs() {
    for vocab in [
        "llama-bpe",
        "phi-3",
        "mpt",
        "qwen35",
        "deepseek-llm",
        "starcoder",
        "refact",
        "command-r",
        "falcon",
        "deepseek-v3",
    ] {
        assert!(llama_cpp_cases(vocab) > 40, "{vocab}");
        assert!(our_cases(vocab) >= 50, "{vocab}");
    }
}

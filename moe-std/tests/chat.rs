//! Chat templates rendered by `moe_std::chat` against Python's Jinja2 rendering them as
//! Hugging Face and llama-cpp-python do (`tests/fixtures/chat/make_chat.py`): the
//! templates of llama.cpp's Qwen2, Phi-3, Command-R and Gemma 4 vocabularies.

use std::path::{Path, PathBuf};

use moe_std::chat::{ChatError, ChatTemplate, Message};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat")
        .join(name)
}

#[test]
fn renders_like_jinja2() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    let mut checked = 0;
    for case in expected.as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let source = std::fs::read_to_string(fixture(name)).unwrap();
        let template = ChatTemplate::new(
            &source,
            case["bos_token"].as_str().unwrap(),
            case["eos_token"].as_str().unwrap(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let messages: Vec<Message> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let got = template.render(&messages, add);
        match case["text"].as_str() {
            Some(text) => assert_eq!(got.as_deref(), Ok(text), "{name} {messages:?} {add}"),
            None => assert!(
                matches!(got, Err(ChatError::Template(_))),
                "{name}: Jinja2 refused, we rendered {got:?}"
            ),
        }
        checked += 1;
    }
    assert_eq!(checked, 24);
}

#[test]
fn template_errors_are_typed() {
    // Does not parse.
    let e = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
    assert!(matches!(e, ChatError::Template(_)), "{e}");
    // The template refuses the conversation itself.
    let t = ChatTemplate::new(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok",
        "",
        "",
    )
    .unwrap();
    let e = t
        .render(&[Message::new("assistant", "hi")], true)
        .unwrap_err();
    assert!(e.to_string().contains("user first"), "{e}");
    assert_eq!(t.render(&[Message::new("user", "hi")], true).unwrap(), "ok");
}

#[test]
fn gguf_without_template() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../moe-core/tests/fixtures/models/mixtral-tiny-q4_0.gguf");
    let gguf = moe_std::GgufFile::open(path).unwrap();
    let e = ChatTemplate::from_gguf(gguf.file(), "<s>", "</s>").unwrap_err();
    assert_eq!(e, ChatError::NoTemplate);
    let vocab = fixture("../tokenizer/ggml-vocab-qwen2.gguf");
    let gguf = moe_std::GgufFile::open(vocab).unwrap();
    let t = ChatTemplate::from_gguf(gguf.file(), "", "<|endoftext|>").unwrap();
    let text = t.render(&[Message::new("user", "Hello!")], true).unwrap();
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
}

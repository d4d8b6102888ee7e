//! Builds a tokenizer from arbitrary bytes taken as a Hugging Face `tokenizer.json` and,
//! when one builds, encodes and decodes text through it: `Tokenizer::from_tokenizer_json`
//! must turn any JSON (or non-JSON) into a typed error or a tokenizer, and nothing done
//! with that tokenizer may panic. The input's tail is also offered as `tokenizer_config.json`
//! and `generation_config.json`. Seeded with the tiny Mixtral checkpoint's tokenizer files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_std::tokenizer::Tokenizer;

/// Text tried on every tokenizer besides the input's own tail.
const TEXTS: [&str; 4] = [
    "Hello world",
    " <s>a</s>\n\n[INST]  ",
    "naïve 日本語 🦙 1234567 e\u{301}",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Ok(mut tokenizer) = Tokenizer::from_tokenizer_json(data) else {
        return;
    };
    let tail = &data[data.len().saturating_sub(96)..];
    let _ = tokenizer.apply_hf_config(Some(tail), Some(tail));
    let text_tail = String::from_utf8_lossy(tail);
    for text in TEXTS.iter().copied().chain([text_tail.as_ref()]) {
        for (add_special, parse_special) in [(true, true), (false, false)] {
            let ids = tokenizer.encode(text, add_special, parse_special);
            let _ = tokenizer.decode(&ids);
            let mut stream = tokenizer.stream_decoder(true);
            for &id in &ids {
                let _ = stream.push(id);
            }
            let _ = stream.finish();
        }
    }
    let n = tokenizer.len() as u32;
    for id in [0, 1, n.saturating_sub(1), n, n + 7, u32::MAX] {
        let _ = tokenizer.piece(id, true);
        let _ = tokenizer.is_end_of_generation(id);
        let _ = tokenizer.decode(&[id]);
    }
});

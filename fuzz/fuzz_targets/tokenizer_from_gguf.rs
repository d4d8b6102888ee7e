//! Builds a tokenizer from arbitrary GGUF bytes and, when one builds, encodes and decodes
//! text through it: `Tokenizer::from_gguf` must turn any metadata into a typed error or a
//! tokenizer, and no text or id sequence may then panic (unknown ids, split UTF-8, special
//! tokens, empty vocabularies, merges that name no token). Seeded with the fixtures (the
//! tiny whole models carry small `llama` vocabularies).
#![no_main]

use libfuzzer_sys::fuzz_target;
use moe_core::gguf::File;
use moe_std::tokenizer::Tokenizer;

/// Text tried on every tokenizer besides the input's own tail.
const TEXTS: [&str; 4] = [
    "Hello world",
    " <s>a</s>\n\n<|endoftext|>  ",
    "naïve 日本語 🦙 1234567",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Ok(file) = File::parse(data) else {
        return;
    };
    let Ok(tokenizer) = Tokenizer::from_gguf(&file) else {
        return;
    };
    // The last bytes of the input as text too, so mutations reach the encoder.
    let tail = String::from_utf8_lossy(&data[data.len().saturating_sub(48)..]);
    for text in TEXTS.iter().copied().chain([tail.as_ref()]) {
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
    // Ids from the input, in range or not.
    let ids: Vec<u32> = data
        .chunks_exact(4)
        .take(16)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % (tokenizer.len() as u32 + 8))
        .collect();
    let _ = tokenizer.decode(&ids);
    for &id in &ids {
        let _ = tokenizer.piece(id, true);
        let _ = tokenizer.is_end_of_generation(id);
    }
});

//! Tokenizers built from a GGUF file's `tokenizer.ggml.*` metadata, token for token the
//! same as llama.cpp's (`src/llama-vocab.cpp`).
//!
//! Two models: `llama` (SentencePiece-style: merges driven by token scores, byte fallback
//! to `<0xXX>` tokens, the `▁` space marker) and `gpt2` (byte-level BPE with the
//! pre-tokenizers of GPT-2/OLMo/MPT, Llama 3, Qwen2, Qwen3.5, DeepSeek LLM/Coder/V3,
//! StarCoder/Refact/Command-R and Falcon: see [`Pre`]), with llama.cpp's special-token
//! partitioning and its detokenization.
//!
//! No crate does this: the `tokenizers` crate reads Hugging Face's `tokenizer.json`, not
//! GGUF metadata, and pulls in a large dependency tree; what llama.cpp does for SPM fits in
//! a few hundred lines, and matching it exactly (tie-breaking, the space prefix, special
//! tokens found before tokenizing) is easier in code we control.
//!
//! A Hugging Face `tokenizer.json` (BPE, byte-level or SentencePiece-style with byte
//! fallback) builds the same type through [`Tokenizer::from_tokenizer_json`], token for
//! token the same as the `tokenizers` library: see `hf.rs` for what maps and what is
//! refused.

mod bpe;
mod hf;
mod nfc;
mod spm;

pub use bpe::Pre;
pub use nfc::nfc;

use std::collections::HashMap;
use std::fmt;

use moe_core::gguf::{File, Value, ValueType};

/// Why a tokenizer could not be built from a file's metadata.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TokenizerError {
    /// A required key is absent.
    Missing(&'static str),
    /// A key holds the wrong type of value (or an array of the wrong element type).
    WrongType {
        /// The key.
        key: &'static str,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// `tokenizer.ggml.model` names a tokenizer this crate does not implement.
    UnknownModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not implement.
    UnknownPre(String),
    /// A per-token array is shorter than the token list.
    TooShort {
        /// The key.
        key: &'static str,
        /// Its length.
        len: usize,
        /// The number of tokens.
        tokens: usize,
    },
    /// More tokens than fit in a `u32` id (or, in a `tokenizer.json`, ids far beyond the
    /// number of tokens listed).
    TooManyTokens(usize),
    /// A `tokenizer.json` (or `tokenizer_config.json`) that is not valid JSON or not
    /// shaped as `tokenizers` writes it.
    Json(String),
    /// A `tokenizer.json` component this crate does not implement (a normalizer,
    /// pre-tokenizer, decoder or post-processor kind, BPE dropout, …).
    Unsupported(String),
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::Missing(key) => write!(f, "no '{key}' in the metadata"),
            TokenizerError::WrongType { key, expected } => {
                write!(f, "'{key}' is not {expected}")
            }
            TokenizerError::UnknownModel(model) => {
                write!(
                    f,
                    "tokenizer model '{model}' is not supported ('llama', 'gpt2'; 'BPE' in a tokenizer.json)"
                )
            }
            TokenizerError::UnknownPre(pre) => {
                write!(f, "pre-tokenizer '{pre}' is not supported yet")
            }
            TokenizerError::TooShort { key, len, tokens } => {
                write!(f, "'{key}' has {len} entries for {tokens} tokens")
            }
            TokenizerError::TooManyTokens(n) => write!(f, "{n} tokens do not fit u32 ids"),
            TokenizerError::Json(why) => write!(f, "tokenizer.json: {why}"),
            TokenizerError::Unsupported(what) => {
                write!(f, "tokenizer.json: {what} is not supported")
            }
        }
    }
}

impl std::error::Error for TokenizerError {}

/// llama.cpp's token attributes (`LLAMA_TOKEN_ATTR_*`), from `tokenizer.ggml.token_type`.
pub mod attr {
    /// `UNDEFINED` token type, or an unknown type number.
    pub const UNDEFINED: u32 = 0;
    /// Unknown-token (`<unk>`).
    pub const UNKNOWN: u32 = 1 << 0;
    /// Unused slot.
    pub const UNUSED: u32 = 1 << 1;
    /// Ordinary text.
    pub const NORMAL: u32 = 1 << 2;
    /// Control token (`<s>`, `</s>`): found in text only when parsing special tokens.
    pub const CONTROL: u32 = 1 << 3;
    /// Added by the user: always found in text before tokenizing, printed as is.
    pub const USER_DEFINED: u32 = 1 << 4;
    /// A raw byte, `<0xXX>`.
    pub const BYTE: u32 = 1 << 5;
    /// Whitespace to the left of the token is eaten when it is found in text.
    pub const LSTRIP: u32 = 1 << 7;
    /// Whitespace to the right of the token is eaten when it is found in text.
    pub const RSTRIP: u32 = 1 << 8;
}

/// The tokenization algorithm, from `tokenizer.ggml.model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// `llama`: SentencePiece-style score-driven merges with byte fallback.
    Spm,
    /// `gpt2`: byte-level BPE with merge ranks, after the given pre-tokenizer.
    Bpe(Pre),
    /// A Hugging Face `tokenizer.json` BPE model (merge ranks; byte-level or
    /// SentencePiece-style with byte fallback, as its normalizer, pre-tokenizer and
    /// decoder say).
    HfBpe,
}

/// One vocabulary entry.
#[derive(Debug, Clone)]
struct Token {
    text: Box<str>,
    score: f32,
    attr: u32,
}

/// A tokenizer read from GGUF metadata; owns its vocabulary (the file may be closed).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    model: Model,
    tokens: Vec<Token>,
    /// Text → id; a text listed twice maps to its last id, as in llama.cpp.
    ids: HashMap<Box<[u8]>, u32>,
    /// Each token's text as produced by detokenization with special tokens shown.
    pieces: Vec<Box<[u8]>>,
    /// Tokens matched in the text before tokenizing, longest text first.
    specials: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    /// Tokens that end generation (sorted): EOS, EOT, EOM and the texts llama.cpp knows.
    end_of_generation: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    /// Detokenization removes spaces before `?!.,` and some contractions (BPE).
    clean_spaces: bool,
    bpe: Option<bpe::Bpe>,
    /// The `tokenizer.json` pipeline, which then does all encoding and decoding.
    hf: Option<Box<hf::Hf>>,
}

/// Reads a string array of per-token values.
fn array<'a>(
    file: &File<'a>,
    key: &'static str,
) -> Result<Option<moe_core::gguf::Array<'a>>, TokenizerError> {
    match file.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(TokenizerError::WrongType {
            key,
            expected: "an array",
        }),
    }
}

fn flag(file: &File<'_>, key: &'static str, default: bool) -> Result<bool, TokenizerError> {
    match file.get(key) {
        None => Ok(default),
        Some(v) => v.as_bool().ok_or(TokenizerError::WrongType {
            key,
            expected: "a boolean",
        }),
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by `file`'s `tokenizer.ggml.*` keys, with
    /// llama.cpp's defaults where a key is absent.
    pub fn from_gguf(file: &File<'_>) -> Result<Self, TokenizerError> {
        const MODEL: &str = "tokenizer.ggml.model";
        let model_name = file
            .get(MODEL)
            .ok_or(TokenizerError::Missing(MODEL))?
            .as_str()
            .ok_or(TokenizerError::WrongType {
                key: MODEL,
                expected: "a string",
            })?;
        let (mut bpe, model) = match model_name {
            "llama" => (None, Model::Spm),
            "gpt2" => {
                const PRE: &str = "tokenizer.ggml.pre";
                let name = match file.get(PRE) {
                    None => "",
                    Some(v) => v.as_str().ok_or(TokenizerError::WrongType {
                        key: PRE,
                        expected: "a string",
                    })?,
                };
                let pre =
                    Pre::from_name(name).ok_or(TokenizerError::UnknownPre(name.to_string()))?;
                let bpe = bpe::Bpe {
                    steps: pre.steps(),
                    ranks: HashMap::new(),
                    ignore_merges: pre == Pre::Llama3,
                };
                (Some(bpe), Model::Bpe(pre))
            }
            other => return Err(TokenizerError::UnknownModel(other.to_string())),
        };
        if let Some(bpe) = bpe.as_mut() {
            const MERGES: &str = "tokenizer.ggml.merges";
            let merges = array(file, MERGES)?.ok_or(TokenizerError::Missing(MERGES))?;
            if merges.elem_type() != ValueType::String {
                return Err(TokenizerError::WrongType {
                    key: MERGES,
                    expected: "an array of strings",
                });
            }
            bpe.ranks.reserve(merges.len());
            for (rank, merge) in merges.iter().enumerate() {
                let merge = merge.as_str().unwrap_or("");
                // llama.cpp splits at the first space after the first byte; a line
                // without one gives a pair no lookup matches.
                if merge
                    .as_bytes()
                    .get(1..)
                    .is_some_and(|rest| rest.contains(&b' '))
                {
                    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
                    bpe.ranks
                        .entry(merge.as_bytes().to_vec().into_boxed_slice())
                        .or_insert(rank);
                }
            }
        }

        const TOKENS: &str = "tokenizer.ggml.tokens";
        let list = array(file, TOKENS)?.ok_or(TokenizerError::Missing(TOKENS))?;
        if list.elem_type() != ValueType::String {
            return Err(TokenizerError::WrongType {
                key: TOKENS,
                expected: "an array of strings",
            });
        }
        let n = list.len();
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::TooManyTokens(n));
        }
        let per_token = |key: &'static str, types: &[ValueType], expected: &'static str| {
            match array(file, key)? {
                None => Ok(None),
                Some(a) if !types.contains(&a.elem_type()) => {
                    Err(TokenizerError::WrongType { key, expected })
                }
                Some(a) if a.len() < n => Err(TokenizerError::TooShort {
                    key,
                    len: a.len(),
                    tokens: n,
                }),
                Some(a) => Ok(Some(a)),
            }
        };
        let scores = per_token(
            "tokenizer.ggml.scores",
            &[ValueType::F32, ValueType::I32],
            "an array of f32 or i32",
        )?;
        let types = per_token(
            "tokenizer.ggml.token_type",
            &[ValueType::I32],
            "an array of i32",
        )?;
        let mut scores = scores.map(|a| a.iter());
        let mut types = types.map(|a| a.iter());

        let mut tokens = Vec::with_capacity(n);
        let mut ids = HashMap::with_capacity(n);
        for (i, value) in list.iter().enumerate() {
            let text = match value.as_str() {
                Some("") | None => format!("[EMPTY_{i}]"),
                Some(t) => t.to_string(),
            };
            let score = scores
                .as_mut()
                .and_then(|s| s.next())
                .and_then(|v| v.as_f32())
                .unwrap_or(0.0);
            let attr = match types.as_mut().and_then(|t| t.next()) {
                None => attr::NORMAL,
                Some(v) => match v.as_i64() {
                    Some(1) => attr::NORMAL,
                    Some(2) => attr::UNKNOWN,
                    Some(3) => attr::CONTROL,
                    Some(4) => attr::USER_DEFINED,
                    Some(5) => attr::UNUSED,
                    Some(6) => attr::BYTE,
                    _ => attr::UNDEFINED,
                },
            };
            // `i < n <= u32::MAX`, checked above.
            ids.insert(text.clone().into_bytes().into_boxed_slice(), i as u32);
            tokens.push(Token {
                text: text.into_boxed_str(),
                score,
                attr,
            });
        }

        mark_control_tokens(file, &mut tokens, &ids);

        // Special ids: llama.cpp's defaults for the model, replaced by the file's keys
        // when they are in range (an out-of-range id is ignored, as there).
        let in_range = |id: u32| (id as usize) < n;
        let special = |key: &'static str, default: Option<u32>| -> Option<u32> {
            let default = default.filter(|&d| in_range(d));
            match file.get(key).and_then(|v| v.as_u64()) {
                Some(id) if id < n as u64 => Some(id as u32),
                _ => default,
            }
        };
        // llama.cpp's defaults per model and pre-tokenizer.
        let (bos, eos, unk, add_bos, add_space_prefix, clean_spaces) = match model {
            Model::Spm | Model::HfBpe => (Some(1), Some(2), Some(0), true, true, false),
            Model::Bpe(pre) => (
                Some(11),
                Some(11),
                None,
                pre == Pre::Llama3,
                false,
                // llama.cpp turns the clean-up off for these.
                !matches!(
                    pre,
                    Pre::Qwen2
                        | Pre::Qwen35
                        | Pre::DeepseekLlm
                        | Pre::DeepseekCoder
                        | Pre::DeepseekV3
                        | Pre::CommandR
                ),
            ),
        };
        let bos = special("tokenizer.ggml.bos_token_id", bos);
        let eos = special("tokenizer.ggml.eos_token_id", eos);
        let unk = special("tokenizer.ggml.unknown_token_id", unk);
        let end_of_generation = end_of_generation_ids(file, &tokens, &ids, eos, in_range);
        let add_bos = flag(file, "tokenizer.ggml.add_bos_token", add_bos)?;
        let add_eos = flag(file, "tokenizer.ggml.add_eos_token", false)?;
        let add_space_prefix = flag(file, "tokenizer.ggml.add_space_prefix", add_space_prefix)?;

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&id| {
                tokens[id as usize].attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        specials.sort_by_key(|&id| std::cmp::Reverse(tokens[id as usize].text.len()));
        strip_attributes(file, &mut tokens, &ids, &specials);

        let mut tokenizer = Tokenizer {
            model,
            tokens,
            ids,
            pieces: Vec::new(),
            specials,
            bos,
            eos,
            unk,
            end_of_generation,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            bpe,
            hf: None,
        };
        tokenizer.pieces = (0..n)
            .map(|i| tokenizer.render(i).into_boxed_slice())
            .collect();
        Ok(tokenizer)
    }

    /// Builds the tokenizer of a Hugging Face `tokenizer.json`: [`Tokenizer::encode`]
    /// and [`Tokenizer::decode`] then give what the `tokenizers` library's
    /// `encode(text, add_special_tokens)` and `decode(ids, skip_special_tokens = False)`
    /// give. BOS and EOS are the first and last tokens the post-processor adds around a
    /// single sequence, until [`Tokenizer::apply_hf_config`] names them.
    pub fn from_tokenizer_json(json: &[u8]) -> Result<Self, TokenizerError> {
        hf::from_json(json)
    }

    /// Applies a checkpoint's `tokenizer_config.json` and `generation_config.json` to a
    /// tokenizer from [`Tokenizer::from_tokenizer_json`] (a GGUF tokenizer is left as
    /// is): `bos_token` / `eos_token` name BOS and EOS; `add_bos_token` /
    /// `add_eos_token`, where present, decide whether encoding adds them (replacing what
    /// the post-processor adds on that side, as transformers rebuilds it for the
    /// Llama-family tokenizers); the end-of-generation set is EOS and every id of
    /// `generation_config.json`'s `eos_token_id` (a number or a list).
    pub fn apply_hf_config(
        &mut self,
        tokenizer_config: Option<&[u8]>,
        generation_config: Option<&[u8]>,
    ) -> Result<(), TokenizerError> {
        let Some(hf) = self.hf.as_mut() else {
            return Ok(());
        };
        let parse = |bytes: &[u8], name: &str| -> Result<serde_json::Value, TokenizerError> {
            serde_json::from_slice(bytes).map_err(|e| TokenizerError::Json(format!("{name}: {e}")))
        };
        if let Some(bytes) = tokenizer_config {
            let config = parse(bytes, "tokenizer_config.json")?;
            let named = |key: &str| -> Option<u32> {
                let v = config.get(key)?;
                let text = v
                    .as_str()
                    .or_else(|| v.get("content").and_then(|c| c.as_str()))?;
                self.ids.get(text.as_bytes()).copied()
            };
            let (bos, eos) = (named("bos_token"), named("eos_token"));
            if bos.is_some() {
                self.bos = bos;
            }
            if eos.is_some() {
                self.eos = eos;
            }
            if let Some(add) = config.get("add_bos_token").and_then(|v| v.as_bool()) {
                hf.prefix = if add {
                    self.bos.into_iter().collect()
                } else {
                    Vec::new()
                };
            }
            if let Some(add) = config.get("add_eos_token").and_then(|v| v.as_bool()) {
                hf.suffix = if add {
                    self.eos.into_iter().collect()
                } else {
                    Vec::new()
                };
            }
            self.add_bos = self.bos.is_some() && hf.prefix.first() == self.bos.as_ref();
            self.add_eos = self.eos.is_some() && hf.suffix.last() == self.eos.as_ref();
        }
        let mut eog: Vec<u32> = self.eos.into_iter().collect();
        if let Some(bytes) = generation_config {
            let config = parse(bytes, "generation_config.json")?;
            let n = self.tokens.len() as u64;
            match config.get("eos_token_id") {
                Some(serde_json::Value::Array(list)) => eog.extend(
                    list.iter()
                        .filter_map(|v| v.as_u64())
                        .filter(|&id| id < n)
                        .map(|id| id as u32),
                ),
                Some(v) => eog.extend(v.as_u64().filter(|&id| id < n).map(|id| id as u32)),
                None => {}
            }
        }
        eog.sort_unstable();
        eog.dedup();
        self.end_of_generation = eog;
        Ok(())
    }

    /// The tokenization algorithm.
    pub fn model(&self) -> Model {
        self.model
    }

    /// Number of tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the vocabulary has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether generation stops at `id`: llama.cpp's `llama_vocab_is_eog` (the EOS, EOT
    /// and EOM tokens, and control tokens whose text ends a turn, such as `<|im_end|>`).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    /// A token's text as stored in the vocabulary (`▁Hello`, `<0x0A>`, `<s>`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| &*t.text)
    }

    /// A token's attributes ([`attr`]).
    pub fn token_attr(&self, id: u32) -> Option<u32> {
        self.tokens.get(id as usize).map(|t| t.attr)
    }

    /// The id of a token text, if it is in the vocabulary.
    pub fn token_id(&self, text: &[u8]) -> Option<u32> {
        self.ids.get(text).copied()
    }

    fn score(&self, id: u32) -> f32 {
        self.tokens.get(id as usize).map_or(0.0, |t| t.score)
    }

    /// llama.cpp's `byte_to_token`: `<0xXX>`, else the byte itself as a token, else (where
    /// llama.cpp would throw) the unknown token, else nothing.
    fn byte_token(&self, byte: u8) -> Option<u32> {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let name = [
            b'<',
            b'0',
            b'x',
            HEX[usize::from(byte >> 4)],
            HEX[usize::from(byte & 15)],
            b'>',
        ];
        self.token_id(&name)
            .or_else(|| self.token_id(&[byte]))
            .or(self.unk)
    }

    /// The bytes a token stands for with special tokens shown (llama.cpp's
    /// `token_to_piece(…, special = true)`).
    fn render(&self, id: usize) -> Vec<u8> {
        let Some(token) = self.tokens.get(id) else {
            return Vec::new();
        };
        let a = token.attr;
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            token.text.as_bytes().to_vec()
        } else if a & attr::NORMAL != 0 {
            match self.model {
                Model::Spm => token.text.replace('\u{2581}', " ").into_bytes(),
                // Filled by `hf::from_json`.
                Model::HfBpe => Vec::new(),
                Model::Bpe(_) => {
                    // GPT-2's printable characters back to bytes; one outside the map
                    // gives llama.cpp's `[UNK_BYTE_0x…]` marker.
                    let mut out = Vec::new();
                    for c in token.text.chars() {
                        match bpe::char_to_byte(c) {
                            Some(b) => out.push(b),
                            None => {
                                out.extend_from_slice(b"[UNK_BYTE_0x");
                                let mut buf = [0u8; 4];
                                for b in c.encode_utf8(&mut buf).bytes() {
                                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                                }
                                out.extend_from_slice(token.text.as_bytes());
                                out.push(b']');
                            }
                        }
                    }
                    out
                }
            }
        } else if a & attr::BYTE != 0 {
            // `<0xXX>`: llama.cpp parses the hex after `<0x` with strtol.
            let hex = token.text.get(3..5).unwrap_or("");
            u8::from_str_radix(hex, 16)
                .map(|b| vec![b])
                .unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    /// The bytes of one token for display or decoding; special (control and unknown)
    /// tokens give their text only when `special` is set, as in llama.cpp.
    pub fn piece(&self, id: u32, special: bool) -> &[u8] {
        match self.tokens.get(id as usize) {
            Some(t) if !special && t.attr & (attr::UNKNOWN | attr::CONTROL) != 0 => &[],
            Some(_) => self.pieces.get(id as usize).map_or(&[], |p| &**p),
            None => &[],
        }
    }

    /// Splits `text` into raw-text fragments and special tokens found in it (llama.cpp's
    /// `tokenizer_st_partition`): each special token, longest first, is searched in every
    /// remaining raw fragment. Control and unknown tokens only when `parse_special`.
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(text));
        for &id in &self.specials {
            let Some(token) = self.tokens.get(id as usize) else {
                continue;
            };
            if !parse_special && token.attr & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = &*token.text;
            let mut next = Vec::with_capacity(fragments.len());
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(needle) {
                    let mut left = &rest[..at];
                    if token.attr & attr::LSTRIP != 0 {
                        left = left.trim_end_matches(is_c_space);
                    }
                    if !left.is_empty() {
                        next.push(Fragment::Text(left));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[at + needle.len()..];
                    if token.attr & attr::RSTRIP != 0 {
                        rest = rest.trim_start_matches(is_c_space);
                    }
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// Token ids for `text`: `add_special` adds BOS/EOS as the vocabulary asks
    /// (`tokenizer.ggml.add_bos_token` / `add_eos_token`), `parse_special` recognises
    /// control tokens such as `<s>` written in the text (user-defined tokens always are).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        if let Some(hf) = &self.hf {
            return hf.encode(text, add_special, parse_special);
        }
        let mut output = Vec::new();
        let fragments = self.partition(text, parse_special);
        match self.model {
            Model::Spm => {
                // The space prefix goes before the first text and before text that
                // follows a special token.
                let mut prev_special = true;
                if add_special && self.add_bos {
                    output.extend(self.bos);
                }
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(t) => {
                            let mut s = String::with_capacity(t.len() * 3 + 3);
                            if self.add_space_prefix && prev_special {
                                s.push(' ');
                            }
                            s.push_str(t);
                            let escaped = s.replace(' ', "\u{2581}");
                            spm::tokenize(self, escaped.as_bytes(), &mut output);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            output.push(id);
                            prev_special = true;
                        }
                    }
                }
                if add_special && self.add_eos {
                    output.extend(self.eos);
                }
            }
            Model::Bpe(_) | Model::HfBpe => {
                if add_special && self.add_bos {
                    output.extend(self.bos);
                }
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(t) => {
                            if let Some(b) = &self.bpe {
                                bpe::tokenize(self, b, t, &mut output);
                            }
                        }
                        Fragment::Token(id) => output.push(id),
                    }
                }
                if add_special && self.add_eos {
                    output.extend(self.eos);
                }
            }
        }
        output
    }

    /// The bytes of `ids` (llama.cpp's `llama_detokenize`): `remove_special` drops a
    /// leading BOS and trailing EOS that the vocabulary adds, `unparse_special` shows
    /// control tokens as their text. With the space prefix, the first token's leading
    /// space is dropped (unless a BOS was removed), as SentencePiece does.
    pub fn decode_bytes(
        &self,
        ids: &[u32],
        remove_special: bool,
        unparse_special: bool,
    ) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos && !ids.is_empty() && ids.first() == self.bos.as_ref() {
            remove_space = false;
            ids = &ids[1..];
        }
        if remove_special && self.add_eos && !ids.is_empty() && ids.last() == self.eos.as_ref() {
            ids = &ids[..ids.len() - 1];
        }
        if let Some(hf) = &self.hf {
            return hf.decode(self, ids, !unparse_special).into_bytes();
        }
        let mut out = Vec::new();
        for &id in ids {
            let mut piece = self.piece(id, unparse_special);
            if remove_space && let Some(rest) = piece.strip_prefix(b" ") {
                piece = rest;
            }
            remove_space = false;
            out.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_up_spaces(&mut out);
        }
        out
    }

    /// `ids` as text with special tokens shown and nothing removed (what llama.cpp's
    /// `common_detokenize(…, special = true)` gives); invalid UTF-8 (a byte token cut
    /// from its sequence) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, false, true)).into_owned()
    }

    /// A decoder for generated tokens, one at a time.
    pub fn stream_decoder(&self, unparse_special: bool) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            pending: Vec::new(),
            first: true,
            unparse_special,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }
}

/// llama.cpp's `clean_up_tokenization_spaces`: drops the space before `?`, `!`, `.`, `,`;
/// around a lone `'` (both sides); and before `'s`, `'m`, `'re`, `'ve`.
fn clean_up_spaces(text: &mut Vec<u8>) {
    // First pass: " ?", " !", " .", " ,".
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(x);
    }
    // Second pass: " ' " becomes "'"; the space after it is skipped.
    // llama.cpp overwrites the skipped space with NUL in place, so the next byte does not
    // see a space before it.
    let mut src = std::mem::take(&mut out);
    let mut i = 0;
    while i < src.len() {
        let x = src[i];
        if i > 0 && x == b'\'' && i + 1 < src.len() && src[i - 1] == b' ' && src[i + 1] == b' ' {
            out.pop();
            out.push(x);
            src[i + 1] = 0;
            i += 2;
            continue;
        }
        out.push(x);
        i += 1;
    }
    // Third pass: " 's", " 'm", " 're", " 've" lose the space.
    let src = std::mem::take(&mut out);
    for (i, &x) in src.iter().enumerate() {
        if i > 0 && src[i - 1] == b' ' && x == b'\'' && i + 1 < src.len() {
            let x1 = src[i + 1];
            let x2 = src.get(i + 2).copied();
            let drop = match x1 {
                b's' | b'm' => true,
                b'r' | b'v' => i + 2 < src.len() && x2 == Some(b'e'),
                _ => false,
            };
            if drop {
                out.pop();
            }
        }
        out.push(x);
    }
    *text = out;
}

/// Token texts llama.cpp treats as end of generation: marked CONTROL whatever their type
/// in the file (so they are found in text only with special parsing, like `<s>`).
const END_OF_GENERATION: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
];

/// llama.cpp's end-of-generation set: EOS, the EOT and EOM tokens named by their keys, the
/// fill-in-the-middle pad, repo and separator tokens, and every token with an [`END_OF_GENERATION`] text that the load fix-ups left CONTROL
/// (`<|end|>` beside `<|return|>` is plain text there, so it does not end generation).
fn end_of_generation_ids(
    file: &File<'_>,
    tokens: &[Token],
    ids: &HashMap<Box<[u8]>, u32>,
    eos: Option<u32>,
    in_range: impl Fn(u32) -> bool,
) -> Vec<u32> {
    let keyed_id = |key: &str| {
        let id = file.get(key).and_then(|v| v.as_u64())?;
        u32::try_from(id).ok().filter(|&id| in_range(id))
    };
    let keyed = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
        .into_iter()
        .filter_map(keyed_id);
    // The fill-in-the-middle pad, repo and separator tokens (by key, else by text) end
    // generation too.
    let fim = FILL_IN_THE_MIDDLE
        .iter()
        .filter(|(key, _)| {
            key.ends_with("fim_pad_token_id")
                || key.ends_with("fim_rep_token_id")
                || key.ends_with("fim_sep_token_id")
        })
        .filter_map(|(key, texts)| {
            let by_text = || texts.iter().find_map(|t| ids.get(t.as_bytes()).copied());
            if file.get(key).is_some() {
                keyed_id(key)
            } else {
                by_text()
            }
        });
    let by_text = END_OF_GENERATION.iter().filter_map(|text| {
        let id = *ids.get(text.as_bytes())?;
        (tokens[id as usize].attr & attr::CONTROL != 0).then_some(id)
    });
    let mut set: Vec<u32> = eos
        .into_iter()
        .chain(keyed)
        .chain(fim)
        .chain(by_text)
        .collect();
    set.sort_unstable();
    set.dedup();
    set
}

/// Fill-in-the-middle token texts, by the key that names the token when the file does;
/// without the key llama.cpp marks the token it finds by text CONTROL.
const FILL_IN_THE_MIDDLE: &[(&str, &[&str])] = &[
    (
        "tokenizer.ggml.fim_pre_token_id",
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
            "<PRE>",
            "\u{2581}<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_suf_token_id",
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
            "<SUF>",
            "\u{2581}<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_mid_token_id",
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
            "<MID>",
            "\u{2581}<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_pad_token_id",
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        "tokenizer.ggml.fim_rep_token_id",
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
    ),
    ("tokenizer.ggml.fim_sep_token_id", &["<|file_sep|>"]),
];

/// llama.cpp's attribute fix-ups at load: end-of-generation and fill-in-the-middle tokens
/// become CONTROL; `<|end|>` beside `<|return|>`/`<|call|>` (or `<|calls|>`/`<|flush|>`)
/// is plain user-defined text; `</s>` beside `<|tool_response>` is normal text.
fn mark_control_tokens(file: &File<'_>, tokens: &mut [Token], ids: &HashMap<Box<[u8]>, u32>) {
    let id_of = |text: &str| ids.get(text.as_bytes()).map(|&id| id as usize);
    let mut set = |text: &str, f: &dyn Fn(u32) -> u32| {
        if let Some(t) = id_of(text).and_then(|id| tokens.get_mut(id)) {
            t.attr = f(t.attr);
        }
    };
    for text in END_OF_GENERATION {
        set(text, &|a| a | attr::CONTROL);
    }
    for (key, texts) in FILL_IN_THE_MIDDLE {
        if file.get(key).is_none() {
            for text in *texts {
                set(text, &|a| a | attr::CONTROL);
            }
        }
    }
    let has = |text: &str| id_of(text).is_some();
    let (ret, call, calls, flush, end) = (
        has("<|return|>"),
        has("<|call|>"),
        has("<|calls|>"),
        has("<|flush|>"),
        has("<|end|>"),
    );
    if end && (call || calls) && (ret || flush) {
        set("<|end|>", &|_| attr::USER_DEFINED);
    }
    if has("<|tool_response>") {
        set("</s>", &|_| attr::NORMAL);
    }
}

/// llama.cpp's per-model LSTRIP/RSTRIP attributes, chosen by name (GGUF does not store
/// them): Phi-3 eats whitespace after its special tokens (and `</s>`) except `<unk>`, `<s>`
/// and `<|endoftext|>`; the Jina v2 / Nomic-BERT-MoE / Jina-BERT-v3 `<mask>` and the
/// ModernBERT `[MASK]` eat whitespace before them.
fn strip_attributes(
    file: &File<'_>,
    tokens: &mut [Token],
    ids: &HashMap<Box<[u8]>, u32>,
    specials: &[u32],
) {
    let text = |key: &str| file.get(key).and_then(|v| v.as_str()).unwrap_or("");
    let name = text("general.name").to_ascii_lowercase();
    let pre = text("tokenizer.ggml.pre");
    let arch = text("general.architecture");
    let jina = ["jina-v2-de", "jina-v2-es", "jina-v2-code"];
    if jina.iter().any(|p| pre.contains(p))
        || ["nomic-bert-moe", "jina-bert-v3"]
            .iter()
            .any(|a| arch.contains(a))
    {
        set_attr(tokens, ids, "<mask>", attr::LSTRIP, true);
    } else if name.contains("phi-3") || name.contains("phi3") {
        for &id in specials {
            if let Some(t) = tokens.get_mut(id as usize) {
                t.attr |= attr::RSTRIP;
            }
        }
        set_attr(tokens, ids, "</s>", attr::RSTRIP, true);
        for token in ["<unk>", "<s>", "<|endoftext|>"] {
            set_attr(tokens, ids, token, attr::RSTRIP, false);
        }
    } else if name.contains("modern-bert") {
        set_attr(tokens, ids, "[MASK]", attr::LSTRIP, true);
    }
}

/// Sets or clears `flag` on the token with text `token`, if there is one.
fn set_attr(tokens: &mut [Token], ids: &HashMap<Box<[u8]>, u32>, token: &str, flag: u32, on: bool) {
    if let Some(t) = ids
        .get(token.as_bytes())
        .and_then(|&id| tokens.get_mut(id as usize))
    {
        t.attr = if on { t.attr | flag } else { t.attr & !flag };
    }
}

/// C's `isspace` in the C locale, which llama.cpp uses for LSTRIP/RSTRIP.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{0b}' | '\u{0c}' | '\r')
}

/// A piece of the input: text still to tokenize, or a special token found in it.
#[derive(Debug, Clone, Copy)]
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

/// Turns tokens into text as they are generated, holding back the bytes of a UTF-8
/// sequence split across tokens (byte-fallback tokens) until it is complete. The text is
/// the tokens' pieces (with the space prefix dropped from the first), cut at character
/// boundaries: [`Tokenizer::decode_bytes`] without the BPE space clean-up, which needs
/// text after the space (llama.cpp streams pieces the same way).
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
    first: bool,
    unparse_special: bool,
    /// For a `tokenizer.json` tokenizer, `tokenizers`' `DecodeStream` state: the ids
    /// decoded together (one already shown before `prefix_index`, for context) and the
    /// text of the shown ones.
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        if let Some(hf) = &self.tokenizer.hf {
            // `tokenizers`' `step_decode_stream`: decode the window and show what it adds,
            // unless it ends in an unfinished character.
            self.ids.push(id);
            let text = hf.decode(self.tokenizer, &self.ids, !self.unparse_special);
            if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
                return String::new();
            }
            let new = text
                .strip_prefix(self.prefix.as_str())
                .map_or_else(|| text.clone(), str::to_string);
            let new_prefix_index = self.ids.len() - self.prefix_index;
            self.ids.drain(..self.prefix_index);
            self.prefix = hf.decode(self.tokenizer, &self.ids, !self.unparse_special);
            self.prefix_index = new_prefix_index;
            return new;
        }
        let mut piece = self.tokenizer.piece(id, self.unparse_special);
        if self.first
            && self.tokenizer.add_space_prefix
            && let Some(rest) = piece.strip_prefix(b" ")
        {
            piece = rest;
        }
        self.first = false;
        self.pending.extend_from_slice(piece);
        self.take_complete()
    }

    /// The rest at the end of the stream: an unfinished sequence becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        if let Some(hf) = &self.tokenizer.hf {
            let text = hf.decode(self.tokenizer, &self.ids, !self.unparse_special);
            let rest = match text.strip_prefix(self.prefix.as_str()) {
                Some(rest) => rest.to_string(),
                None if text.len() > self.prefix.len() => text,
                None => String::new(),
            };
            self.ids.clear();
            self.prefix.clear();
            self.prefix_index = 0;
            return rest;
        }
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut at = 0;
        loop {
            match std::str::from_utf8(&self.pending[at..]) {
                Ok(s) => {
                    out.push_str(s);
                    at = self.pending.len();
                    break;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // `good` bytes from `at` are valid UTF-8.
                    out.push_str(&String::from_utf8_lossy(&self.pending[at..at + good]));
                    at += good;
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => break,
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            at += bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..at);
        out
    }
}

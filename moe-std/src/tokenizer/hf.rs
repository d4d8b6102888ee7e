//! Tokenizers from a Hugging Face `tokenizer.json`, token for token the same as the
//! `tokenizers` library's `Tokenizer.encode` / `decode`.
//!
//! The pipeline is `tokenizers`' own, step by step: added tokens are found first
//! (leftmost-longest, as its Aho-Corasick matcher; those not `normalized` in the raw text,
//! the others in each normalized piece, with their `lstrip`/`rstrip`/`single_word`), each
//! other piece is normalized (`NFC`, `Prepend`, `Replace`, `Lowercase`, `Strip`,
//! `Sequence`),
//! pre-tokenized (`Metaspace`, `ByteLevel`, `Split` with a known expression — mapped onto
//! the hand-written matchers of [`Pre`] — or one the `regex` crate runs, `Sequence`), and
//! each word is merged by the `BPE` model: one symbol per character (byte fallback to
//! `<0xXX>` tokens, else the unknown token), then the pair of lowest merge rank, leftmost
//! first, until none is left (its `Word::merge_all`). The post-processor's
//! `TemplateProcessing` (single sequence), `RobertaProcessing`/`BertProcessing` or
//! `ByteLevel` gives the tokens added around the text. Decoding runs the decoder chain
//! (`ByteLevel`, `Replace`, `ByteFallback`, `Fuse`, `Strip`, `Metaspace`, `Sequence`) on the
//! tokens' texts, special tokens included.
//!
//! Refused with [`TokenizerError::UnknownModel`] / [`TokenizerError::Unsupported`]:
//! WordPiece, Unigram and WordLevel models, BPE dropout or subword prefixes/suffixes,
//! the normalization forms other than NFC (NFD, NFKC, NFKD), BERT and precompiled normalizers, other
//! pre-tokenizers and decoders, `Split` behaviours other than `Isolated`.

use std::collections::{BinaryHeap, HashMap};

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;

use super::{Model, Pre, Token, Tokenizer, TokenizerError, attr, bpe};

/// GPT-2's expression, as `ByteLevel` with `use_regex` runs it.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// The `Split` expressions with a hand-written matcher.
const KNOWN_SPLITS: &[(&str, Pre)] = &[
    (GPT2, Pre::Gpt2),
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        Pre::Llama3,
    ),
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        Pre::Qwen2,
    ),
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        Pre::Qwen35,
    ),
    (
        r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
        Pre::DeepseekV3,
    ),
];

#[derive(Debug, Clone)]
enum Norm {
    Prepend(String),
    Replace(Pattern, String),
    Lowercase,
    Strip { left: bool, right: bool },
    Nfc,
}

#[derive(Debug, Clone)]
enum Pattern {
    Literal(String),
    Regex(regex::Regex),
}

impl Pattern {
    fn replace(&self, text: &str, with: &str) -> String {
        match self {
            Pattern::Literal(p) if p.is_empty() => text.to_string(),
            Pattern::Literal(p) => text.replace(p.as_str(), with),
            Pattern::Regex(r) => r.replace_all(text, regex::NoExpand(with)).into_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Always,
    First,
    Never,
}

#[derive(Debug, Clone)]
enum Splitter {
    Custom(Pre),
    Regex(regex::Regex),
}

#[derive(Debug, Clone)]
enum PreTok {
    Metaspace {
        replacement: char,
        prepend: Scheme,
        split: bool,
    },
    ByteLevel {
        add_prefix_space: bool,
        use_regex: bool,
    },
    Split(Splitter),
}

#[derive(Debug, Clone)]
enum Dec {
    Replace(Pattern, String),
    ByteFallback,
    Fuse,
    Strip {
        content: char,
        start: usize,
        stop: usize,
    },
    ByteLevel,
    Metaspace {
        replacement: char,
        prepend: bool,
    },
}

#[derive(Debug, Clone)]
struct Added {
    id: u32,
    special: bool,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

/// A matcher over added tokens' texts, with the token of each pattern.
#[derive(Debug, Clone)]
struct Trie {
    matcher: AhoCorasick,
    tokens: Vec<Added>,
}

/// The `tokenizer.json` pipeline around the vocabulary held by [`Tokenizer`].
#[derive(Debug, Clone)]
pub(super) struct Hf {
    normalizers: Vec<Norm>,
    pre: Vec<PreTok>,
    /// The model's own vocabulary (added tokens are found before the model runs).
    vocab: HashMap<String, u32>,
    /// `(left, right)` → `(rank, merged)`; a pair listed twice keeps its last rank.
    merges: HashMap<(u32, u32), (u32, u32)>,
    byte_fallback: bool,
    unk: Option<u32>,
    fuse_unk: bool,
    ignore_merges: bool,
    raw: Option<Trie>,
    normalized: Option<Trie>,
    /// Ids the post-processor puts before and after the text.
    pub(super) prefix: Vec<u32>,
    pub(super) suffix: Vec<u32>,
    /// `None`: no decoder, tokens are joined with spaces.
    decoders: Option<Vec<Dec>>,
}

fn bad(what: impl Into<String>) -> TokenizerError {
    TokenizerError::Json(what.into())
}

fn unsupported(what: impl Into<String>) -> TokenizerError {
    TokenizerError::Unsupported(what.into())
}

fn get_bool(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn get_str<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn type_of(v: &Value) -> &str {
    get_str(v, "type").unwrap_or("")
}

fn one_char(s: &str, what: &str) -> Result<char, TokenizerError> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(bad(format!("{what} '{s}' is not one character"))),
    }
}

fn pattern(v: Option<&Value>) -> Result<Pattern, TokenizerError> {
    let v = v.ok_or_else(|| bad("a pattern is missing"))?;
    if let Some(s) = get_str(v, "String") {
        Ok(Pattern::Literal(s.to_string()))
    } else if let Some(r) = get_str(v, "Regex") {
        regex::Regex::new(r)
            .map(Pattern::Regex)
            .map_err(|_| TokenizerError::UnknownPre(r.to_string()))
    } else {
        Err(bad("a pattern is neither 'String' nor 'Regex'"))
    }
}

fn normalizers(v: &Value, out: &mut Vec<Norm>) -> Result<(), TokenizerError> {
    if v.is_null() {
        return Ok(());
    }
    match type_of(v) {
        "Sequence" => {
            for n in v
                .get("normalizers")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("normalizer Sequence without 'normalizers'"))?
            {
                normalizers(n, out)?;
            }
        }
        "Prepend" => out.push(Norm::Prepend(
            get_str(v, "prepend").unwrap_or("").to_string(),
        )),
        "Replace" => out.push(Norm::Replace(
            pattern(v.get("pattern"))?,
            get_str(v, "content").unwrap_or("").to_string(),
        )),
        "Lowercase" => out.push(Norm::Lowercase),
        "NFC" => out.push(Norm::Nfc),
        "Strip" => out.push(Norm::Strip {
            left: get_bool(v, "strip_left", true),
            right: get_bool(v, "strip_right", true),
        }),
        other => return Err(unsupported(format!("normalizer '{other}'"))),
    }
    Ok(())
}

fn scheme(v: &Value) -> Scheme {
    match get_str(v, "prepend_scheme") {
        Some("first") => Scheme::First,
        Some("never") => Scheme::Never,
        Some(_) => Scheme::Always,
        // Older files: `add_prefix_space`.
        None if get_bool(v, "add_prefix_space", true) => Scheme::Always,
        None => Scheme::Never,
    }
}

fn pre_tokenizers(v: &Value, out: &mut Vec<PreTok>) -> Result<(), TokenizerError> {
    if v.is_null() {
        return Ok(());
    }
    match type_of(v) {
        "Sequence" => {
            for p in v
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("pre-tokenizer Sequence without 'pretokenizers'"))?
            {
                pre_tokenizers(p, out)?;
            }
        }
        "Metaspace" => out.push(PreTok::Metaspace {
            replacement: one_char(
                get_str(v, "replacement").unwrap_or("\u{2581}"),
                "replacement",
            )?,
            prepend: scheme(v),
            split: get_bool(v, "split", true),
        }),
        "ByteLevel" => out.push(PreTok::ByteLevel {
            add_prefix_space: get_bool(v, "add_prefix_space", true),
            use_regex: get_bool(v, "use_regex", true),
        }),
        "Split" => {
            let behavior = get_str(v, "behavior").unwrap_or("");
            if behavior != "Isolated" || get_bool(v, "invert", false) {
                return Err(unsupported(format!(
                    "Split pre-tokenizer with behavior '{behavior}'{}",
                    if get_bool(v, "invert", false) {
                        " inverted"
                    } else {
                        ""
                    }
                )));
            }
            let p = v
                .get("pattern")
                .ok_or_else(|| bad("Split without 'pattern'"))?;
            let splitter = if let Some(s) = get_str(p, "String") {
                regex::Regex::new(&regex::escape(s))
                    .map(Splitter::Regex)
                    .map_err(|_| TokenizerError::UnknownPre(s.to_string()))?
            } else if let Some(r) = get_str(p, "Regex") {
                // Some files (DeepSeek-V3's) write the line breaks in the expression as
                // the characters themselves rather than `\r` / `\n`: the same expression.
                let escaped = r.replace('\r', "\\r").replace('\n', "\\n");
                match KNOWN_SPLITS.iter().find(|(known, _)| *known == escaped) {
                    Some(&(_, pre)) => Splitter::Custom(pre),
                    // Without look-around the `regex` crate finds the same matches as
                    // Oniguruma (leftmost, alternatives in order); with it, refused.
                    None => regex::Regex::new(r)
                        .map(Splitter::Regex)
                        .map_err(|_| TokenizerError::UnknownPre(r.to_string()))?,
                }
            } else {
                return Err(bad("Split pattern is neither 'String' nor 'Regex'"));
            };
            out.push(PreTok::Split(splitter));
        }
        other => return Err(unsupported(format!("pre-tokenizer '{other}'"))),
    }
    Ok(())
}

fn decoders(v: &Value, out: &mut Vec<Dec>) -> Result<(), TokenizerError> {
    match type_of(v) {
        "Sequence" => {
            for d in v
                .get("decoders")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("decoder Sequence without 'decoders'"))?
            {
                decoders(d, out)?;
            }
        }
        "Replace" => out.push(Dec::Replace(
            pattern(v.get("pattern"))?,
            get_str(v, "content").unwrap_or("").to_string(),
        )),
        "ByteFallback" => out.push(Dec::ByteFallback),
        "Fuse" => out.push(Dec::Fuse),
        "Strip" => out.push(Dec::Strip {
            content: one_char(get_str(v, "content").unwrap_or(" "), "Strip content")?,
            start: v.get("start").and_then(Value::as_u64).unwrap_or(0) as usize,
            stop: v.get("stop").and_then(Value::as_u64).unwrap_or(0) as usize,
        }),
        "ByteLevel" => out.push(Dec::ByteLevel),
        "Metaspace" => out.push(Dec::Metaspace {
            replacement: one_char(
                get_str(v, "replacement").unwrap_or("\u{2581}"),
                "replacement",
            )?,
            prepend: scheme(v) != Scheme::Never,
        }),
        other => return Err(unsupported(format!("decoder '{other}'"))),
    }
    Ok(())
}

/// The ids a post-processor adds before and after a single sequence.
fn post_processor(
    v: &Value,
    id_of: &dyn Fn(&str) -> Option<u32>,
    prefix: &mut Vec<u32>,
    suffix: &mut Vec<u32>,
) -> Result<(), TokenizerError> {
    if v.is_null() {
        return Ok(());
    }
    match type_of(v) {
        "Sequence" => {
            for p in v
                .get("processors")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("post-processor Sequence without 'processors'"))?
            {
                post_processor(p, id_of, prefix, suffix)?;
            }
        }
        "ByteLevel" => {}
        "TemplateProcessing" => {
            let single = v
                .get("single")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("TemplateProcessing without 'single'"))?;
            let specials = v.get("special_tokens");
            let mut seen_sequence = false;
            for piece in single {
                if piece.get("Sequence").is_some() {
                    seen_sequence = true;
                } else if let Some(name) = piece.get("SpecialToken").and_then(|s| get_str(s, "id"))
                {
                    let ids = specials
                        .and_then(|s| s.get(name))
                        .and_then(|s| s.get("ids"))
                        .and_then(Value::as_array)
                        .ok_or_else(|| bad(format!("special token '{name}' has no ids")))?;
                    let target = if seen_sequence {
                        &mut *suffix
                    } else {
                        &mut *prefix
                    };
                    for id in ids {
                        let id = id
                            .as_u64()
                            .and_then(|i| u32::try_from(i).ok())
                            .ok_or_else(|| bad(format!("special token '{name}' has a bad id")))?;
                        target.push(id);
                    }
                }
            }
        }
        kind @ ("RobertaProcessing" | "BertProcessing") => {
            let token = |key: &str| -> Result<u32, TokenizerError> {
                let pair = v.get(key).and_then(Value::as_array);
                let text = pair.and_then(|p| p.first()).and_then(Value::as_str);
                let id = pair.and_then(|p| p.get(1)).and_then(Value::as_u64);
                id.and_then(|i| u32::try_from(i).ok())
                    .or_else(|| text.and_then(id_of))
                    .ok_or_else(|| bad(format!("{kind} without '{key}'")))
            };
            prefix.push(token("cls")?);
            suffix.push(token("sep")?);
        }
        other => return Err(unsupported(format!("post-processor '{other}'"))),
    }
    Ok(())
}

fn as_id(v: &Value, what: &str) -> Result<u32, TokenizerError> {
    v.as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| bad(format!("{what}: not a token id")))
}

/// Builds the tokenizer of a `tokenizer.json`.
pub(super) fn from_json(json: &[u8]) -> Result<Tokenizer, TokenizerError> {
    let root: Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let model = root.get("model").ok_or(TokenizerError::Missing("model"))?;
    let kind = match get_str(model, "type") {
        Some(t) => t,
        // Older files leave the type out; a merge list says BPE.
        None if model.get("merges").is_some() => "BPE",
        None => "",
    };
    if kind != "BPE" {
        return Err(TokenizerError::UnknownModel(kind.to_string()));
    }
    if model.get("dropout").is_some_and(|d| !d.is_null()) {
        return Err(unsupported("BPE dropout"));
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if get_str(model, key).is_some_and(|s| !s.is_empty()) {
            return Err(unsupported(format!("BPE {key}")));
        }
    }
    let vocab_json = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or(TokenizerError::Missing("model.vocab"))?;
    let mut vocab = HashMap::with_capacity(vocab_json.len());
    for (text, id) in vocab_json {
        vocab.insert(text.clone(), as_id(id, text)?);
    }
    let added_json = match root.get("added_tokens") {
        None | Some(Value::Null) => &[][..],
        Some(v) => v
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| bad("'added_tokens' is not a list"))?,
    };
    struct AddedEntry {
        added: Added,
        content: String,
        normalized: bool,
    }
    let mut added = Vec::with_capacity(added_json.len());
    for a in added_json {
        let content = get_str(a, "content")
            .ok_or_else(|| bad("an added token without 'content'"))?
            .to_string();
        let id = as_id(a.get("id").unwrap_or(&Value::Null), &content)?;
        let special = get_bool(a, "special", false);
        added.push(AddedEntry {
            added: Added {
                id,
                special,
                lstrip: get_bool(a, "lstrip", false),
                rstrip: get_bool(a, "rstrip", false),
                single_word: get_bool(a, "single_word", false),
            },
            normalized: get_bool(a, "normalized", !special),
            content,
        });
    }

    // The id space: the model's vocabulary and the added tokens, holes named as llama.cpp
    // names empty tokens.
    let entries = vocab.len() + added.len();
    let max = vocab
        .values()
        .copied()
        .chain(added.iter().map(|a| a.added.id))
        .max();
    let n = max.map_or(0, |m| m as usize + 1);
    if n > 2 * entries + 1024 {
        return Err(TokenizerError::TooManyTokens(n));
    }
    let byte_fallback = get_bool(model, "byte_fallback", false);
    let mut tokens: Vec<Token> = (0..n)
        .map(|i| Token {
            text: format!("[EMPTY_{i}]").into_boxed_str(),
            score: 0.0,
            attr: attr::UNDEFINED,
        })
        .collect();
    for (text, &id) in &vocab {
        let is_byte = byte_fallback
            && text.len() == 6
            && text.starts_with("<0x")
            && text.ends_with('>')
            && u8::from_str_radix(&text[3..5], 16).is_ok();
        tokens[id as usize] = Token {
            text: text.clone().into_boxed_str(),
            score: 0.0,
            attr: if is_byte { attr::BYTE } else { attr::NORMAL },
        };
    }
    let mut ids: HashMap<Box<[u8]>, u32> = vocab
        .iter()
        .map(|(t, &id)| (t.as_bytes().to_vec().into_boxed_slice(), id))
        .collect();
    for a in &added {
        let token = &mut tokens[a.added.id as usize];
        token.text = a.content.clone().into_boxed_str();
        token.attr = if a.added.special {
            attr::CONTROL
        } else {
            attr::USER_DEFINED
        };
        ids.insert(a.content.as_bytes().to_vec().into_boxed_slice(), a.added.id);
    }
    let unk = get_str(model, "unk_token").and_then(|t| vocab.get(t).copied());
    if let Some(u) = unk {
        tokens[u as usize].attr |= attr::UNKNOWN;
    }

    let mut merges = HashMap::new();
    if let Some(list) = model.get("merges").and_then(Value::as_array) {
        merges.reserve(list.len());
        for (rank, m) in list.iter().enumerate() {
            let (a, b) = match m {
                Value::String(s) => {
                    let mut parts = s.split(' ');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some(a), Some(b), None) => (a, b),
                        _ => return Err(bad(format!("merge '{s}' is not two tokens"))),
                    }
                }
                Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                    (Some(a), Some(b)) => (a, b),
                    _ => return Err(bad("a merge pair is not two strings")),
                },
                _ => return Err(bad("a merge is neither a string nor a pair")),
            };
            let id = |t: &str| {
                vocab
                    .get(t)
                    .copied()
                    .ok_or_else(|| bad(format!("merge token '{t}' is not in the vocabulary")))
            };
            let merged = id(&format!("{a}{b}"))?;
            let rank = u32::try_from(rank).map_err(|_| TokenizerError::TooManyTokens(rank))?;
            merges.insert((id(a)?, id(b)?), (rank, merged));
        }
    }

    let mut norms = Vec::new();
    normalizers(root.get("normalizer").unwrap_or(&Value::Null), &mut norms)?;
    let mut pre = Vec::new();
    pre_tokenizers(root.get("pre_tokenizer").unwrap_or(&Value::Null), &mut pre)?;
    let decs = match root.get("decoder") {
        None | Some(Value::Null) => None,
        Some(d) => {
            let mut out = Vec::new();
            decoders(d, &mut out)?;
            Some(out)
        }
    };
    let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
    let id_of = |t: &str| ids.get(t.as_bytes()).copied();
    post_processor(
        root.get("post_processor").unwrap_or(&Value::Null),
        &id_of,
        &mut prefix,
        &mut suffix,
    )?;
    if prefix.iter().chain(&suffix).any(|&id| id as usize >= n) {
        return Err(bad(
            "the post-processor adds a token outside the vocabulary",
        ));
    }

    // Added tokens: those matched in the raw text, and those matched after normalizing
    // (their texts normalized too).
    let mut hf = Hf {
        normalizers: norms,
        pre,
        vocab,
        merges,
        byte_fallback,
        unk,
        fuse_unk: get_bool(model, "fuse_unk", false),
        ignore_merges: get_bool(model, "ignore_merges", false),
        raw: None,
        normalized: None,
        prefix,
        suffix,
        decoders: decs,
    };
    let (norm_added, raw_added): (Vec<AddedEntry>, Vec<AddedEntry>) =
        added.into_iter().partition(|a| a.normalized);
    let trie = |entries: Vec<AddedEntry>, hf: &Hf| -> Result<Option<Trie>, TokenizerError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let patterns: Vec<String> = entries
            .iter()
            .map(|a| {
                if a.normalized {
                    hf.normalize(&a.content)
                } else {
                    a.content.clone()
                }
            })
            .collect();
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .map_err(|e| bad(format!("added tokens: {e}")))?;
        Ok(Some(Trie {
            matcher,
            tokens: entries.into_iter().map(|a| a.added).collect(),
        }))
    };
    hf.raw = trie(raw_added, &hf)?;
    hf.normalized = trie(norm_added, &hf)?;

    let (bos, eos) = (hf.prefix.first().copied(), hf.suffix.last().copied());
    let add_bos = bos.is_some();
    let add_eos = eos.is_some();
    let specials = (0..n as u32)
        .filter(|&id| tokens[id as usize].attr & (attr::CONTROL | attr::USER_DEFINED) != 0)
        .collect();
    let mut tokenizer = Tokenizer {
        model: Model::HfBpe,
        tokens,
        ids,
        pieces: Vec::new(),
        specials,
        bos,
        eos,
        unk,
        end_of_generation: eos.into_iter().collect(),
        add_bos,
        add_eos,
        add_space_prefix: false,
        clean_spaces: false,
        bpe: None,
        hf: None,
    };
    tokenizer.pieces = (0..n)
        .map(|i| hf.piece(&tokenizer.tokens[i].text).into_boxed_slice())
        .collect();
    tokenizer.hf = Some(Box::new(hf));
    Ok(tokenizer)
}

/// `tokenizers`' whitespace test (`char::is_whitespace`).
fn space_leftmost_at_end(s: &str) -> usize {
    s.char_indices()
        .rev()
        .find(|(_, c)| !c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8())
}

fn space_rightmost_at_start(s: &str) -> usize {
    s.char_indices()
        .find(|(_, c)| !c.is_whitespace())
        .map_or(s.len(), |(i, _)| i)
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A piece of text: an added token, or text with whether it starts the input.
enum Piece<'t> {
    Token(u32),
    Text(&'t str, usize),
}

struct Merge {
    pos: usize,
    rank: u32,
    new_id: u32,
}

impl PartialEq for Merge {
    fn eq(&self, other: &Self) -> bool {
        self.rank == other.rank && self.pos == other.pos
    }
}
impl Eq for Merge {}
impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Merge {
    /// The heap's maximum is merged next: the lowest rank, then the leftmost.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.pos.cmp(&self.pos))
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    len: usize,
}

impl Hf {
    fn normalize(&self, text: &str) -> String {
        let mut s = text.to_string();
        for n in &self.normalizers {
            s = match n {
                Norm::Prepend(p) if !s.is_empty() => format!("{p}{s}"),
                Norm::Prepend(_) => s,
                Norm::Replace(p, with) => p.replace(&s, with),
                Norm::Lowercase => s.to_lowercase(),
                Norm::Nfc => super::nfc::nfc(&s),
                Norm::Strip { left, right } => {
                    let mut t = s.as_str();
                    if *left {
                        t = t.trim_start();
                    }
                    if *right {
                        t = t.trim_end();
                    }
                    t.to_string()
                }
            };
        }
        s
    }

    /// `tokenizers`' `AddedVocabulary::find_matches`: pieces of `text` (starting at
    /// `offset` in the input) and the added tokens found in it.
    fn find_matches<'t>(
        trie: Option<&Trie>,
        text: &'t str,
        offset: usize,
        parse_special: bool,
        out: &mut Vec<Piece<'t>>,
    ) {
        let Some(trie) = trie else {
            if !text.is_empty() {
                out.push(Piece::Text(text, offset));
            }
            return;
        };
        let mut start_offset = 0;
        for m in trie.matcher.find_iter(text) {
            let (mut start, mut stop) = (m.start(), m.end());
            let token = &trie.tokens[m.pattern().as_usize()];
            if !parse_special && token.special {
                continue;
            }
            if token.single_word {
                let start_space =
                    start == 0 || !text[..start].chars().next_back().is_some_and(is_word_char);
                let stop_space =
                    stop == text.len() || !text[stop..].chars().next().is_some_and(is_word_char);
                if !start_space || !stop_space {
                    continue;
                }
            }
            if token.lstrip {
                start = space_leftmost_at_end(&text[..start]).max(start_offset);
            }
            if token.rstrip {
                stop += space_rightmost_at_start(&text[stop..]);
            }
            if start_offset < start {
                out.push(Piece::Text(
                    &text[start_offset..start],
                    offset + start_offset,
                ));
            }
            out.push(Piece::Token(token.id));
            start_offset = stop;
        }
        if start_offset < text.len() {
            out.push(Piece::Text(&text[start_offset..], offset + start_offset));
        }
    }

    /// `Tokenizer.encode(text, add_special_tokens = add_special)`; without
    /// `parse_special` special added tokens are text (`encode_special_tokens`).
    pub(super) fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut output = Vec::new();
        if add_special {
            output.extend_from_slice(&self.prefix);
        }
        let mut pieces = Vec::new();
        Self::find_matches(self.raw.as_ref(), text, 0, parse_special, &mut pieces);
        for piece in pieces {
            match piece {
                Piece::Token(id) => output.push(id),
                Piece::Text(t, offset) => {
                    let normalized = self.normalize(t);
                    let mut inner = Vec::new();
                    Self::find_matches(
                        self.normalized.as_ref(),
                        &normalized,
                        offset,
                        parse_special,
                        &mut inner,
                    );
                    for p in inner {
                        match p {
                            Piece::Token(id) => output.push(id),
                            Piece::Text(t, at) => self.tokenize(t, at == 0, &mut output),
                        }
                    }
                }
            }
        }
        if add_special {
            output.extend_from_slice(&self.suffix);
        }
        output
    }

    /// Pre-tokenizes normalized text and merges each word.
    fn tokenize(&self, text: &str, at_start: bool, output: &mut Vec<u32>) {
        let mut words: Vec<(String, bool)> = vec![(text.to_string(), at_start)];
        for step in &self.pre {
            let mut next = Vec::with_capacity(words.len());
            for (word, first) in words {
                match step {
                    PreTok::Metaspace {
                        replacement,
                        prepend,
                        split,
                    } => {
                        let mut w = word.replace(' ', &replacement.to_string());
                        let add = match prepend {
                            Scheme::Always => true,
                            Scheme::First => first,
                            Scheme::Never => false,
                        };
                        if add && !w.is_empty() && !w.starts_with(*replacement) {
                            w.insert(0, *replacement);
                        }
                        if *split {
                            // Split before each replacement character (merged with next).
                            let mut start = 0;
                            for (i, c) in w.char_indices() {
                                if c == *replacement && i > start {
                                    next.push((w[start..i].to_string(), first && start == 0));
                                    start = i;
                                }
                            }
                            if start < w.len() {
                                next.push((w[start..].to_string(), first && start == 0));
                            }
                        } else if !w.is_empty() {
                            next.push((w, first));
                        }
                    }
                    PreTok::ByteLevel {
                        add_prefix_space,
                        use_regex,
                    } => {
                        let mut w = word;
                        if *add_prefix_space && !w.starts_with(' ') {
                            w.insert(0, ' ');
                        }
                        let parts = if *use_regex {
                            split(&Splitter::Custom(Pre::Gpt2), &w)
                        } else {
                            vec![(0, w.len())]
                        };
                        for (s, e) in parts {
                            let mapped: String = w[s..e].bytes().map(bpe::byte_to_char).collect();
                            next.push((mapped, first && s == 0));
                        }
                    }
                    PreTok::Split(splitter) => {
                        for (s, e) in split(splitter, &word) {
                            next.push((word[s..e].to_string(), first && s == 0));
                        }
                    }
                }
            }
            words = next;
        }
        for (word, _) in words {
            self.merge_word(&word, output);
        }
    }

    /// `tokenizers`' `BPE::tokenize` of one word.
    fn merge_word(&self, w: &str, output: &mut Vec<u32>) {
        if w.is_empty() {
            return;
        }
        if self.ignore_merges
            && let Some(&id) = self.vocab.get(w)
        {
            output.push(id);
            return;
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(w.len());
        let push = |symbols: &mut Vec<Symbol>, id: u32, len: usize| {
            let index = symbols.len();
            if let Some(last) = symbols.last_mut() {
                last.next = Some(index);
            }
            symbols.push(Symbol {
                id,
                prev: index.checked_sub(1),
                next: None,
                len,
            });
        };
        let mut unk: Option<(u32, usize)> = None;
        let mut buf = [0u8; 4];
        for c in w.chars() {
            let s: &str = c.encode_utf8(&mut buf);
            if let Some(&id) = self.vocab.get(s) {
                if let Some((u, len)) = unk.take() {
                    push(&mut symbols, u, len);
                }
                push(&mut symbols, id, s.len());
                continue;
            }
            if self.byte_fallback {
                let bytes: Option<Vec<u32>> = s
                    .bytes()
                    .map(|b| self.vocab.get(&format!("<0x{b:02X}>")).copied())
                    .collect();
                if let Some(bytes) = bytes {
                    for id in bytes {
                        push(&mut symbols, id, 1);
                    }
                    continue;
                }
            }
            if let Some(u) = self.unk {
                unk = match unk {
                    Some((_, len)) if self.fuse_unk => Some((u, len + s.len())),
                    Some((prev, len)) => {
                        push(&mut symbols, prev, len);
                        Some((u, s.len()))
                    }
                    None => Some((u, s.len())),
                };
            }
        }
        if let Some((u, len)) = unk {
            push(&mut symbols, u, len);
        }

        let mut queue: BinaryHeap<Merge> = symbols
            .windows(2)
            .enumerate()
            .filter_map(|(pos, pair)| {
                let &(rank, new_id) = self.merges.get(&(pair[0].id, pair[1].id))?;
                Some(Merge { pos, rank, new_id })
            })
            .collect();
        while let Some(top) = queue.pop() {
            let cur = symbols[top.pos];
            if cur.len == 0 {
                continue;
            }
            let Some(next_pos) = cur.next else {
                continue;
            };
            let right = symbols[next_pos];
            if self
                .merges
                .get(&(cur.id, right.id))
                .is_none_or(|&(_, id)| id != top.new_id)
            {
                continue;
            }
            symbols[top.pos].id = top.new_id;
            symbols[top.pos].len += right.len;
            symbols[top.pos].next = right.next;
            symbols[next_pos].len = 0;
            if let Some(n) = right.next {
                symbols[n].prev = Some(top.pos);
            }
            let cur = symbols[top.pos];
            if let Some(p) = cur.prev
                && let Some(&(rank, new_id)) = self.merges.get(&(symbols[p].id, cur.id))
            {
                queue.push(Merge {
                    pos: p,
                    rank,
                    new_id,
                });
            }
            if let Some(n) = cur.next
                && let Some(&(rank, new_id)) = self.merges.get(&(cur.id, symbols[n].id))
            {
                queue.push(Merge {
                    pos: top.pos,
                    rank,
                    new_id,
                });
            }
        }
        output.extend(symbols.iter().filter(|s| s.len > 0).map(|s| s.id));
    }

    /// `Tokenizer.decode(ids, skip_special_tokens = skip_special)`.
    pub(super) fn decode(&self, vocab: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
        let tokens: Vec<String> = ids
            .iter()
            .filter_map(|&id| vocab.tokens.get(id as usize))
            // A hole in the id space has no text.
            .filter(|t| t.attr != attr::UNDEFINED)
            .filter(|t| !(skip_special && t.attr & attr::CONTROL != 0))
            .map(|t| t.text.to_string())
            .collect();
        let Some(decoders) = &self.decoders else {
            return tokens.join(" ");
        };
        let mut tokens = tokens;
        for d in decoders {
            tokens = decode_step(d, tokens);
        }
        tokens.concat()
    }

    /// One token's bytes for display: the decoders without the ones that look at
    /// neighbours (`Strip`, `Fuse`), a byte token as its byte.
    fn piece(&self, text: &str) -> Vec<u8> {
        let mut s = text.to_string();
        for d in self.decoders.iter().flatten() {
            match d {
                Dec::Replace(p, with) => s = p.replace(&s, with),
                Dec::ByteFallback => {
                    if let Some(b) = byte_token(&s) {
                        return vec![b];
                    }
                }
                Dec::ByteLevel => {
                    return s
                        .chars()
                        .map(bpe::char_to_byte)
                        .collect::<Option<Vec<u8>>>()
                        .unwrap_or_else(|| s.into_bytes());
                }
                Dec::Metaspace { replacement, .. } => {
                    s = s.replace(*replacement, " ");
                }
                Dec::Fuse | Dec::Strip { .. } => {}
            }
        }
        s.into_bytes()
    }
}

fn byte_token(s: &str) -> Option<u8> {
    (s.len() == 6 && s.starts_with("<0x") && s.ends_with('>'))
        .then(|| u8::from_str_radix(&s[3..5], 16).ok())
        .flatten()
}

/// One decoder of the chain, as `tokenizers`' `decode_chain`.
fn decode_step(d: &Dec, tokens: Vec<String>) -> Vec<String> {
    match d {
        Dec::Replace(p, with) => tokens.into_iter().map(|t| p.replace(&t, with)).collect(),
        Dec::ByteFallback => {
            let mut out = Vec::with_capacity(tokens.len());
            let mut bytes = Vec::new();
            let flush = |bytes: &mut Vec<u8>, out: &mut Vec<String>| {
                if bytes.is_empty() {
                    return;
                }
                match String::from_utf8(std::mem::take(bytes)) {
                    Ok(s) => out.push(s),
                    Err(e) => {
                        let n = e.as_bytes().len();
                        out.extend(std::iter::repeat_n("\u{FFFD}".to_string(), n));
                    }
                }
            };
            for t in tokens {
                match byte_token(&t) {
                    Some(b) => bytes.push(b),
                    None => {
                        flush(&mut bytes, &mut out);
                        out.push(t);
                    }
                }
            }
            flush(&mut bytes, &mut out);
            out
        }
        Dec::Fuse => vec![tokens.concat()],
        &Dec::Strip {
            content,
            start,
            stop,
        } => tokens
            .into_iter()
            .map(|t| {
                let chars: Vec<char> = t.chars().collect();
                let mut start_cut = 0;
                for (i, &c) in chars.iter().enumerate().take(start) {
                    if c != content {
                        break;
                    }
                    start_cut = i + 1;
                }
                let mut stop_cut = chars.len();
                for i in 0..stop.min(chars.len()) {
                    let index = chars.len() - i - 1;
                    if chars[index] != content {
                        break;
                    }
                    stop_cut = index;
                }
                chars[start_cut.min(stop_cut)..stop_cut].iter().collect()
            })
            .collect(),
        Dec::ByteLevel => {
            let mut bytes = Vec::new();
            for t in &tokens {
                match t
                    .chars()
                    .map(bpe::char_to_byte)
                    .collect::<Option<Vec<u8>>>()
                {
                    Some(b) => bytes.extend(b),
                    None => bytes.extend_from_slice(t.as_bytes()),
                }
            }
            vec![String::from_utf8_lossy(&bytes).into_owned()]
        }
        &Dec::Metaspace {
            replacement,
            prepend,
        } => tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                t.chars()
                    .filter_map(|c| {
                        if c == replacement {
                            (!(i == 0 && prepend)).then_some(' ')
                        } else {
                            Some(c)
                        }
                    })
                    .collect()
            })
            .collect(),
    }
}

/// Splits `text` into `(start, end)` byte ranges: every match and every stretch between
/// matches (`Isolated`).
fn split(splitter: &Splitter, text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    match splitter {
        Splitter::Custom(pre) => {
            let cpts: Vec<char> = text.chars().collect();
            let (mut byte, mut at) = (0, 0);
            for len in bpe::split_lengths(*pre, &cpts) {
                let n: usize = cpts
                    .get(at..at + len)
                    .unwrap_or(&[])
                    .iter()
                    .map(|c| c.len_utf8())
                    .sum();
                out.push((byte, byte + n));
                byte += n;
                at += len;
            }
        }
        Splitter::Regex(re) => {
            let mut last = 0;
            for m in re.find_iter(text) {
                if m.start() > last {
                    out.push((last, m.start()));
                }
                if m.end() > m.start() {
                    out.push((m.start(), m.end()));
                }
                last = m.end();
            }
            if last < text.len() {
                out.push((last, text.len()));
            }
        }
    }
    out
}

//! The `gpt2` tokenizer: byte-level BPE, llama.cpp's `llm_tokenizer_bpe_session`.
//!
//! Text is first split into words by the model family's pre-tokenizer (llama.cpp's
//! hand-written matchers for the GPT-2, Llama 3, Qwen2 and Qwen3.5 regular expressions in
//! `unicode.cpp`, its other expressions through the `regex` crate, DeepSeek-V3's
//! look-ahead one by hand), each word's bytes are mapped to GPT-2's printable characters, and then
//! adjacent symbols are merged by the rank of their pair in `tokenizer.ggml.merges`
//! (lowest rank first, then leftmost).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::OnceLock;

use super::Tokenizer;

/// The pre-tokenizer (`tokenizer.ggml.pre`), by the regular expression it implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pre {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    /// (`gpt-2`, `phi-2`, `mpt`, `olmo`).
    Gpt2,
    /// Llama 3's expression, digits in groups of up to three (`llama-bpe`, `llama3`, …).
    Llama3,
    /// Llama 3's expression with single digits (`qwen2`, `deepseek-r1-qwen`, …).
    Qwen2,
    /// Qwen2's with combining marks (`\p{M}`) counted as letters (`qwen35`).
    Qwen35,
    /// Six expressions in turn: line breaks, Latin/Greek/Cyrillic/… letters, punctuation,
    /// trailing spaces, CJK, digits (`deepseek-llm`).
    DeepseekLlm,
    /// Line breaks, letters, punctuation, CJK, single digits (`deepseek-coder`).
    DeepseekCoder,
    /// Single digits, then GPT-2's expression (`starcoder`, `refact`).
    Starcoder,
    /// StarCoder's, without the decoding's space clean-up (`command-r`).
    CommandR,
    /// Punctuation runs, GPT-2's expression, then three-digit groups (`falcon`).
    Falcon,
    /// Digits in threes, CJK runs, then letters/marks, punctuation and space runs
    /// (`deepseek-v3`).
    DeepseekV3,
}

impl Pre {
    /// The pre-tokenizer llama.cpp uses for `name`, if it is one of those implemented.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gpt-2" | "phi-2" | "mpt" | "olmo" => Pre::Gpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => Pre::Llama3,
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" => Pre::Qwen2,
            "qwen35" => Pre::Qwen35,
            "deepseek-llm" => Pre::DeepseekLlm,
            "deepseek-coder" => Pre::DeepseekCoder,
            "starcoder" | "refact" => Pre::Starcoder,
            "command-r" => Pre::CommandR,
            "falcon" => Pre::Falcon,
            "deepseek-v3" => Pre::DeepseekV3,
            _ => return None,
        })
    }
}

/// llama.cpp's expressions for the pre-tokenizers it runs through `std::regex` (category
/// classes on its own tables, `\s` as Unicode white space: what the `regex` crate's
/// Unicode classes give, none of these needing look-around).
const DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟\u{3000}-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-\u{d7ff}]+",
    "\\p{N}+",
];
const DEEPSEEK_CODER: &[&str] = &[
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[一-龥ࠀ-一가-\u{d7ff}]+",
    "\\p{N}",
];
const FALCON_PUNCT: &str = "[\\p{P}\\$\\+<=>\\^~\\|`]+";

/// One pass of a pre-tokenizer over every word found so far.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// One of llama.cpp's hand-written matchers.
    Custom(Pre),
    /// A regular expression: each match and each stretch between matches is a word.
    Regex(regex::Regex),
}

impl Pre {
    /// The passes llama.cpp makes for this pre-tokenizer.
    pub(super) fn steps(self) -> Vec<Step> {
        // Category classes cut to llama.cpp's Unicode version, inside brackets or not.
        let regex = |p: &str| {
            let p = ["L", "N", "P", "S", "M"]
                .iter()
                .fold(p.to_string(), |p, cat| {
                    p.replace(
                        &format!("\\p{{{cat}}}"),
                        &format!("[\\p{{{cat}}}&&{UNICODE_AGE}]"),
                    )
                });
            regex::Regex::new(&p).ok().map(Step::Regex)
        };
        match self {
            Pre::Gpt2 | Pre::Llama3 | Pre::Qwen2 | Pre::Qwen35 => vec![Step::Custom(self)],
            Pre::DeepseekLlm => DEEPSEEK_LLM.iter().filter_map(|p| regex(p)).collect(),
            Pre::DeepseekCoder => DEEPSEEK_CODER.iter().filter_map(|p| regex(p)).collect(),
            Pre::Starcoder | Pre::CommandR => regex(r"\p{N}")
                .into_iter()
                .chain([Step::Custom(Pre::Gpt2)])
                .collect(),
            // The third expression,
            // `[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|
            // ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`, needs look-ahead: matched by hand.
            Pre::DeepseekV3 => regex(r"\p{N}{1,3}")
                .into_iter()
                .chain(regex(
                    "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
                ))
                .chain([Step::Custom(Pre::DeepseekV3)])
                .collect(),
            Pre::Falcon => regex(FALCON_PUNCT)
                .into_iter()
                .chain([Step::Custom(Pre::Gpt2)])
                .chain(regex("[0-9][0-9][0-9]"))
                .collect(),
        }
    }
}

/// Splits `text` into words by `steps`, each applied inside the words of the one before
/// (llama.cpp's `unicode_regex_split`).
fn split_words<'t>(steps: &[Step], text: &'t str) -> Vec<&'t str> {
    let mut words = vec![text];
    for step in steps {
        let mut next = Vec::with_capacity(words.len());
        for word in words {
            match step {
                Step::Custom(pre) => {
                    let cpts: Vec<char> = word.chars().collect();
                    let (mut byte, mut at) = (0, 0);
                    for len in split(*pre, &cpts) {
                        let n: usize = cpts
                            .get(at..at + len)
                            .unwrap_or(&[])
                            .iter()
                            .map(|c| c.len_utf8())
                            .sum();
                        next.push(word.get(byte..byte + n).unwrap_or(""));
                        byte += n;
                        at += len;
                    }
                }
                Step::Regex(re) => {
                    // llama.cpp matches with non-ASCII white space replaced by U+000B (its
                    // `\s` fallback), so e.g. U+3000 no longer matches a class naming it.
                    let mut mapped = String::with_capacity(word.len());
                    let mut original = Vec::with_capacity(word.len() + 1);
                    for (at, c) in word.char_indices() {
                        let m = if !c.is_ascii() && c.is_whitespace() {
                            '\u{b}'
                        } else {
                            c
                        };
                        original.extend(std::iter::repeat_n(at, m.len_utf8()));
                        mapped.push(m);
                    }
                    original.push(word.len());
                    let back = |i: usize| original.get(i).copied().unwrap_or(word.len());
                    let mut last = 0;
                    for m in re.find_iter(&mapped) {
                        let (start, end) = (back(m.start()), back(m.end()));
                        if start > last {
                            next.push(word.get(last..start).unwrap_or(""));
                        }
                        next.push(word.get(start..end).unwrap_or(""));
                        last = end;
                    }
                    if last < word.len() {
                        next.push(word.get(last..).unwrap_or(""));
                    }
                }
            }
        }
        words = next;
    }
    words
}

/// The merge table and the word splitter.
#[derive(Debug, Clone)]
pub(super) struct Bpe {
    pub(super) steps: Vec<Step>,
    /// `"left right"` → rank; a pair listed twice keeps its first rank, as in llama.cpp.
    pub(super) ranks: HashMap<Box<[u8]>, u32>,
    /// A word that is a token is taken whole, without merging (Llama 3).
    pub(super) ignore_merges: bool,
}

/// llama.cpp's code point tables are generated from Unicode 15.1: a code point assigned
/// later is "undefined" there, in no category. Every class we use is cut to that age.
const UNICODE_AGE: &str = r"\p{Age=V15_1}";

/// `pattern` (a `\p{…}` class) as of [`UNICODE_AGE`], as sorted code point ranges from
/// regex-syntax's tables.
fn class(pattern: &str) -> Vec<(u32, u32)> {
    match regex_syntax::Parser::new()
        .parse(&format!("[{pattern}&&{UNICODE_AGE}]"))
        .map(|h| h.into_kind())
    {
        Ok(regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class))) => class
            .ranges()
            .iter()
            .map(|r| (u32::from(r.start()), u32::from(r.end())))
            .collect(),
        // Cannot happen with the constant patterns below.
        _ => Vec::new(),
    }
}

fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let c = u32::from(c);
    let i = table.partition_point(|&(_, end)| end < c);
    table.get(i).is_some_and(|&(start, _)| start <= c)
}

/// `\p{L}`.
fn is_letter(c: char) -> bool {
    static LETTERS: OnceLock<Vec<(u32, u32)>> = OnceLock::new();
    in_table(LETTERS.get_or_init(|| class(r"\p{L}")), c)
}

/// `\p{N}`.
fn is_number(c: char) -> bool {
    static NUMBERS: OnceLock<Vec<(u32, u32)>> = OnceLock::new();
    in_table(NUMBERS.get_or_init(|| class(r"\p{N}")), c)
}

/// `\p{M}`.
fn is_mark(c: char) -> bool {
    static MARKS: OnceLock<Vec<(u32, u32)>> = OnceLock::new();
    in_table(MARKS.get_or_init(|| class(r"\p{M}")), c)
}

/// llama.cpp's code point flags, for the three classes the matchers look at. Outside the
/// word (`None`), every flag is clear, including "defined".
#[derive(Clone, Copy, Default)]
struct Flags {
    defined: bool,
    letter: bool,
    mark: bool,
    number: bool,
    whitespace: bool,
}

fn flags(c: Option<char>) -> Flags {
    match c {
        None => Flags::default(),
        Some(c) => Flags {
            defined: true,
            letter: is_letter(c),
            mark: is_mark(c),
            // `\s` is exactly Rust's `is_whitespace` (White_Space, unchanged for years).
            number: is_number(c),
            whitespace: c.is_whitespace(),
        },
    }
}

/// `\p{P}`.
fn is_punct(c: char) -> bool {
    static P: OnceLock<Vec<(u32, u32)>> = OnceLock::new();
    in_table(P.get_or_init(|| class(r"\p{P}")), c)
}

/// `\p{S}`.
fn is_symbol(c: char) -> bool {
    static S: OnceLock<Vec<(u32, u32)>> = OnceLock::new();
    in_table(S.get_or_init(|| class(r"\p{S}")), c)
}

/// DeepSeek-V3's third expression as `std::regex` runs it: the leftmost match from each
/// position (alternatives in order, with the backtracking they imply); the text between
/// two matches is one word.
fn split_deepseek_v3(cpts: &[char]) -> Vec<usize> {
    let at = |i: usize| cpts.get(i).copied();
    let lm = |c: Option<char>| c.is_some_and(|c| is_letter(c) || is_mark(c));
    let ps = |c: Option<char>| c.is_some_and(|c| is_punct(c) || is_symbol(c));
    let rn = |c: Option<char>| matches!(c, Some('\r' | '\n'));
    let ws = |c: Option<char>| c.is_some_and(char::is_whitespace);
    let run = |mut i: usize, f: &dyn Fn(Option<char>) -> bool| {
        while f(at(i)) {
            i += 1;
        }
        i
    };
    // The end of a match starting at `pos`, if one does.
    let match_at = |pos: usize| -> Option<usize> {
        let c = at(pos);
        // `[ASCII punctuation][A-Za-z]+`
        if c.is_some_and(|c| c.is_ascii_punctuation())
            && at(pos + 1).is_some_and(|c| c.is_ascii_alphabetic())
        {
            return Some(run(pos + 1, &|c| {
                c.is_some_and(|c| c.is_ascii_alphabetic())
            }));
        }
        // `[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+`
        let optional = c.is_some_and(|ch| !rn(c) && !is_letter(ch) && !ps(c));
        if optional && lm(at(pos + 1)) {
            return Some(run(pos + 1, &lm));
        }
        if lm(c) {
            return Some(run(pos, &lm));
        }
        // ` ?[\p{P}\p{S}]+[\r\n]*`
        let start = if c == Some(' ') && ps(at(pos + 1)) {
            pos + 1
        } else {
            pos
        };
        if ps(at(start)) {
            return Some(run(run(start, &ps), &rn));
        }
        // `\s*[\r\n]+`: up to the last line break of the white-space run.
        let end = run(pos, &ws);
        if let Some(last) = (pos..end).rev().find(|&i| rn(at(i))) {
            return Some(last + 1);
        }
        // `\s+(?!\S)` then `\s+`
        if end > pos {
            return Some(if end < cpts.len() && end - pos > 1 {
                end - 1
            } else {
                end
            });
        }
        None
    };
    let mut words = Vec::new();
    let (mut pos, mut gap) = (0, 0);
    while pos < cpts.len() {
        match match_at(pos) {
            Some(end) if end > pos => {
                if pos > gap {
                    words.push(pos - gap);
                }
                words.push(end - pos);
                pos = end;
                gap = end;
            }
            _ => pos += 1,
        }
    }
    if cpts.len() > gap {
        words.push(cpts.len() - gap);
    }
    words
}

/// Splits `cpts` into word lengths (in code points) as the hand-written matcher of `pre`
/// does (for Hugging Face `Split` expressions too).
pub(super) fn split_lengths(pre: Pre, cpts: &[char]) -> Vec<usize> {
    split(pre, cpts)
}

/// Splits `cpts` into word lengths (in code points) as llama.cpp's custom matchers do.
fn split(pre: Pre, cpts: &[char]) -> Vec<usize> {
    if pre == Pre::DeepseekV3 {
        return split_deepseek_v3(cpts);
    }
    let end = cpts.len();
    let cpt = |pos: usize| cpts.get(pos).copied();
    let fl = |pos: usize| flags(cpt(pos));
    let mut words = Vec::new();
    let mut prev_end = 0;
    let mut add = |to: usize, words: &mut Vec<usize>| -> usize {
        let len = to.saturating_sub(prev_end);
        if len > 0 {
            words.push(len);
        }
        prev_end = to;
        len
    };
    let lower = |c: Option<char>| c.map(|c| c.to_lowercase().next().unwrap_or(c));
    let is_rn = |c: Option<char>| matches!(c, Some('\r' | '\n'));
    // What a letter run takes: `\p{L}`, or `[\p{L}\p{M}]` for Qwen3.5.
    let wordy = |f: Flags| f.letter || (pre == Pre::Qwen35 && f.mark);
    let mut pos = 0;
    while pos < end {
        let c = cpt(pos);
        let f = fl(pos);
        // Contractions: 's 't 're 've 'm 'll 'd (case-insensitive except for GPT-2).
        if c == Some('\'') && pos + 1 < end {
            let fold = |c: Option<char>| if pre == Pre::Gpt2 { c } else { lower(c) };
            let next = fold(cpt(pos + 1));
            if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                pos += add(pos + 2, &mut words);
                continue;
            }
            if pos + 2 < end {
                let next2 = fold(cpt(pos + 2));
                if matches!(
                    (next, next2),
                    (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
                ) {
                    pos += add(pos + 3, &mut words);
                    continue;
                }
            }
        }
        match pre {
            Pre::Gpt2 => {
                let mut f2 = if c == Some(' ') { fl(pos + 1) } else { f };
                let space = usize::from(c == Some(' '));
                // ` ?\p{L}+`
                if f2.letter {
                    pos += space;
                    while f2.letter {
                        pos += 1;
                        f2 = fl(pos);
                    }
                    add(pos, &mut words);
                    continue;
                }
                // ` ?\p{N}+`
                if f2.number {
                    pos += space;
                    while f2.number {
                        pos += 1;
                        f2 = fl(pos);
                    }
                    add(pos, &mut words);
                    continue;
                }
                // ` ?[^\s\p{L}\p{N}]+`
                if !(f2.whitespace || f2.letter || f2.number) && f2.defined {
                    pos += space;
                    while !(f2.whitespace || f2.letter || f2.number) && f2.defined {
                        pos += 1;
                        f2 = fl(pos);
                    }
                    add(pos, &mut words);
                    continue;
                }
            }
            _ => {
                // `[^\r\n\p{L}\p{N}]?\p{L}+`
                if !(is_rn(c) || f.number) && (wordy(f) || wordy(fl(pos + 1))) {
                    pos += 1;
                    while wordy(fl(pos)) {
                        pos += 1;
                    }
                    add(pos, &mut words);
                    continue;
                }
                // `\p{N}{1,3}` (Llama 3) or `\p{N}` (Qwen2)
                if f.number {
                    if pre != Pre::Llama3 {
                        pos += 1;
                    } else {
                        let mut start = pos;
                        while fl(pos).number {
                            pos += 1;
                            if pos - start >= 3 {
                                add(pos, &mut words);
                                start = pos;
                            }
                        }
                    }
                    add(pos, &mut words);
                    continue;
                }
                // ` ?[^\s\p{L}\p{N}]+[\r\n]*` (llama.cpp tests the first code point's
                // "defined" flag here, not the one after the space)
                let mut f2 = if c == Some(' ') { fl(pos + 1) } else { f };
                if !(f2.whitespace || wordy(f2) || f2.number) && f.defined {
                    pos += usize::from(c == Some(' '));
                    while !(f2.whitespace || wordy(f2) || f2.number) && f2.defined {
                        pos += 1;
                        f2 = fl(pos);
                    }
                    while is_rn(cpt(pos)) {
                        pos += 1;
                    }
                    add(pos, &mut words);
                    continue;
                }
            }
        }
        let mut spaces = 0;
        let mut last_rn_end = 0;
        while fl(pos + spaces).whitespace {
            if pre != Pre::Gpt2 && is_rn(cpt(pos + spaces)) {
                last_rn_end = pos + spaces + 1;
            }
            spaces += 1;
        }
        // `\s*[\r\n]+`
        if last_rn_end > 0 {
            pos = last_rn_end;
            add(pos, &mut words);
            continue;
        }
        // `\s+(?!\S)`: a run of spaces before a non-space leaves the last one to it.
        if spaces > 1 && cpt(pos + spaces).is_some() {
            pos += spaces - 1;
            add(pos, &mut words);
            continue;
        }
        // `\s+`
        if spaces > 0 {
            pos += spaces;
            add(pos, &mut words);
            continue;
        }
        pos += 1;
        add(pos, &mut words);
    }
    words
}

/// GPT-2's byte → printable character map: printable Latin-1 bytes stand for themselves,
/// the other 68 bytes for U+0100 onwards in byte order.
pub(super) fn byte_to_char(byte: u8) -> char {
    static MAP: OnceLock<[char; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = ['\0'; 256];
        let mut extra = 0u32;
        for (b, slot) in map.iter_mut().enumerate() {
            let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
            let code = if printable {
                b as u32
            } else {
                extra += 1;
                255 + extra
            };
            *slot = char::from_u32(code).unwrap_or('\0');
        }
        map
    })[usize::from(byte)]
}

/// The inverse of [`byte_to_char`].
pub(super) fn char_to_byte(c: char) -> Option<u8> {
    static MAP: OnceLock<HashMap<char, u8>> = OnceLock::new();
    MAP.get_or_init(|| (0..=255u8).map(|b| (byte_to_char(b), b)).collect())
        .get(&c)
        .copied()
}

struct Bigram {
    left: usize,
    right: usize,
    rank: u32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The heap's maximum is merged next: the lowest rank, then the leftmost.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Appends the tokens of raw text `text` to `output`.
pub(super) fn tokenize(vocab: &Tokenizer, bpe: &Bpe, text: &str, output: &mut Vec<u32>) {
    let mut word = String::new();
    for raw in split_words(&bpe.steps, text) {
        word.clear();
        word.extend(raw.bytes().map(byte_to_char));
        tokenize_word(vocab, bpe, word.as_bytes(), output);
    }
}

fn tokenize_word(vocab: &Tokenizer, bpe: &Bpe, word: &[u8], output: &mut Vec<u32>) {
    if bpe.ignore_merges
        && let Some(id) = vocab.token_id(word)
    {
        output.push(id);
        return;
    }
    let mut symbols = Vec::new();
    let mut offset = 0;
    while offset < word.len() {
        let len = super::spm::utf8_len(word[offset]).min(word.len() - offset);
        let index = symbols.len();
        symbols.push(Symbol {
            start: offset,
            len,
            prev: index.checked_sub(1),
            next: (offset + len < word.len()).then_some(index + 1),
        });
        offset += len;
    }
    let bytes = |s: Symbol| word.get(s.start..s.start + s.len).unwrap_or(&[]);
    let mut queue = BinaryHeap::new();
    let mut key = Vec::new();
    let mut add = |symbols: &[Symbol], queue: &mut BinaryHeap<Bigram>, l: Option<usize>, r| {
        let (Some(left), Some(right)) = (l, r) else {
            return;
        };
        let (ls, rs): (Symbol, Symbol) = (symbols[left], symbols[right]);
        key.clear();
        key.extend_from_slice(bytes(ls));
        key.push(b' ');
        key.extend_from_slice(bytes(rs));
        if let Some(&rank) = bpe.ranks.get(key.as_slice()) {
            queue.push(Bigram {
                left,
                right,
                rank,
                size: ls.len + rs.len,
            });
        }
    };
    for i in 1..symbols.len() {
        add(&symbols, &mut queue, Some(i - 1), Some(i));
    }
    while let Some(bigram) = queue.pop() {
        let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
        // Outdated if either side changed since it was queued: the left symbol's start is
        // fixed and the right follows it, so equal total length means equal text.
        if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
            continue;
        }
        symbols[bigram.left].len += r.len;
        symbols[bigram.right].len = 0;
        symbols[bigram.left].next = r.next;
        if let Some(next) = r.next {
            symbols[next].prev = Some(bigram.left);
        }
        add(&symbols, &mut queue, l.prev, Some(bigram.left));
        add(&symbols, &mut queue, Some(bigram.left), r.next);
    }
    for s in symbols.iter().filter(|s| s.len > 0) {
        let text = bytes(*s);
        match vocab.token_id(text) {
            Some(id) => output.push(id),
            // llama.cpp looks each byte of the (byte-encoded) text up as a one-byte token.
            None => output.extend(text.iter().filter_map(|&b| vocab.token_id(&[b]))),
        }
    }
}

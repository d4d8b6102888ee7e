//! The `llama` (SentencePiece-style) tokenizer: llama.cpp's `llm_tokenizer_spm_session`.
//!
//! The text (spaces already replaced by `▁`) starts as one symbol per UTF-8 character.
//! Every adjacent pair whose concatenation is a token is queued with that token's score;
//! the best pair (highest score, then leftmost) is merged, its new neighbours are queued,
//! and so on until no queued pair is still valid. Each final symbol is then a token, or
//! falls back to one `<0xXX>` token per byte.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Tokenizer;

/// A symbol: a byte range of the text, linked to its neighbours. `len == 0` once merged
/// into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of symbols `left` and its right neighbour `right`, valid only while
/// both still have the lengths they had when it was queued (`size` in total).
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
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
    /// The heap's maximum is the pair to merge next: the higher score, and among equal
    /// scores the leftmost (llama.cpp's `llm_bigram_spm::comparator`).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// UTF-8 sequence length from a lead byte (llama.cpp's `unicode_len_utf8`).
pub(super) fn utf8_len(byte: u8) -> usize {
    const LOOKUP: [usize; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
    LOOKUP[usize::from(byte >> 4)]
}

struct Session<'a> {
    vocab: &'a Tokenizer,
    text: &'a [u8],
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

impl Session<'_> {
    fn bytes(&self, start: usize, len: usize) -> &[u8] {
        self.text.get(start..start + len).unwrap_or(&[])
    }

    fn try_add_bigram(&mut self, left: Option<usize>, right: Option<usize>) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (l, r) = (self.symbols[left], self.symbols[right]);
        let size = l.len + r.len;
        let Some(id) = self.vocab.token_id(self.bytes(l.start, size)) else {
            return;
        };
        self.queue.push(Bigram {
            left,
            right,
            score: self.vocab.score(id),
            size,
        });
    }

    /// Appends the tokens of a final symbol. llama.cpp would split a symbol that is not a
    /// token back into the pair it was merged from, but a merge only happens when the
    /// merged text is a token, so only unmerged characters reach the byte fallback.
    fn emit(&self, symbol: Symbol, output: &mut Vec<u32>) {
        let text = self.bytes(symbol.start, symbol.len);
        match self.vocab.token_id(text) {
            Some(id) => output.push(id),
            None => output.extend(text.iter().filter_map(|&b| self.vocab.byte_token(b))),
        }
    }
}

/// Appends the tokens of `text` (spaces already escaped as `▁`) to `output`.
pub(super) fn tokenize(vocab: &Tokenizer, text: &[u8], output: &mut Vec<u32>) {
    let mut symbols = Vec::new();
    let mut offset = 0;
    while offset < text.len() {
        let len = utf8_len(text[offset]).min(text.len() - offset);
        let index = symbols.len();
        symbols.push(Symbol {
            start: offset,
            len,
            prev: index.checked_sub(1),
            next: (offset + len < text.len()).then_some(index + 1),
        });
        offset += len;
    }
    let mut session = Session {
        vocab,
        text,
        symbols,
        queue: BinaryHeap::new(),
    };
    for i in 1..session.symbols.len() {
        session.try_add_bigram(Some(i - 1), Some(i));
    }
    while let Some(bigram) = session.queue.pop() {
        let (l, r) = (session.symbols[bigram.left], session.symbols[bigram.right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
            continue;
        }
        session.symbols[bigram.left].len += r.len;
        session.symbols[bigram.right].len = 0;
        session.symbols[bigram.left].next = r.next;
        if let Some(next) = r.next {
            session.symbols[next].prev = Some(bigram.left);
        }
        session.try_add_bigram(l.prev, Some(bigram.left));
        session.try_add_bigram(Some(bigram.left), r.next);
    }
    let mut at = if session.symbols.is_empty() {
        None
    } else {
        Some(0)
    };
    while let Some(i) = at {
        let symbol = session.symbols[i];
        session.emit(symbol, output);
        at = symbol.next;
    }
}

//! Unicode Normalization Form C (the `NFC` normalizer of a `tokenizer.json`): full
//! canonical decomposition, canonical ordering of combining marks, then canonical
//! composition (UAX #15), with Hangul syllables composed and decomposed by formula. The
//! tables (`nfc_tables.rs`) are generated from Python's unicodedata by
//! `tests/fixtures/hf-tokenizer/make_nfc.py`.

#[rustfmt::skip]
mod tables {
    include!("nfc_tables.rs");
}

use tables::{CCC, COMPOSE, DECOMP, DECOMP_DATA};

const S_BASE: u32 = 0xAC00;
const L_BASE: u32 = 0x1100;
const V_BASE: u32 = 0x1161;
const T_BASE: u32 = 0x11A7;
const L_COUNT: u32 = 19;
const V_COUNT: u32 = 21;
const T_COUNT: u32 = 28;
const N_COUNT: u32 = V_COUNT * T_COUNT;
const S_COUNT: u32 = L_COUNT * N_COUNT;

fn ccc(c: u32) -> u8 {
    CCC.binary_search_by_key(&c, |&(cp, _)| cp)
        .map_or(0, |i| CCC[i].1)
}

fn decompose(c: char, out: &mut Vec<u32>) {
    let c = u32::from(c);
    if (S_BASE..S_BASE + S_COUNT).contains(&c) {
        let s = c - S_BASE;
        out.push(L_BASE + s / N_COUNT);
        out.push(V_BASE + (s % N_COUNT) / T_COUNT);
        if !s.is_multiple_of(T_COUNT) {
            out.push(T_BASE + s % T_COUNT);
        }
        return;
    }
    match DECOMP.binary_search_by_key(&c, |&(cp, _, _)| cp) {
        Ok(i) => {
            let (_, start, len) = DECOMP[i];
            let (start, len) = (usize::from(start), usize::from(len));
            out.extend_from_slice(DECOMP_DATA.get(start..start + len).unwrap_or(&[]));
        }
        Err(_) => out.push(c),
    }
}

fn compose(a: u32, b: u32) -> Option<u32> {
    if (L_BASE..L_BASE + L_COUNT).contains(&a) && (V_BASE..V_BASE + V_COUNT).contains(&b) {
        return Some(S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT);
    }
    if (S_BASE..S_BASE + S_COUNT).contains(&a)
        && (a - S_BASE).is_multiple_of(T_COUNT)
        && (T_BASE + 1..T_BASE + T_COUNT).contains(&b)
    {
        return Some(a + (b - T_BASE));
    }
    COMPOSE
        .binary_search_by(|&(x, y, _)| (x, y).cmp(&(a, b)))
        .ok()
        .map(|i| COMPOSE[i].2)
}

/// `text` in Unicode Normalization Form C, as the `NFC` normalizer of a `tokenizer.json`
/// gives it.
pub fn nfc(text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    let mut d: Vec<u32> = Vec::with_capacity(text.len());
    for c in text.chars() {
        decompose(c, &mut d);
    }
    // Canonical ordering: a stable sort of each run of nonzero classes.
    let mut i = 0;
    while i < d.len() {
        if ccc(d[i]) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < d.len() && ccc(d[i]) != 0 {
            i += 1;
        }
        d[start..i].sort_by_key(|&c| ccc(c));
    }
    // Composition (UAX #15's sample algorithm).
    if d.is_empty() {
        return String::new();
    }
    let mut starter = 0;
    let mut last_class = match ccc(d[0]) {
        0 => 0,
        _ => 256,
    };
    let mut out_len = 1;
    for pos in 1..d.len() {
        let ch = d[pos];
        let class = u16::from(ccc(ch));
        let composite = compose(d[starter], ch);
        match composite {
            Some(c) if last_class < class || last_class == 0 => d[starter] = c,
            _ => {
                if class == 0 {
                    starter = out_len;
                }
                last_class = class;
                d[out_len] = ch;
                out_len += 1;
            }
        }
    }
    d[..out_len]
        .iter()
        .filter_map(|&c| char::from_u32(c))
        .collect()
}

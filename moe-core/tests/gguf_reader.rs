//! Reading valid files: long arrays, look-ups after them, zero-copy views.

mod common;

use common::*;
use moe_core::gguf::{File, ValueType};

#[test]
fn long_string_arrays_read_back_and_keys_after_them_are_found() {
    const N: usize = 5000;
    let mut words = Vec::new();
    for i in 0..N {
        words.extend(string(format!("tok{i}").as_bytes()));
    }
    let mut merges = Vec::new();
    for i in 0..N {
        merges.extend(string(format!("a{i} b{i}").as_bytes()));
    }
    let mut g = Gguf::new();
    g.kvs.push(kv(
        "tokenizer.ggml.tokens",
        ARRAY,
        &array(STRING, N as u64, &words),
    ));
    g.kvs.push(kv_u32("after.tokens", 1));
    g.kvs.push(kv(
        "tokenizer.ggml.merges",
        ARRAY,
        &array(STRING, N as u64, &merges),
    ));
    g.kvs.push(kv_u32("after.merges", 2));
    let bytes = g.build();
    let file = File::parse(&bytes).unwrap();
    for _ in 0..2 {
        assert_eq!(file.get("after.tokens").and_then(|v| v.as_u64()), Some(1));
        assert_eq!(file.get("after.merges").and_then(|v| v.as_u64()), Some(2));
        let tokens = file
            .get("tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap();
        assert_eq!(tokens.elem_type(), ValueType::String);
        assert_eq!(tokens.len(), N);
        assert_eq!(tokens.get(4321).and_then(|v| v.as_str()), Some("tok4321"));
        assert_eq!(
            tokens.iter().last().and_then(|v| v.as_str()),
            Some("tok4999")
        );
        let merges = file
            .get("tokenizer.ggml.merges")
            .unwrap()
            .as_array()
            .unwrap();
        assert_eq!(merges.iter().count(), N);
        assert_eq!(merges.get(0).and_then(|v| v.as_str()), Some("a0 b0"));
    }
    let keys: Vec<_> = file.metadata().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "tokenizer.ggml.tokens",
            "after.tokens",
            "tokenizer.ggml.merges",
            "after.merges"
        ]
    );
}

#[test]
fn tensor_views_borrow_rows_in_place() {
    let mut g = valid();
    for (i, b) in g.data.iter_mut().enumerate() {
        *b = i as u8;
    }
    let bytes = g.build();
    let file = File::parse(&bytes).unwrap();
    let q = file.tensor("q").unwrap();
    assert_eq!(q.view.dims(), &[32, 2]);
    assert_eq!(
        (q.view.row_len(), q.view.n_rows(), q.view.row_bytes()),
        (32, 2, 34)
    );
    let start = file.data_offset();
    assert_eq!(q.view.row(1).unwrap(), &bytes[start + 34..start + 68]);
    assert_eq!(q.view.row(2), None);
    let f = file.tensor("f").unwrap();
    assert_eq!((f.offset, f.view.n_elements()), (96, 8));
    assert_eq!(f.view.data(), &bytes[start + 96..start + 128]);
}

#[test]
fn no_tensors_needs_no_data_section() {
    let mut g = Gguf::new();
    g.kvs.push(kv_str("general.architecture", "none"));
    let head = g.head();
    let file = File::parse(&head).unwrap();
    assert_eq!(file.tensor_count(), 0);
    assert_eq!(file.tensors().count(), 0);
    assert_eq!(file.architecture(), Some("none"));
}

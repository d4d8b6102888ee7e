//! Parses arbitrary bytes as GGUF. When parsing succeeds, walks everything the file claims
//! to hold — every metadata value including nested array elements, every tensor, and the
//! first row of each tensor through `dequantize_row` — so an accessor that trusts
//! something `parse` did not check shows up as a panic or an out-of-bounds read.
//!
//! A few cross-checks between accessors are asserted too; they hold for every file that
//! parses, so a failure is a bug in the reader.
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use moe_core::gguf::{File, Value};

/// Longest row that gets dequantized (longer rows are skipped to keep each run fast and
/// small; the row length itself comes from the input).
const MAX_ROW: u64 = 1 << 16;

/// How many keys / tensors are also looked up by name (each look-up is a linear scan).
const MAX_LOOKUPS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = File::parse(data) else {
        return;
    };
    black_box((file.version(), file.alignment(), file.architecture()));
    assert!(file.data_offset() <= data.len());

    for (i, (key, value)) in file.metadata().enumerate() {
        black_box(key.len());
        walk(&value, 0);
        if i < MAX_LOOKUPS {
            let found = file.get(key).expect("every key can be looked up");
            assert_eq!(found.value_type(), value.value_type());
        }
    }

    let mut row = Vec::new();
    for (i, tensor) in file.tensors().enumerate() {
        let view = tensor.view;
        let bytes = view.ty().bytes_for(view.n_elements());
        assert_eq!(bytes, Some(view.data().len() as u64));
        if i < MAX_LOOKUPS {
            let found = file
                .tensor(tensor.name)
                .expect("every tensor can be looked up");
            assert_eq!(found.offset, tensor.offset);
        }
        if view.ty().can_dequantize() && view.row_len() <= MAX_ROW {
            if let Some(src) = view.row(0) {
                row.clear();
                row.resize(view.row_len() as usize, 0.0f32);
                let decoded = moe_core::quant::dequantize_row(view.ty(), src, &mut row);
                assert!(
                    decoded.is_ok(),
                    "a validated row of a decodable type decodes"
                );
                black_box(&row);
            }
        }
    }
});

/// Reads every part of a value, recursing into arrays (nesting is bounded by the parser).
fn walk(value: &Value<'_>, depth: usize) {
    assert!(depth <= moe_core::gguf::MAX_ARRAY_NESTING);
    match value {
        Value::String(s) => {
            black_box(s.len());
        }
        Value::Array(array) => {
            black_box(array.elem_type().name());
            let mut n = 0;
            for element in array.iter() {
                assert_eq!(element.value_type(), array.elem_type());
                walk(&element, depth + 1);
                n += 1;
            }
            assert_eq!(n, array.len());
        }
        other => {
            black_box(other.value_type().name());
            black_box(other);
        }
    }
}

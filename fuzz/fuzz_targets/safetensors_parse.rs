//! Parses arbitrary bytes as a safetensors file (`moe_std::safetensors::parse`). When
//! parsing succeeds, every tensor's bytes must lie inside the input, match its shape and
//! dtype, and not overlap another's; each is then turned into a `TensorView` (which may
//! refuse it with an error, never a panic) and its first row decoded.
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use moe_core::quant::dequantize_row;
use moe_std::safetensors::parse;

/// Longest row that gets decoded.
const MAX_ROW: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Ok(tensors) = parse(data) else {
        return;
    };
    let input = data.as_ptr_range();
    let mut ranges = Vec::new();
    for t in &tensors {
        let bytes = t.data.as_ptr_range();
        assert!(input.start <= bytes.start && bytes.end <= input.end);
        let elements = t.shape.iter().product::<u64>();
        assert_eq!(t.data.len() as u64, elements * t.dtype.size());
        if !t.data.is_empty() {
            ranges.push((bytes.start as usize, bytes.end as usize));
        }
        let Ok(view) = t.view() else {
            continue;
        };
        assert_eq!(view.data().len(), t.data.len());
        if view.row_len() <= MAX_ROW {
            if let Some(row) = view.row(0) {
                let mut out = vec![0.0f32; view.row_len() as usize];
                black_box(dequantize_row(view.ty(), row, &mut out).is_ok());
            }
        }
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping tensors");
    }
});

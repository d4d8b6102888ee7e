//! Bit-exact agreement with the fixtures `fixtures/generate.py` wrote: gguf-py 0.19's
//! dequantizer for every decodable weight type in `types.gguf`, gguf-py's quantizers
//! for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, and the fixture script's ports of ggml's reference
//! Q8_1/Q8_K quantizers. Floats are compared by bits, so NaN and -0 count.

use moe_core::gguf::File;
use moe_core::{TensorType, quant};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(bytes.len() % 4, 0);
    let (chunks, _) = bytes.as_chunks::<4>();
    chunks.iter().map(|&b| f32::from_le_bytes(b)).collect()
}

/// Asserts `got` and `want` are equal bit for bit, naming the first difference.
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i} is {g:e} ({:#010x}), gguf-py gives {w:e} ({:#010x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

const TYPES: [&str; 15] = [
    "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k",
    "q6_k", "iq4_nl", "iq4_xs",
];

#[test]
fn dequantize_matches_gguf_py_on_every_type() {
    let bytes = fixture("types.gguf");
    let file = File::parse(&bytes).expect("types.gguf parses");
    for name in TYPES {
        let info = file
            .tensor(name)
            .unwrap_or_else(|| panic!("no tensor {name}"));
        let view = info.view;
        let ty = TensorType::from_name(name).unwrap();
        assert_eq!(view.ty(), ty, "{name}");
        assert_eq!(view.dims(), &[512, 3], "{name}");
        let want = f32s(&fixture(&format!("types/{name}.f32")));

        // The whole tensor at once (rows are whole blocks, so this is one long row) …
        let mut got = vec![0.0f32; want.len()];
        quant::dequantize_row(ty, view.data(), &mut got).unwrap();
        assert_same_bits(name, &got, &want);

        // … and row by row, as a matmul reads it.
        for r in 0..view.n_rows() {
            let row = view.row(r).unwrap();
            let mut got = vec![0.0f32; 512];
            quant::dequantize_row(ty, row, &mut got).unwrap();
            let start = r as usize * 512;
            assert_same_bits(&format!("{name} row {r}"), &got, &want[start..start + 512]);
        }
    }
}

const QUANTIZED: [&str; 7] = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "q8_k"];

#[test]
fn quantize_matches_the_reference_quantizers() {
    for name in QUANTIZED {
        let ty = TensorType::from_name(name).unwrap();
        let input = f32s(&fixture(&format!("quantize/{name}.input.f32")));
        let expected = fixture(&format!("quantize/{name}.expected"));

        let mut got = vec![0u8; expected.len()];
        quant::quantize_row(ty, &input, &mut got).unwrap();
        let block_bytes = ty.block_bytes();
        for (b, (g, w)) in got
            .chunks(block_bytes)
            .zip(expected.chunks(block_bytes))
            .enumerate()
        {
            assert_eq!(g, w, "{name}: block {b}");
        }
    }
}

#[test]
fn dequantize_matches_the_fixture_dequantization() {
    for name in QUANTIZED {
        let ty = TensorType::from_name(name).unwrap();
        let expected = fixture(&format!("quantize/{name}.expected"));
        let want = f32s(&fixture(&format!("quantize/{name}.dequant.f32")));
        let mut got = vec![0.0f32; want.len()];
        quant::dequantize_row(ty, &expected, &mut got).unwrap();
        assert_same_bits(name, &got, &want);
    }
}

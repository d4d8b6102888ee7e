//! The reader against gguf-py: every fixture written by `fixtures/generate.py` must read
//! back exactly as gguf-py's `GGUFReader` read it (the `*.inspect.json` files).

use moe_core::gguf::{File, Value, ValueType};
use moe_core::{Error, TensorType};
use serde_json::Value as Json;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn expected(name: &str) -> Json {
    serde_json::from_slice(&fixture(&format!("{name}.inspect.json"))).unwrap()
}

/// Compares one value with gguf-py's view of it: `ty` is the type name (or, for the
/// elements of a nested array, a list of element types), `bits` the raw float bits.
fn check_value(key: &str, value: Value<'_>, expect: &Json, bits: Option<&Json>) {
    match value {
        Value::F32(v) => assert_eq!(
            Some(v.to_bits() as u64),
            bits.and_then(Json::as_u64),
            "{key}"
        ),
        Value::F64(v) => assert_eq!(Some(v.to_bits()), bits.and_then(Json::as_u64), "{key}"),
        Value::Bool(v) => assert_eq!(Some(v), expect.as_bool(), "{key}"),
        Value::String(v) => assert_eq!(Some(v), expect.as_str(), "{key}"),
        Value::Array(array) => {
            let items = expect
                .as_array()
                .unwrap_or_else(|| panic!("{key}: expected array"));
            assert_eq!(array.len(), items.len(), "{key}: length");
            for (i, (elem, item)) in array.iter().zip(items).enumerate() {
                let elem_bits = bits.and_then(|b| b.get(i));
                check_value(&format!("{key}[{i}]"), elem, item, elem_bits);
            }
        }
        other => {
            let want = expect
                .as_i64()
                .map(i128::from)
                .or(expect.as_u64().map(i128::from));
            let got = other
                .as_i64()
                .map(i128::from)
                .or(other.as_u64().map(i128::from));
            assert_eq!(got, want, "{key}");
        }
    }
}

/// Compares an array's element-type description (`"UINT32"`, or one entry per element
/// for arrays of arrays) with ours.
fn check_elem_type(key: &str, value: Value<'_>, expect: &Json) {
    let Value::Array(array) = value else { return };
    if array.elem_type() == ValueType::Array {
        let inner = expect
            .as_array()
            .unwrap_or_else(|| panic!("{key}: nested elem types"));
        assert_eq!(inner.len(), array.len(), "{key}");
        for (elem, ty) in array.iter().zip(inner) {
            check_elem_type(key, elem, ty);
        }
    } else {
        assert_eq!(
            Some(array.elem_type().name()),
            expect.as_str(),
            "{key}: element type"
        );
    }
}

fn check_file(name: &str) {
    let bytes = fixture(&format!("{name}.gguf"));
    let file = File::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let want = expected(name);
    assert_eq!(file.version() as u64, want["version"].as_u64().unwrap());
    assert_eq!(file.alignment(), want["alignment"].as_u64().unwrap());
    assert_eq!(
        file.data_offset() as u64,
        want["data_offset"].as_u64().unwrap()
    );

    let metadata = want["metadata"].as_array().unwrap();
    assert_eq!(file.metadata_count(), metadata.len());
    assert_eq!(file.metadata().count(), metadata.len());
    for ((key, value), expect) in file.metadata().zip(metadata) {
        assert_eq!(key, expect["key"].as_str().unwrap());
        assert_eq!(
            value.value_type().name(),
            expect["type"].as_str().unwrap(),
            "{key}"
        );
        if let Some(elem_type) = expect.get("elem_type") {
            check_elem_type(key, value, elem_type);
        }
        check_value(key, value, &expect["value"], expect.get("bits"));
        assert_eq!(file.get(key), Some(value), "look-up of {key}");
    }

    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(file.tensor_count(), tensors.len());
    assert_eq!(file.tensors().count(), tensors.len());
    for (tensor, expect) in file.tensors().zip(tensors) {
        let shape: Vec<u64> = expect["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(tensor.name, expect["name"].as_str().unwrap());
        assert_eq!(
            tensor.view.ty().name(),
            expect["type"].as_str().unwrap(),
            "{}",
            tensor.name
        );
        assert_eq!(tensor.view.dims(), &shape[..], "{}", tensor.name);
        assert_eq!(
            tensor.offset,
            expect["offset"].as_u64().unwrap(),
            "{}",
            tensor.name
        );
        assert_eq!(
            tensor.view.data().len() as u64,
            expect["n_bytes"].as_u64().unwrap(),
            "{}",
            tensor.name
        );
        let start = file.data_offset() + tensor.offset as usize;
        assert!(
            std::ptr::eq(tensor.view.data().as_ptr(), bytes[start..].as_ptr()),
            "zero-copy"
        );
        assert_eq!(file.tensor(tensor.name), Some(tensor));
        if let Some(data_bits) = expect.get("data_bits").and_then(Json::as_array) {
            let want: Vec<u64> = data_bits.iter().map(|b| b.as_u64().unwrap()).collect();
            let got: Vec<u64> = match tensor.view.ty() {
                TensorType::F32 => tensor
                    .view
                    .data()
                    .chunks(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as u64)
                    .collect(),
                TensorType::F16 => tensor
                    .view
                    .data()
                    .chunks(2)
                    .map(|c| u16::from_le_bytes(c.try_into().unwrap()) as u64)
                    .collect(),
                _ => continue,
            };
            assert_eq!(got, want, "{}", tensor.name);
        }
    }
    assert_eq!(file.tensor("no such tensor"), None);
    assert_eq!(file.get("no.such.key"), None);
}

#[test]
fn model_matches_gguf_py() {
    check_file("model");
    let bytes = fixture("model.gguf");
    let file = File::parse(&bytes).unwrap();
    assert_eq!(file.architecture(), Some("llama"));
    assert_eq!(
        file.get("llama.expert_count").and_then(|v| v.as_u64()),
        Some(8)
    );
}

#[test]
fn nested_arrays_match_gguf_py() {
    check_file("metadata");
}

#[test]
fn version_2_matches_gguf_py() {
    check_file("v2");
}

#[test]
fn types_match_gguf_py() {
    check_file("types");
}

#[test]
fn big_endian_file_is_refused() {
    assert_eq!(
        File::parse(&fixture("bigendian.gguf")).unwrap_err(),
        Error::BigEndian
    );
}

//! Arbitrary bytes and mutations of valid files never make the reader panic, and whatever
//! it accepts can be walked completely.

use moe_core::gguf::{File, Value};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Touches every value, array element and tensor byte range of an accepted file.
fn walk(bytes: &[u8]) {
    let Ok(file) = File::parse(bytes) else { return };
    fn visit(value: Value<'_>, depth: usize) {
        if let Value::Array(array) = value {
            assert!(depth <= moe_core::gguf::MAX_ARRAY_NESTING);
            assert_eq!(array.iter().count(), array.len());
            for elem in array.iter() {
                visit(elem, depth + 1);
            }
            let _ = array.get(array.len().saturating_sub(1));
        }
    }
    let mut pairs = 0;
    for (key, value) in file.metadata() {
        visit(value, 0);
        assert!(file.get(key).is_some());
        pairs += 1;
    }
    assert_eq!(pairs, file.metadata_count());
    let mut tensors = 0;
    for tensor in file.tensors() {
        let data = tensor.view.data();
        let start = data.as_ptr() as usize - bytes.as_ptr() as usize;
        assert!(start + data.len() <= bytes.len());
        assert_eq!(start, file.data_offset() + tensor.offset as usize);
        let _ = tensor.view.row(0);
        let _ = tensor.view.row(tensor.view.n_rows());
        tensors += 1;
    }
    assert_eq!(tensors, file.tensor_count());
}

fn fixtures() -> Vec<Vec<u8>> {
    ["model.gguf", "metadata.gguf", "v2.gguf", "types.gguf"]
        .iter()
        .map(|f| fixture(f))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        walk(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_header_never_panic(
        tensors in 0u64..4, kvs in 0u64..4, body in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        let mut bytes = b"GGUF\x03\0\0\0".to_vec();
        bytes.extend_from_slice(&tensors.to_le_bytes());
        bytes.extend_from_slice(&kvs.to_le_bytes());
        bytes.extend_from_slice(&body);
        walk(&bytes);
    }

    #[test]
    fn single_byte_mutations_never_panic(which in 0usize..4, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = fixtures().swap_remove(which);
        // Most of each file is tensor data; aim at the header, metadata and tensor table.
        let head = File::parse(&bytes).unwrap().data_offset();
        let at = at.index(head);
        bytes[at] = byte;
        walk(&bytes);
    }

    #[test]
    fn multi_byte_mutations_never_panic(
        which in 0usize..4,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = fixtures().swap_remove(which);
        let head = File::parse(&bytes).unwrap().data_offset();
        for (at, byte) in edits {
            bytes[at.index(head)] = byte;
        }
        walk(&bytes);
    }

    #[test]
    fn truncation_is_always_an_error(which in 0usize..4, cut in any::<prop::sample::Index>()) {
        let bytes = fixtures().swap_remove(which);
        let file = File::parse(&bytes).unwrap();
        let needed = file.tensors().map(|t| file.data_offset() + t.offset as usize + t.view.data().len()).max().unwrap_or(0);
        let cut = cut.index(needed);
        prop_assert!(File::parse(&bytes[..cut]).is_err());
    }
}

//! A corpus of hand-made malformed files: each must give its own specific, typed error.

mod common;

use common::*;
use moe_core::gguf::File;
use moe_core::{Error, Section};

fn parse(bytes: &[u8]) -> Result<File<'_>, Error> {
    File::parse(bytes)
}

/// Replaces bytes at `at` with `with`.
fn patch(mut bytes: Vec<u8>, at: usize, with: &[u8]) -> Vec<u8> {
    bytes[at..at + with.len()].copy_from_slice(with);
    bytes
}

/// Offset of the first metadata pair / of the tensor-info section in `valid()`.
const KV_START: usize = 24;
fn tensors_start(g: &Gguf) -> usize {
    KV_START + g.kvs.iter().map(Vec::len).sum::<usize>()
}

#[test]
fn the_base_file_is_valid() {
    let bytes = valid().build();
    let file = parse(&bytes).unwrap();
    assert_eq!(file.tensor_count(), 2);
    assert_eq!(file.metadata_count(), 3);
    let tokens: Vec<_> = file
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(tokens.len(), 3);
    assert_eq!(tokens[2].as_str(), Some("déf"));
}

#[test]
fn header_errors() {
    assert_eq!(
        parse(&[]).unwrap_err(),
        Error::Truncated {
            section: Section::Header,
            offset: 0
        }
    );
    assert_eq!(
        parse(b"GGU").unwrap_err(),
        Error::Truncated {
            section: Section::Header,
            offset: 0
        }
    );
    assert_eq!(
        parse(b"GGML\x03\0\0\0").unwrap_err(),
        Error::BadMagic { found: *b"GGML" }
    );
    let bytes = valid().build();
    assert_eq!(
        parse(&bytes[..6]).unwrap_err(),
        Error::Truncated {
            section: Section::Header,
            offset: 4
        }
    );
    assert_eq!(
        parse(&bytes[..20]).unwrap_err(),
        Error::Truncated {
            section: Section::Header,
            offset: 16
        }
    );
    for version in [0u32, 1, 4, 0xffff_ffff] {
        let bad = patch(bytes.clone(), 4, &version.to_le_bytes());
        assert_eq!(
            parse(&bad).unwrap_err(),
            Error::UnsupportedVersion { version },
            "version {version}"
        );
    }
    let swapped = patch(bytes.clone(), 4, &3u32.to_be_bytes());
    assert_eq!(parse(&swapped).unwrap_err(), Error::BigEndian);
    let mut v2 = valid();
    v2.version = 2;
    assert_eq!(parse(&v2.build()).unwrap().version(), 2);
}

#[test]
fn counts_larger_than_the_file() {
    let bytes = valid().build();
    let huge = (1u64 << 62).to_le_bytes();
    let bad = patch(bytes.clone(), 8, &huge);
    assert_eq!(
        parse(&bad).unwrap_err(),
        Error::CountTooLarge {
            section: Section::Header,
            offset: 8,
            count: 1 << 62
        }
    );
    let bad = patch(bytes.clone(), 16, &huge);
    assert_eq!(
        parse(&bad).unwrap_err(),
        Error::CountTooLarge {
            section: Section::Header,
            offset: 16,
            count: 1 << 62
        }
    );
    // A lying key length.
    let bad = patch(bytes.clone(), KV_START, &u64::MAX.to_le_bytes());
    assert_eq!(
        parse(&bad).unwrap_err(),
        Error::CountTooLarge {
            section: Section::Metadata,
            offset: KV_START,
            count: u64::MAX
        }
    );
    // A lying string value length.
    let mut g = Gguf::new();
    g.kvs.push(kv("s", STRING, &(1u64 << 40).to_le_bytes()));
    assert!(
        matches!(parse(&g.build()).unwrap_err(), Error::CountTooLarge { section: Section::Metadata, count, .. } if count == 1 << 40)
    );
    // 2^62 u64 elements.
    let mut g = Gguf::new();
    g.kvs.push(kv("a", ARRAY, &array(U64, 1 << 62, &[0; 16])));
    assert!(
        matches!(parse(&g.build()).unwrap_err(), Error::CountTooLarge { section: Section::Metadata, count, .. } if count == 1 << 62)
    );
    // 2^62 arrays inside an array.
    let mut g = Gguf::new();
    g.kvs.push(kv("a", ARRAY, &array(ARRAY, 1 << 62, &[0; 16])));
    assert!(matches!(
        parse(&g.build()).unwrap_err(),
        Error::CountTooLarge {
            section: Section::Metadata,
            ..
        }
    ));
    // A tensor name length that lies.
    let g = valid();
    let at = tensors_start(&g);
    let bad = patch(g.build(), at, &(1u64 << 50).to_le_bytes());
    assert_eq!(
        parse(&bad).unwrap_err(),
        Error::CountTooLarge {
            section: Section::TensorInfo,
            offset: at,
            count: 1 << 50
        }
    );
}

#[test]
fn truncated_in_every_section() {
    let g = valid();
    let bytes = g.build();
    let head = g.head().len();
    // Inside the metadata: cut after the first key, before its value type.
    let first_key_end = KV_START + 8 + "general.architecture".len();
    assert_eq!(
        parse(&bytes[..first_key_end + 2]).unwrap_err(),
        Error::Truncated {
            section: Section::Metadata,
            offset: first_key_end
        }
    );
    // Inside a fixed-size value: the u32 of llama.expert_count.
    let second = KV_START + g.kvs[0].len();
    let value_at = second + 8 + "llama.expert_count".len() + 4;
    assert_eq!(
        parse(&bytes[..value_at + 3]).unwrap_err(),
        Error::Truncated {
            section: Section::Metadata,
            offset: value_at
        }
    );
    // Inside a tensor-info record: cut in its dims.
    let info = tensors_start(&g);
    let dims_at = info + 8 + 1 + 4;
    assert_eq!(
        parse(&bytes[..dims_at + 5]).unwrap_err(),
        Error::Truncated {
            section: Section::TensorInfo,
            offset: dims_at
        }
    );
    // In the padding before the data.
    assert_eq!(
        parse(&bytes[..head + 1]).unwrap_err(),
        Error::Truncated {
            section: Section::Data,
            offset: head + 1
        }
    );
    // Inside the data: the last tensor runs past the end.
    assert!(matches!(
        parse(&bytes[..bytes.len() - 1]).unwrap_err(),
        Error::TensorOutOfBounds { tensor, offset: 96, size: 32 } if tensor == "f"
    ));
    // Every prefix of the file is refused, never accepted, never a panic.
    for len in 0..bytes.len() {
        assert!(
            parse(&bytes[..len]).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
}

#[test]
fn metadata_errors() {
    // Unknown value type.
    let mut g = Gguf::new();
    g.kvs.push(kv("x", 13, &[0; 8]));
    assert_eq!(
        parse(&g.build()).unwrap_err(),
        Error::UnknownValueType {
            type_id: 13,
            offset: KV_START + 9
        }
    );
    // Unknown array element type.
    let mut g = Gguf::new();
    g.kvs.push(kv("x", ARRAY, &array(99, 1, &[0; 8])));
    assert_eq!(
        parse(&g.build()).unwrap_err(),
        Error::UnknownValueType {
            type_id: 99,
            offset: KV_START + 13
        }
    );
    // Invalid UTF-8 in a key, in a value, in an array element.
    let mut g = Gguf::new();
    g.kvs
        .push([string(b"k\xff"), U8.to_le_bytes().to_vec(), vec![1]].concat());
    assert_eq!(
        parse(&g.build()).unwrap_err(),
        Error::InvalidUtf8 {
            offset: KV_START + 8
        }
    );
    let mut g = Gguf::new();
    g.kvs.push(kv("k", STRING, &string(b"\xc3\x28")));
    assert_eq!(
        parse(&g.build()).unwrap_err(),
        Error::InvalidUtf8 {
            offset: KV_START + 9 + 4 + 8
        }
    );
    let mut g = Gguf::new();
    g.kvs.push(kv(
        "k",
        ARRAY,
        &array(
            STRING,
            2,
            &[string(b"ok"), string(b"\xed\xa0\x80")].concat(),
        ),
    ));
    assert!(matches!(
        parse(&g.build()).unwrap_err(),
        Error::InvalidUtf8 { .. }
    ));
    // Arrays nested deeper than the limit.
    let mut value = array(U8, 0, &[]);
    for _ in 0..moe_core::gguf::MAX_ARRAY_NESTING {
        value = array(ARRAY, 1, &value);
    }
    let mut g = Gguf::new();
    g.kvs.push(kv("deep", ARRAY, &value));
    assert!(matches!(
        parse(&g.build()).unwrap_err(),
        Error::NestingTooDeep { .. }
    ));
    // One level less is fine, and iterates.
    let mut value = array(U8, 1, &[7]);
    for _ in 1..moe_core::gguf::MAX_ARRAY_NESTING {
        value = array(ARRAY, 1, &value);
    }
    let mut g = Gguf::new();
    g.kvs.push(kv("deep", ARRAY, &value));
    let bytes = g.build();
    let file = parse(&bytes).unwrap();
    let mut v = file.get("deep").unwrap();
    while let Some(a) = v.as_array() {
        v = a.get(0).unwrap();
    }
    assert_eq!(v.as_u64(), Some(7));
    // Duplicate keys.
    let mut g = valid();
    g.kvs.push(kv_u32("llama.expert_count", 4));
    assert!(
        matches!(parse(&g.build()).unwrap_err(), Error::DuplicateKey { key } if key == "llama.expert_count")
    );
}

#[test]
fn alignment_errors() {
    for bad in [0u32, 3, 48] {
        let mut g = valid();
        g.kvs.push(kv_u32("general.alignment", bad));
        assert_eq!(
            parse(&g.build()).unwrap_err(),
            Error::BadAlignment {
                alignment: bad as u64
            }
        );
    }
    let mut g = valid();
    g.kvs.push(kv_str("general.alignment", "32"));
    assert!(
        matches!(parse(&g.build()).unwrap_err(), Error::WrongValueType { key } if key == "general.alignment")
    );
    // A valid non-default alignment moves the data section and is respected by offsets.
    let mut g = valid();
    g.kvs.push(kv_u32("general.alignment", 64));
    g.alignment = 64;
    g.tensors[1] = tensor_info("f", &[8], F32, 128);
    g.data = vec![0; 128 + 32];
    let bytes = g.build();
    let file = parse(&bytes).unwrap();
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    // …and a tensor at offset 96 is now misaligned.
    g.tensors[1] = tensor_info("f", &[8], F32, 96);
    assert!(matches!(
        parse(&g.build()).unwrap_err(),
        Error::MisalignedOffset { tensor, offset: 96, alignment: 64 } if tensor == "f"
    ));
}

#[test]
fn tensor_info_errors() {
    let with = |info: Vec<u8>| {
        let mut g = valid();
        g.tensors[1] = info;
        parse(&g.build()).unwrap_err()
    };
    assert!(matches!(
        with(tensor_info("f", &[1, 1, 1, 1, 1], F32, 96)),
        Error::TooManyDims { n_dims: 5, .. }
    ));
    assert_eq!(
        with(tensor_info("f", &[8], 4, 96)),
        Error::RemovedTensorType { type_id: 4 }
    );
    assert_eq!(
        with(tensor_info("f", &[8], 5, 96)),
        Error::RemovedTensorType { type_id: 5 }
    );
    assert_eq!(
        with(tensor_info("f", &[8], 32, 96)),
        Error::RemovedTensorType { type_id: 32 }
    );
    assert_eq!(
        with(tensor_info("f", &[8], 37, 96)),
        Error::RemovedTensorType { type_id: 37 }
    );
    assert_eq!(
        with(tensor_info("f", &[8], 1000, 96)),
        Error::UnknownTensorType { type_id: 1000 }
    );
    assert!(matches!(
        with(tensor_info("f", &[33], Q4_0, 96)),
        Error::RowNotBlockMultiple {
            row_len: 33,
            block_len: 32,
            ..
        }
    ));
    assert!(matches!(
        with(tensor_info("f", &[1 << 32, 1 << 32], F32, 96)),
        Error::TensorTooLarge { .. }
    ));
    assert!(matches!(
        with(tensor_info("f", &[1 << 62], F32, 96)),
        Error::TensorTooLarge { .. }
    ));
    assert!(matches!(
        with(tensor_info("f", &[8], F32, u64::MAX - 31)),
        Error::TensorTooLarge { .. }
    ));
    assert!(matches!(
        with(tensor_info("f", &[8], F32, 100)),
        Error::MisalignedOffset {
            offset: 100,
            alignment: 32,
            ..
        }
    ));
    assert!(matches!(
        with(tensor_info("f", &[8], F32, 128)),
        Error::TensorOutOfBounds {
            offset: 128,
            size: 32,
            ..
        }
    ));
    assert!(matches!(
        with(tensor_info("f", &[1 << 40], F32, 96)),
        Error::TensorOutOfBounds { .. }
    ));
    let mut g = valid();
    g.tensors[1] = [
        string(b"\xff\xfe"),
        1u32.to_le_bytes().to_vec(),
        8u64.to_le_bytes().to_vec(),
        F32.to_le_bytes().to_vec(),
        96u64.to_le_bytes().to_vec(),
    ]
    .concat();
    assert!(matches!(
        parse(&g.build()).unwrap_err(),
        Error::InvalidUtf8 { .. }
    ));
}

#[test]
fn overlapping_and_duplicate_tensors() {
    // The second tensor starts inside the first (in file order).
    let mut g = valid();
    g.tensors[1] = tensor_info("f", &[8], F32, 64);
    assert!(matches!(
        parse(&g.build()).unwrap_err(),
        Error::OverlappingTensors { first, second } if first == "q" && second == "f"
    ));
    // Out of offset order and overlapping.
    let mut g = valid();
    g.tensors[0] = tensor_info("q", &[32, 2], Q8_0, 64);
    g.tensors[1] = tensor_info("f", &[16], F32, 32);
    g.data = vec![0; 160];
    assert!(matches!(
        parse(&g.build()).unwrap_err(),
        Error::OverlappingTensors { first, second } if first == "q" && second == "f"
    ));
    // Out of offset order but disjoint is allowed by the spec.
    let mut g = valid();
    g.tensors[0] = tensor_info("q", &[32, 2], Q8_0, 32);
    g.tensors[1] = tensor_info("f", &[8], F32, 0);
    g.data = vec![0; 128];
    let bytes = g.build();
    assert_eq!(parse(&bytes).unwrap().tensor("q").unwrap().offset, 32);
    // Same name twice.
    let mut g = valid();
    g.tensors[1] = tensor_info("q", &[8], F32, 96);
    assert!(
        matches!(parse(&g.build()).unwrap_err(), Error::DuplicateTensorName { tensor } if tensor == "q")
    );
    // Empty tensors take no bytes and overlap nothing…
    let mut g = valid();
    g.tensors.push(tensor_info("empty", &[0, 4], Q8_0, 0));
    let bytes = g.build();
    assert_eq!(
        parse(&bytes)
            .unwrap()
            .tensor("empty")
            .unwrap()
            .view
            .data()
            .len(),
        0
    );
    // …but a scalar (no dims) is one element.
    g.tensors.push(tensor_info("scalar", &[], F32, 0));
    let err = parse(&g.build()).unwrap_err();
    assert!(
        matches!(err, Error::OverlappingTensors { ref first, ref second } if first == "q" && second == "scalar"),
        "{err}"
    );
}

#[test]
fn more_names_than_one_table_chunk() {
    const N: usize = 600;
    let many = |dup_key: Option<(usize, usize)>,
                dup_tensor: Option<(usize, usize)>,
                overlap: Option<usize>| {
        let mut g = Gguf::new();
        for i in 0..N {
            let k = match dup_key {
                Some((a, b)) if i == b => a,
                _ => i,
            };
            g.kvs.push(kv_u32(&format!("key.{k}"), i as u32));
        }
        for i in 0..N {
            let t = match dup_tensor {
                Some((a, b)) if i == b => a,
                _ => i,
            };
            // Reverse offset order, so the overlap check cannot take its fast path.
            let mut offset = ((N - 1 - i) * 32) as u64;
            if overlap == Some(i) {
                offset += 32;
            }
            g.tensors
                .push(tensor_info(&format!("t.{t}"), &[8], F32, offset));
        }
        g.data = vec![0; N * 32];
        g.build()
    };
    let bytes = many(None, None, None);
    let file = parse(&bytes).unwrap();
    assert_eq!(file.tensor("t.599").unwrap().offset, 0);
    assert_eq!(file.get("key.599").and_then(|v| v.as_u64()), Some(599));
    for (a, b) in [(0, 1), (3, 299), (10, 550), (300, 599), (400, 420)] {
        let bytes = many(Some((a, b)), None, None);
        assert!(
            matches!(parse(&bytes).unwrap_err(), Error::DuplicateKey { key } if key.as_str() == format!("key.{a}")),
            "keys {a} {b}"
        );
        let bytes = many(None, Some((a, b)), None);
        assert!(
            matches!(parse(&bytes).unwrap_err(), Error::DuplicateTensorName { tensor } if tensor.as_str() == format!("t.{a}")),
            "tensors {a} {b}"
        );
    }
    for i in [1, 200, 300, 599] {
        let bytes = many(None, None, Some(i));
        assert!(
            matches!(parse(&bytes).unwrap_err(), Error::OverlappingTensors { .. }),
            "overlap at {i}"
        );
    }
}

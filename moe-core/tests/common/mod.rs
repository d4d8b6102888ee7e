//! A tiny GGUF writer for tests: builds valid files field by field, so each malformed
//! case is one visible change to a valid file.
#![allow(dead_code)]

pub const U8: u32 = 0;
pub const U32: u32 = 4;
pub const STRING: u32 = 8;
pub const ARRAY: u32 = 9;
pub const U64: u32 = 10;

pub const F32: u32 = 0;
pub const Q4_0: u32 = 2;
pub const Q8_0: u32 = 8;

/// Encodes a GGUF string (u64 length + bytes).
pub fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// One metadata pair with an already encoded value.
pub fn kv(key: &str, value_type: u32, value: &[u8]) -> Vec<u8> {
    let mut out = string(key.as_bytes());
    out.extend_from_slice(&value_type.to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub fn kv_u32(key: &str, v: u32) -> Vec<u8> {
    kv(key, U32, &v.to_le_bytes())
}

pub fn kv_str(key: &str, v: &str) -> Vec<u8> {
    kv(key, STRING, &string(v.as_bytes()))
}

/// An array value header (element type and count) followed by `elems`.
pub fn array(elem_type: u32, count: u64, elems: &[u8]) -> Vec<u8> {
    let mut out = elem_type.to_le_bytes().to_vec();
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(elems);
    out
}

/// One tensor-info record.
pub fn tensor_info(name: &str, dims: &[u64], type_id: u32, offset: u64) -> Vec<u8> {
    let mut out = string(name.as_bytes());
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&type_id.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out
}

/// A whole file: header, the pairs, the records, zero padding to `alignment`, then `data`.
pub struct Gguf {
    pub version: u32,
    pub kvs: Vec<Vec<u8>>,
    pub tensors: Vec<Vec<u8>>,
    pub alignment: usize,
    pub data: Vec<u8>,
}

impl Gguf {
    pub fn new() -> Self {
        Gguf {
            version: 3,
            kvs: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
            data: Vec::new(),
        }
    }

    /// The header and metadata and tensor-info sections (before padding).
    pub fn head(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for kv in &self.kvs {
            out.extend_from_slice(kv);
        }
        for t in &self.tensors {
            out.extend_from_slice(t);
        }
        out
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = self.head();
        out.resize(out.len().next_multiple_of(self.alignment), 0);
        out.extend_from_slice(&self.data);
        out
    }
}

/// A small valid file: an architecture, a string array, two Q8_0/F32 tensors.
pub fn valid() -> Gguf {
    let mut g = Gguf::new();
    g.kvs.push(kv_str("general.architecture", "llama"));
    g.kvs.push(kv_u32("llama.expert_count", 8));
    let mut words = Vec::new();
    for w in ["a", "bc", "déf"] {
        words.extend(string(w.as_bytes()));
    }
    g.kvs.push(kv(
        "tokenizer.ggml.tokens",
        ARRAY,
        &array(STRING, 3, &words),
    ));
    g.tensors.push(tensor_info("q", &[32, 2], Q8_0, 0));
    g.tensors.push(tensor_info("f", &[8], F32, 96));
    g.data = vec![0u8; 96 + 32];
    g
}

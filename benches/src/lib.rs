//! Shared helpers for the benchmarks: deterministic random inputs ([`random`]), a
//! median timer ([`timing`]), a memory-bandwidth probe ([`bandwidth`]) and synthetic GGUF
//! files.
//!
//! [`SparseGguf`] writes the header, metadata and tensor table of a file of any size and
//! extends it with `set_len`, so the tensor data are holes: a "10 GiB" model takes a few
//! kilobytes of disk and is created in milliseconds, and opening it measures exactly what
//! opening a real checkpoint costs before any weight is read.

pub mod bandwidth;
pub mod random;
pub mod timing;

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use moe_core::TensorType;

/// One tensor of a synthetic file.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    /// The tensor's name.
    pub name: String,
    /// Its type.
    pub ty: TensorType,
    /// Its dimensions in GGUF order (`ne[0]` first).
    pub dims: Vec<u64>,
}

impl TensorSpec {
    /// Size of the tensor's data in bytes.
    pub fn n_bytes(&self) -> u64 {
        let n: u64 = self.dims.iter().product();
        self.ty
            .bytes_for(n)
            .expect("rows are whole blocks and the size fits in u64")
    }
}

/// A GGUF v3 file described by its metadata and tensors, written sparse.
#[derive(Clone, Debug, Default)]
pub struct SparseGguf {
    /// `general.architecture`.
    pub architecture: String,
    /// Extra `u32` keys (`{arch}.expert_count`, …).
    pub u32_keys: Vec<(String, u32)>,
    /// Entries of a `tokenizer.ggml.tokens` string array (none: no key).
    pub tokens: Vec<String>,
    /// The tensors, laid out in order at the default alignment (32).
    pub tensors: Vec<TensorSpec>,
}

const ALIGNMENT: u64 = 32;

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

impl SparseGguf {
    /// The header, metadata and tensor table, padded to the data section.
    pub fn header_bytes(&self) -> Vec<u8> {
        let n_kv = 1 + self.u32_keys.len() + usize::from(!self.tokens.is_empty());
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(n_kv as u64).to_le_bytes());
        put_str(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes()); // STRING
        put_str(&mut b, &self.architecture);
        for (key, value) in &self.u32_keys {
            put_str(&mut b, key);
            b.extend_from_slice(&4u32.to_le_bytes()); // UINT32
            b.extend_from_slice(&value.to_le_bytes());
        }
        if !self.tokens.is_empty() {
            put_str(&mut b, "tokenizer.ggml.tokens");
            b.extend_from_slice(&9u32.to_le_bytes()); // ARRAY
            b.extend_from_slice(&8u32.to_le_bytes()); // of STRING
            b.extend_from_slice(&(self.tokens.len() as u64).to_le_bytes());
            for token in &self.tokens {
                put_str(&mut b, token);
            }
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ty.id().to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + t.n_bytes()).next_multiple_of(ALIGNMENT);
        }
        b.resize((b.len() as u64).next_multiple_of(ALIGNMENT) as usize, 0);
        b
    }

    /// Size of the whole file: header plus every tensor, each padded to the alignment.
    pub fn file_len(&self) -> u64 {
        let data: u64 = self
            .tensors
            .iter()
            .map(|t| t.n_bytes().next_multiple_of(ALIGNMENT))
            .sum();
        self.header_bytes().len() as u64 + data
    }

    /// Writes the file at `path`: the header for real, the tensor data as a hole.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut file = fs::File::create(path)?;
        file.write_all(&self.header_bytes())?;
        file.set_len(self.file_len())?;
        file.sync_all()
    }
}

/// A Mixtral-8x7B-like layout scaled to about `gib` GiB: per block, stacked `*_exps`
/// tensors (F16, 8 experts) plus a router, and a 32,000-entry vocabulary.
pub fn mixtral_like(gib: u64) -> SparseGguf {
    let (ne0, ne1, experts) = (4096u64, 2048u64, 8u64);
    // gate + up + down per block: 3 × ne0 × ne1 × experts × 2 bytes = 384 MiB.
    let per_block = 3 * ne0 * ne1 * experts * 2;
    let blocks = (gib << 30).div_ceil(per_block).max(1);
    let mut tensors = Vec::new();
    for n in 0..blocks {
        tensors.push(TensorSpec {
            name: format!("blk.{n}.ffn_gate_inp.weight"),
            ty: TensorType::F32,
            dims: vec![ne0, experts],
        });
        for (part, dims) in [
            ("gate", [ne0, ne1, experts]),
            ("up", [ne0, ne1, experts]),
            ("down", [ne1, ne0, experts]),
        ] {
            tensors.push(TensorSpec {
                name: format!("blk.{n}.ffn_{part}_exps.weight"),
                ty: TensorType::F16,
                dims: dims.to_vec(),
            });
        }
    }
    SparseGguf {
        architecture: "llama".into(),
        u32_keys: vec![
            ("llama.block_count".into(), blocks as u32),
            ("llama.expert_count".into(), experts as u32),
            ("llama.expert_used_count".into(), 2),
        ],
        tokens: (0..32_000).map(|i| format!("tok{i}")).collect(),
        tensors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_file_parses_with_the_core_reader() {
        let mut spec = mixtral_like(1);
        // Same layout, small enough to hold in memory.
        for t in &mut spec.tensors {
            t.dims[0] = 32;
        }
        let mut bytes = spec.header_bytes();
        let header_len = bytes.len();
        bytes.resize(spec.file_len() as usize, 0);
        let file = moe_core::gguf::File::parse(&bytes).unwrap();
        assert_eq!(file.data_offset(), header_len);
        assert_eq!(file.tensor_count(), spec.tensors.len());
        assert_eq!(file.architecture(), Some("llama"));
        let last = file.tensors().last().unwrap();
        assert_eq!(
            last.offset + last.view.data().len() as u64,
            spec.file_len() - header_len as u64
        );
    }
}

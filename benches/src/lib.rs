//! Shared helpers for the benchmarks: deterministic random inputs ([`random`]), a
//! median timer ([`timing`]), a memory-bandwidth probe ([`bandwidth`]) and synthetic GGUF
//! files.
//!
//! [`llama_moe`] lays out a whole Mixtral-shaped model ([`LlamaMoeShape`]) and
//! [`synth::write_random`] writes it with random weights a model can run on (the
//! `moe-synth-model` binary, for the whole-model benchmark).
//!
//! [`SparseGguf`] writes the header, metadata and tensor table of a file of any size and
//! extends it with `set_len`, so the tensor data are holes: a "10 GiB" model takes a few
//! kilobytes of disk and is created in milliseconds, and opening it measures exactly what
//! opening a real checkpoint costs before any weight is read.

pub mod bandwidth;
pub mod random;
pub mod synth;
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
    /// Extra `f32` keys (`{arch}.rope.freq_base`, …), written after the `u32` keys.
    pub f32_keys: Vec<(String, f32)>,
    /// Extra string keys (`tokenizer.ggml.model`, …), written after the `f32` keys.
    pub string_keys: Vec<(String, String)>,
    /// Entries of a `tokenizer.ggml.tokens` string array (none: no key).
    pub tokens: Vec<String>,
    /// The tensors, laid out in order at the default alignment (32).
    pub tensors: Vec<TensorSpec>,
}

/// Alignment of every tensor's data (GGUF's default, `general.alignment` unset).
pub const ALIGNMENT: u64 = 32;

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

impl SparseGguf {
    /// The header, metadata and tensor table, padded to the data section.
    pub fn header_bytes(&self) -> Vec<u8> {
        let n_kv = 1
            + self.u32_keys.len()
            + self.f32_keys.len()
            + self.string_keys.len()
            + usize::from(!self.tokens.is_empty());
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
        for (key, value) in &self.f32_keys {
            put_str(&mut b, key);
            b.extend_from_slice(&6u32.to_le_bytes()); // FLOAT32
            b.extend_from_slice(&value.to_le_bytes());
        }
        for (key, value) in &self.string_keys {
            put_str(&mut b, key);
            b.extend_from_slice(&8u32.to_le_bytes()); // STRING
            put_str(&mut b, value);
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
        f32_keys: Vec::new(),
        string_keys: Vec::new(),
        tokens: (0..32_000).map(|i| format!("tok{i}")).collect(),
        tensors,
    }
}

/// The shape of a Mixtral-like model with llama.cpp's `llama` architecture: per block,
/// grouped-query attention and an FFN of `n_expert` stacked experts with a top-k router.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LlamaMoeShape {
    /// Width of the residual stream (`llama.embedding_length`).
    pub n_embd: u32,
    /// Transformer blocks (`llama.block_count`).
    pub n_layer: u32,
    /// Query heads (`llama.attention.head_count`).
    pub n_head: u32,
    /// Key/value heads (`llama.attention.head_count_kv`).
    pub n_head_kv: u32,
    /// Experts per block (`llama.expert_count`).
    pub n_expert: u32,
    /// Experts each token uses (`llama.expert_used_count`).
    pub n_expert_used: u32,
    /// Width of one expert (`llama.feed_forward_length`).
    pub n_ff: u32,
    /// Vocabulary size (rows of `token_embd` and `output`).
    pub n_vocab: u32,
    /// Training context (`llama.context_length`).
    pub n_ctx_train: u32,
    /// `llama.rope.freq_base`.
    pub rope_base: f32,
    /// `llama.attention.layer_norm_rms_epsilon`.
    pub rms_eps: f32,
}

impl Default for LlamaMoeShape {
    /// The whole-model benchmark's shape (`benches/llamacpp/make_perf_model.py`): n_embd
    /// 2048, 8 layers, 16 heads / 4 KV heads, 8 experts top-2 of width 5632, vocabulary
    /// 32,000, context 4096, rope base 1e6, RMS eps 1e-5.
    fn default() -> Self {
        LlamaMoeShape {
            n_embd: 2048,
            n_layer: 8,
            n_head: 16,
            n_head_kv: 4,
            n_expert: 8,
            n_expert_used: 2,
            n_ff: 5632,
            n_vocab: 32_000,
            n_ctx_train: 4096,
            rope_base: 1e6,
            rms_eps: 1e-5,
        }
    }
}

impl LlamaMoeShape {
    /// Width of one attention head.
    pub fn head_dim(&self) -> u32 {
        self.n_embd / self.n_head.max(1)
    }

    /// Whether a model of this shape with matrices of type `ty` can be written and loaded:
    /// the error says which constraint fails.
    pub fn check(&self, ty: TensorType) -> Result<(), String> {
        let sizes = [
            ("embd", self.n_embd),
            ("layers", self.n_layer),
            ("heads", self.n_head),
            ("kv-heads", self.n_head_kv),
            ("experts", self.n_expert),
            ("used", self.n_expert_used),
            ("ff", self.n_ff),
            ("vocab", self.n_vocab),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "heads ({}) must divide embd ({})",
                self.n_head, self.n_embd
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "the head width embd/heads ({}) must be even (RoPE rotates pairs)",
                self.head_dim()
            ));
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return Err(format!(
                "kv-heads ({}) must divide heads ({})",
                self.n_head_kv, self.n_head
            ));
        }
        if self.n_expert_used > self.n_expert {
            return Err(format!(
                "used ({}) must be at most experts ({})",
                self.n_expert_used, self.n_expert
            ));
        }
        let block = ty.block_len() as u64;
        for (name, row) in [("embd", self.n_embd), ("ff", self.n_ff)] {
            if !u64::from(row).is_multiple_of(block) {
                return Err(format!(
                    "{name} ({row}) must be a multiple of {}'s block length {block}",
                    ty.name()
                ));
            }
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return Err("the rope base must be a positive number".into());
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return Err("the RMS epsilon must be a non-negative number".into());
        }
        // Every size below must fit in u64 (a terabyte-scale request is still writable
        // in principle; an overflowing one is not a shape).
        let (e, f, x) = (
            u64::from(self.n_embd),
            u64::from(self.n_ff),
            u64::from(self.n_expert),
        );
        let per_block = e
            .checked_mul(f)
            .and_then(|v| v.checked_mul(x))
            .and_then(|v| v.checked_mul(3));
        let total = per_block
            .and_then(|v| v.checked_add(e.checked_mul(u64::from(self.n_vocab))?.checked_mul(2)?))
            .and_then(|v| v.checked_mul(u64::from(self.n_layer)));
        if total.and_then(|n| ty.bytes_for(n)).is_none() {
            return Err("the model is too large to describe (sizes overflow)".into());
        }
        Ok(())
    }
}

/// The whole model of `shape` (call [`LlamaMoeShape::check`] first) as llama.cpp lays out
/// a Mixtral: `token_embd`, per block `attn_norm`, `attn_q/k/v/output`, `ffn_norm`, the
/// F32 router `ffn_gate_inp` and the expert stacks `ffn_{gate,up,down}_exps`, then
/// `output_norm` and `output`. Matrices are of type `ty`, norms and routers F32. The
/// metadata are the keys llama.cpp and `moe_core::model::ModelConfig` read; there is no
/// tokenizer (token ids are all a speed measurement needs), only `tokenizer.ggml.model =
/// "no_vocab"`, without which llama.cpp refuses the file.
pub fn llama_moe(shape: &LlamaMoeShape, ty: TensorType) -> SparseGguf {
    let s = shape;
    let (e, kv) = (u64::from(s.n_embd), u64::from(s.n_head_kv * s.head_dim()));
    let (ff, x, vocab) = (
        u64::from(s.n_ff),
        u64::from(s.n_expert),
        u64::from(s.n_vocab),
    );
    let spec = |name: String, ty, dims: &[u64]| TensorSpec {
        name,
        ty,
        dims: dims.to_vec(),
    };
    let mut tensors = vec![spec("token_embd.weight".into(), ty, &[e, vocab])];
    for n in 0..s.n_layer {
        let p = |suffix: &str| format!("blk.{n}.{suffix}.weight");
        tensors.extend([
            spec(p("attn_norm"), TensorType::F32, &[e]),
            spec(p("attn_q"), ty, &[e, e]),
            spec(p("attn_k"), ty, &[e, kv]),
            spec(p("attn_v"), ty, &[e, kv]),
            spec(p("attn_output"), ty, &[e, e]),
            spec(p("ffn_norm"), TensorType::F32, &[e]),
            spec(p("ffn_gate_inp"), TensorType::F32, &[e, x]),
            spec(p("ffn_gate_exps"), ty, &[e, ff, x]),
            spec(p("ffn_up_exps"), ty, &[e, ff, x]),
            spec(p("ffn_down_exps"), ty, &[ff, e, x]),
        ]);
    }
    tensors.push(spec("output_norm.weight".into(), TensorType::F32, &[e]));
    tensors.push(spec("output.weight".into(), ty, &[e, vocab]));
    // llama_ftype of an all-`ty` file (general.file_type): 1 F16, 2 Q4_0, 7 Q8_0, 0 F32.
    let file_type = match ty {
        TensorType::F32 => Some(0),
        TensorType::F16 => Some(1),
        TensorType::Q4_0 => Some(2),
        TensorType::Q8_0 => Some(7),
        _ => None,
    };
    let mut u32_keys: Vec<(String, u32)> = [
        ("context_length", s.n_ctx_train),
        ("embedding_length", s.n_embd),
        ("block_count", s.n_layer),
        ("feed_forward_length", s.n_ff),
        ("attention.head_count", s.n_head),
        ("attention.head_count_kv", s.n_head_kv),
        ("rope.dimension_count", s.head_dim()),
        ("vocab_size", s.n_vocab),
        ("expert_count", s.n_expert),
        ("expert_used_count", s.n_expert_used),
    ]
    .into_iter()
    .map(|(k, v)| (format!("llama.{k}"), v))
    .collect();
    u32_keys.push(("general.quantization_version".into(), 2));
    if let Some(ft) = file_type {
        u32_keys.push(("general.file_type".into(), ft));
    }
    SparseGguf {
        architecture: "llama".into(),
        u32_keys,
        f32_keys: vec![
            ("llama.rope.freq_base".into(), s.rope_base),
            ("llama.attention.layer_norm_rms_epsilon".into(), s.rms_eps),
        ],
        // llama.cpp refuses a file without a tokenizer model; "no_vocab" loads without one.
        string_keys: vec![("tokenizer.ggml.model".into(), "no_vocab".into())],
        tokens: Vec::new(),
        tensors,
    }
}

/// Whether `name` is a routed expert stack (`blk.N.ffn_{gate,up,down}_exps.weight`).
pub fn is_routed_expert_stack(name: &str) -> bool {
    [
        ".ffn_gate_exps.weight",
        ".ffn_up_exps.weight",
        ".ffn_down_exps.weight",
    ]
    .iter()
    .any(|suffix| name.starts_with("blk.") && name.ends_with(suffix))
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

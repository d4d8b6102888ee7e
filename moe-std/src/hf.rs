//! Hugging Face checkpoints: a directory with `config.json` and the weights as one
//! `model.safetensors` or shards listed by `model.safetensors.index.json`, mapped
//! read-only and used in place (F32, F16 and BF16 tensors).
//!
//! The checkpoint answers the core's [`TensorSource`] questions in llama.cpp's vocabulary:
//! `config.json` becomes the `{arch}.*` keys `convert_hf_to_gguf.py` would write, and each
//! Hugging Face tensor name the llama.cpp name of the same tensor (`model.layers.0.self_attn.
//! q_proj.weight` is `blk.0.attn_q.weight`). Routed experts, which Hugging Face keeps one
//! matrix per expert, are handed over as lists ([`TensorSource::expert_matrices`]) rather
//! than copied into stacks. Query and key rows are *not* permuted as llama.cpp's converter
//! does for Llama-family models: the model runs with GPT-NeoX's RoPE layout instead, the
//! same function of the same weights.
//!
//! Architectures (`model_type`): `mixtral`, `qwen2_moe`, `qwen3_moe`, `olmoe`, and
//! `deepseek_v3` / `deepseek_v2` as llama.cpp's `deepseek2` (multi-head latent attention
//! with the combined `kv_b_proj` used in place as `attn_kv_b`, leading dense layers,
//! shared experts; V3: sigmoid routing with `e_score_correction_bias` over expert groups,
//! V2: softmax routing, greedy or group-limited by the groups' best score, weights scaled
//! and never renormalised, as transformers computes it). DeepSeek's RoPE pairs
//! are interleaved (`rope_interleave`, transformers' default): adjacent pairs, llama.cpp's
//! normal layout, so no rows are permuted there either (transformers' de-interleaving
//! reorders q and k alike, which leaves their dot products unchanged). DeepSeek's YaRN RoPE
//! scaling is read as llama.cpp reads it (see `deepseek_yarn`; variants it cannot express
//! are refused by key).
//! Disagreements between `config.json` and the tensors (a missing tensor or shard, a
//! shape the config does not predict, an unsupported dtype) are errors naming the file,
//! tensor or key.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use moe_core::gguf::Value;
use moe_core::model::{ModelConfig, RopeLayout};
use moe_core::source::TensorSource;
use moe_core::tensor::TensorView;
use serde_json::Value as Json;

use crate::residency::{self, Residency};
use crate::safetensors::{self, SafetensorsError};
use crate::{Error, Result};

/// The `model_type`s [`HfCheckpoint::open`] reads.
pub const SUPPORTED_MODEL_TYPES: [&str; 6] = [
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v2",
    "deepseek_v3",
];

/// A metadata value from `config.json`, as the GGUF key would hold it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Meta {
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(&'static str),
}

/// Everything the model reads, borrowing the mapped shards.
struct Weights<'a> {
    /// Tensors by llama.cpp name.
    tensors: HashMap<String, TensorView<'a>>,
    /// Routed-expert matrices by llama.cpp stack name, expert `e` at `e`.
    experts: HashMap<String, Vec<TensorView<'a>>>,
    /// GGUF keys from `config.json`.
    metadata: HashMap<String, Meta>,
}

/// The mapped shards, in the order of [`HfCheckpoint::shards`].
struct Shards {
    maps: Vec<Mmap>,
}

self_cell::self_cell!(
    struct Mapped {
        owner: Shards,
        #[covariant]
        dependent: Weights,
    }
);

/// A Hugging Face checkpoint directory, mapped and validated at open.
pub struct HfCheckpoint {
    dir: PathBuf,
    shards: Vec<PathBuf>,
    model_type: &'static str,
    rope_layout: RopeLayout,
    loaded: bool,
    mapped: Mapped,
}

/// The core's view of a checkpoint: tensors and keys under llama.cpp's names.
#[derive(Clone, Copy)]
pub struct Source<'a>(&'a Weights<'a>);

impl<'a> TensorSource<'a> for Source<'a> {
    fn value(&self, key: &str) -> Option<Value<'a>> {
        Some(match *self.0.metadata.get(key)? {
            Meta::U64(v) => Value::U64(v),
            Meta::F32(v) => Value::F32(v),
            Meta::Bool(v) => Value::Bool(v),
            Meta::Str(v) => Value::String(v),
        })
    }

    fn tensor(&self, name: &str) -> Option<TensorView<'a>> {
        self.0.tensors.get(name).copied()
    }

    fn expert_matrices(&self, name: &str) -> Option<&'a [TensorView<'a>]> {
        self.0.experts.get(name).map(Vec::as_slice)
    }
}

/// How one architecture's Hugging Face names and keys map to llama.cpp's.
#[derive(Clone, Copy)]
struct Arch {
    /// `general.architecture` of the equivalent GGUF.
    gguf: &'static str,
    /// Prefix of the MoE block inside a layer (`block_sparse_moe`, `mlp`).
    moe: &'static str,
    /// Per-expert gate, up and down matrix names.
    expert_names: [&'static str; 3],
    /// `config.json` keys of the expert count, the first present wins (transformers 5
    /// writes `num_local_experts` for Qwen3-MoE, released checkpoints `num_experts`).
    n_expert_keys: &'static [&'static str],
    /// `config.json` key of the expert hidden width.
    n_ff_key: &'static str,
    /// Attention biases on q, k, v (Qwen2).
    qkv_bias: bool,
    /// Query/key RMSNorm: per head (Qwen3) or over the whole vector (OLMoE).
    qk_norm: Option<QkNorm>,
    /// A sigmoid-gated shared expert (Qwen2-MoE).
    shared_expert: bool,
    /// Whether top-k weights are renormalised when `norm_topk_prob` is absent.
    norm_topk_default: bool,
    /// DeepSeek: latent attention, leading dense layers, ungated shared experts.
    deepseek: bool,
    /// DeepSeek-V3's sigmoid routing with a selection bias (V2: softmax, no bias).
    selection_bias: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum QkNorm {
    PerHead,
    Whole,
}

/// The architectures mapped, by `config.json`'s `model_type`.
const ARCHS: [(&str, Arch); 6] = [
    (
        "mixtral",
        Arch {
            gguf: "llama",
            moe: "block_sparse_moe",
            expert_names: ["w1", "w3", "w2"],
            n_expert_keys: &["num_local_experts"],
            n_ff_key: "intermediate_size",
            qkv_bias: false,
            qk_norm: None,
            shared_expert: false,
            norm_topk_default: true,
            deepseek: false,
            selection_bias: false,
        },
    ),
    (
        "qwen2_moe",
        Arch {
            gguf: "qwen2moe",
            moe: "mlp",
            expert_names: ["gate_proj", "up_proj", "down_proj"],
            n_expert_keys: &["num_experts", "num_local_experts"],
            n_ff_key: "moe_intermediate_size",
            qkv_bias: true,
            qk_norm: None,
            shared_expert: true,
            norm_topk_default: false,
            deepseek: false,
            selection_bias: false,
        },
    ),
    (
        "qwen3_moe",
        Arch {
            gguf: "qwen3moe",
            moe: "mlp",
            expert_names: ["gate_proj", "up_proj", "down_proj"],
            n_expert_keys: &["num_experts", "num_local_experts"],
            n_ff_key: "moe_intermediate_size",
            qkv_bias: false,
            qk_norm: Some(QkNorm::PerHead),
            shared_expert: false,
            norm_topk_default: false,
            deepseek: false,
            selection_bias: false,
        },
    ),
    (
        "olmoe",
        Arch {
            gguf: "olmoe",
            moe: "mlp",
            expert_names: ["gate_proj", "up_proj", "down_proj"],
            n_expert_keys: &["num_experts", "num_local_experts"],
            n_ff_key: "intermediate_size",
            qkv_bias: false,
            qk_norm: Some(QkNorm::Whole),
            shared_expert: false,
            norm_topk_default: false,
            deepseek: false,
            selection_bias: false,
        },
    ),
    (
        "deepseek_v3",
        Arch {
            gguf: "deepseek2",
            moe: "mlp",
            expert_names: ["gate_proj", "up_proj", "down_proj"],
            n_expert_keys: &["n_routed_experts", "num_local_experts"],
            n_ff_key: "moe_intermediate_size",
            qkv_bias: false,
            qk_norm: None,
            shared_expert: false,
            norm_topk_default: true,
            deepseek: true,
            selection_bias: true,
        },
    ),
    (
        "deepseek_v2",
        Arch {
            gguf: "deepseek2",
            moe: "mlp",
            expert_names: ["gate_proj", "up_proj", "down_proj"],
            n_expert_keys: &["n_routed_experts", "num_experts"],
            n_ff_key: "moe_intermediate_size",
            qkv_bias: false,
            qk_norm: None,
            shared_expert: false,
            norm_topk_default: false,
            deepseek: true,
            selection_bias: false,
        },
    ),
];

fn arch_of(model_type: &str) -> Option<(&'static str, Arch)> {
    ARCHS.iter().find(|(name, _)| *name == model_type).copied()
}

/// The sizes `config.json` gives, checked as numbers.
struct Dims {
    n_embd: u64,
    n_layer: u64,
    n_head: u64,
    n_head_kv: u64,
    head_dim: u64,
    n_vocab: u64,
    n_expert: u64,
    n_ff: u64,
    n_ff_shared: u64,
    tied: bool,
    /// Biases on the q, k and v projections.
    qkv_bias: bool,
    /// DeepSeek's latent attention and dense/shared FFN sizes.
    deepseek: Option<DeepseekDims>,
}

/// The sizes of a DeepSeek checkpoint beyond [`Dims`].
#[derive(Clone, Copy)]
struct DeepseekDims {
    /// `q_lora_rank` (absent or null: a full `q_proj`).
    q_lora: Option<u64>,
    kv_lora: u64,
    nope: u64,
    rope: u64,
    v: u64,
    /// `first_k_dense_replace`: leading layers with a dense FFN of `n_ff_dense`.
    n_dense: u64,
    n_ff_dense: u64,
    /// Width of the shared experts together (`moe_intermediate_size · n_shared_experts`).
    n_ff_shared: u64,
}

/// Reads `config.json` keys, with errors naming the file and key.
struct Config<'c> {
    path: &'c Path,
    json: &'c serde_json::Map<String, Json>,
}

impl Config<'_> {
    fn error(&self, key: &str, what: &str) -> Error {
        Error::Checkpoint {
            path: self.path.to_path_buf(),
            message: format!("key '{key}': {what}"),
        }
    }

    fn get(&self, key: &str) -> Option<&Json> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| self.error(key, "not a non-negative integer"))
            })
            .transpose()
    }

    fn required(&self, key: &str) -> Result<u64> {
        self.u64(key)?.ok_or_else(|| self.error(key, "missing"))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| self.error(key, "not a number")))
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.error(key, "not a boolean")))
            .transpose()
    }
}

impl HfCheckpoint {
    /// Opens the checkpoint in directory `dir`: reads `config.json`, maps and validates
    /// every shard, and checks that every tensor the config implies is there with the
    /// shape it implies.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        HfCheckpoint::open_with(dir, Residency::Map)
    }

    /// [`HfCheckpoint::open`] with the shards held as `residency` says (decided for all
    /// shards together, by their total size).
    pub fn open_with(dir: impl AsRef<Path>, residency: Residency) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let text = fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let json: Json = serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
            path: config_path.clone(),
            message: format!("not JSON: {e}"),
        })?;
        let json = json.as_object().ok_or_else(|| Error::Checkpoint {
            path: config_path.clone(),
            message: "not a JSON object".into(),
        })?;
        let config = Config {
            path: &config_path,
            json,
        };
        let model_type = config
            .get("model_type")
            .and_then(Json::as_str)
            .ok_or_else(|| config.error("model_type", "missing or not a string"))?;
        let (model_type, arch) = arch_of(model_type).ok_or_else(|| {
            config.error(
                "model_type",
                &format!(
                    "'{model_type}' is not supported (supported: {})",
                    SUPPORTED_MODEL_TYPES.join(", ")
                ),
            )
        })?;
        let (metadata, dims) = metadata(&config, &arch)?;
        // Hugging Face's `rotate_half` pairs (i, i + d/2); DeepSeek's interleaved RoPE
        // (the default) pairs (2i, 2i + 1).
        let rope_layout = if arch.deepseek && config.bool("rope_interleave")?.unwrap_or(true) {
            RopeLayout::Normal
        } else {
            RopeLayout::Neox
        };
        let (shards, weight_map) = shard_paths(dir)?;
        let mut files = Vec::with_capacity(shards.len());
        let mut total = 0u64;
        for path in &shards {
            let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
            total += file.metadata().map_err(|e| Error::io(path, e))?.len();
            files.push(file);
        }
        let load = residency.loads(total);
        let mut maps = Vec::with_capacity(shards.len());
        for (file, path) in files.iter().zip(&shards) {
            maps.push(residency::hold(file, path, load)?);
        }
        let mapped = Mapped::try_new(Shards { maps }, |owner| {
            weights(&owner.maps, &shards, &weight_map, &arch, &dims, metadata)
        })?;
        Ok(HfCheckpoint {
            dir: dir.to_path_buf(),
            shards: shards.clone(),
            model_type,
            rope_layout,
            loaded: load,
            mapped,
        })
    }

    /// Whether the shards were read into memory ([`Residency`]) rather than mapped.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// The checkpoint's tensors and keys for the core (see [`TensorSource`]).
    pub fn source(&self) -> Source<'_> {
        Source(self.mapped.borrow_dependent())
    }

    /// The model configuration: the core's reading of the keys, with the checkpoint's RoPE
    /// layout (GPT-NeoX's: Hugging Face's `rotate_half`; DeepSeek's interleaved pairs are
    /// llama.cpp's normal layout).
    pub fn config(&self) -> Result<ModelConfig> {
        let mut config =
            ModelConfig::from_source(&self.source()).map_err(|e| Error::gguf(&self.dir, e))?;
        config.rope.layout = self.rope_layout;
        Ok(config)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The safetensors files, in the order they were mapped.
    pub fn shards(&self) -> &[PathBuf] {
        &self.shards
    }

    /// `config.json`'s `model_type`.
    pub fn model_type(&self) -> &str {
        self.model_type
    }
}

impl std::fmt::Debug for HfCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfCheckpoint")
            .field("dir", &self.dir)
            .field("model_type", &self.model_type)
            .field("shards", &self.shards.len())
            .finish()
    }
}

// Opened once and shared by every worker thread.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<HfCheckpoint>();
};

/// The GGUF keys of `config.json` and the sizes they imply.
fn metadata(config: &Config<'_>, arch: &Arch) -> Result<(HashMap<String, Meta>, Dims)> {
    let key = |k: &str| format!("{}.{k}", arch.gguf);
    let n_embd = config.required("hidden_size")?;
    let n_head = config.required("num_attention_heads")?;
    if n_head == 0 || n_embd == 0 {
        return Err(config.error("num_attention_heads", "zero heads or width"));
    }
    let n_head_kv = config.u64("num_key_value_heads")?.unwrap_or(n_head);
    let head_dim = config.u64("head_dim")?.unwrap_or(n_embd / n_head);
    let dims = Dims {
        n_embd,
        n_layer: config.required("num_hidden_layers")?,
        n_head,
        n_head_kv,
        head_dim,
        n_vocab: config.required("vocab_size")?,
        n_expert: match arch.n_expert_keys.iter().find(|k| config.get(k).is_some()) {
            Some(k) => config.required(k)?,
            None => config.required(arch.n_expert_keys[0])?,
        },
        n_ff: config.required(arch.n_ff_key)?,
        n_ff_shared: if arch.shared_expert {
            config.required("shared_expert_intermediate_size")?
        } else {
            0
        },
        tied: config.bool("tie_word_embeddings")?.unwrap_or(false),
        qkv_bias: arch.qkv_bias || config.bool("attention_bias")?.unwrap_or(false),
        deepseek: if arch.deepseek {
            Some(DeepseekDims {
                q_lora: config.u64("q_lora_rank")?,
                kv_lora: config.required("kv_lora_rank")?,
                nope: config.required("qk_nope_head_dim")?,
                rope: config.required("qk_rope_head_dim")?,
                v: config.required("v_head_dim")?,
                n_dense: config.u64("first_k_dense_replace")?.unwrap_or(0),
                n_ff_dense: config.required("intermediate_size")?,
                n_ff_shared: config
                    .required(arch.n_ff_key)?
                    .saturating_mul(config.u64("n_shared_experts")?.unwrap_or(0)),
            })
        } else {
            None
        },
    };
    if arch.deepseek && dims.qkv_bias {
        return Err(config.error(
            "attention_bias",
            "biases on DeepSeek's attention projections are not supported",
        ));
    }
    if config.bool("mlp_bias")?.unwrap_or(false) {
        return Err(config.error("mlp_bias", "biases on FFN projections are not supported"));
    }
    if config.get("clip_qkv").is_some() {
        return Err(config.error("clip_qkv", "clipping q, k and v is not supported"));
    }
    if config
        .get("hidden_act")
        .is_some_and(|act| act.as_str() != Some("silu"))
    {
        return Err(config.error("hidden_act", "only silu experts are supported"));
    }
    if config.u64("decoder_sparse_step")?.unwrap_or(1) != 1
        || config
            .get("mlp_only_layers")
            .and_then(Json::as_array)
            .is_some_and(|a| !a.is_empty())
    {
        return Err(config.error(
            "decoder_sparse_step",
            "dense layers between MoE layers are not supported",
        ));
    }
    // RoPE: `rope_parameters` (transformers 5) or `rope_theta` / `rope_scaling` (4.x).
    let rope = config.get("rope_parameters").and_then(Json::as_object);
    let scaling = config.get("rope_scaling").and_then(Json::as_object);
    let rope_type = rope
        .or(scaling)
        .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let yarn = match rope_type {
        "default" => None,
        "yarn" if arch.deepseek => Some(deepseek_yarn(config, rope.or(scaling))?),
        _ => {
            return Err(config.error(
                "rope_parameters",
                &format!(
                    "RoPE type '{rope_type}' is not supported (only default{})",
                    if arch.deepseek { " and yarn" } else { "" }
                ),
            ));
        }
    };
    let theta = match rope.and_then(|r| r.get("rope_theta")) {
        Some(v) => Some(
            v.as_f64()
                .ok_or_else(|| config.error("rope_parameters.rope_theta", "not a number"))?,
        ),
        None => config.f64("rope_theta")?,
    };
    let eps = config.f64("rms_norm_eps")?.unwrap_or(1e-6);

    let mut m = HashMap::new();
    m.insert("general.architecture".into(), Meta::Str(arch.gguf));
    m.insert(key("embedding_length"), Meta::U64(n_embd));
    m.insert(key("block_count"), Meta::U64(dims.n_layer));
    m.insert(key("attention.head_count"), Meta::U64(n_head));
    m.insert(key("attention.head_count_kv"), Meta::U64(n_head_kv));
    m.insert(key("attention.key_length"), Meta::U64(head_dim));
    m.insert(key("attention.value_length"), Meta::U64(head_dim));
    m.insert(
        key("attention.layer_norm_rms_epsilon"),
        Meta::F32(eps as f32),
    );
    m.insert(
        key("rope.freq_base"),
        Meta::F32(theta.unwrap_or(10_000.0) as f32),
    );
    if let Some(n_ctx) = config.u64("max_position_embeddings")? {
        m.insert(key("context_length"), Meta::U64(n_ctx));
    }
    m.insert(key("expert_count"), Meta::U64(dims.n_expert));
    m.insert(
        key("expert_used_count"),
        Meta::U64(config.required("num_experts_per_tok")?),
    );
    m.insert(key("expert_feed_forward_length"), Meta::U64(dims.n_ff));
    if arch.shared_expert {
        m.insert(
            key("expert_shared_feed_forward_length"),
            Meta::U64(dims.n_ff_shared),
        );
    }
    let norm = config
        .bool("norm_topk_prob")?
        .unwrap_or(arch.norm_topk_default);
    m.insert(key("expert_weights_norm"), Meta::Bool(norm));
    if let Some(ds) = &dims.deepseek {
        deepseek_metadata(config, arch, ds, &mut m, &key)?;
    }
    if let Some(y) = yarn {
        m.insert(key("rope.scaling.type"), Meta::Str("yarn"));
        m.insert(key("rope.scaling.factor"), Meta::F32(y.factor as f32));
        m.insert(
            key("rope.scaling.original_context_length"),
            Meta::U64(y.original_context),
        );
        m.insert(
            key("rope.scaling.yarn_log_multiplier"),
            Meta::F32((0.1 * y.mscale_all_dim) as f32),
        );
    }
    Ok((m, dims))
}

/// DeepSeek's YaRN parameters, as llama.cpp's `deepseek2` reads them.
struct Yarn {
    factor: f64,
    original_context: u64,
    mscale_all_dim: f64,
}

/// The YaRN `rope_parameters` of a DeepSeek checkpoint, limited to what llama.cpp's
/// `deepseek2` computes: transformers scales cos and sin by `mscale(factor, mscale) /
/// mscale(factor, mscale_all_dim)`, which llama.cpp's graph takes to be 1 (the two are
/// equal in DeepSeek's releases), and the logits by `mscale(factor, mscale_all_dim)²`
/// (`yarn_log_multiplier` = 0.1 · `mscale_all_dim`, as the converter writes it); the ramp
/// between interpolated and extrapolated frequencies uses beta_fast 32, beta_slow 1 and
/// whole-dimension bounds.
fn deepseek_yarn(
    config: &Config<'_>,
    rope: Option<&serde_json::Map<String, Json>>,
) -> Result<Yarn> {
    let bad = |k: &str, what: &str| config.error(&format!("rope_parameters.{k}"), what);
    let get = |k: &str| rope.and_then(|r| r.get(k)).filter(|v| !v.is_null());
    let number = |k: &str| -> Result<Option<f64>> {
        get(k)
            .map(|v| v.as_f64().ok_or_else(|| bad(k, "not a number")))
            .transpose()
    };
    let original_context = get("original_max_position_embeddings")
        .and_then(Json::as_u64)
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            bad(
                "original_max_position_embeddings",
                "missing or not a positive integer",
            )
        })?;
    let factor = match number("factor")? {
        Some(f) => f,
        // transformers: the ratio of the context lengths.
        None => config.required("max_position_embeddings")? as f64 / original_context as f64,
    };
    if !(factor.is_finite() && factor > 1.0) {
        return Err(bad("factor", "YaRN needs a factor above 1"));
    }
    let (mscale, mscale_all_dim) = (number("mscale")?, number("mscale_all_dim")?);
    let mscale_all_dim = match (mscale, mscale_all_dim) {
        (Some(a), Some(b)) if a == b && a > 0.0 => b,
        _ => {
            return Err(bad(
                "mscale",
                "mscale and mscale_all_dim must be given and equal (cos/sin unscaled, as llama.cpp computes DeepSeek's YaRN)",
            ));
        }
    };
    if get("attention_factor").is_some() {
        return Err(bad(
            "attention_factor",
            "an explicit YaRN attention factor is not supported",
        ));
    }
    for (k, default) in [("beta_fast", 32.0), ("beta_slow", 1.0)] {
        if number(k)?.is_some_and(|v| v != default) {
            return Err(bad(k, &format!("only {default} is supported")));
        }
    }
    if get("truncate").is_some_and(|v| v.as_bool() != Some(true)) {
        return Err(bad("truncate", "only true is supported"));
    }
    Ok(Yarn {
        factor,
        original_context,
        mscale_all_dim,
    })
}

/// The `deepseek2` keys `convert_hf_to_gguf.py` writes for a DeepSeek-V3 checkpoint (the
/// attention sizes replace the generic ones).
fn deepseek_metadata(
    config: &Config<'_>,
    arch: &Arch,
    ds: &DeepseekDims,
    m: &mut HashMap<String, Meta>,
    key: &impl Fn(&str) -> String,
) -> Result<()> {
    // What transformers computes: V3 scores by sigmoid and picks by group (`noaux_tc`);
    // V2 by softmax, picking greedily or by group (`group_limited_greedy`), and never
    // renormalises the chosen weights (it ignores `norm_topk_prob`).
    let (scoring, methods): (&str, &[&str]) = if arch.selection_bias {
        ("sigmoid", &["noaux_tc"])
    } else {
        ("softmax", &["greedy", "group_limited_greedy"])
    };
    if config
        .get("scoring_func")
        .is_some_and(|f| f.as_str() != Some(scoring))
    {
        return Err(config.error(
            "scoring_func",
            &format!("only {scoring} routing is supported for this model_type"),
        ));
    }
    let method = match config.get("topk_method") {
        None => methods[0],
        Some(v) => v.as_str().filter(|t| methods.contains(t)).ok_or_else(|| {
            config.error(
                "topk_method",
                &format!("supported for this model_type: {}", methods.join(", ")),
            )
        })?,
    };
    let grouped = method != "greedy";
    if !arch.selection_bias {
        if config.bool("norm_topk_prob")?.unwrap_or(false) {
            return Err(config.error(
                "norm_topk_prob",
                "transformers' DeepSeek-V2 never renormalises the top-k weights; true is not supported",
            ));
        }
        m.insert(key("expert_weights_norm"), Meta::Bool(false));
    }
    let k_mla = ds.nope.saturating_add(ds.rope);
    let entries = [
        ("attention.head_count_kv", Meta::U64(1)),
        (
            "attention.key_length",
            Meta::U64(ds.kv_lora.saturating_add(ds.rope)),
        ),
        ("attention.value_length", Meta::U64(ds.kv_lora)),
        ("attention.key_length_mla", Meta::U64(k_mla)),
        ("attention.value_length_mla", Meta::U64(ds.v)),
        ("attention.kv_lora_rank", Meta::U64(ds.kv_lora)),
        ("rope.dimension_count", Meta::U64(ds.rope)),
        ("leading_dense_block_count", Meta::U64(ds.n_dense)),
        ("feed_forward_length", Meta::U64(ds.n_ff_dense)),
        (
            "expert_shared_count",
            Meta::U64(config.u64("n_shared_experts")?.unwrap_or(0)),
        ),
        // llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID (2) or _SOFTMAX (1).
        (
            "expert_gating_func",
            Meta::U64(if arch.selection_bias { 2 } else { 1 }),
        ),
        (
            "expert_weights_scale",
            Meta::F32(config.f64("routed_scaling_factor")?.unwrap_or(1.0) as f32),
        ),
        (
            "expert_group_count",
            Meta::U64(if grouped {
                config.u64("n_group")?.unwrap_or(1)
            } else {
                1
            }),
        ),
        (
            "expert_group_used_count",
            Meta::U64(if grouped {
                config.u64("topk_group")?.unwrap_or(1)
            } else {
                1
            }),
        ),
    ];
    for (k, v) in entries {
        m.insert(key(k), v);
    }
    if let Some(q) = ds.q_lora {
        m.insert(key("attention.q_lora_rank"), Meta::U64(q));
    }
    Ok(())
}

/// Tensor name → the shard the index puts it in (empty for a single file).
type WeightMap = HashMap<String, PathBuf>;

/// The safetensors files of `dir`: those the index names (each once, in first-mention
/// order), or the single `model.safetensors`; and the index's weight map.
fn shard_paths(dir: &Path) -> Result<(Vec<PathBuf>, WeightMap)> {
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        let single = dir.join("model.safetensors");
        if !single.exists() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: "neither model.safetensors.index.json nor model.safetensors".into(),
            });
        }
        return Ok((vec![single], WeightMap::new()));
    }
    let text = fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let bad = |message: String| Error::Checkpoint {
        path: index.clone(),
        message,
    };
    let json: Json = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(Json::as_object)
        .ok_or_else(|| bad("no 'weight_map' object".into()))?;
    let mut files: Vec<PathBuf> = Vec::new();
    let mut weight_map = WeightMap::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map['{tensor}'] is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!(
                "shard '{file}' is not a file in the directory"
            )));
        }
        let path = dir.join(file);
        weight_map.insert(tensor.clone(), path.clone());
        if !files.contains(&path) {
            if !path.exists() {
                return Err(Error::Checkpoint {
                    path,
                    message: format!("missing shard (holds '{tensor}')"),
                });
            }
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(bad("the weight map is empty".into()));
    }
    Ok((files, weight_map))
}

/// The llama.cpp name of Hugging Face tensor `name`, or where it goes among the experts:
/// `(stack name, expert)`.
enum Target {
    Tensor(String),
    Expert(String, usize),
}

fn target(name: &str, arch: &Arch) -> Option<Target> {
    let global = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(Target::Tensor(g.into()));
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let blk = |s: &str| format!("blk.{layer}.{s}");
    if let Some(e) = rest
        .strip_prefix(arch.moe)
        .and_then(|r| r.strip_prefix(".experts."))
    {
        let (expert, matrix) = e.split_once('.')?;
        let expert: usize = expert.parse().ok()?;
        let which = arch
            .expert_names
            .iter()
            .position(|n| matrix.strip_prefix(n) == Some(".weight"))?;
        let stack = ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"][which];
        return Some(Target::Expert(blk(&format!("{stack}.weight")), expert));
    }
    let suffix = match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" if arch.qk_norm.is_some() => "attn_q_norm.weight",
        "self_attn.k_norm.weight" if arch.qk_norm.is_some() => "attn_k_norm.weight",
        "mlp.shared_expert.gate_proj.weight" if arch.shared_expert => "ffn_gate_shexp.weight",
        "mlp.shared_expert.up_proj.weight" if arch.shared_expert => "ffn_up_shexp.weight",
        "mlp.shared_expert.down_proj.weight" if arch.shared_expert => "ffn_down_shexp.weight",
        "mlp.shared_expert_gate.weight" if arch.shared_expert => "ffn_gate_inp_shexp.weight",
        "self_attn.q_a_proj.weight" if arch.deepseek => "attn_q_a.weight",
        "self_attn.q_a_layernorm.weight" if arch.deepseek => "attn_q_a_norm.weight",
        "self_attn.q_b_proj.weight" if arch.deepseek => "attn_q_b.weight",
        "self_attn.kv_a_proj_with_mqa.weight" if arch.deepseek => "attn_kv_a_mqa.weight",
        "self_attn.kv_a_layernorm.weight" if arch.deepseek => "attn_kv_a_norm.weight",
        "self_attn.kv_b_proj.weight" if arch.deepseek => "attn_kv_b.weight",
        "mlp.gate.e_score_correction_bias" if arch.selection_bias => "exp_probs_b.bias",
        "mlp.shared_experts.gate_proj.weight" if arch.deepseek => "ffn_gate_shexp.weight",
        "mlp.shared_experts.up_proj.weight" if arch.deepseek => "ffn_up_shexp.weight",
        "mlp.shared_experts.down_proj.weight" if arch.deepseek => "ffn_down_shexp.weight",
        "mlp.gate_proj.weight" if arch.deepseek => "ffn_gate.weight",
        "mlp.up_proj.weight" if arch.deepseek => "ffn_up.weight",
        "mlp.down_proj.weight" if arch.deepseek => "ffn_down.weight",
        r if r.strip_prefix(arch.moe) == Some(".gate.weight") => "ffn_gate_inp.weight",
        _ => return None,
    };
    Some(Target::Tensor(blk(suffix)))
}

/// The Hugging Face tensors a model of `dims` must have, with their shapes
/// (outermost first), in the order of a forward pass.
fn expected(arch: &Arch, d: &Dims) -> Vec<(String, Vec<u64>)> {
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![d.n_vocab, d.n_embd],
    )];
    // Saturating: absurd sizes only make shapes that no tensor has.
    let (q, kv) = (
        d.n_head.saturating_mul(d.head_dim),
        d.n_head_kv.saturating_mul(d.head_dim),
    );
    for l in 0..d.n_layer {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        if let Some(ds) = &d.deepseek {
            deepseek_layer(&mut out, d, ds, l, arch);
            continue;
        }
        out.push((p("input_layernorm.weight"), vec![d.n_embd]));
        out.push((p("self_attn.q_proj.weight"), vec![q, d.n_embd]));
        out.push((p("self_attn.k_proj.weight"), vec![kv, d.n_embd]));
        out.push((p("self_attn.v_proj.weight"), vec![kv, d.n_embd]));
        if d.qkv_bias {
            out.push((p("self_attn.q_proj.bias"), vec![q]));
            out.push((p("self_attn.k_proj.bias"), vec![kv]));
            out.push((p("self_attn.v_proj.bias"), vec![kv]));
        }
        match arch.qk_norm {
            Some(QkNorm::PerHead) => {
                out.push((p("self_attn.q_norm.weight"), vec![d.head_dim]));
                out.push((p("self_attn.k_norm.weight"), vec![d.head_dim]));
            }
            Some(QkNorm::Whole) => {
                out.push((p("self_attn.q_norm.weight"), vec![q]));
                out.push((p("self_attn.k_norm.weight"), vec![kv]));
            }
            None => {}
        }
        out.push((p("self_attn.o_proj.weight"), vec![d.n_embd, q]));
        out.push((p("post_attention_layernorm.weight"), vec![d.n_embd]));
        out.push((
            p(&format!("{}.gate.weight", arch.moe)),
            vec![d.n_expert, d.n_embd],
        ));
        let [g, u, dn] = arch.expert_names;
        for e in 0..d.n_expert {
            let x = |m: &str| p(&format!("{}.experts.{e}.{m}.weight", arch.moe));
            out.push((x(g), vec![d.n_ff, d.n_embd]));
            out.push((x(u), vec![d.n_ff, d.n_embd]));
            out.push((x(dn), vec![d.n_embd, d.n_ff]));
        }
        if arch.shared_expert {
            let s = d.n_ff_shared;
            out.push((p("mlp.shared_expert.gate_proj.weight"), vec![s, d.n_embd]));
            out.push((p("mlp.shared_expert.up_proj.weight"), vec![s, d.n_embd]));
            out.push((p("mlp.shared_expert.down_proj.weight"), vec![d.n_embd, s]));
            out.push((p("mlp.shared_expert_gate.weight"), vec![1, d.n_embd]));
        }
    }
    out.push(("model.norm.weight".into(), vec![d.n_embd]));
    if !d.tied {
        out.push(("lm_head.weight".into(), vec![d.n_vocab, d.n_embd]));
    }
    out
}

/// The tensors of DeepSeek layer `l` (latent attention; a dense FFN in the first
/// `first_k_dense_replace` layers, else routed experts with a selection bias and shared
/// experts), in the order of a forward pass.
fn deepseek_layer(
    out: &mut Vec<(String, Vec<u64>)>,
    d: &Dims,
    ds: &DeepseekDims,
    l: u64,
    arch: &Arch,
) {
    let p = |s: &str| format!("model.layers.{l}.{s}");
    let e = d.n_embd;
    let q_width = d.n_head.saturating_mul(ds.nope.saturating_add(ds.rope));
    out.push((p("input_layernorm.weight"), vec![e]));
    match ds.q_lora {
        Some(r) => {
            out.push((p("self_attn.q_a_proj.weight"), vec![r, e]));
            out.push((p("self_attn.q_a_layernorm.weight"), vec![r]));
            out.push((p("self_attn.q_b_proj.weight"), vec![q_width, r]));
        }
        None => out.push((p("self_attn.q_proj.weight"), vec![q_width, e])),
    }
    let kv_a = ds.kv_lora.saturating_add(ds.rope);
    out.push((p("self_attn.kv_a_proj_with_mqa.weight"), vec![kv_a, e]));
    out.push((p("self_attn.kv_a_layernorm.weight"), vec![ds.kv_lora]));
    let kv_b = d.n_head.saturating_mul(ds.nope.saturating_add(ds.v));
    out.push((p("self_attn.kv_b_proj.weight"), vec![kv_b, ds.kv_lora]));
    let o_in = d.n_head.saturating_mul(ds.v);
    out.push((p("self_attn.o_proj.weight"), vec![e, o_in]));
    out.push((p("post_attention_layernorm.weight"), vec![e]));
    if l < ds.n_dense {
        let f = ds.n_ff_dense;
        out.push((p("mlp.gate_proj.weight"), vec![f, e]));
        out.push((p("mlp.up_proj.weight"), vec![f, e]));
        out.push((p("mlp.down_proj.weight"), vec![e, f]));
        return;
    }
    out.push((p("mlp.gate.weight"), vec![d.n_expert, e]));
    if arch.selection_bias {
        out.push((p("mlp.gate.e_score_correction_bias"), vec![d.n_expert]));
    }
    let [g, u, dn] = arch.expert_names;
    for x in 0..d.n_expert {
        let m = |n: &str| p(&format!("{}.experts.{x}.{n}.weight", arch.moe));
        out.push((m(g), vec![d.n_ff, e]));
        out.push((m(u), vec![d.n_ff, e]));
        out.push((m(dn), vec![e, d.n_ff]));
    }
    if ds.n_ff_shared > 0 {
        let s = ds.n_ff_shared;
        out.push((p("mlp.shared_experts.gate_proj.weight"), vec![s, e]));
        out.push((p("mlp.shared_experts.up_proj.weight"), vec![s, e]));
        out.push((p("mlp.shared_experts.down_proj.weight"), vec![e, s]));
    }
}

/// Parses every shard and maps its tensors to llama.cpp names, checking them against
/// the config.
fn weights<'a>(
    maps: &'a [Mmap],
    paths: &[PathBuf],
    weight_map: &WeightMap,
    arch: &Arch,
    dims: &Dims,
    metadata: HashMap<String, Meta>,
) -> Result<Weights<'a>> {
    let st_error = |path: &Path, e: SafetensorsError| Error::Safetensors {
        path: path.to_path_buf(),
        source: e,
    };
    // Every Hugging Face tensor by name, with its shard.
    let mut all: HashMap<String, (usize, safetensors::Tensor<'a>)> = HashMap::new();
    for (i, map) in maps.iter().enumerate() {
        for t in safetensors::parse(map).map_err(|e| st_error(&paths[i], e))? {
            if let Some((other, _)) = all.get(&t.name) {
                return Err(Error::Checkpoint {
                    path: paths[i].clone(),
                    message: format!("tensor '{}' is also in {}", t.name, paths[*other].display()),
                });
            }
            all.insert(t.name.clone(), (i, t));
        }
    }
    // A config claiming far more layers or experts than there are tensors cannot match
    // and must not make us list billions of names (a little more, and the first missing
    // tensor is named below).
    let present = all.len() as u64;
    let limit = present.saturating_mul(4).saturating_add(64);
    let routed = dims
        .n_layer
        .checked_mul(dims.n_expert)
        .and_then(|n| n.checked_mul(3));
    if routed.is_none_or(|n| n > limit) || dims.n_layer > limit {
        return Err(Error::Checkpoint {
            path: paths.first().cloned().unwrap_or_default(),
            message: format!(
                "config.json's {} layers of {} experts need far more tensors than the {present} present",
                dims.n_layer, dims.n_expert
            ),
        });
    }
    let n_expert = dims.n_expert as usize;
    let mut tensors = HashMap::new();
    let mut experts: HashMap<String, Vec<Option<TensorView<'a>>>> = HashMap::new();
    for (name, shape) in expected(arch, dims) {
        let Some((shard, t)) = all.get(&name) else {
            return Err(match weight_map.get(&name) {
                Some(shard) => Error::Checkpoint {
                    path: shard.clone(),
                    message: format!(
                        "tensor '{name}' (which config.json implies) is missing, though the index puts it in this shard"
                    ),
                },
                None => Error::Checkpoint {
                    path: paths.first().map_or_else(PathBuf::new, |p| {
                        p.parent().map(Path::to_path_buf).unwrap_or_default()
                    }),
                    message: format!("tensor '{name}' (which config.json implies) is missing"),
                },
            });
        };
        let path = &paths[*shard];
        if t.shape != shape {
            return Err(Error::Checkpoint {
                path: path.clone(),
                message: format!(
                    "tensor '{name}' has shape {:?}, config.json implies {shape:?}",
                    t.shape
                ),
            });
        }
        let view = t.view().map_err(|e| st_error(path, e))?;
        match target(&name, arch) {
            Some(Target::Tensor(n)) => {
                tensors.insert(n, view);
            }
            Some(Target::Expert(stack, e)) => {
                let list = experts.entry(stack).or_insert_with(|| vec![None; n_expert]);
                if let Some(slot) = list.get_mut(e) {
                    *slot = Some(view);
                }
            }
            None => {}
        }
    }
    let experts = experts
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().flatten().collect()))
        .collect();
    Ok(Weights {
        tensors,
        experts,
        metadata,
    })
}

//! The shape and constants of a decoder-only transformer, read from `{arch}.*` keys the
//! way llama.cpp reads them (defaults included), and checked against each other.

use crate::error::name_of;
use crate::gguf::File;
use crate::gguf::names::arch_key;
use crate::source::TensorSource;
use crate::{Error, Result};

/// Architectures [`ModelConfig::from_gguf`] accepts: `llama` covers dense Llama/Mistral
/// models and Mixtral (the same graph with expert stacks in the FFN); the others differ
/// in the details [`ModelConfig`] records (RoPE layout, Granite's scales) and in optional
/// tensors the blocks pick up (attention biases, QK norms, shared experts).
pub const SUPPORTED_ARCHITECTURES: [&str; 6] = [
    "llama",
    "qwen2moe",
    "qwen3moe",
    "olmoe",
    "granitemoe",
    "deepseek2",
];

/// DeepSeek-V2/V3 multi-head latent attention: keys and values are rebuilt per head from
/// a shared compressed latent, which is what the KV cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaConfig {
    /// Rank of the query's low-rank down-projection (0: a full `attn_q` instead).
    pub q_lora_rank: usize,
    /// Width of the compressed KV latent.
    pub kv_lora_rank: usize,
    /// Per-head query/key width: the "nope" part plus the RoPE part.
    pub key_length: usize,
    /// Per-head value width.
    pub value_length: usize,
}

/// How RoPE pairs the elements of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(2i, 2i + 1)`: llama.cpp's "normal" mode (Llama, Mixtral, Granite).
    Normal,
    /// Halves `(i, i + dims/2)`: GPT-NeoX's layout (Qwen, OLMoE).
    Neox,
}

/// Model hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    /// Vocabulary size (rows of `token_embd`).
    pub n_vocab: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_head_kv: usize,
    /// Width of one query/key head.
    pub head_dim: usize,
    /// Width of one value head.
    pub head_dim_v: usize,
    /// Leading dimensions of each head that RoPE rotates.
    pub rope_dims: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE as applied: layout, base, frequency scaling (`rope.dims` is `rope_dims`).
    pub rope: super::math::Rope,
    /// Attention logit scale (`1/sqrt(head_dim)` unless the file says otherwise).
    pub attention_scale: f32,
    /// Factor on the token embeddings (Granite; 1 elsewhere).
    pub embedding_scale: f32,
    /// Factor on each block's attention and FFN output before the residual add (Granite).
    pub residual_scale: f32,
    /// Divisor of the logits (Granite).
    pub logit_scale: f32,
    /// Latent attention (DeepSeek-V2/V3). The KV cache then holds, per position,
    /// `[latent, k_pe]` as the key (`head_dim` = kv_lora_rank + rope_dims) and the latent as
    /// the value (`head_dim_v` = kv_lora_rank), with one KV head.
    pub mla: Option<MlaConfig>,
    /// Context length the model was trained with (informative; the workspace decides).
    pub n_ctx_train: usize,
}

impl ModelConfig {
    /// Reads the configuration of `file` (its `general.architecture` must be one of
    /// [`SUPPORTED_ARCHITECTURES`]); `n_vocab` is `token_embd`'s row count.
    pub fn from_gguf(file: &File<'_>) -> Result<Self> {
        Self::from_source(file)
    }

    /// [`from_gguf`](Self::from_gguf) over any [`TensorSource`] (the same keys and tensor
    /// names).
    pub fn from_source<'a, S: TensorSource<'a> + ?Sized>(file: &S) -> Result<Self> {
        let arch = file.architecture().ok_or(Error::MissingKey {
            key: name_of("general.architecture"),
        })?;
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(Error::UnsupportedArchitecture {
                arch: name_of(arch),
            });
        }
        let key = |k: &str| -> Result<Option<u64>> {
            let name = arch_key(arch, k).ok_or(Error::MissingKey { key: name_of(k) })?;
            match file.value(&name) {
                None => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or(Error::WrongValueType {
                    key: name_of(&name),
                }),
            }
        };
        let float = |k: &str| -> Result<Option<f32>> {
            let name = arch_key(arch, k).ok_or(Error::MissingKey { key: name_of(k) })?;
            match file.value(&name) {
                None => Ok(None),
                Some(v) => v.as_f32().map(Some).ok_or(Error::WrongValueType {
                    key: name_of(&name),
                }),
            }
        };
        let required = |k: &str| -> Result<usize> {
            let v = key(k)?.ok_or_else(|| Error::MissingKey {
                key: name_of(&arch_key(arch, k).unwrap_or_default()),
            })?;
            usize::try_from(v).map_err(|_| Error::InvalidModelConfig {
                reason: "a size does not fit in usize",
            })
        };
        let optional = |k: &str, default: usize| -> Result<usize> {
            match key(k)? {
                None => Ok(default),
                Some(v) => usize::try_from(v).map_err(|_| Error::InvalidModelConfig {
                    reason: "a size does not fit in usize",
                }),
            }
        };

        let scaling = match arch_key(arch, "rope.scaling.type").and_then(|k| file.value(&k)) {
            None => "none",
            Some(v) => v.as_str().ok_or(Error::WrongValueType {
                key: name_of(&arch_key(arch, "rope.scaling.type").unwrap_or_default()),
            })?,
        };
        if !matches!(scaling, "none" | "linear" | "yarn") {
            return Err(Error::InvalidModelConfig {
                reason: "RoPE scaling must be none, linear or yarn",
            });
        }
        let n_embd = required("embedding_length")?;
        let n_layer = required("block_count")?;
        let n_head = required("attention.head_count")?;
        if n_head == 0 || !n_embd.is_multiple_of(n_head) && key("attention.key_length")?.is_none() {
            return Err(Error::InvalidModelConfig {
                reason: "attention.head_count must be non-zero and divide embedding_length",
            });
        }
        let mut n_head_kv = optional("attention.head_count_kv", n_head)?;
        let mut head_dim = optional("attention.key_length", n_embd / n_head)?;
        let mut head_dim_v = optional("attention.value_length", head_dim)?;
        let rope_dims = optional("rope.dimension_count", head_dim)?;
        let mla = match key("attention.kv_lora_rank")? {
            Some(_) if arch == "deepseek2" => {
                let kv_lora_rank = required("attention.kv_lora_rank")?;
                // Files written before llama.cpp split `attn_kv_b` (no `*_mla` keys) give
                // the per-head sizes as key/value_length and n_head KV heads (llama.cpp runs
                // them non-absorbed); here the cache holds one latent KV head either way.
                let (key_length, value_length) = if key("attention.key_length_mla")?.is_some() {
                    (
                        required("attention.key_length_mla")?,
                        required("attention.value_length_mla")?,
                    )
                } else {
                    let per_head = (head_dim, head_dim_v);
                    n_head_kv = 1;
                    head_dim = kv_lora_rank.saturating_add(rope_dims);
                    head_dim_v = kv_lora_rank;
                    per_head
                };
                Some(MlaConfig {
                    q_lora_rank: optional("attention.q_lora_rank", 0)?,
                    kv_lora_rank,
                    key_length,
                    value_length,
                })
            }
            _ if arch == "deepseek2" => {
                return Err(Error::InvalidModelConfig {
                    reason: "deepseek2 files without latent attention (attention.kv_lora_rank) are not supported",
                });
            }
            _ => None,
        };
        let attention_width = mla.map_or(head_dim, |m| m.key_length);
        let n_vocab = file
            .tensor("token_embd.weight")
            .map(|t| t.ne(1) as usize)
            .ok_or(Error::MissingTensor {
                tensor: name_of("token_embd.weight"),
            })?;
        let factor = float("rope.scaling.factor")?.unwrap_or(1.0);
        let freq_scale = if scaling == "none" || factor == 0.0 {
            1.0
        } else {
            1.0 / factor
        };
        let rope_base = float("rope.freq_base")?.unwrap_or(10_000.0);
        let n_ctx_train = optional("context_length", 0)?;
        let n_ctx_orig = optional("rope.scaling.original_context_length", n_ctx_train)?;
        let yarn = scaling == "yarn";
        let rope_layout = match arch {
            "qwen2moe" | "qwen3moe" | "olmoe" => RopeLayout::Neox,
            _ => RopeLayout::Normal,
        };
        // DeepSeek's YaRN: cos and sin stay unscaled (the attention factor cancels the
        // rotation's mscale) and the logit scale takes mscale² instead.
        let yarn_log_mul = float("rope.scaling.yarn_log_multiplier")?.unwrap_or(0.0);
        let (attn_factor, kq_mscale) = if yarn && arch == "deepseek2" {
            let mscale = 1.0 + yarn_log_mul * libm::logf(1.0 / freq_scale);
            (
                1.0 / (1.0 + 0.1 * libm::logf(1.0 / freq_scale)),
                mscale * mscale,
            )
        } else {
            (1.0, 1.0)
        };
        let rope = super::math::Rope {
            layout: rope_layout,
            dims: rope_dims,
            base: rope_base,
            freq_scale,
            ext_factor: if yarn { 1.0 } else { 0.0 },
            attn_factor,
            corr_dims: if yarn {
                super::math::yarn_corr_dims(rope_dims, n_ctx_orig, rope_base)
            } else {
                [0.0, 0.0]
            },
        };
        let config = ModelConfig {
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            rope_dims,
            rms_eps: float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            rope,
            attention_scale: float("attention.scale")?
                .unwrap_or(kq_mscale / libm::sqrtf(attention_width as f32)),
            embedding_scale: float("embedding_scale")?.unwrap_or(1.0),
            residual_scale: float("residual_scale")?.unwrap_or(1.0),
            logit_scale: float("logit_scale")?.unwrap_or(1.0),
            mla,
            n_ctx_train,
        };
        config.check()?;
        Ok(config)
    }

    /// The checks every runnable configuration passes.
    fn check(&self) -> Result<()> {
        let fail = |reason| Err(Error::InvalidModelConfig { reason });
        if self.n_layer == 0 || self.n_embd == 0 || self.n_vocab == 0 {
            return fail("block_count, embedding_length and the vocabulary must be non-zero");
        }
        if self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            return fail("attention.head_count_kv must be non-zero and divide head_count");
        }
        if self.head_dim == 0 || self.head_dim_v == 0 {
            return fail("attention key and value lengths must be non-zero");
        }
        if self.rope_dims > self.head_dim || !self.rope_dims.is_multiple_of(2) {
            return fail("rope.dimension_count must be even and at most the head width");
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !(positive(self.rope.base) && positive(self.rope.freq_scale)) {
            return fail("rope.freq_base and rope.scaling.factor must be positive numbers");
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return fail("attention.layer_norm_rms_epsilon must be a non-negative number");
        }
        let scales = [
            self.attention_scale,
            self.embedding_scale,
            self.residual_scale,
            self.logit_scale,
        ];
        if let Some(m) = self.mla {
            let nope = m.key_length.checked_sub(self.rope_dims);
            if self.n_head_kv != 1
                || self.head_dim != m.kv_lora_rank + self.rope_dims
                || self.head_dim_v != m.kv_lora_rank
                || nope.is_none()
                || m.value_length == 0
            {
                return fail(
                    "latent attention needs one KV head of kv_lora_rank + rope dims (key) and kv_lora_rank (value), and key_length_mla ≥ rope dims",
                );
            }
        }
        if scales.iter().any(|s| !s.is_finite()) || self.logit_scale == 0.0 {
            return fail(
                "attention, embedding, residual and logit scales must be finite (logit_scale non-zero)",
            );
        }
        Ok(())
    }

    /// Query width: `n_head · head_dim`.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Key width: `n_head_kv · head_dim`.
    pub fn k_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Value width (and attention output width per token is `n_head · head_dim_v`).
    pub fn v_dim(&self) -> usize {
        self.n_head_kv * self.head_dim_v
    }

    /// Attention output width: `n_head · head_dim_v` (the latent per head with MLA).
    pub fn attn_dim(&self) -> usize {
        self.n_head * self.head_dim_v
    }

    /// Input width of `attn_output`: the attention output, or with MLA the per-head
    /// values rebuilt from it (`n_head · value_length`).
    pub fn out_dim(&self) -> usize {
        self.mla
            .map_or(self.attn_dim(), |m| self.n_head * m.value_length)
    }
}

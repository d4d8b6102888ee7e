//! Reading a [`RouterConfig`] and a [`Router`] from GGUF metadata and tensors, with
//! llama.cpp's key names and per-architecture defaults.

use super::config::{
    GroupLimit, GroupScore, LLAMA_CPP_MIN_WEIGHT_SUM, Method, Normalize, RouterConfig, ScoreFunc,
};
use super::route::Router;
use crate::error::{Error, Result, name_of};
use crate::gguf::names::{Name, arch_key, layer_tensor};
use crate::gguf::{ARCHITECTURE_KEY, File, Value};
use crate::source::TensorSource;
use crate::tensor::TensorView;

/// Metadata `{arch}.{suffix}`: its key (for errors) and value. A key too long to build
/// cannot be in a file we read: absent, and named by its suffix.
fn arch_value<'a, S: TensorSource<'a> + ?Sized>(
    file: &S,
    arch: &str,
    suffix: &str,
) -> (Name, Option<Value<'a>>) {
    match arch_key(arch, suffix) {
        Some(key) => {
            let value = file.value(&key);
            (key, value)
        }
        None => (short_name(suffix), None),
    }
}

/// Tensor `blk.{layer}.{suffix}`: its name (for errors) and info, absent as above.
fn layer_tensor_info<'a, S: TensorSource<'a> + ?Sized>(
    file: &S,
    layer: usize,
    suffix: &str,
) -> (Name, Option<TensorView<'a>>) {
    match layer_tensor(layer, suffix) {
        Some(name) => {
            let info = file.tensor(&name);
            (name, info)
        }
        None => (short_name(suffix), None),
    }
}

fn short_name(s: &str) -> Name {
    let mut name = Name::new();
    let _ = name.push_str(s);
    name
}

fn wrong(key: &str) -> Error {
    Error::WrongValueType { key: name_of(key) }
}

/// `{arch}.{suffix}` as a non-negative integer, if present.
fn get_u64<'a, S: TensorSource<'a> + ?Sized>(
    file: &S,
    arch: &str,
    suffix: &str,
) -> Result<Option<u64>> {
    let (key, value) = arch_value(file, arch, suffix);
    value
        .map(|v| v.as_u64().ok_or_else(|| wrong(&key)))
        .transpose()
}

/// The router weight `blk.{layer}.ffn_gate_inp.weight`, which must exist.
fn gate_weight<'a, S: TensorSource<'a> + ?Sized>(file: &S, layer: usize) -> Result<TensorView<'a>> {
    let (name, gate) = layer_tensor_info(file, layer, "ffn_gate_inp.weight");
    gate.ok_or_else(|| Error::MissingTensor {
        tensor: name_of(&name),
    })
}

/// Whether llama.cpp renormalises the top-k weights of `arch` when the file does not
/// say (`expert_weights_norm` absent): Mixtral (`llama`), Qwen3-MoE, Granite-MoE and
/// Phi-3.5-MoE do; Qwen2-MoE, OLMoE and DeepSeek do not.
fn renormalises_by_default(arch: &str) -> bool {
    matches!(arch, "llama" | "qwen3moe" | "granitemoe" | "phimoe")
}

impl RouterConfig {
    /// The router configuration of layer `layer` of a llama.cpp GGUF file.
    ///
    /// Reads `{arch}.expert_count`, `expert_used_count` (required), `expert_gating_func`
    /// (absent: softmax), `expert_weights_norm` (absent: the architecture's default),
    /// `expert_weights_scale` (absent or 0: 1), `expert_group_count` and
    /// `expert_group_used_count`; the hidden size is the row length of
    /// `blk.N.ffn_gate_inp.weight`, which must exist (a dense layer has none).
    /// Renormalisation clamps the sum as llama.cpp does. Groups are scored by their top-2
    /// sum when the layer has a selection bias (`blk.N.exp_probs_b.bias`) or sigmoid
    /// scores (DeepSeek-V3), else by their maximum (DeepSeek-V2), as DeepSeek's own
    /// inference code does.
    pub fn from_gguf(file: &File, layer: usize) -> Result<Self> {
        Self::from_source(file, layer)
    }

    /// [`from_gguf`](Self::from_gguf) over any [`TensorSource`].
    pub fn from_source<'a, S: TensorSource<'a> + ?Sized>(file: &S, layer: usize) -> Result<Self> {
        let arch = file.architecture().ok_or_else(|| Error::MissingKey {
            key: name_of(ARCHITECTURE_KEY),
        })?;
        let required = |suffix: &str| -> Result<u64> {
            get_u64(file, arch, suffix)?.ok_or_else(|| Error::MissingKey {
                key: name_of(&arch_value(file, arch, suffix).0),
            })
        };
        let optional = |suffix: &str| get_u64(file, arch, suffix);
        let n_expert = required("expert_count")?;
        let k = required("expert_used_count")?;
        let gate = gate_weight(file, layer)?;
        let score = ScoreFunc::from_gguf(optional("expert_gating_func")?.unwrap_or(0))?;
        let renormalise = match arch_value(file, arch, "expert_weights_norm") {
            (key, Some(v)) => v.as_bool().ok_or_else(|| wrong(&key))?,
            (_, None) => renormalises_by_default(arch),
        };
        let scale = match arch_value(file, arch, "expert_weights_scale") {
            (key, Some(v)) => v.as_f32().ok_or_else(|| wrong(&key))?,
            (_, None) => 0.0,
        };
        let has_bias = layer_tensor_info(file, layer, "exp_probs_b.bias")
            .1
            .is_some();
        let n_group = optional("expert_group_count")?.unwrap_or(0);
        let groups = if n_group > 1 {
            let used = optional("expert_group_used_count")?.unwrap_or(n_group);
            let as_u32 = |v: u64| {
                u32::try_from(v).map_err(|_| Error::InvalidRouterConfig {
                    reason: "expert group count does not fit u32",
                })
            };
            Some(GroupLimit {
                n_group: as_u32(n_group)?,
                topk_group: as_u32(used)?,
                score: if has_bias || score == ScoreFunc::Sigmoid {
                    GroupScore::SumTop(2)
                } else {
                    GroupScore::Max
                },
            })
        } else {
            None
        };
        let too_big = |_| Error::InvalidRouterConfig {
            reason: "expert count does not fit usize",
        };
        let config = RouterConfig {
            n_embd: usize::try_from(gate.ne(0)).map_err(too_big)?,
            n_expert: usize::try_from(n_expert).map_err(too_big)?,
            k: usize::try_from(k).map_err(too_big)?,
            score,
            normalize: if renormalise {
                Normalize::ClampedSum {
                    min_sum: LLAMA_CPP_MIN_WEIGHT_SUM,
                }
            } else {
                Normalize::None
            },
            // llama.cpp skips scaling for 0 (unset) and 1.
            scale: if scale == 0.0 { 1.0 } else { scale },
            groups,
            method: Method::TopK,
            noise: None,
        };
        config.validate()?;
        Ok(config)
    }
}

impl<'a> Router<'a> {
    /// The router of layer `layer`: [`RouterConfig::from_gguf`] plus its weight
    /// `blk.N.ffn_gate_inp.weight` and, when present, its selection bias
    /// `blk.N.exp_probs_b.bias`. Built with [`Router::token_choice`], so loading a router
    /// from a GGUF file links no S-BASE or hash-routing code.
    pub fn from_gguf(file: &File<'a>, layer: usize) -> Result<Self> {
        Self::from_source(file, layer)
    }

    /// [`from_gguf`](Self::from_gguf) over any [`TensorSource`].
    pub fn from_source<S: TensorSource<'a> + ?Sized>(file: &S, layer: usize) -> Result<Self> {
        let config = RouterConfig::from_source(file, layer)?;
        let gate = gate_weight(file, layer)?;
        // Every router read here is token-choice top-k.
        let mut router = Router::token_choice(config)?.with_weight(gate)?;
        if let (_, Some(bias)) = layer_tensor_info(file, layer, "exp_probs_b.bias") {
            router = router.with_bias(bias)?;
        }
        Ok(router)
    }
}

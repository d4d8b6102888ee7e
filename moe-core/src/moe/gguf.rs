//! Building a [`MoeLayer`] from a parsed GGUF file, with llama.cpp's tensor names and
//! metadata keys.
//!
//! Shapes come from the tensors themselves; the metadata keys that restate them
//! (`expert_count`, `embedding_length`, `expert_feed_forward_length`,
//! `expert_shared_feed_forward_length`, `expert_shared_count`) are checked against the
//! tensors, so a file whose keys and tensors disagree is an error rather than a wrong
//! answer. Every MoE architecture llama.cpp ships uses SiLU experts (SwiGLU when a gate
//! stack exists, `silu(up·x)` without one).

use super::experts::ExpertStack;
use super::ffn::{Activation, Ffn};
use super::layer::MoeLayer;
use super::shared::SharedExpert;
use crate::error::name_of;
use crate::gguf::File;
use crate::gguf::names::{Name, arch_key, layer_tensor};
use crate::router::Router;
use crate::source::TensorSource;
use crate::tensor::TensorView;
use crate::{Error, Result};

/// `blk.{layer}.{suffix}`.
fn tensor_name(layer: usize, suffix: &str) -> Result<Name> {
    layer_tensor(layer, suffix).ok_or_else(|| Error::MissingTensor {
        tensor: name_of(suffix),
    })
}

/// `{arch}.{key}`.
fn key_name(arch: &str, key: &str) -> Result<Name> {
    arch_key(arch, key).ok_or_else(|| Error::MissingKey { key: name_of(key) })
}

/// Reads layer tensors and `{arch}.*` keys of one file.
struct Reader<'f, 'a, S: ?Sized> {
    file: &'f S,
    arch: &'a str,
    layer: usize,
}

impl<'f, 'a, S: TensorSource<'a> + ?Sized> Reader<'f, 'a, S> {
    fn new(file: &'f S, layer: usize) -> Result<Self> {
        let arch = file.architecture().ok_or(Error::MissingKey {
            key: name_of("general.architecture"),
        })?;
        Ok(Reader { file, arch, layer })
    }

    fn tensor(&self, suffix: &str) -> Result<Option<TensorView<'a>>> {
        let name = tensor_name(self.layer, suffix)?;
        Ok(self.file.tensor(&name))
    }

    fn required_tensor(&self, suffix: &str) -> Result<TensorView<'a>> {
        self.tensor(suffix)?.ok_or_else(|| Error::MissingTensor {
            tensor: name_of(&tensor_name(self.layer, suffix).unwrap_or_default()),
        })
    }

    fn u64(&self, key: &str) -> Result<Option<u64>> {
        let name = key_name(self.arch, key)?;
        match self.file.value(&name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(Error::WrongValueType {
                key: name_of(&name),
            }),
        }
    }

    fn required_u64(&self, key: &str) -> Result<u64> {
        self.u64(key)?.ok_or_else(|| Error::MissingKey {
            key: name_of(&key_name(self.arch, key).unwrap_or_default()),
        })
    }

    /// Checks that metadata `key`, when present and non-zero, equals `actual` (dimension
    /// `dim` of `tensor`).
    fn agrees(&self, key: &str, tensor: &str, dim: u8, actual: u64) -> Result<()> {
        match self.u64(key)? {
            Some(expected) if expected != 0 && expected != actual => Err(Error::BadTensorShape {
                tensor: name_of(tensor),
                dim,
                expected,
                actual,
            }),
            _ => Ok(()),
        }
    }
}

impl<'a> MoeLayer<'a> {
    /// The MoE layer `layer` of `file` (dropless, as every released MoE decoder runs at
    /// inference): the router of [`Router::from_gguf`], routed experts `blk.N.ffn_{gate,up,down}_exps.weight` (or the fused
    /// `ffn_gate_up_exps`), k from `{arch}.expert_used_count`, and the shared expert
    /// `ffn_{gate,up,down}_shexp` when present, sigmoid-gated when
    /// `ffn_gate_inp_shexp.weight` exists.
    // Not inlined: callers (a firmware sizing its workspace, then building the layer)
    // share one copy of the loader.
    #[inline(never)]
    pub fn from_gguf(file: &File<'a>, layer: usize) -> Result<Self> {
        let r = Reader::new(file, layer)?;
        let experts = Self::stacked_experts(&r)?;
        Self::with_experts(&r, experts)
    }

    /// [`from_gguf`](Self::from_gguf) over any [`TensorSource`]; routed experts kept one
    /// matrix per expert ([`TensorSource::expert_matrices`]) are used in place.
    pub fn from_source<S: TensorSource<'a> + ?Sized>(file: &S, layer: usize) -> Result<Self> {
        let r = Reader::new(file, layer)?;
        let listed =
            |suffix| -> Result<_> { Ok(file.expert_matrices(&tensor_name(layer, suffix)?)) };
        let experts = if let Some(down) = listed("ffn_down_exps.weight")? {
            let up = listed("ffn_up_exps.weight")?.ok_or_else(|| Error::MissingTensor {
                tensor: name_of(&tensor_name(layer, "ffn_up_exps.weight").unwrap_or_default()),
            })?;
            ExpertStack::listed(listed("ffn_gate_exps.weight")?, up, down, Activation::Silu)?
        } else {
            Self::stacked_experts(&r)?
        };
        Self::with_experts(&r, experts)
    }

    /// The rest of the layer around its routed experts: the keys checked against them,
    /// the router, the shared expert.
    fn with_experts<S: TensorSource<'a> + ?Sized>(
        r: &Reader<'_, 'a, S>,
        experts: ExpertStack<'a>,
    ) -> Result<Self> {
        let (file, layer) = (r.file, r.layer);
        let n_expert = r.required_u64("expert_count")?;
        if n_expert != experts.n_expert() as u64 {
            return Err(Error::BadTensorShape {
                tensor: name_of("ffn_up_exps.weight"),
                dim: 2,
                expected: n_expert,
                actual: experts.n_expert() as u64,
            });
        }
        r.agrees(
            "embedding_length",
            "ffn_up_exps.weight",
            0,
            experts.n_embd() as u64,
        )?;
        r.agrees(
            "expert_feed_forward_length",
            "ffn_up_exps.weight",
            1,
            experts.n_ff() as u64,
        )?;
        let k = r.required_u64("expert_used_count")?;
        let k = usize::try_from(k).map_err(|_| Error::InvalidMoeConfig {
            reason: "expert_used_count does not fit in usize",
        })?;
        let layer = MoeLayer::new(experts, k)?.with_router(Router::from_source(file, layer)?)?;

        let shared_count = r.u64("expert_shared_count")?.unwrap_or(0);
        let shared = match r.tensor("ffn_up_shexp.weight")? {
            None if shared_count > 0 => {
                return Err(Error::MissingTensor {
                    tensor: name_of(&tensor_name(r.layer, "ffn_up_shexp.weight")?),
                });
            }
            None => SharedExpert::None,
            Some(up) => {
                let ffn = Ffn::new(
                    r.tensor("ffn_gate_shexp.weight")?,
                    up,
                    r.required_tensor("ffn_down_shexp.weight")?,
                    Activation::Silu,
                )?;
                let n_ff_shexp = ffn.n_ff() as u64;
                if r.u64("expert_shared_feed_forward_length")?.unwrap_or(0) != 0 {
                    r.agrees(
                        "expert_shared_feed_forward_length",
                        "ffn_up_shexp.weight",
                        1,
                        n_ff_shexp,
                    )?;
                } else if shared_count > 0 {
                    // DeepSeek: one FFN of width n_ff_exp · expert_shared_count.
                    let expected = (layer.experts().n_ff() as u64).checked_mul(shared_count);
                    if expected != Some(n_ff_shexp) {
                        let expected = expected.unwrap_or(u64::MAX);
                        return Err(Error::BadTensorShape {
                            tensor: name_of("ffn_up_shexp.weight"),
                            dim: 1,
                            expected,
                            actual: n_ff_shexp,
                        });
                    }
                }
                match r.tensor("ffn_gate_inp_shexp.weight")? {
                    Some(gate) => SharedExpert::gated(ffn, gate)?,
                    None => SharedExpert::AlwaysOn(ffn),
                }
            }
        };
        layer.with_shared(shared)
    }
}

impl<'a> MoeLayer<'a> {
    /// The routed experts of GGUF's 3-D stacks (separate or fused gate and up).
    fn stacked_experts<S: TensorSource<'a> + ?Sized>(
        r: &Reader<'_, 'a, S>,
    ) -> Result<ExpertStack<'a>> {
        let down = r.required_tensor("ffn_down_exps.weight")?;
        Ok(match r.tensor("ffn_gate_up_exps.weight")? {
            Some(gate_up) => ExpertStack::fused(gate_up, down, Activation::Silu)?,
            None => ExpertStack::new(
                r.tensor("ffn_gate_exps.weight")?,
                r.required_tensor("ffn_up_exps.weight")?,
                down,
                Activation::Silu,
            )?,
        })
    }
}

//! Building a [`PeerLayer`] from a parsed GGUF file: the layout documented in the
//! [module docs](super).

use core::fmt::Write;

use super::config::{IndexMajor, PeerConfig, ScoreActivation};
use super::layer::{BatchNorm, PeerLayer, PeerTensors};
use crate::error::name_of;
use crate::gguf::{ARCHITECTURE_KEY, File};
use crate::moe::Activation;
use crate::tensor::TensorView;
use crate::{Error, Result};

/// A key or tensor name built without allocating.
type Name = heapless::String<128>;

/// Reads `blk.{layer}.*` tensors and `{arch}.peer.*` keys of one file.
struct Reader<'f, 'a> {
    file: &'f File<'a>,
    arch: &'a str,
    layer: usize,
}

impl<'a> Reader<'_, 'a> {
    fn tensor_name(&self, suffix: &str) -> Name {
        let mut name = Name::new();
        // A name that does not fit finds no tensor.
        let _ = write!(name, "blk.{}.{suffix}", self.layer);
        name
    }

    fn key_name(&self, key: &str) -> Name {
        let mut name = Name::new();
        let _ = write!(name, "{}.{key}", self.arch);
        name
    }

    fn tensor(&self, suffix: &str) -> Option<TensorView<'a>> {
        self.file.tensor(&self.tensor_name(suffix)).map(|t| t.view)
    }

    fn required_tensor(&self, suffix: &str) -> Result<TensorView<'a>> {
        self.tensor(suffix).ok_or_else(|| Error::MissingTensor {
            tensor: name_of(&self.tensor_name(suffix)),
        })
    }

    fn wrong(&self, key: &str) -> Error {
        Error::WrongValueType {
            key: name_of(&self.key_name(key)),
        }
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.file.get(&self.key_name(key)) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| self.wrong(key)),
        }
    }

    fn required_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| Error::MissingKey {
            key: name_of(&self.key_name(key)),
        })
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.file.get(&self.key_name(key)) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.wrong(key)),
        }
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.file.get(&self.key_name(key)) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong(key)),
        }
    }

    fn f32(&self, key: &str) -> Result<Option<f32>> {
        match self.file.get(&self.key_name(key)) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|v| Some(v as f32))
                .ok_or_else(|| self.wrong(key)),
        }
    }
}

impl<'a> PeerLayer<'a> {
    /// The PEER layer `layer` of `file`: tensors `blk.N.peer_*` and keys
    /// `{arch}.peer.*` as the [module docs](super) lay out. Every key that restates a
    /// shape is checked against the tensors.
    pub fn from_gguf(file: &File<'a>, layer: usize) -> Result<Self> {
        let arch = file.architecture().ok_or_else(|| Error::MissingKey {
            key: name_of(ARCHITECTURE_KEY),
        })?;
        let r = Reader { file, arch, layer };

        let query = r.required_tensor("peer_query.weight")?;
        let keys = r.required_tensor("peer_keys.weight")?;
        let down = r.required_tensor("peer_down.weight")?;
        let up = r.required_tensor("peer_up.weight")?;
        let query_norm = match (
            r.tensor("peer_query_norm.running_mean"),
            r.tensor("peer_query_norm.running_var"),
        ) {
            (Some(running_mean), Some(running_var)) => Some(BatchNorm {
                weight: r.tensor("peer_query_norm.weight"),
                bias: r.tensor("peer_query_norm.bias"),
                running_mean,
                running_var,
            }),
            (None, None)
                if r.tensor("peer_query_norm.weight").is_none()
                    && r.tensor("peer_query_norm.bias").is_none() =>
            {
                None
            }
            (Some(_), None) => {
                return Err(Error::MissingTensor {
                    tensor: name_of(&r.tensor_name("peer_query_norm.running_var")),
                });
            }
            (None, _) => {
                return Err(Error::MissingTensor {
                    tensor: name_of(&r.tensor_name("peer_query_norm.running_mean")),
                });
            }
        };

        let score_activation = match r.str("peer.score_func")? {
            Some("softmax") => ScoreActivation::Softmax,
            Some("sigmoid") => ScoreActivation::Sigmoid,
            Some("relu") => ScoreActivation::Relu,
            Some(_) => {
                return Err(Error::InvalidPeerConfig {
                    reason: "peer.score_func must be \"softmax\", \"sigmoid\" or \"relu\"",
                });
            }
            None => {
                return Err(Error::MissingKey {
                    key: name_of(&r.key_name("peer.score_func")),
                });
            }
        };
        let index_major = match r.str("peer.index_major")? {
            None | Some("first") => IndexMajor::First,
            Some("second") => IndexMajor::Second,
            Some(_) => {
                return Err(Error::InvalidPeerConfig {
                    reason: "peer.index_major must be \"first\" or \"second\"",
                });
            }
        };
        let activation = match r.str("peer.expert_activation")? {
            None | Some("gelu") => Activation::GeluErf,
            Some("gelu_tanh") => Activation::Gelu,
            Some("silu") => Activation::Silu,
            Some("relu") => Activation::Relu,
            Some(_) => {
                return Err(Error::InvalidPeerConfig {
                    reason: "peer.expert_activation must be \"gelu\", \"gelu_tanh\", \"silu\" or \"relu\"",
                });
            }
        };

        let n_embd = query.ne(0) as usize;
        if let Some(expected) = r.usize("embedding_length")?
            && expected != 0
            && expected != n_embd
        {
            return Err(Error::BadTensorShape {
                tensor: name_of("peer_query.weight"),
                dim: 0,
                expected: expected as u64,
                actual: n_embd as u64,
            });
        }
        let config = PeerConfig {
            n_embd,
            n_head: r.required_usize("peer.heads")?,
            n_expert: r.required_usize("peer.expert_count")?,
            key_length: r.required_usize("peer.key_length")?,
            product_key_topk: r.required_usize("peer.product_key_topk")?,
            experts_per_head: r.required_usize("peer.experts_per_head")?,
            score_activation,
            index_major,
            shared_keys: r.bool("peer.shared_keys")?.unwrap_or(false),
            separate_embed_per_head: r.bool("peer.separate_embed_per_head")?.unwrap_or(false),
            activation,
            query_norm_epsilon: r.f32("peer.query_norm_epsilon")?.unwrap_or(1e-5),
        };
        let tensors = PeerTensors {
            query,
            query_bias: r.tensor("peer_query.bias"),
            query_norm,
            norm: r.tensor("peer_norm.weight"),
            keys,
            down,
            up,
        };
        PeerLayer::new(config, tensors)
    }
}

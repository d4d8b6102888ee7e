//! Shared experts: FFNs every token runs besides its routed experts.
//!
//! DeepSeek adds them unweighted (`ffn_{gate,up,down}_shexp`, one FFN of width
//! `n_ff_exp · expert_shared_count`); Qwen2-MoE scales the shared FFN by a per-token gate
//! `sigmoid(w·x)` (`ffn_gate_inp_shexp`, a vector of `n_embd`).

use super::ffn::{Ffn, sigmoid};
use crate::tensor::TensorView;
use crate::{Error, Result};

/// The shared expert of a layer.
#[derive(Clone, Copy, Debug, Default)]
pub enum SharedExpert<'a> {
    /// No shared expert (Mixtral, Qwen3-MoE, OLMoE).
    #[default]
    None,
    /// Added with weight 1 (DeepSeek-V2/V3, Granite-MoE-shared).
    AlwaysOn(Ffn<'a>),
    /// Added with weight `sigmoid(gate · x)` (Qwen1.5/2-MoE).
    Gated {
        /// The FFN.
        ffn: Ffn<'a>,
        /// The gate vector `[n_embd]`.
        gate: TensorView<'a>,
    },
}

impl<'a> SharedExpert<'a> {
    /// A sigmoid-gated shared expert, checking that the gate is a vector of the FFN's
    /// width with a dot product for its type.
    pub fn gated(ffn: Ffn<'a>, gate: TensorView<'a>) -> Result<Self> {
        if gate.ty().activation_type().is_none() {
            return Err(Error::UnsupportedType { ty: gate.ty() });
        }
        let n_embd = ffn.n_embd() as u64;
        for (dim, expected) in [(0, n_embd), (1, 1), (2, 1), (3, 1)] {
            if gate.ne(dim) != expected {
                return Err(Error::BadTensorShape {
                    tensor: crate::error::name_of("ffn_gate_inp_shexp"),
                    dim: dim as u8,
                    expected,
                    actual: gate.ne(dim),
                });
            }
        }
        Ok(SharedExpert::Gated { ffn, gate })
    }

    /// The FFN, if there is one.
    pub fn ffn(&self) -> Option<&Ffn<'a>> {
        match self {
            SharedExpert::None => None,
            SharedExpert::AlwaysOn(ffn) | SharedExpert::Gated { ffn, .. } => Some(ffn),
        }
    }

    /// The gate vector, if gated.
    pub fn gate(&self) -> Option<&TensorView<'a>> {
        match self {
            SharedExpert::Gated { gate, .. } => Some(gate),
            _ => None,
        }
    }
}

/// `sigmoid(gate · x)` from the gate's bytes and the matching activation row.
pub(crate) fn gate_weight(
    dot: super::ffn::DotKernel,
    gate: &TensorView<'_>,
    activation_row: &[u8],
) -> Result<f32> {
    Ok(sigmoid(dot(gate.ty(), gate.data(), activation_row)?))
}

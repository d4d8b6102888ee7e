//! Running some FFN blocks somewhere other than the CPU path (a GPU through `moe-cuda`):
//! [`Model::forward_offloaded`](super::Model::forward_offloaded) asks an [`FfnOffload`]
//! for each block whether it takes the block's FFN, and hands it the normalised rows
//! when it does. Attention, norms and the head stay on the CPU path.

use crate::Error;
use crate::moe::MoeLayer;
use crate::router::Selection;

/// Runs the FFN of the blocks it takes.
pub trait FfnOffload {
    /// What can go wrong there.
    type Error;

    /// Whether block `layer`'s FFN runs here (asked once per block and batch).
    fn takes(&self, layer: usize) -> bool;

    /// Block `layer`'s FFN of the normalised rows `input` (`T × n_embd`) into `out`
    /// (overwritten). `cpu` is the block's layer on the CPU path (for its shape, its
    /// router, or to run part of the work), `workspace` holds `cpu.workspace_bytes(T)`
    /// bytes of scratch for that. A dense block (`cpu.router()` is `None`) comes with
    /// `selections` holding expert 0 at weight 1 for every token; for an MoE block the
    /// offload routes and writes each token's choices into `selections`.
    fn forward(
        &mut self,
        layer: usize,
        cpu: &MoeLayer<'_>,
        input: &[f32],
        selections: &mut [Selection],
        out: &mut [f32],
        workspace: &mut [u8],
    ) -> Result<(), Self::Error>;
}

/// Every block on the CPU path.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoOffload;

impl FfnOffload for NoOffload {
    type Error = core::convert::Infallible;

    fn takes(&self, _layer: usize) -> bool {
        false
    }

    fn forward(
        &mut self,
        _layer: usize,
        _cpu: &MoeLayer<'_>,
        _input: &[f32],
        _selections: &mut [Selection],
        _out: &mut [f32],
        _workspace: &mut [u8],
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// An error of [`Model::forward_offloaded`](super::Model::forward_offloaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffloadError<E> {
    /// The model's own error (bad input, a workspace too small, …).
    Model(Error),
    /// The offload failed on block `layer`'s FFN.
    Offload {
        /// The block.
        layer: usize,
        /// The offload's error.
        error: E,
    },
}

impl<E> From<Error> for OffloadError<E> {
    fn from(e: Error) -> Self {
        OffloadError::Model(e)
    }
}

impl<E: core::fmt::Display> core::fmt::Display for OffloadError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            OffloadError::Model(e) => e.fmt(f),
            OffloadError::Offload { layer, error } => {
                write!(f, "block {layer}'s offloaded FFN: {error}")
            }
        }
    }
}

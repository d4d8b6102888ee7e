//! [`MoeLayer::forward`]: route the batch with the layer's router, then dispatch, run the
//! experts and combine, all in a caller-provided [`Workspace`].
//!
//! The workspace has three parts because the router writes typed values (f32 scratch and
//! one [`Selection`] per token) that safe code cannot cut out of a byte buffer; each part
//! is a plain array firmware can keep in a `static`, sized by [`MoeLayer::workspace_size`].

use super::layer::{ForwardReport, MoeLayer};
use crate::router::{RouterStats, Selection};
use crate::{Error, Result};

/// Caller memory for [`MoeLayer::forward`].
#[derive(Debug)]
pub struct Workspace<'w> {
    /// One selection per token (at least `n_tokens`).
    pub selections: &'w mut [Selection],
    /// Router scratch (at least [`WorkspaceSize::router`] elements).
    pub router: &'w mut [f32],
    /// Dispatch, activation and FFN scratch (at least [`WorkspaceSize::bytes`] bytes, any
    /// alignment).
    pub bytes: &'w mut [u8],
}

/// Exact sizes of the three parts of a [`Workspace`] for a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkspaceSize {
    /// Selections.
    pub selections: usize,
    /// f32 elements of router scratch.
    pub router: usize,
    /// Bytes ([`MoeLayer::workspace_bytes`]).
    pub bytes: usize,
}

impl MoeLayer<'_> {
    /// Exact sizes of the [`Workspace`] [`forward`](Self::forward) needs for `n_tokens`
    /// tokens.
    pub fn workspace_size(&self, n_tokens: usize) -> WorkspaceSize {
        WorkspaceSize {
            selections: n_tokens,
            router: self.router().map_or(0, |r| r.scratch_len(n_tokens)),
            bytes: self.workspace_bytes(n_tokens),
        }
    }

    /// Runs the layer on `T = hidden.len() / n_embd` tokens: routes them with the layer's
    /// router (`token_ids`: one id per token for hash routing, or empty), then as
    /// [`forward_selected`](Self::forward_selected). `out` (`T × n_embd`) is overwritten.
    pub fn forward(
        &self,
        hidden: &[f32],
        token_ids: &[u32],
        out: &mut [f32],
        workspace: &mut Workspace<'_>,
    ) -> Result<ForwardReport> {
        self.forward_with_stats(hidden, token_ids, out, workspace, None)
    }

    /// [`forward`](Self::forward), accumulating router statistics (loads, drops, the
    /// Switch balance value, z-loss, entropy) into `stats` when given.
    pub fn forward_with_stats(
        &self,
        hidden: &[f32],
        token_ids: &[u32],
        out: &mut [f32],
        workspace: &mut Workspace<'_>,
        mut stats: Option<&mut RouterStats<'_>>,
    ) -> Result<ForwardReport> {
        let router = self.router().ok_or(Error::InvalidMoeConfig {
            reason: "the layer has no router: route the tokens and call forward_selected",
        })?;
        let n_embd = self.n_embd();
        let n_tokens = hidden.len() / n_embd;
        if n_tokens * n_embd != hidden.len() {
            return Err(Error::LengthMismatch {
                expected: n_tokens * n_embd,
                actual: hidden.len(),
            });
        }
        if let Some(s) = &stats
            && s.n_expert() != self.experts().n_expert()
        {
            return Err(Error::LengthMismatch {
                expected: self.experts().n_expert(),
                actual: s.n_expert(),
            });
        }
        let available = workspace.selections.len();
        let selections = workspace
            .selections
            .get_mut(..n_tokens)
            .ok_or(Error::BufferTooSmall {
                needed: n_tokens,
                actual: available,
            })?;
        let route = router.route(
            hidden,
            token_ids,
            workspace.router,
            selections,
            stats.as_deref_mut(),
        )?;
        let mut report =
            self.forward_selected_with(hidden, selections, out, workspace.bytes, |expert| {
                if let Some(s) = stats.as_deref_mut() {
                    // The expert id was checked against the layer, and the layer against
                    // the statistics, above.
                    let _ = s.record_drop(expert);
                }
            })?;
        report.route = Some(route);
        Ok(report)
    }
}

//! Running a whole model from a mapped GGUF file: a [`Session`] owns the workspace (KV
//! cache and scratch) of one sequence and evaluates tokens through
//! [`moe_core::model::Model`], on the [`ThreadPool`](crate::pool::ThreadPool) the caller
//! passes — or on a GPU, whole or its FFN blocks, after [`Session::offload_to_gpu`].

use moe_core::model::{KvCache, Model, ModelWorkspace, OffloadError, WorkspaceSize};
use moe_core::router::{RouterStats, Selection};

use std::path::Path;

use crate::checkpoint::Checkpoint;
use crate::gpu::{GpuOptions, GpuRun};
use crate::{Error, GgufFile, Result};

/// The KV cache's element type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// f32: exact.
    #[default]
    F32,
    /// f16: half the memory, llama.cpp's default.
    F16,
}

/// The session's KV cache memory.
enum KvStorage {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

/// One sequence of a model: the model, its KV cache and scratch sized for `context`
/// positions and batches of up to `max_batch` tokens, and how many positions are filled.
pub struct Session<'a> {
    path: &'a Path,
    model: Box<Model<'a>>,
    size: WorkspaceSize,
    max_batch: usize,
    kv_cache: KvStorage,
    floats: Vec<f32>,
    selections: Vec<Selection>,
    bytes: Vec<u8>,
    filled: usize,
    gpu: Option<GpuRun>,
}

impl<'a> Session<'a> {
    /// A session over `gguf`'s model with the best kernels of this CPU
    /// ([`crate::kernels::detect`]) and `pool`'s threads. `context` is the KV cache's
    /// length in positions (0: the model's training context, capped at 4096), of `kv`
    /// elements.
    pub fn new(
        gguf: &'a GgufFile,
        pool: &'a crate::pool::ThreadPool,
        context: usize,
        max_batch: usize,
        kv: KvType,
    ) -> Result<Self> {
        // Boxed: a model value holds its blocks inline and is large to keep on a stack.
        let model =
            Box::new(Model::from_gguf(gguf.file()).map_err(|e| Error::gguf(gguf.path(), e))?);
        Self::with_model(gguf.path(), model, pool, context, max_batch, kv)
    }

    /// [`new`](Self::new) over any [`Checkpoint`]: a GGUF file or a Hugging Face
    /// directory.
    pub fn from_checkpoint(
        checkpoint: &'a Checkpoint,
        pool: &'a crate::pool::ThreadPool,
        context: usize,
        max_batch: usize,
        kv: KvType,
    ) -> Result<Self> {
        let model = checkpoint.model()?;
        Self::with_model(checkpoint.path(), model, pool, context, max_batch, kv)
    }

    fn with_model(
        path: &'a Path,
        mut model: Box<Model<'a>>,
        pool: &'a crate::pool::ThreadPool,
        context: usize,
        max_batch: usize,
        kv: KvType,
    ) -> Result<Self> {
        model.set_kernels(&crate::kernels::detect());
        model.set_parallel(pool);
        let context = match context {
            // The training context, capped; 4096 when the file does not say.
            0 => match model.config().n_ctx_train {
                0 => 4096,
                n => n.min(4096),
            },
            n => n,
        };
        let max_batch = max_batch.clamp(1, context);
        let size = model.workspace_size(max_batch, context);
        Ok(Session {
            path,
            model,
            size,
            max_batch,
            kv_cache: match kv {
                KvType::F32 => KvStorage::F32(vec![0.0; size.kv_cache]),
                KvType::F16 => KvStorage::F16(vec![0; size.kv_cache]),
            },
            floats: vec![0.0; size.floats],
            selections: vec![Selection::new(); size.selections],
            bytes: vec![0; size.bytes],
            filled: 0,
            gpu: None,
        })
    }

    /// The model.
    pub fn model(&self) -> &Model<'a> {
        &self.model
    }

    /// Runs the model on a CUDA device from now on, as `options` place it (see
    /// [`crate::gpu`]): the whole model when it can (only before any position is
    /// evaluated: its KV cache lives on the device), else the FFN blocks with attention
    /// on the CPU. A whole model reports no routing to
    /// [`eval_routed`](Self::eval_routed).
    pub fn offload_to_gpu(&mut self, options: &GpuOptions) -> Result<&GpuRun> {
        let context = self.context();
        let gpu = GpuRun::new(
            &self.model,
            options,
            self.filled == 0,
            context,
            self.max_batch,
        )
        .map_err(|e| Error::gpu(self.path, None, e))?;
        if gpu.is_whole() {
            // The device holds the KV cache and scratch now: free the CPU's copies.
            self.kv_cache = match self.kv_cache {
                KvStorage::F32(_) => KvStorage::F32(Vec::new()),
                KvStorage::F16(_) => KvStorage::F16(Vec::new()),
            };
            self.floats = Vec::new();
            self.selections = Vec::new();
            self.bytes = Vec::new();
        }
        Ok(self.gpu.insert(gpu))
    }

    /// What runs on the GPU, when [`offload_to_gpu`](Self::offload_to_gpu) set it up.
    pub fn gpu(&self) -> Option<&GpuRun> {
        self.gpu.as_ref()
    }

    /// Positions evaluated so far.
    pub fn position(&self) -> usize {
        self.filled
    }

    /// The context length (KV cache positions).
    pub fn context(&self) -> usize {
        self.size.kv_cache / self.kv_per_position().max(1)
    }

    fn kv_per_position(&self) -> usize {
        let c = self.model.config();
        c.n_layer * (c.k_dim() + c.v_dim())
    }

    /// Forgets every position (the next tokens start at position 0).
    pub fn reset(&mut self) {
        self.filled = 0;
    }

    /// Evaluates `tokens` after the positions already filled, in batches of at most
    /// `max_batch`, and writes logits into `logits`: every position's
    /// (`tokens.len() × n_vocab`) or only the last one's (`n_vocab`).
    pub fn eval(&mut self, tokens: &[u32], logits: &mut [f32]) -> Result<()> {
        self.eval_routed(tokens, logits, &mut [], |_, _, _| {})
    }

    /// [`eval`](Self::eval) reporting routing: `on_route(layer, first_position,
    /// selections)` after each MoE block of each batch, and router statistics in
    /// `stats[layer]` where given (see `Model::forward_routed`).
    pub fn eval_routed(
        &mut self,
        tokens: &[u32],
        logits: &mut [f32],
        stats: &mut [RouterStats<'_>],
        mut on_route: impl FnMut(usize, usize, &[Selection]),
    ) -> Result<()> {
        let n_vocab = self.model.config().n_vocab;
        let all = logits.len() == tokens.len() * n_vocab && tokens.len() > 1;
        for (i, batch) in tokens.chunks(self.max_batch).enumerate() {
            let last_batch = (i + 1) * self.max_batch >= tokens.len();
            let out: &mut [f32] = if all {
                let at = i * self.max_batch * n_vocab;
                &mut logits[at..at + batch.len() * n_vocab]
            } else if last_batch {
                &mut logits[..]
            } else {
                // Logits of a batch before the last are not asked for: compute only the
                // last position's into the caller's buffer and overwrite it later.
                &mut logits[..n_vocab]
            };
            let mut ws = ModelWorkspace {
                kv_cache: match &mut self.kv_cache {
                    KvStorage::F32(c) => KvCache::F32(c),
                    KvStorage::F16(c) => KvCache::F16(c),
                },
                floats: &mut self.floats,
                selections: &mut self.selections,
                bytes: &mut self.bytes,
            };
            let first = self.filled;
            let on_route =
                |layer: usize, selections: &[Selection]| on_route(layer, first, selections);
            match &mut self.gpu {
                Some(GpuRun::Whole { model, .. }) => model
                    .forward(batch, first, out)
                    .map_err(|e| Error::gpu(self.path, None, e))?,
                None => self
                    .model
                    .forward_routed(batch, first, out, &mut ws, stats, on_route)
                    .map_err(|e| Error::gguf(self.path, e))?,
                Some(GpuRun::Blocks(gpu)) => self
                    .model
                    .forward_offloaded(batch, first, out, &mut ws, stats, on_route, gpu)
                    .map_err(|e| match e {
                        OffloadError::Model(e) => Error::gguf(self.path, e),
                        OffloadError::Offload { layer, error } => {
                            Error::gpu(self.path, Some(layer), error)
                        }
                    })?,
            }
            self.filled += batch.len();
        }
        Ok(())
    }
}

/// The index of the largest logit (the first one on ties), or 0 for an empty slice.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

//! Whole decoder-only models from GGUF files: token embedding, transformer blocks
//! (RMSNorm, grouped-query attention with RoPE and a KV cache, a dense or MoE FFN), final
//! norm and output head, with llama.cpp's tensor names and keys. [`Model::from_source`]
//! builds the same model from any [`TensorSource`] that answers those names (a Hugging
//! Face checkpoint in `moe-std`).
//!
//! [`Model::forward`] evaluates a batch of new tokens at consecutive positions (a prompt,
//! or one token while decoding) and writes their logits. All memory is the caller's
//! [`ModelWorkspace`], sized exactly by [`Model::workspace_size`]: the KV cache (which
//! persists between calls) and scratch for one batch. Matrix products go through the
//! [`Kernels`] table, and their rows (or the batch's tokens) are split across the
//! [`Parallel`] runner.
//!
//! Architectures ([`SUPPORTED_ARCHITECTURES`]): `llama` (dense Llama/Mistral, and
//! Mixtral: expert stacks with a softmax top-k router in the FFN), `qwen2moe` (attention
//! biases, NeoX RoPE, a sigmoid-gated shared expert), `qwen3moe` (per-head QK norms),
//! `olmoe` (QK norms over the whole query / key), `granitemoe` (embedding, residual,
//! attention and logit scales) and `deepseek2` (multi-head latent attention with its
//! compressed KV cache, from the split `attn_k_b`/`attn_v_b` or the combined `attn_kv_b`
//! of older files and Hugging Face checkpoints; leading dense blocks, sigmoid or softmax
//! routing, group-limited, with a selection bias; shared experts; YaRN RoPE scaling).
//! Other architectures are refused at load with [`Error::UnsupportedArchitecture`].

mod config;
mod kv;
mod math;
mod mla;
mod offload;

pub use config::{MlaConfig, ModelConfig, RopeLayout, SUPPORTED_ARCHITECTURES};
pub use kv::KvCache;
pub use math::Rope;
pub use offload::{FfnOffload, NoOffload, OffloadError};

use crate::error::name_of;
use crate::gguf::File;
use crate::gguf::names::layer_tensor;
use crate::kernels::Kernels;
use crate::moe::ffn::act_row_bytes;
use crate::moe::{Activation, ExpertStack, MoeLayer, Workspace};
use crate::parallel::{Parallel, Serial};
use crate::quant::{TensorType, dequantize_row, quantize_row};
use crate::router::{Choice, RouterStats, Selection};
use crate::source::TensorSource;
use crate::tensor::TensorView;
use crate::{Error, Result};

/// Tokens per call of the batch kernel (their activation rows are referenced from an
/// array on the stack).
const TOKEN_CHUNK: usize = 64;

/// The query/key/value side of a block's attention.
#[derive(Clone, Copy, Debug)]
enum Attention<'a> {
    /// Separate Q, K and V projections (multi-head or grouped-query attention).
    Standard {
        wq: TensorView<'a>,
        wk: TensorView<'a>,
        wv: TensorView<'a>,
        /// Optional biases of the query, key and value projections (Qwen2-MoE).
        biases: [Option<TensorView<'a>>; 3],
        /// Optional RMSNorm weights of the query and key, per head (`head_dim` long) or
        /// over the whole vector (Qwen3-MoE, OLMoE).
        qk_norms: [Option<TensorView<'a>>; 2],
    },
    /// DeepSeek's latent attention.
    Latent(mla::Weights<'a>),
}

/// One transformer block's weights.
#[derive(Clone, Copy, Debug)]
struct Block<'a> {
    attn_norm: TensorView<'a>,
    attention: Attention<'a>,
    wo: TensorView<'a>,
    ffn_norm: TensorView<'a>,
    /// The FFN: the MoE layer of a Mixtral block, or a dense FFN as a single always-chosen
    /// expert (its output times a weight of exactly 1).
    ffn: MoeLayer<'a>,
    dense: bool,
}

/// A model over borrowed GGUF bytes; at most `MAX_LAYERS` blocks (firmware picks a small
/// bound to keep the value small).
#[derive(Debug)]
pub struct Model<'a, const MAX_LAYERS: usize = 128> {
    config: ModelConfig,
    token_embd: TensorView<'a>,
    output_norm: TensorView<'a>,
    output: TensorView<'a>,
    blocks: heapless::Vec<Block<'a>, MAX_LAYERS>,
    /// The largest quantized activation row any projection or the head reads (computed
    /// at load: it sizes every forward's activation scratch).
    max_act_row_bytes: usize,
    kernels: Kernels,
    parallel: &'a dyn Parallel,
}

/// One block's norms and attention tensors ([`Model::block_tensors`]); its FFN is
/// [`Model::ffn`].
#[derive(Clone, Copy, Debug)]
pub struct BlockTensors<'a> {
    /// The attention norm's weight `[n_embd]`.
    pub attn_norm: TensorView<'a>,
    /// The query, key and value projections; `None` for DeepSeek's latent attention
    /// (whose tensors are not exposed).
    pub qkv: Option<[TensorView<'a>; 3]>,
    /// Optional biases of the query, key and value projections (Qwen2-MoE).
    pub biases: [Option<TensorView<'a>>; 3],
    /// Optional RMSNorm weights of the query and key: `head_dim` long (per head,
    /// Qwen3-MoE) or the whole projection's width (OLMoE).
    pub qk_norms: [Option<TensorView<'a>>; 2],
    /// The attention output projection.
    pub wo: TensorView<'a>,
    /// The FFN norm's weight `[n_embd]`.
    pub ffn_norm: TensorView<'a>,
}

/// Caller memory for [`Model::forward`].
#[derive(Debug)]
pub struct ModelWorkspace<'w> {
    /// The KV cache: [`WorkspaceSize::kv_cache`] elements (f32 or f16) for the context it
    /// was sized for. It holds the keys and values of every evaluated position and must be
    /// kept (unchanged) between the calls of one sequence.
    pub kv_cache: KvCache<'w>,
    /// Per-batch f32 scratch.
    pub floats: &'w mut [f32],
    /// One routing decision per token.
    pub selections: &'w mut [Selection],
    /// Quantized activations and MoE scratch (any alignment).
    pub bytes: &'w mut [u8],
}

/// Exact sizes of the parts of a [`ModelWorkspace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkspaceSize {
    /// Elements of KV cache (f32 or f16, the caller's choice).
    pub kv_cache: usize,
    /// f32 elements of scratch.
    pub floats: usize,
    /// Selections.
    pub selections: usize,
    /// Bytes.
    pub bytes: usize,
}

/// The f32 scratch regions of one batch of `t` tokens, in carving order.
struct FloatRegions {
    x: usize,
    xn: usize,
    q: usize,
    attn: usize,
    proj: usize,
    /// The batch's new keys and values before they are stored in the cache.
    kv_new: usize,
    router: usize,
    /// Latent-attention scratch (0 without it).
    mla: usize,
}

impl FloatRegions {
    fn total(&self) -> Option<usize> {
        [
            self.x,
            self.xn,
            self.q,
            self.attn,
            self.proj,
            self.kv_new,
            self.router,
            self.mla,
        ]
        .into_iter()
        .try_fold(0usize, |a, b| a.checked_add(b))
    }
}

/// `blk.{layer}.{suffix}` from `file`, or a [`Error::MissingTensor`] naming it.
fn block_tensor<'a, S: TensorSource<'a> + ?Sized>(
    file: &S,
    layer: usize,
    suffix: &str,
) -> Result<TensorView<'a>> {
    let name = layer_tensor(layer, suffix).unwrap_or_default();
    file.tensor(&name).ok_or(Error::MissingTensor {
        tensor: name_of(&name),
    })
}

/// A global tensor of `file`, or a [`Error::MissingTensor`] naming it.
fn tensor<'a, S: TensorSource<'a> + ?Sized>(file: &S, name: &str) -> Result<TensorView<'a>> {
    file.tensor(name).ok_or(Error::MissingTensor {
        tensor: name_of(name),
    })
}

/// Checks that `view` is a matrix of `cols × rows` (GGUF order) with a dot product.
fn check_matrix(view: &TensorView<'_>, name: &str, cols: usize, rows: usize) -> Result<()> {
    for (dim, expected) in [cols as u64, rows as u64, 1, 1].into_iter().enumerate() {
        if view.ne(dim) != expected {
            return Err(Error::BadTensorShape {
                tensor: name_of(name),
                dim: dim as u8,
                expected,
                actual: view.ne(dim),
            });
        }
    }
    if view.ty().activation_type().is_none() {
        return Err(Error::UnsupportedType { ty: view.ty() });
    }
    Ok(())
}

/// Checks that `view` is an F32, F16 or BF16 vector of `len` elements (a norm weight or a
/// bias; Hugging Face checkpoints in half precision keep them in half precision).
fn check_norm(view: &TensorView<'_>, name: &str, len: usize) -> Result<()> {
    if !matches!(
        view.ty(),
        TensorType::F32 | TensorType::F16 | TensorType::BF16
    ) {
        return Err(Error::UnsupportedType { ty: view.ty() });
    }
    if view.ne(0) != len as u64 || view.n_elements() != len as u64 {
        return Err(Error::BadTensorShape {
            tensor: name_of(name),
            dim: 0,
            expected: len as u64,
            actual: view.ne(0),
        });
    }
    Ok(())
}

/// `rows[t] += bias` for every row (an F32 vector checked by [`check_norm`]).
fn add_rows(rows: &mut [f32], bias: &TensorView<'_>) {
    let n = bias.n_elements() as usize;
    for row in rows.chunks_exact_mut(n) {
        for (i, v) in row.iter_mut().enumerate() {
            *v += norm_weight(bias, i);
        }
    }
}

/// RMSNorm in place of each `weight`-long piece of `rows` (one head, or a whole query or
/// key vector), times the weight.
fn norm_in_place(rows: &mut [f32], weight: &TensorView<'_>, eps: f32) {
    let n = weight.n_elements() as usize;
    for piece in rows.chunks_exact_mut(n) {
        math::rms_norm_in_place(piece, eps, |i| norm_weight(weight, i));
    }
}

/// `x += scale · branch` (a plain add when the scale is 1, as llama.cpp does).
fn add_scaled(x: &mut [f32], branch: &[f32], scale: f32) {
    for (x, b) in x.iter_mut().zip(branch) {
        *x += if scale == 1.0 { *b } else { b * scale };
    }
}

/// A norm weight's elements (checked F32, F16 or BF16 by [`check_norm`]).
fn norm_weight(view: &TensorView<'_>, i: usize) -> f32 {
    let data = view.data();
    match view.ty() {
        TensorType::F16 | TensorType::BF16 => {
            let b = data.get(2 * i..2 * i + 2).unwrap_or(&[0; 2]);
            let bits = u16::from_le_bytes([b[0], b[1]]);
            if view.ty() == TensorType::F16 {
                half::f16::from_bits(bits).to_f32()
            } else {
                half::bf16::from_bits(bits).to_f32()
            }
        }
        _ => {
            let b = data.get(4 * i..4 * i + 4).unwrap_or(&[0; 4]);
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }
}

impl<'a, const MAX_LAYERS: usize> Model<'a, MAX_LAYERS> {
    /// The model in `file`: every tensor of every block is looked up and its shape checked
    /// now, so a bad file is an error naming the tensor or key, never a wrong answer later.
    pub fn from_gguf(file: &File<'a>) -> Result<Self> {
        Self::from_source(ModelConfig::from_gguf(file)?, file)
    }

    /// The model of `config` with its tensors from `file` (llama.cpp's names; see
    /// [`TensorSource`]), checked as [`from_gguf`](Self::from_gguf) checks them. The
    /// config is the caller's so that a source may adjust what its keys cannot say
    /// (Hugging Face Llama-family checkpoints keep GPT-NeoX's RoPE layout).
    pub fn from_source<S: TensorSource<'a> + ?Sized>(
        config: ModelConfig,
        file: &S,
    ) -> Result<Self> {
        let c = &config;
        let token_embd = tensor(file, "token_embd.weight")?;
        check_matrix(&token_embd, "token_embd.weight", c.n_embd, c.n_vocab)?;
        let output_norm = tensor(file, "output_norm.weight")?;
        check_norm(&output_norm, "output_norm.weight", c.n_embd)?;
        // Tied embeddings: no output tensor, the head is the embedding matrix.
        let output = file.tensor("output.weight").unwrap_or(token_embd);
        check_matrix(&output, "output.weight", c.n_embd, c.n_vocab)?;

        let mut blocks = heapless::Vec::new();
        for layer in 0..c.n_layer {
            let block = Self::block(file, c, layer)?;
            blocks.push(block).map_err(|_| Error::InvalidModelConfig {
                reason: "more blocks than this build's MAX_LAYERS",
            })?;
        }
        let mut max_act_row_bytes = Self::input_row_bytes(&output, c.n_embd);
        for b in &blocks {
            for (v, width) in b.projections() {
                max_act_row_bytes = max_act_row_bytes.max(Self::input_row_bytes(&v, width));
            }
            max_act_row_bytes = max_act_row_bytes.max(Self::input_row_bytes(&b.wo, c.out_dim()));
        }
        Ok(Model {
            config,
            token_embd,
            output_norm,
            output,
            blocks,
            max_act_row_bytes,
            kernels: Kernels::scalar(),
            parallel: &Serial,
        })
    }

    fn block<S: TensorSource<'a> + ?Sized>(
        file: &S,
        c: &ModelConfig,
        layer: usize,
    ) -> Result<Block<'a>> {
        let get = |suffix| block_tensor(file, layer, suffix);
        let name = |suffix: &str| layer_tensor(layer, suffix).unwrap_or_default();
        let attn_norm = get("attn_norm.weight")?;
        check_norm(&attn_norm, &name("attn_norm.weight"), c.n_embd)?;
        let ffn_norm = get("ffn_norm.weight")?;
        check_norm(&ffn_norm, &name("ffn_norm.weight"), c.n_embd)?;
        let wo = get("attn_output.weight")?;
        check_matrix(&wo, &name("attn_output.weight"), c.out_dim(), c.n_embd)?;
        let attention = match c.mla {
            Some(m) => Attention::Latent(mla::Weights::from_source(file, c, &m, layer)?),
            None => Self::standard_attention(file, c, layer)?,
        };
        let has_experts = file.tensor(&name("ffn_up_exps.weight")).is_some()
            || file.tensor(&name("ffn_gate_up_exps.weight")).is_some()
            || file
                .expert_matrices(&name("ffn_down_exps.weight"))
                .is_some();
        let (ffn, dense) = if has_experts {
            (MoeLayer::from_source(file, layer)?, false)
        } else {
            let stack = ExpertStack::new(
                Some(get("ffn_gate.weight")?),
                get("ffn_up.weight")?,
                get("ffn_down.weight")?,
                Activation::Silu,
            )?;
            (MoeLayer::new(stack, 1)?, true)
        };
        if ffn.n_embd() != c.n_embd {
            return Err(Error::BadTensorShape {
                tensor: name_of(&name("ffn_up.weight")),
                dim: 0,
                expected: c.n_embd as u64,
                actual: ffn.n_embd() as u64,
            });
        }
        Ok(Block {
            attn_norm,
            attention,
            wo,
            ffn_norm,
            ffn,
            dense,
        })
    }

    fn standard_attention<S: TensorSource<'a> + ?Sized>(
        file: &S,
        c: &ModelConfig,
        layer: usize,
    ) -> Result<Attention<'a>> {
        let get = |suffix| block_tensor(file, layer, suffix);
        let name = |suffix: &str| layer_tensor(layer, suffix).unwrap_or_default();
        let wq = get("attn_q.weight")?;
        check_matrix(&wq, &name("attn_q.weight"), c.n_embd, c.q_dim())?;
        let wk = get("attn_k.weight")?;
        check_matrix(&wk, &name("attn_k.weight"), c.n_embd, c.k_dim())?;
        let wv = get("attn_v.weight")?;
        check_matrix(&wv, &name("attn_v.weight"), c.n_embd, c.v_dim())?;
        // An optional F32 vector whose length is one of `lens` (the first is reported).
        let optional = |suffix: &str, lens: &[usize]| -> Result<Option<TensorView<'a>>> {
            let Ok(view) = block_tensor(file, layer, suffix) else {
                return Ok(None);
            };
            let len = lens
                .iter()
                .copied()
                .find(|&l| view.n_elements() == l as u64)
                .unwrap_or(lens[0]);
            check_norm(&view, &name(suffix), len)?;
            Ok(Some(view))
        };
        let biases = [
            optional("attn_q.bias", &[c.q_dim()])?,
            optional("attn_k.bias", &[c.k_dim()])?,
            optional("attn_v.bias", &[c.v_dim()])?,
        ];
        let qk_norms = [
            optional("attn_q_norm.weight", &[c.head_dim, c.q_dim()])?,
            optional("attn_k_norm.weight", &[c.head_dim, c.k_dim()])?,
        ];

        Ok(Attention::Standard {
            wq,
            wk,
            wv,
            biases,
            qk_norms,
        })
    }

    /// Computes through `kernels` from now on (every FFN and projection). In place rather
    /// than by value: a model holds up to `MAX_LAYERS` blocks and is large to move.
    pub fn set_kernels(&mut self, kernels: &Kernels) {
        self.kernels = *kernels;
        for b in &mut self.blocks {
            b.ffn = b.ffn.with_kernels(kernels);
        }
    }

    /// Splits matrix products and attention heads across `parallel` from now on.
    pub fn set_parallel(&mut self, parallel: &'a dyn Parallel) {
        self.parallel = parallel;
        for b in &mut self.blocks {
            b.ffn = b.ffn.with_parallel(parallel);
        }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The FFN layer of block `layer` (for routing statistics and inspection).
    pub fn ffn(&self, layer: usize) -> Option<&MoeLayer<'a>> {
        self.blocks.get(layer).map(|b| &b.ffn)
    }

    /// Whether block `layer` has a dense FFN (no experts).
    pub fn is_dense(&self, layer: usize) -> Option<bool> {
        self.blocks.get(layer).map(|b| b.dense)
    }

    /// The token embedding `[n_embd, n_vocab]`.
    pub fn token_embd(&self) -> &TensorView<'a> {
        &self.token_embd
    }

    /// The final norm's weight `[n_embd]`.
    pub fn output_norm(&self) -> &TensorView<'a> {
        &self.output_norm
    }

    /// The head `[n_embd, n_vocab]` (the token embedding when the file ties them).
    pub fn output(&self) -> &TensorView<'a> {
        &self.output
    }

    /// Block `layer`'s norms and attention tensors, as the forward pass uses them (for
    /// running the block elsewhere, a GPU).
    pub fn block_tensors(&self, layer: usize) -> Option<BlockTensors<'a>> {
        let b = self.blocks.get(layer)?;
        let (qkv, biases, qk_norms) = match &b.attention {
            Attention::Standard {
                wq,
                wk,
                wv,
                biases,
                qk_norms,
            } => (Some([*wq, *wk, *wv]), *biases, *qk_norms),
            Attention::Latent(_) => (None, [None; 3], [None; 2]),
        };
        Some(BlockTensors {
            attn_norm: b.attn_norm,
            qkv,
            biases,
            qk_norms,
            wo: b.wo,
            ffn_norm: b.ffn_norm,
        })
    }

    /// Weight bytes one decoded token reads: one embedding row, every block's norms,
    /// attention matrices, router (as F32) and the `k` routed experts it uses (plus any
    /// shared expert), the final norm and the head. The figure behind decode GB/s.
    pub fn weight_bytes_per_token(&self) -> u64 {
        let c = &self.config;
        let bytes = |v: &TensorView<'_>| v.data().len() as u64;
        let ffn_bytes =
            |f: &crate::moe::Ffn<'_>| f.gate().map_or(0, bytes) + bytes(f.up()) + bytes(f.down());
        let mut total = self.token_embd.row_bytes() as u64 + bytes(&self.output_norm);
        total += bytes(&self.output);
        for b in &self.blocks {
            total += [&b.attn_norm, &b.ffn_norm, &b.wo]
                .into_iter()
                .map(bytes)
                .sum::<u64>();
            total += b.projections().iter().map(|(v, _)| bytes(v)).sum::<u64>();
            let experts = b.ffn.experts();
            let per_expert = experts.expert(0).map_or(0, |f| ffn_bytes(&f));
            total += b.ffn.k() as u64 * per_expert;
            if b.ffn.router().is_some() {
                total += 4 * (c.n_embd * experts.n_expert()) as u64;
            }
            total += b.ffn.shared().ffn().map_or(0, ffn_bytes);
            total += b.ffn.shared().gate().map_or(0, bytes);
        }
        total
    }

    /// KV-cache elements per position, all layers.
    fn kv_per_position(&self) -> usize {
        self.config.n_layer * (self.config.k_dim() + self.config.v_dim())
    }

    fn float_regions(&self, t: usize) -> Option<FloatRegions> {
        let c = &self.config;
        let router = self
            .blocks
            .iter()
            .map(|b| b.ffn.workspace_size(t).router)
            .max()
            .unwrap_or(0);
        Some(FloatRegions {
            x: t.checked_mul(c.n_embd)?,
            xn: t.checked_mul(c.n_embd)?,
            q: t.checked_mul(c.q_dim())?,
            attn: t.checked_mul(c.attn_dim())?,
            proj: t.checked_mul(c.n_embd)?,
            kv_new: t.checked_mul(c.k_dim() + c.v_dim())?,
            router,
            mla: c.mla.map_or(Some(0), |m| {
                let combined = self
                    .blocks
                    .iter()
                    .any(|b| matches!(&b.attention, Attention::Latent(w) if w.combined()));
                t.checked_mul(mla::scratch_per_token(c, &m))?
                    .checked_add(mla::scratch_per_batch(&m, combined))
            })?,
        })
    }

    /// Bytes of one quantized activation row of `width` elements for the weight `view`.
    fn input_row_bytes(view: &TensorView<'_>, width: usize) -> usize {
        let act = view.ty().activation_type().unwrap_or(TensorType::F32);
        act_row_bytes(act, width)
    }

    /// Exact sizes of the workspace for batches of up to `max_batch` tokens and a context
    /// of `context` positions (saturating at `usize::MAX`, which no buffer can be).
    pub fn workspace_size(&self, max_batch: usize, context: usize) -> WorkspaceSize {
        let t = max_batch;
        let floats = self
            .float_regions(t)
            .and_then(|r| r.total())
            .unwrap_or(usize::MAX);
        let moe_bytes = self
            .blocks
            .iter()
            .map(|b| b.ffn.workspace_bytes(t))
            .max()
            .unwrap_or(0);
        let bytes = t
            .checked_mul(self.max_act_row_bytes)
            .and_then(|a| a.checked_add(moe_bytes))
            .unwrap_or(usize::MAX);
        WorkspaceSize {
            kv_cache: context.saturating_mul(self.kv_per_position()),
            floats,
            selections: t,
            bytes,
        }
    }

    /// Evaluates `tokens` at positions `start, start + 1, …` and writes their logits:
    /// `logits` holds either every position's (`tokens.len() × n_vocab`) or only the
    /// last one's (`n_vocab`).
    ///
    /// Positions `0..start` must already be in the workspace's KV cache (evaluated by
    /// earlier calls on the same workspace); the batch's keys and values are written at
    /// `start..start + tokens.len()`, which must fit in the context the cache was sized
    /// for. A batch is evaluated exactly as the same tokens one call at a time would be.
    pub fn forward(
        &self,
        tokens: &[u32],
        start: usize,
        logits: &mut [f32],
        ws: &mut ModelWorkspace<'_>,
    ) -> Result<()> {
        self.forward_routed(tokens, start, logits, ws, &mut [], |_, _| {})
    }

    /// [`forward`](Self::forward), also showing every MoE block's routing: `on_route(layer,
    /// selections)` is called with the batch's selections after each MoE block routes, and
    /// when `stats` has an entry for the block (`stats[layer]`, sized for its experts)
    /// router statistics accumulate there. Dense blocks are not reported.
    pub fn forward_routed(
        &self,
        tokens: &[u32],
        start: usize,
        logits: &mut [f32],
        ws: &mut ModelWorkspace<'_>,
        stats: &mut [RouterStats<'_>],
        on_route: impl FnMut(usize, &[Selection]),
    ) -> Result<()> {
        self.forward_offloaded(tokens, start, logits, ws, stats, on_route, &mut NoOffload)
            .map_err(|e| match e {
                OffloadError::Model(e) => e,
                OffloadError::Offload { error, .. } => match error {},
            })
    }

    /// [`forward_routed`](Self::forward_routed) with the FFN of the blocks `offload`
    /// takes run there (a GPU) instead of on the CPU path; their routing is reported as
    /// the offload wrote it, and their router statistics count choices only (no
    /// probabilities).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_offloaded<O: FfnOffload>(
        &self,
        tokens: &[u32],
        start: usize,
        logits: &mut [f32],
        ws: &mut ModelWorkspace<'_>,
        stats: &mut [RouterStats<'_>],
        mut on_route: impl FnMut(usize, &[Selection]),
        offload: &mut O,
    ) -> core::result::Result<(), OffloadError<O::Error>> {
        let c = self.config;
        let t = tokens.len();
        let per_position = self.kv_per_position();
        let context = ws.kv_cache.len() / per_position.max(1);
        let end = start.saturating_add(t);
        if end > context {
            return Err(OffloadError::Model(Error::PositionOutOfRange {
                position: end.saturating_sub(1),
                filled: start,
                context,
            }));
        }
        if t == 0 {
            return Ok(());
        }
        let all_logits = logits.len() == t * c.n_vocab;
        if !all_logits && logits.len() != c.n_vocab {
            return Err(OffloadError::Model(Error::LengthMismatch {
                expected: t * c.n_vocab,
                actual: logits.len(),
            }));
        }
        let size = self.workspace_size(t, context);
        if ws.bytes.len() < size.bytes {
            return Err(OffloadError::Model(Error::WorkspaceTooSmall {
                needed: size.bytes,
                actual: ws.bytes.len(),
            }));
        }
        for (needed, actual) in [
            (size.floats, ws.floats.len()),
            (size.selections, ws.selections.len()),
        ] {
            if actual < needed {
                return Err(OffloadError::Model(Error::BufferTooSmall {
                    needed,
                    actual,
                }));
            }
        }
        let r = self.float_regions(t).ok_or(Error::InvalidModelConfig {
            reason: "batch too large",
        })?;
        let (x, rest) = ws.floats.split_at_mut(r.x);
        let (xn, rest) = rest.split_at_mut(r.xn);
        let (q, rest) = rest.split_at_mut(r.q);
        let (attn, rest) = rest.split_at_mut(r.attn);
        let (proj, rest) = rest.split_at_mut(r.proj);
        let (kv_new, rest) = rest.split_at_mut(r.kv_new);
        let (new_keys, new_values) = kv_new.split_at_mut(t * c.k_dim());
        let (router, rest) = rest.split_at_mut(r.router);
        let mla_scratch = &mut rest[..r.mla];
        let (acts, moe_bytes) = ws.bytes.split_at_mut(t * self.max_act_row_bytes);

        // Embeddings.
        for (row, &token) in x.chunks_exact_mut(c.n_embd).zip(tokens) {
            let src = self
                .token_embd
                .row(u64::from(token))
                .ok_or(Error::TokenOutOfRange {
                    token,
                    n_vocab: c.n_vocab as u64,
                })?;
            dequantize_row(self.token_embd.ty(), src, row)?;
            if c.embedding_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= c.embedding_scale);
            }
        }

        for (l, b) in self.blocks.iter().enumerate() {
            // Attention.
            self.norm_rows(x, &b.attn_norm, xn);
            match &b.attention {
                Attention::Standard {
                    wq,
                    wk,
                    wv,
                    biases,
                    qk_norms,
                } => self.standard_qkv(
                    [wq, wk, wv],
                    biases,
                    qk_norms,
                    start,
                    xn,
                    acts,
                    q,
                    new_keys,
                    new_values,
                )?,
                Attention::Latent(w) => {
                    self.latent_qkv(w, start, xn, acts, mla_scratch, q, new_keys, new_values)?
                }
            }
            match &mut ws.kv_cache {
                KvCache::F32(cache) => {
                    self.attend_cached(cache, l, start, new_keys, new_values, q, attn)?
                }
                KvCache::F16(cache) => {
                    self.attend_cached(cache, l, start, new_keys, new_values, q, attn)?
                }
            }
            if let Attention::Latent(w) = &b.attention {
                self.latent_values(w, attn, acts, mla_scratch)?;
                self.project(
                    &b.wo,
                    &mla_scratch[..t * c.out_dim()],
                    c.out_dim(),
                    acts,
                    proj,
                )?;
            } else {
                self.project(&b.wo, attn, c.attn_dim(), acts, proj)?;
            }
            add_scaled(x, proj, c.residual_scale);

            // FFN.
            self.norm_rows(x, &b.ffn_norm, xn);
            let selections = &mut ws.selections[..t];
            if b.dense {
                let mut one = Selection::new();
                let _ = one.push(Choice {
                    expert: 0,
                    weight: 1.0,
                });
                selections.fill(one);
            }
            if offload.takes(l) {
                offload
                    .forward(l, &b.ffn, xn, selections, proj, moe_bytes)
                    .map_err(|error| OffloadError::Offload { layer: l, error })?;
                if !b.dense {
                    if let Some(s) = stats.get_mut(l) {
                        for sel in selections.iter() {
                            s.record_token(
                                None,
                                core::iter::empty(),
                                sel.iter().map(|c| (c.expert, c.weight)),
                            );
                        }
                    }
                    on_route(l, selections);
                }
            } else if b.dense {
                b.ffn.forward_selected(xn, selections, proj, moe_bytes)?;
            } else {
                let mut moe_ws = Workspace {
                    selections: &mut ws.selections[..t],
                    router,
                    bytes: moe_bytes,
                };
                b.ffn
                    .forward_with_stats(xn, tokens, proj, &mut moe_ws, stats.get_mut(l))?;
                on_route(l, &ws.selections[..t]);
            }
            add_scaled(x, proj, c.residual_scale);
        }

        // Head.
        self.norm_rows(x, &self.output_norm, xn);
        let rows = if all_logits {
            &xn[..]
        } else {
            &xn[(t - 1) * c.n_embd..]
        };
        self.project(&self.output, rows, c.n_embd, acts, logits)?;
        if c.logit_scale != 1.0 {
            logits.iter_mut().for_each(|v| *v /= c.logit_scale);
        }
        Ok(())
    }

    /// Queries into `q` and the batch's keys and values into `new_keys` / `new_values`
    /// (token `i` at position `start + i`), with biases, QK norms and RoPE as the block
    /// has them.
    #[allow(clippy::too_many_arguments)]
    fn standard_qkv(
        &self,
        [wq, wk, wv]: [&TensorView<'_>; 3],
        biases: &[Option<TensorView<'_>>; 3],
        qk_norms: &[Option<TensorView<'_>>; 2],
        start: usize,
        xn: &[f32],
        acts: &mut [u8],
        q: &mut [f32],
        new_keys: &mut [f32],
        new_values: &mut [f32],
    ) -> Result<()> {
        let c = &self.config;
        let kd = c.k_dim();
        let mut targets = [(wq, &mut *q), (wk, &mut *new_keys), (wv, &mut *new_values)];
        self.project_each(xn, c.n_embd, acts, &mut targets)?;
        for (rows, bias) in [&mut *q, &mut *new_keys, new_values]
            .into_iter()
            .zip(biases)
        {
            if let Some(bias) = bias {
                add_rows(rows, bias);
            }
        }
        for (rows, norm) in [&mut *q, &mut *new_keys].into_iter().zip(qk_norms) {
            if let Some(norm) = norm {
                norm_in_place(rows, norm, c.rms_eps);
            }
        }
        for (i, (q, k)) in q
            .chunks_exact_mut(c.q_dim())
            .zip(new_keys.chunks_exact_mut(kd))
            .enumerate()
        {
            let heads = q
                .chunks_exact_mut(c.head_dim)
                .chain(k.chunks_exact_mut(c.head_dim));
            for head in heads {
                c.rope.apply(head, start + i);
            }
        }
        Ok(())
    }

    /// Stores the batch's new keys and values in block `layer`'s part of the cache
    /// (positions `start..`), then runs causal grouped-query attention of the batch's
    /// queries (`q`, after RoPE; token `i` at position `start + i`) over the cached keys and
    /// values of positions `0..=start + i`, into `attn` (`t × n_head · head_dim_v`). Query
    /// head `h` reads key/value head `h / (n_head / n_head_kv)`. The (token, head) pairs
    /// are split across the parallel runner, as rows of unequal cost.
    #[allow(clippy::too_many_arguments)]
    fn attend_cached<E: kv::Element>(
        &self,
        cache: &mut [E],
        layer: usize,
        start: usize,
        new_keys: &[f32],
        new_values: &[f32],
        q: &[f32],
        attn: &mut [f32],
    ) -> Result<()> {
        let c = self.config;
        let (hd, hdv) = (c.head_dim, c.head_dim_v);
        let (kd, vd) = (c.k_dim(), c.v_dim());
        let context = cache.len() / self.kv_per_position().max(1);
        let per_layer = context * (kd + vd);
        let layer_cache = cache
            .get_mut(layer * per_layer..(layer + 1) * per_layer)
            .ok_or(Error::InvalidModelConfig {
                reason: "the KV cache is shorter than its context",
            })?;
        let (keys, values) = layer_cache.split_at_mut(context * kd);
        kv::store(&mut keys[start * kd..], new_keys);
        kv::store(&mut values[start * vd..], new_values);
        let (keys, values) = (&*keys, &*values);

        let group = c.n_head / c.n_head_kv;
        let scale = c.attention_scale;
        let attn_bytes: &mut [u8] = bytemuck::cast_slice_mut(attn);
        // Token `i` attends to `start + i + 1` positions: uneven rows.
        self.parallel
            .for_each_uneven_rows(attn_bytes, hdv * 4, &|first, piece| {
                let piece = as_floats(piece)?;
                for (n, out) in piece.chunks_exact_mut(hdv).enumerate() {
                    let (i, h) = ((first + n) / c.n_head, (first + n) % c.n_head);
                    let kv = h / group;
                    math::attend(
                        &q[i * c.q_dim() + h * hd..][..hd],
                        start + i + 1,
                        scale,
                        |j| &keys[j * kd + kv * hd..][..hd],
                        |j| &values[j * vd + kv * hdv..][..hdv],
                        out,
                    );
                }
                Ok(())
            })
    }

    /// `out[t] = rms_norm(x[t]) · weight` for every row.
    fn norm_rows(&self, x: &[f32], weight: &TensorView<'_>, out: &mut [f32]) {
        let n = self.config.n_embd;
        for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            math::rms_norm(xr, self.config.rms_eps, or, |i| norm_weight(weight, i));
        }
    }

    /// `out[t] = W · rows[t]` for every row of `rows` (each `width` wide); see
    /// [`project_each`](Self::project_each).
    fn project(
        &self,
        w: &TensorView<'_>,
        rows: &[f32],
        width: usize,
        acts: &mut [u8],
        out: &mut [f32],
    ) -> Result<()> {
        self.project_each(rows, width, acts, &mut [(w, out)])
    }

    /// `out[t] = W · rows[t]` for each `(W, out)` of `targets`: the rows are quantized to
    /// `W`'s activation type in `acts` (once for consecutive matrices that read the same
    /// type, as Q, K and V usually do), then multiplied through the batch kernel, split
    /// across the parallel runner — by output rows for one token, by tokens for a batch
    /// (each piece then streams `W` once for up to [`TOKEN_CHUNK`] tokens).
    fn project_each(
        &self,
        rows: &[f32],
        width: usize,
        acts: &mut [u8],
        targets: &mut [(&TensorView<'_>, &mut [f32])],
    ) -> Result<()> {
        let n_tokens = rows.len() / width;
        let mut quantized = None;
        for (w, out) in targets.iter_mut() {
            let ty = w.ty();
            let act = ty.activation_type().ok_or(Error::UnsupportedType { ty })?;
            let rb = act_row_bytes(act, width);
            let available = acts.len();
            let acts = acts
                .get_mut(..n_tokens * rb)
                .ok_or(Error::WorkspaceTooSmall {
                    needed: n_tokens * rb,
                    actual: available,
                })?;
            if quantized != Some(act) {
                // Split across threads too: serial, it idled every other thread for
                // about 4 % of a prefill.
                self.parallel
                    .for_each_rows(acts, rb, QUANTIZE_MIN_ROWS, &|first, piece| {
                        let src = rows.chunks_exact(width).skip(first);
                        for (src, dst) in src.zip(piece.chunks_exact_mut(rb)) {
                            quantize_row(act, src, dst)?;
                        }
                        Ok(())
                    })?;
                quantized = Some(act);
            }
            self.multiply(w, acts, n_tokens, out)?;
        }
        Ok(())
    }

    /// `out[t] = W · acts[t]` for `n_tokens` quantized activation rows (see
    /// [`project_each`](Self::project_each)).
    fn multiply(
        &self,
        w: &TensorView<'_>,
        acts: &[u8],
        n_tokens: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let ty = w.ty();
        let rb = acts.len() / n_tokens.max(1);
        let n_out = w.ne(1) as usize;
        if out.len() != n_tokens * n_out {
            return Err(Error::LengthMismatch {
                expected: n_tokens * n_out,
                actual: out.len(),
            });
        }
        let kernels = &self.kernels;
        let (data, row_bytes) = (w.data(), w.row_bytes());
        let out_bytes: &mut [u8] = bytemuck::cast_slice_mut(out);
        if n_tokens == 1 {
            self.parallel
                .for_each_rows(out_bytes, 4, MIN_ROWS_PER_THREAD, &|first, piece| {
                    let piece = as_floats(piece)?;
                    let rows = first * row_bytes..(first + piece.len()) * row_bytes;
                    kernels.matmul(ty, data.get(rows).unwrap_or(&[]), &[acts], piece)
                })
        } else {
            self.parallel
                .for_each_rows(out_bytes, n_out * 4, 1, &|first, piece| {
                    let piece = as_floats(piece)?;
                    for (c, chunk) in piece.chunks_mut(TOKEN_CHUNK * n_out).enumerate() {
                        let t0 = first + c * TOKEN_CHUNK;
                        let m = chunk.len() / n_out;
                        let refs: [&[u8]; TOKEN_CHUNK] = core::array::from_fn(|j| {
                            let at = (t0 + j) * rb;
                            acts.get(at..at + rb).filter(|_| j < m).unwrap_or(&[])
                        });
                        kernels.matmul(ty, data, &refs[..m], chunk)?;
                    }
                    Ok(())
                })
        }
    }
}

impl<'a> Block<'a> {
    /// The projections the block's attention reads with the width of their input rows.
    fn projections(&self) -> heapless::Vec<(TensorView<'a>, usize), 6> {
        let mut out = heapless::Vec::new();
        match &self.attention {
            Attention::Standard { wq, wk, wv, .. } => {
                for v in [wq, wk, wv] {
                    let _ = out.push((*v, v.ne(0) as usize));
                }
            }
            Attention::Latent(w) => {
                for v in w.projections() {
                    let _ = out.push((v, v.ne(0) as usize));
                }
            }
        }
        out
    }
}

/// Output rows below which one token's projection is not split further across threads.
const MIN_ROWS_PER_THREAD: usize = 64;

/// Activation rows below which their quantization is not split across threads.
const QUANTIZE_MIN_ROWS: usize = 8;

/// A piece of an f32 buffer handed back as bytes by the parallel runner, as f32 again
/// (pieces are whole rows of 4-byte elements of an f32 buffer, hence aligned).
fn as_floats(piece: &mut [u8]) -> Result<&mut [f32]> {
    bytemuck::try_cast_slice_mut(piece).map_err(|_| Error::InvalidModelConfig {
        reason: "a scratch piece is not f32-aligned",
    })
}

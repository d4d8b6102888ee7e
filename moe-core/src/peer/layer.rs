//! [`PeerLayer`]: the query network, product-key retrieval per head and the singleton
//! experts, run on a batch of tokens inside a caller-provided workspace.
//!
//! One forward pass: (1) normalise each input row when the layer has a pre-norm and
//! quantize it once per activation format the query and u tables need; (2) project the
//! queries, each query-weight row read once and dotted with every token, then the query
//! bias and the BatchNorm as a per-channel affine; (3) per head, score every sub-key of
//! both halves against every token (each sub-key row read once per batch), keep each
//! half's top k, take the top `k_final` of the candidate sums and weigh them; (4) per
//! retrieved expert, `act(u·x) · weight · v` added into the token's output row. Only the
//! u and v rows of retrieved experts are read, so the expert work is H · k_final rows per
//! token whatever N is.

use super::config::{MAX_TOPK, PeerConfig};
use super::retrieval::{Scored, TopList, product_key_topk};
use crate::error::name_of;
use crate::moe::DotKernel;
use crate::moe::ffn::{ACT_TYPES, act_index, act_row_bytes};
use crate::quant::{TensorType, dequantize_row, quantize_row};
use crate::tensor::TensorView;
use crate::workspace::{Carver, Layout, Words, mul};
use crate::{Error, Result};

/// Elements converted at once through a stack buffer: a multiple of every block length,
/// so any row of whole blocks splits into chunks of whole blocks.
const CHUNK: usize = 256;

/// Inference-time BatchNorm over the query channels: `(q - mean) / √(var + ε) · weight +
/// bias`, every tensor F32 of the query length.
#[derive(Clone, Copy, Debug)]
pub struct BatchNorm<'a> {
    /// γ (`None`: 1, a BatchNorm without affine parameters).
    pub weight: Option<TensorView<'a>>,
    /// β (`None`: 0).
    pub bias: Option<TensorView<'a>>,
    /// Running mean.
    pub running_mean: TensorView<'a>,
    /// Running variance.
    pub running_var: TensorView<'a>,
}

/// The tensors of a PEER layer, in GGUF dimension order (`ne[0]` first).
#[derive(Clone, Copy, Debug)]
pub struct PeerTensors<'a> {
    /// `[n_embd, 2·H·key_length]`: query rows ordered (half, head, element).
    pub query: TensorView<'a>,
    /// `[2·H·key_length]` F32, added after the projection.
    pub query_bias: Option<TensorView<'a>>,
    /// BatchNorm of the projected query.
    pub query_norm: Option<BatchNorm<'a>>,
    /// `[n_embd]` F32: peer-pytorch's `pre_rmsnorm` multiplier (γ + 1) applied to
    /// `x · √d / max(‖x‖, 1e-12)` before everything else.
    pub norm: Option<TensorView<'a>>,
    /// `[key_length, 2, n, H]` (or `[key_length, 2, n]` when shared): sub-key row
    /// `(set · n + i) · 2 + half`, peer-pytorch's `keys[h, i, half, :]`.
    pub keys: TensorView<'a>,
    /// `[n_embd, N]` (or `[n_embd, H·N]`): u, the input side of each expert.
    pub down: TensorView<'a>,
    /// `[n_embd, N]` (or `[n_embd, H·N]`): v, the output side of each expert.
    pub up: TensorView<'a>,
}

/// The experts one head retrieved for one token, as reported to
/// [`PeerLayer::forward_with`].
#[derive(Clone, Copy, Debug)]
pub struct HeadSelection<'s> {
    /// The token's index in the batch.
    pub token: usize,
    /// The head.
    pub head: usize,
    /// Retrieved experts (ids in `0..N`, before the per-head offset of separate expert
    /// sets), best first.
    pub experts: &'s [Scored],
    /// Their weights after the score activation.
    pub weights: &'s [f32],
}

/// A PEER layer over borrowed weights.
#[derive(Clone, Copy, Debug)]
pub struct PeerLayer<'a> {
    config: PeerConfig,
    tensors: PeerTensors<'a>,
    dot: DotKernel,
}

/// Byte and word counts of the forward workspace regions, in carving order.
struct Regions {
    activations: [Option<usize>; 4],
    queries: Option<usize>,
    query_halves: Option<usize>,
    scores: Option<usize>,
}

fn shape_error(tensor: &str, dim: usize, expected: u64, actual: u64) -> Error {
    Error::BadTensorShape {
        tensor: name_of(tensor),
        dim: dim as u8,
        expected,
        actual,
    }
}

/// `view` must have exactly the dimensions `dims` (missing trailing ones count as 1).
fn check_shape(view: &TensorView<'_>, role: &str, dims: [u64; 4]) -> Result<()> {
    for (dim, expected) in dims.into_iter().enumerate() {
        if view.ne(dim) != expected {
            return Err(shape_error(role, dim, expected, view.ne(dim)));
        }
    }
    Ok(())
}

/// A weight read through the dot kernels.
fn check_dot_type(view: &TensorView<'_>) -> Result<()> {
    match view.ty().activation_type() {
        Some(_) => Ok(()),
        None => Err(Error::UnsupportedType { ty: view.ty() }),
    }
}

/// A small F32 vector of `len` elements.
fn check_vector(view: &TensorView<'_>, role: &str, len: usize) -> Result<()> {
    if view.ty() != TensorType::F32 {
        return Err(Error::UnsupportedType { ty: view.ty() });
    }
    check_shape(view, role, [len as u64, 1, 1, 1])
}

/// Element `i` of an F32 vector checked by [`check_vector`].
#[inline]
fn f32_at(view: &TensorView<'_>, i: usize) -> f32 {
    let at = i * 4;
    match view.data().get(at..at + 4) {
        Some(&[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]),
        _ => 0.0,
    }
}

impl<'a> PeerLayer<'a> {
    /// A layer from its configuration and tensors, checking every shape and type against
    /// the configuration. Uses the scalar dot kernels.
    pub fn new(config: PeerConfig, tensors: PeerTensors<'a>) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let (d, n) = (c.n_embd as u64, c.n_keys() as u64);
        // Validated: these fit.
        let q_len = c.query_length().unwrap_or(0);
        let rows = c.expert_rows().unwrap_or(0) as u64;

        let t = &tensors;
        check_dot_type(&t.query)?;
        check_shape(&t.query, "peer_query.weight", [d, q_len as u64, 1, 1])?;
        if let Some(bias) = &t.query_bias {
            check_vector(bias, "peer_query.bias", q_len)?;
        }
        if let Some(bn) = &t.query_norm {
            check_vector(&bn.running_mean, "peer_query_norm.running_mean", q_len)?;
            check_vector(&bn.running_var, "peer_query_norm.running_var", q_len)?;
            if let Some(w) = &bn.weight {
                check_vector(w, "peer_query_norm.weight", q_len)?;
            }
            if let Some(b) = &bn.bias {
                check_vector(b, "peer_query_norm.bias", q_len)?;
            }
        }
        if let Some(norm) = &t.norm {
            check_vector(norm, "peer_norm.weight", c.n_embd)?;
        }
        check_dot_type(&t.keys)?;
        let dk = c.key_length as u64;
        check_shape(&t.keys, "peer_keys.weight", [dk, 2, n, c.key_sets() as u64])?;
        check_dot_type(&t.down)?;
        check_shape(&t.down, "peer_down.weight", [d, rows, 1, 1])?;
        // v rows are dequantized through a stack buffer of CHUNK elements.
        if !t.up.ty().can_dequantize() || t.up.ty().block_len() > CHUNK {
            return Err(Error::UnsupportedType { ty: t.up.ty() });
        }
        check_shape(&t.up, "peer_up.weight", [d, rows, 1, 1])?;
        Ok(PeerLayer {
            config,
            tensors,
            dot: crate::kernels::scalar::dot,
        })
    }

    /// The same layer computing its dot products with `dot` (the place a kernel table
    /// plugs in).
    pub fn with_dot_kernel(mut self, dot: DotKernel) -> Self {
        self.dot = dot;
        self
    }

    /// The same layer computing its dot products through `kernels` (chosen once, for
    /// example by `moe_std::kernels::detect()`; [`Kernels::scalar`] by default).
    ///
    /// [`Kernels::scalar`]: crate::kernels::Kernels::scalar
    pub fn with_kernels(self, kernels: &crate::kernels::Kernels) -> Self {
        self.with_dot_kernel(kernels.dot_kernel())
    }

    /// The configuration.
    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// The tensors.
    pub fn tensors(&self) -> &PeerTensors<'a> {
        &self.tensors
    }

    /// Model width.
    pub fn n_embd(&self) -> usize {
        self.config.n_embd
    }

    /// Bytes of weights one token reads at most: the query projection, every sub-key of
    /// every head, and one u and one v row per retrieved expert (experts whose weight is
    /// exactly 0 are skipped, so a ReLU layer often reads fewer).
    pub fn weight_bytes_per_token(&self) -> usize {
        let t = &self.tensors;
        let experts = self.config.n_head * self.config.experts_per_head;
        let mut bytes = t.query.data().len() + t.keys.data().len();
        bytes += experts * (t.down.row_bytes() + t.up.row_bytes());
        for v in [t.query_bias, t.norm].into_iter().flatten() {
            bytes += v.data().len();
        }
        if let Some(bn) = &t.query_norm {
            let parts = [
                Some(bn.running_mean),
                Some(bn.running_var),
                bn.weight,
                bn.bias,
            ];
            bytes += parts
                .iter()
                .flatten()
                .map(|v| v.data().len())
                .sum::<usize>();
        }
        bytes
    }

    /// The activation formats the input row is quantized to.
    fn needed_activations(&self) -> [bool; 4] {
        let mut needed = [false; 4];
        for view in [&self.tensors.query, &self.tensors.down] {
            if let Some(i) = view.ty().activation_type().and_then(act_index) {
                needed[i] = true;
            }
        }
        needed
    }

    fn key_act(&self) -> TensorType {
        // Checked in `new`.
        self.tensors
            .keys
            .ty()
            .activation_type()
            .unwrap_or(TensorType::F32)
    }

    fn regions(&self, n_tokens: usize) -> Regions {
        let c = &self.config;
        let needed = self.needed_activations();
        let mut activations = [Some(0); 4];
        for (i, a) in activations.iter_mut().enumerate() {
            if needed[i] {
                *a = mul(n_tokens, act_row_bytes(ACT_TYPES[i], c.n_embd));
            }
        }
        let half_bytes = act_row_bytes(self.key_act(), c.key_length);
        Regions {
            activations,
            queries: c.query_length().and_then(|q| mul(n_tokens, q)),
            query_halves: mul(n_tokens, 2).and_then(|r| mul(r, half_bytes)),
            scores: mul(n_tokens, 2).and_then(|r| mul(r, c.n_keys())),
        }
    }

    /// Exact bytes [`forward`](Self::forward) needs for a batch of `n_tokens` tokens (any
    /// alignment; saturates at `usize::MAX`): the input rows in each activation format,
    /// the projected queries, the quantized query halves of one head and the sub-key
    /// scores of one head, for every token.
    pub fn workspace_bytes(&self, n_tokens: usize) -> usize {
        if n_tokens == 0 {
            return 0;
        }
        let r = self.regions(n_tokens);
        let mut layout = Layout::new();
        for a in r.activations {
            layout.bytes(a);
        }
        layout
            .words(r.queries)
            .bytes(r.query_halves)
            .words(r.scores);
        layout.total()
    }

    /// Runs the layer on `hidden` (`T × n_embd`, row-major) into `out` (same shape,
    /// overwritten).
    pub fn forward(&self, hidden: &[f32], out: &mut [f32], workspace: &mut [u8]) -> Result<()> {
        self.forward_with(hidden, out, workspace, |_| {})
    }

    /// [`forward`](Self::forward), reporting each head's retrieved experts and weights to
    /// `on_select` (statistics, tests).
    pub fn forward_with(
        &self,
        hidden: &[f32],
        out: &mut [f32],
        workspace: &mut [u8],
        mut on_select: impl FnMut(HeadSelection<'_>),
    ) -> Result<()> {
        let c = &self.config;
        let d = c.n_embd;
        let n_tokens = hidden.len() / d;
        let len = n_tokens * d;
        for actual in [hidden.len(), out.len()] {
            if actual != len {
                return Err(Error::LengthMismatch {
                    expected: len,
                    actual,
                });
            }
        }
        let needed = self.workspace_bytes(n_tokens);
        if workspace.len() < needed {
            return Err(Error::WorkspaceTooSmall {
                needed,
                actual: workspace.len(),
            });
        }
        if n_tokens == 0 {
            return Ok(());
        }

        let r = self.regions(n_tokens);
        let mut carver = Carver::new(workspace);
        let act_regions = [
            carver.bytes(r.activations[0])?,
            carver.bytes(r.activations[1])?,
            carver.bytes(r.activations[2])?,
            carver.bytes(r.activations[3])?,
        ];
        let mut queries = carver.words(r.queries)?;
        let query_halves = carver.bytes(r.query_halves)?;
        let mut scores = carver.words(r.scores)?;

        let acts = self.quantize_inputs(hidden, act_regions)?;
        self.project_queries(&acts, n_tokens, &mut queries)?;

        out.fill(0.0);
        let n = c.n_keys();
        let key_act = self.key_act();
        let half_bytes = act_row_bytes(key_act, c.key_length);
        let q_len = c.query_length().unwrap_or(0);
        let keys = &self.tensors.keys;
        let mut weights = [0.0f32; MAX_TOPK];
        for head in 0..c.n_head {
            // This head's query halves, quantized for the sub-key dot products.
            for (row, dst) in query_halves.chunks_exact_mut(half_bytes).enumerate() {
                let (t, half) = (row / 2, row % 2);
                let start = t * q_len + (half * c.n_head + head) * c.key_length;
                quantize_words(key_act, &queries, start, c.key_length, dst)?;
            }
            // Every sub-key once, against every token.
            let set = if c.shared_keys { 0 } else { head };
            for half in 0..2 {
                for i in 0..n {
                    let key = keys.row(((set * n + i) * 2 + half) as u64).ok_or(
                        Error::InvalidPeerConfig {
                            reason: "sub-key row out of range",
                        },
                    )?;
                    for t in 0..n_tokens {
                        let at = (t * 2 + half) * half_bytes;
                        let q = query_halves.get(at..at + half_bytes).unwrap_or(&[]);
                        scores.set_f32((t * 2 + half) * n + i, (self.dot)(keys.ty(), key, q)?);
                    }
                }
            }
            let offset = if c.separate_embed_per_head {
                head * c.n_expert
            } else {
                0
            };
            for t in 0..n_tokens {
                let finals = self.retrieve(&scores, t, n);
                let experts = finals.as_slice();
                let mut s = [0.0f32; MAX_TOPK];
                for (s, e) in s.iter_mut().zip(experts) {
                    *s = e.score;
                }
                c.score_activation.apply(&s[..experts.len()], &mut weights);
                let weights = &weights[..experts.len()];
                on_select(HeadSelection {
                    token: t,
                    head,
                    experts,
                    weights,
                });
                let out_row = &mut out[t * d..(t + 1) * d];
                for (e, &w) in experts.iter().zip(weights) {
                    if w != 0.0 {
                        self.add_expert(&acts, t, offset + e.index as usize, w, out_row)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Token `t`'s product-key top list from its sub-key scores.
    fn retrieve(&self, scores: &Words<'_>, t: usize, n: usize) -> TopList {
        let c = &self.config;
        let mut halves = [TopList::new(c.product_key_topk); 2];
        for (half, top) in halves.iter_mut().enumerate() {
            let base = (t * 2 + half) * n;
            for i in 0..n {
                top.push(scores.f32(base + i), i as u32);
            }
        }
        product_key_topk(
            &halves[0],
            &halves[1],
            n as u32,
            c.index_major,
            c.experts_per_head,
        )
    }

    /// The input rows (normalised first when the layer has a pre-norm), quantized once to
    /// every needed activation format.
    fn quantize_inputs<'w>(
        &self,
        hidden: &[f32],
        regions: [&'w mut [u8]; 4],
    ) -> Result<Inputs<'w>> {
        let d = self.config.n_embd;
        let needed = self.needed_activations();
        let mut rows: [&'w [u8]; 4] = [&[]; 4];
        let mut row_bytes = [0usize; 4];
        let mut buf = [0.0f32; CHUNK];
        for (i, region) in regions.into_iter().enumerate() {
            if !needed[i] {
                continue;
            }
            let ty = ACT_TYPES[i];
            let rb = act_row_bytes(ty, d);
            let chunk_bytes = act_row_bytes(ty, CHUNK);
            for (x, dst) in hidden.chunks_exact(d).zip(region.chunks_exact_mut(rb)) {
                let scale = self.norm_scale(x);
                for (c, (xs, dst)) in x.chunks(CHUNK).zip(dst.chunks_mut(chunk_bytes)).enumerate() {
                    let buf = &mut buf[..xs.len()];
                    for (j, (b, &x)) in buf.iter_mut().zip(xs).enumerate() {
                        *b = match &self.tensors.norm {
                            Some(w) => x * scale * f32_at(w, c * CHUNK + j),
                            None => x,
                        };
                    }
                    quantize_row(ty, buf, dst)?;
                }
            }
            rows[i] = region;
            row_bytes[i] = rb;
        }
        Ok(Inputs { rows, row_bytes })
    }

    /// `√d / max(‖x‖, 1e-12)` (`F.normalize(x) · √d`), or 1 without a pre-norm.
    fn norm_scale(&self, x: &[f32]) -> f32 {
        if self.tensors.norm.is_none() {
            return 1.0;
        }
        let sq: f32 = x.iter().map(|v| v * v).sum();
        libm::sqrtf(x.len() as f32) / libm::sqrtf(sq).max(1e-12)
    }

    /// Queries of every token: each query-weight row dotted with every token's input,
    /// then bias and BatchNorm.
    fn project_queries(
        &self,
        acts: &Inputs<'_>,
        n_tokens: usize,
        queries: &mut Words<'_>,
    ) -> Result<()> {
        let t = &self.tensors;
        let q_len = self.config.query_length().unwrap_or(0);
        let act = t.query.ty().activation_type().unwrap_or(TensorType::F32);
        let eps = self.config.query_norm_epsilon;
        for (ch, row) in t.query.data().chunks_exact(t.query.row_bytes()).enumerate() {
            let bias = t.query_bias.as_ref().map_or(0.0, |b| f32_at(b, ch));
            // (q - mean) / √(var + ε) · γ + β, as torch's eval-mode BatchNorm.
            let affine = t.query_norm.as_ref().map(|bn| {
                let mean = f32_at(&bn.running_mean, ch);
                let inv_std = 1.0 / libm::sqrtf(f32_at(&bn.running_var, ch) + eps);
                let gamma = bn.weight.as_ref().map_or(1.0, |w| f32_at(w, ch));
                let beta = bn.bias.as_ref().map_or(0.0, |b| f32_at(b, ch));
                (mean, inv_std, gamma, beta)
            });
            for tok in 0..n_tokens {
                let mut q = (self.dot)(t.query.ty(), row, acts.row(act, tok))? + bias;
                if let Some((mean, inv_std, gamma, beta)) = affine {
                    q = (q - mean) * inv_std * gamma + beta;
                }
                queries.set_f32(tok * q_len + ch, q);
            }
        }
        Ok(())
    }

    /// Adds `act(u_e · x_t) · w · v_e` to `out_row`.
    fn add_expert(
        &self,
        acts: &Inputs<'_>,
        t: usize,
        expert: usize,
        w: f32,
        out_row: &mut [f32],
    ) -> Result<()> {
        let (down, up) = (&self.tensors.down, &self.tensors.up);
        let missing = Error::ExpertOutOfRange {
            expert: expert as i64,
            n_expert: down.n_rows(),
        };
        let u = down.row(expert as u64).ok_or(missing.clone())?;
        let v = up.row(expert as u64).ok_or(missing)?;
        let act = down.ty().activation_type().unwrap_or(TensorType::F32);
        let z = self
            .config
            .activation
            .apply((self.dot)(down.ty(), u, acts.row(act, t))?)
            * w;
        let mut buf = [0.0f32; CHUNK];
        let chunk_bytes = CHUNK / up.ty().block_len() * up.ty().block_bytes();
        for (src, dst) in v.chunks(chunk_bytes).zip(out_row.chunks_mut(CHUNK)) {
            let buf = &mut buf[..dst.len()];
            dequantize_row(up.ty(), src, buf)?;
            for (o, &x) in dst.iter_mut().zip(buf.iter()) {
                *o += z * x;
            }
        }
        Ok(())
    }
}

/// The batch's input rows in each prepared activation format.
struct Inputs<'w> {
    rows: [&'w [u8]; 4],
    row_bytes: [usize; 4],
}

impl<'w> Inputs<'w> {
    /// Token `t`'s row in format `ty` (empty if that format was not prepared, which the
    /// dot kernel reports as a length mismatch).
    #[inline]
    fn row(&self, ty: TensorType, t: usize) -> &'w [u8] {
        let Some(i) = act_index(ty) else { return &[] };
        let rb = self.row_bytes[i];
        self.rows[i].get(t * rb..(t + 1) * rb).unwrap_or(&[])
    }
}

/// Quantizes words `start..start + len` of `src` to `ty` into `dst`.
fn quantize_words(
    ty: TensorType,
    src: &Words<'_>,
    start: usize,
    len: usize,
    dst: &mut [u8],
) -> Result<()> {
    let mut buf = [0.0f32; CHUNK];
    let chunk_bytes = act_row_bytes(ty, CHUNK);
    for (c, dst) in dst.chunks_mut(chunk_bytes).enumerate() {
        let n = (len - c * CHUNK).min(CHUNK);
        let buf = &mut buf[..n];
        src.read_f32s(start + c * CHUNK, buf);
        quantize_row(ty, buf, dst)?;
    }
    Ok(())
}

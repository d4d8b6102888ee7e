//! [`GpuModel`]: a whole `moe_core::model::Model` on the device — token embedding,
//! every block's attention (RMSNorm, Q/K/V projections with biases and QK norms, RoPE,
//! the KV cache, causal grouped-query attention, the output projection) and FFN (a
//! [`GpuMoeLayer`] per block: all experts resident, a dense FFN as a one-expert layer
//! without router), the final norm and the head — with `Model::forward`'s contract.
//!
//! Weights are uploaded as their GGUF bytes (norms, biases and QK norms as f32); the KV
//! cache is f32 on the device. One forward pass is one sequence of launches on the
//! device's stream; the host copies the token ids in and the logits out. Activations are
//! quantized for each projection as the CPU path quantizes them (Q8_0 rows for
//! Q4_0/Q5_0/Q8_0 weights, Q8_K rows for K-quants, f32 rows for F32/F16/BF16), so the
//! logits track the CPU path's.
//!
//! Scope: standard attention (Llama/Mistral dense, Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
//! GraniteMoE); DeepSeek's latent attention is a [`GpuError::Unsupported`]. Head widths
//! up to [`ATTN_MAX_DIM`].
//!
//! Unverified on hardware: the kernels' arithmetic is checked on the CPU
//! (`tests/model_check.rs`), this launch code only by `tests/model.rs` on a GPU.

use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use moe_core::TensorType;
use moe_core::model::{Model, ModelConfig, Rope, RopeLayout};
use moe_core::quant::dequantize_row;
use moe_core::tensor::TensorView;

use crate::error::{GpuError, Result, catch};
use crate::layer::{Format, GpuDevice, GpuMoeLayer, RouterTensors, act_row_bytes, format_of};

/// Widest query/key or value head the attention kernel takes.
pub const ATTN_MAX_DIM: usize = 256;
/// Weight rows per block of the projection kernels (one warp each).
pub(crate) const ROWS_PER_BLOCK: usize = 4;
/// Tokens per block row of the batched projection kernels (`_m8`).
const TILE: usize = 8;
/// Threads per block of the attention kernel (`ATTN_WARPS` warps).
pub(crate) const ATTN_THREADS: u32 = 128;
/// Threads per row of `model_rms_norm` (`NORM_THREADS`).
pub(crate) const NORM_THREADS: u32 = 256;
/// Largest grid y dimension.
const MAX_GRID_Y: usize = 65_535;

/// `RopeParams` of `kernels/model.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct RopeParams {
    layout: i32,
    dims: i32,
    theta_scale: f32,
    freq_scale: f32,
    ext_factor: f32,
    attn_factor: f32,
    corr_low: f32,
    corr_high: f32,
}

// SAFETY: `#[repr(C)]` with eight 4-byte fields in the order and types of `struct
// RopeParams` in kernels/model.cu, so the kernel reads exactly these bytes.
unsafe impl DeviceRepr for RopeParams {}

/// `AttnParams` of `kernels/model.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct AttnParams {
    n_head: i32,
    n_head_kv: i32,
    head_dim: i32,
    head_dim_v: i32,
    q_dim: i32,
    k_dim: i32,
    v_dim: i32,
    attn_dim: i32,
    start: i32,
    scale: f32,
}

// SAFETY: `#[repr(C)]` with ten 4-byte fields in the order and types of `struct
// AttnParams` in kernels/model.cu.
unsafe impl DeviceRepr for AttnParams {}

/// The layouts of this module's kernel params structs, for `param_layout`'s check
/// against the C structs.
#[cfg(test)]
pub(crate) fn param_layouts() -> Vec<crate::param_layout::Layout> {
    use crate::param_layout::layout;
    vec![
        layout!(RopeParams {
            layout,
            dims,
            theta_scale,
            freq_scale,
            ext_factor,
            attn_factor,
            corr_low,
            corr_high,
        }),
        layout!(AttnParams {
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            q_dim,
            k_dim,
            v_dim,
            attn_dim,
            start,
            scale,
        }),
    ]
}

fn rope_params(rope: &Rope) -> RopeParams {
    RopeParams {
        layout: match rope.layout {
            RopeLayout::Normal => 0,
            RopeLayout::Neox => 1,
        },
        dims: rope.dims as i32,
        // As math.rs: base^(-2 / dims) in f32.
        theta_scale: rope.base.powf(-2.0 / rope.dims as f32),
        freq_scale: rope.freq_scale,
        ext_factor: rope.ext_factor,
        attn_factor: rope.attn_factor,
        corr_low: rope.corr_dims[0],
        corr_high: rope.corr_dims[1],
    }
}

fn attn_params(c: &ModelConfig, start: usize) -> AttnParams {
    AttnParams {
        n_head: c.n_head as i32,
        n_head_kv: c.n_head_kv as i32,
        head_dim: c.head_dim as i32,
        head_dim_v: c.head_dim_v as i32,
        q_dim: c.q_dim() as i32,
        k_dim: c.k_dim() as i32,
        v_dim: c.v_dim() as i32,
        attn_dim: c.attn_dim() as i32,
        start: start as i32,
        scale: c.attention_scale,
    }
}

fn words(ints: &[i32], floats: &[f32]) -> Vec<u8> {
    let mut out: Vec<u8> = ints.iter().flat_map(|v| v.to_le_bytes()).collect();
    out.extend(floats.iter().flat_map(|v| v.to_le_bytes()));
    out
}

/// The bytes of the `RopeParams` `model_rope` takes for `rope` (for the host check of
/// the kernels in `tests/model_check`; not a stable API).
#[doc(hidden)]
pub fn rope_params_bytes(rope: &Rope) -> Vec<u8> {
    let p = rope_params(rope);
    words(
        &[p.layout, p.dims],
        &[
            p.theta_scale,
            p.freq_scale,
            p.ext_factor,
            p.attn_factor,
            p.corr_low,
            p.corr_high,
        ],
    )
}

/// The bytes of the `AttnParams` `model_attention` takes for `config` at `start` (for the
/// host check; not a stable API).
#[doc(hidden)]
pub fn attn_params_bytes(config: &ModelConfig, start: usize) -> Vec<u8> {
    let p = attn_params(config, start);
    words(
        &[
            p.n_head,
            p.n_head_kv,
            p.head_dim,
            p.head_dim_v,
            p.q_dim,
            p.k_dim,
            p.v_dim,
            p.attn_dim,
            p.start,
        ],
        &[p.scale],
    )
}

/// Checks a projection `[n_in, n_out]` and returns its format.
fn check_matrix(
    view: &TensorView<'_>,
    role: &'static str,
    n_in: usize,
    n_out: usize,
) -> Result<Format> {
    let f = format_of(view.ty(), role)?;
    if view.ne(0) as usize != n_in || view.ne(1) as usize != n_out {
        return Err(GpuError::Unsupported {
            reason: "a projection whose shape does not match the model's widths",
        });
    }
    if !n_in.is_multiple_of(f.group()) {
        return Err(GpuError::Unsupported {
            reason: "a projection input width that is not a whole number of blocks (32 elements for float weights)",
        });
    }
    if view.data().len() != n_in / f.ty.block_len() * f.ty.block_bytes() * n_out {
        return Err(GpuError::Unsupported {
            reason: "a projection whose bytes do not match its shape",
        });
    }
    Ok(f)
}

/// Checks a norm weight or bias of `len` elements that the host can decode to f32.
fn check_vector(view: &TensorView<'_>, role: &'static str, len: usize) -> Result<()> {
    if !matches!(
        view.ty(),
        TensorType::F32 | TensorType::F16 | TensorType::BF16
    ) {
        return Err(GpuError::UnsupportedType {
            role,
            ty: view.ty(),
        });
    }
    if view.n_elements() as usize != len || view.data().len() != len * view.ty().block_bytes() {
        return Err(GpuError::Unsupported {
            reason: "a norm weight or bias whose length does not match the model's widths",
        });
    }
    Ok(())
}

/// The router tensors of an FFN layer, as the GPU layer takes them.
fn router_tensors<'a>(layer: &moe_core::moe::MoeLayer<'a>) -> Option<RouterTensors<'a>> {
    layer.router().and_then(|r| {
        r.weight().map(|w| RouterTensors {
            weight: *w,
            bias: r.bias().copied(),
        })
    })
}

/// What [`GpuModel::plan`] found: the formats of the embedding, the head and every
/// block's projections.
struct Plan {
    embd: Format,
    output: Format,
    /// Per block: wq, wk, wv, wo.
    blocks: Vec<[Format; 4]>,
}

/// A projection on the device.
#[derive(Debug)]
struct Matrix {
    bytes: Arc<CudaSlice<u8>>,
    format: Format,
    n_in: usize,
    n_out: usize,
    /// `_m1` and `_m8` kernels.
    kernels: [CudaFunction; 2],
}

/// One block on the device.
#[derive(Debug)]
struct Block {
    attn_norm: CudaSlice<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    biases: [Option<CudaSlice<f32>>; 3],
    /// The query's and key's norm weights with their length (a head, or the whole row).
    qk_norms: [Option<(CudaSlice<f32>, usize)>; 2],
    wo: Matrix,
    ffn_norm: CudaSlice<f32>,
    /// The FFN (a dense one: the one-expert layer without router).
    ffn: GpuMoeLayer,
}

/// The kernels besides the projections', looked up once.
#[derive(Debug)]
struct Functions {
    get_rows: CudaFunction,
    rms_norm: CudaFunction,
    add_bias: CudaFunction,
    add_scaled: CudaFunction,
    div: CudaFunction,
    rope: CudaFunction,
    kv_store: CudaFunction,
    attention: CudaFunction,
    quantize_q8_0: CudaFunction,
    quantize_q8_k: CudaFunction,
}

/// Per-batch buffers, sized for `max_batch` tokens.
#[derive(Debug)]
struct Scratch {
    tokens: CudaSlice<i32>,
    /// The residual stream.
    x: CudaSlice<f32>,
    /// Normed rows.
    xn: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    /// A block's attention or FFN output.
    proj: CudaSlice<f32>,
    /// Quantized activation rows.
    acts: CudaSlice<u8>,
    logits: CudaSlice<f32>,
}

/// A whole model on one device; see the [module docs](self).
#[derive(Debug)]
pub struct GpuModel {
    device: GpuDevice,
    config: ModelConfig,
    context: usize,
    max_batch: usize,
    token_embd: Arc<CudaSlice<u8>>,
    embd_row_bytes: usize,
    output_norm: CudaSlice<f32>,
    output: Matrix,
    blocks: Vec<Block>,
    /// Per block: `context × k_dim` keys and `context × v_dim` values.
    k_cache: Vec<CudaSlice<f32>>,
    v_cache: Vec<CudaSlice<f32>>,
    functions: Functions,
    scratch: Scratch,
    weight_bytes: u64,
}

/// A launch configuration of `gx × gy` blocks of `threads`.
fn cfg(gx: usize, gy: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (gx as u32, gy as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per element of `n`, blocks of 256.
fn flat(n: usize) -> LaunchConfig {
    cfg(n.div_ceil(256), 1, 256)
}

/// f32 elements of `view` (F32, F16 or BF16, checked by [`check_vector`]).
fn decode_vector(view: &TensorView<'_>) -> Result<Vec<f32>> {
    let mut host = vec![0f32; view.n_elements() as usize];
    dequantize_row(view.ty(), view.data(), &mut host)?;
    Ok(host)
}

impl GpuModel {
    /// Whether [`new`](Self::new) would accept `model`, without a device: the typed
    /// error naming what the GPU path lacks ([`GpuError::Unsupported`],
    /// [`GpuError::UnsupportedType`]) otherwise.
    pub fn check(model: &Model<'_>) -> Result<()> {
        Self::plan(model).map(|_| ())
    }

    fn plan(model: &Model<'_>) -> Result<Plan> {
        let c = model.config();
        if c.mla.is_some() {
            return Err(GpuError::Unsupported {
                reason: "DeepSeek's multi-head latent attention (the GPU model runs standard attention only)",
            });
        }
        if c.head_dim > ATTN_MAX_DIM || c.head_dim_v > ATTN_MAX_DIM {
            return Err(GpuError::Unsupported {
                reason: "attention heads wider than 256 elements",
            });
        }
        if c.n_head_kv == 0 || !c.n_head.is_multiple_of(c.n_head_kv) {
            return Err(GpuError::Unsupported {
                reason: "a query head count that is not a multiple of the KV head count",
            });
        }
        let embd = format_of(model.token_embd().ty(), "token_embd")?;
        if model.token_embd().ne(0) as usize != c.n_embd
            || model.token_embd().ne(1) as usize != c.n_vocab
        {
            return Err(GpuError::Unsupported {
                reason: "a token embedding whose shape does not match the model",
            });
        }
        check_vector(model.output_norm(), "output_norm", c.n_embd)?;
        let output = check_matrix(model.output(), "output", c.n_embd, c.n_vocab)?;
        let mut blocks = Vec::with_capacity(c.n_layer);
        for l in 0..c.n_layer {
            let b = model.block_tensors(l).ok_or(GpuError::Unsupported {
                reason: "a block the model does not expose",
            })?;
            let Some([wq, wk, wv]) = b.qkv else {
                return Err(GpuError::Unsupported {
                    reason: "DeepSeek's multi-head latent attention (the GPU model runs standard attention only)",
                });
            };
            let formats = [
                check_matrix(&wq, "attn_q", c.n_embd, c.q_dim())?,
                check_matrix(&wk, "attn_k", c.n_embd, c.k_dim())?,
                check_matrix(&wv, "attn_v", c.n_embd, c.v_dim())?,
                check_matrix(&b.wo, "attn_output", c.attn_dim(), c.n_embd)?,
            ];
            check_vector(&b.attn_norm, "attn_norm", c.n_embd)?;
            check_vector(&b.ffn_norm, "ffn_norm", c.n_embd)?;
            let widths = [c.q_dim(), c.k_dim(), c.v_dim()];
            for ((bias, role), len) in b
                .biases
                .iter()
                .zip(["attn_q.bias", "attn_k.bias", "attn_v.bias"])
                .zip(widths)
            {
                if let Some(bias) = bias {
                    check_vector(bias, role, len)?;
                }
            }
            for ((norm, role), width) in b
                .qk_norms
                .iter()
                .zip(["attn_q_norm", "attn_k_norm"])
                .zip(widths)
            {
                if let Some(norm) = norm {
                    let n = norm.n_elements() as usize;
                    if n == 0 || !width.is_multiple_of(n) {
                        return Err(GpuError::Unsupported {
                            reason: "a QK norm whose length is neither a head nor the whole projection",
                        });
                    }
                    check_vector(norm, role, n)?;
                }
            }
            let ffn = model.ffn(l).ok_or(GpuError::Unsupported {
                reason: "a block without an FFN",
            })?;
            GpuMoeLayer::check(ffn, router_tensors(ffn).is_some())?;
            blocks.push(formats);
        }
        Ok(Plan {
            embd,
            output,
            blocks,
        })
    }

    /// Uploads `model` to `device`: every weight as its GGUF bytes (norms, biases and QK
    /// norms as f32), every block's FFN as a [`GpuMoeLayer`] with all experts, an f32
    /// KV cache for `context` positions and scratch for batches of up to `max_batch`
    /// tokens. Checks free device memory first ([`GpuError::OutOfMemory`]); a model the
    /// GPU path cannot run is the error [`check`](Self::check) returns.
    pub fn new(
        device: &GpuDevice,
        model: &Model<'_>,
        context: usize,
        max_batch: usize,
    ) -> Result<Self> {
        let plan = Self::plan(model)?;
        let c = *model.config();
        if context == 0 || max_batch == 0 {
            return Err(GpuError::Unsupported {
                reason: "a context or batch size of zero",
            });
        }
        // Kernel indices are 32-bit: every per-batch buffer and cache index must fit.
        let widest = [
            c.n_vocab,
            c.q_dim(),
            c.k_dim(),
            c.v_dim(),
            c.attn_dim(),
            c.n_embd,
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let fits = |a: usize, b: usize| a.checked_mul(b).is_some_and(|n| n <= i32::MAX as usize);
        if max_batch > MAX_GRID_Y || !fits(max_batch, widest) || !fits(context, widest) {
            return Err(GpuError::Unsupported {
                reason: "a batch or context too large for the kernels' 32-bit indices (or a batch over 65535 tokens)",
            });
        }

        // Device memory: weights, KV cache, scratch, and the FFN layers' own scratch.
        let bytes = |v: &TensorView<'_>| v.data().len() as u64;
        let tied = model.output().data().as_ptr() == model.token_embd().data().as_ptr();
        let mut weights = bytes(model.token_embd()) + 4 * c.n_embd as u64;
        if !tied {
            weights += bytes(model.output());
        }
        let mut ffn_scratch = 0u64;
        for l in 0..c.n_layer {
            let b = model.block_tensors(l).ok_or(GpuError::Unsupported {
                reason: "a block the model does not expose",
            })?;
            weights += b.qkv.iter().flatten().map(bytes).sum::<u64>() + bytes(&b.wo);
            weights += 8 * (c.n_embd + c.q_dim() + c.k_dim() + c.v_dim()) as u64;
            let ffn = model.ffn(l).ok_or(GpuError::Unsupported {
                reason: "a block without an FFN",
            })?;
            weights += crate::placement::shared_bytes(ffn);
            let experts = ffn.experts();
            let per_expert = experts.expert(0).map_or(0, |f| {
                f.gate().map_or(0, bytes) + bytes(f.up()) + bytes(f.down())
            });
            weights += per_expert * experts.n_expert() as u64;
            weights += 4 * (c.n_embd * experts.n_expert() + experts.n_expert()) as u64;
            let n_ff = experts.expert(0).map_or(0, |f| f.n_ff()) as u64;
            let pairs = (max_batch * ffn.k().max(1)) as u64;
            ffn_scratch += pairs * (9 * n_ff + 4 * c.n_embd as u64 + 64)
                + max_batch as u64 * 16 * c.n_embd as u64;
        }
        let kv = 4 * (c.n_layer * context * (c.k_dim() + c.v_dim())) as u64;
        let max_act = [c.n_embd, c.attn_dim()]
            .into_iter()
            .map(|w| w * 4)
            .max()
            .unwrap_or(0) as u64;
        let scratch_bytes = max_batch as u64
            * (4 * (3 * c.n_embd + c.q_dim() + c.k_dim() + c.v_dim() + c.attn_dim() + c.n_vocab)
                as u64
                + max_act
                + 4);
        let needed = weights + kv + scratch_bytes + ffn_scratch + (64 << 20);
        let (free, _) = device.memory()?;
        if needed > free {
            return Err(GpuError::OutOfMemory {
                needed,
                available: free,
            });
        }

        let stream = device.stream().clone();
        let upload_bytes =
            |data: &[u8]| -> Result<CudaSlice<u8>> { catch(|| Ok(stream.clone_htod(data)?)) };
        let upload_f32 =
            |data: &[f32]| -> Result<CudaSlice<f32>> { catch(|| Ok(stream.clone_htod(data)?)) };
        let vector = |view: &TensorView<'_>| upload_f32(&decode_vector(view)?);
        let kernels = |f: Format| -> Result<[CudaFunction; 2]> {
            catch(|| {
                Ok([
                    device.function(&format!("model_matmul_{}_m1", f.suffix))?,
                    device.function(&format!("model_matmul_{}_m8", f.suffix))?,
                ])
            })
        };
        let mut weight_bytes = 0u64;
        let mut matrix = |view: &TensorView<'_>,
                          format: Format,
                          shared: Option<&Arc<CudaSlice<u8>>>|
         -> Result<Matrix> {
            let bytes = match shared {
                Some(b) => b.clone(),
                None => {
                    weight_bytes += view.data().len() as u64;
                    Arc::new(upload_bytes(view.data())?)
                }
            };
            Ok(Matrix {
                bytes,
                format,
                n_in: view.ne(0) as usize,
                n_out: view.ne(1) as usize,
                kernels: kernels(format)?,
            })
        };

        let token_embd = Arc::new(upload_bytes(model.token_embd().data())?);
        let embd_weight_bytes = model.token_embd().data().len() as u64;
        let output = matrix(model.output(), plan.output, tied.then_some(&token_embd))?;
        let output_norm = vector(model.output_norm())?;
        let mut blocks = Vec::with_capacity(c.n_layer);
        for (l, formats) in plan.blocks.iter().enumerate() {
            let b = model.block_tensors(l).ok_or(GpuError::Unsupported {
                reason: "a block the model does not expose",
            })?;
            let Some([wq, wk, wv]) = b.qkv else {
                return Err(GpuError::Unsupported {
                    reason: "DeepSeek's multi-head latent attention (the GPU model runs standard attention only)",
                });
            };
            let ffn_layer = model.ffn(l).ok_or(GpuError::Unsupported {
                reason: "a block without an FFN",
            })?;
            let mut ffn = GpuMoeLayer::new(device, ffn_layer, router_tensors(ffn_layer))?;
            ffn.reserve_device(max_batch)?;
            let mut biases = [None, None, None];
            for (dst, bias) in biases.iter_mut().zip(&b.biases) {
                if let Some(bias) = bias {
                    *dst = Some(vector(bias)?);
                }
            }
            let mut qk_norms = [None, None];
            for (dst, norm) in qk_norms.iter_mut().zip(&b.qk_norms) {
                if let Some(norm) = norm {
                    *dst = Some((vector(norm)?, norm.n_elements() as usize));
                }
            }
            blocks.push(Block {
                attn_norm: vector(&b.attn_norm)?,
                wq: matrix(&wq, formats[0], None)?,
                wk: matrix(&wk, formats[1], None)?,
                wv: matrix(&wv, formats[2], None)?,
                biases,
                qk_norms,
                wo: matrix(&b.wo, formats[3], None)?,
                ffn_norm: vector(&b.ffn_norm)?,
                ffn,
            });
        }
        weight_bytes += embd_weight_bytes;
        for b in &blocks {
            weight_bytes += b.ffn.weight_bytes();
        }

        let f = |name: &str| device.function(name);
        let functions = catch(|| {
            Ok(Functions {
                get_rows: f(&format!("model_get_rows_{}", plan.embd.suffix))?,
                rms_norm: f("model_rms_norm")?,
                add_bias: f("model_add_bias")?,
                add_scaled: f("model_add_scaled")?,
                div: f("model_div")?,
                rope: f("model_rope")?,
                kv_store: f("model_kv_store")?,
                attention: f("model_attention")?,
                quantize_q8_0: f("moe_quantize_q8_0")?,
                quantize_q8_k: f("moe_quantize_q8_k")?,
            })
        })?;
        // The largest quantized activation row any projection reads.
        let mut act_bytes = act_row_bytes(plan.output.act, c.n_embd);
        for (formats, b) in plan.blocks.iter().zip(&blocks) {
            for (fmt, n_in) in formats
                .iter()
                .zip([b.wq.n_in, b.wk.n_in, b.wv.n_in, b.wo.n_in])
            {
                act_bytes = act_bytes.max(act_row_bytes(fmt.act, n_in));
            }
        }
        let t = max_batch;
        let (k_cache, v_cache, scratch) = catch(|| {
            let mut k_cache = Vec::with_capacity(c.n_layer);
            let mut v_cache = Vec::with_capacity(c.n_layer);
            for _ in 0..c.n_layer {
                k_cache.push(stream.alloc_zeros::<f32>(context * c.k_dim())?);
                v_cache.push(stream.alloc_zeros::<f32>(context * c.v_dim())?);
            }
            let scratch = Scratch {
                tokens: stream.alloc_zeros(t)?,
                x: stream.alloc_zeros(t * c.n_embd)?,
                xn: stream.alloc_zeros(t * c.n_embd)?,
                q: stream.alloc_zeros(t * c.q_dim())?,
                k: stream.alloc_zeros(t * c.k_dim())?,
                v: stream.alloc_zeros(t * c.v_dim())?,
                attn: stream.alloc_zeros(t * c.attn_dim())?,
                proj: stream.alloc_zeros(t * c.n_embd)?,
                acts: stream.alloc_zeros((t * act_bytes).max(1))?,
                logits: stream.alloc_zeros(t * c.n_vocab)?,
            };
            Ok((k_cache, v_cache, scratch))
        })?;

        Ok(GpuModel {
            device: device.clone(),
            config: c,
            context,
            max_batch,
            embd_row_bytes: model.token_embd().row_bytes(),
            token_embd,
            output_norm,
            output,
            blocks,
            k_cache,
            v_cache,
            functions,
            scratch,
            weight_bytes,
        })
    }

    /// Bytes of weights on the device: embedding, head (once when tied), every block's
    /// projections and FFN (experts, shared expert), as uploaded in their GGUF types.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Positions the KV cache holds.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Largest batch [`forward`](Self::forward) takes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// `Model::forward` on the device: evaluates `tokens` at positions `start, start +
    /// 1, …` and writes their logits — every position's (`tokens.len() × n_vocab`) or
    /// only the last one's (`n_vocab`). Positions `0..start` must be in the device's KV
    /// cache from earlier calls; the batch's keys and values are written at `start..`.
    ///
    /// Errors: a position beyond the context (`Core(PositionOutOfRange)`), a token id ≥
    /// n_vocab (`Core(TokenOutOfRange)`), a batch larger than `max_batch` or logits of
    /// the wrong length ([`GpuError::LengthMismatch`]); an empty batch does nothing.
    pub fn forward(&mut self, tokens: &[u32], start: usize, logits: &mut [f32]) -> Result<()> {
        let c = self.config;
        let t = tokens.len();
        let end = start.saturating_add(t);
        if end > self.context {
            return Err(GpuError::Core(moe_core::Error::PositionOutOfRange {
                position: end.saturating_sub(1),
                filled: start,
                context: self.context,
            }));
        }
        if t == 0 {
            return Ok(());
        }
        let all_logits = logits.len() == t * c.n_vocab;
        if !all_logits && logits.len() != c.n_vocab {
            return Err(GpuError::LengthMismatch {
                expected: t * c.n_vocab,
                actual: logits.len(),
            });
        }
        if t > self.max_batch {
            return Err(GpuError::LengthMismatch {
                expected: self.max_batch,
                actual: t,
            });
        }
        let mut ids = Vec::with_capacity(t);
        for &token in tokens {
            if token as usize >= c.n_vocab {
                return Err(GpuError::Core(moe_core::Error::TokenOutOfRange {
                    token,
                    n_vocab: c.n_vocab as u64,
                }));
            }
            ids.push(token as i32);
        }
        let stream = self.device.stream().clone();
        catch(|| {
            let mut dst = self.scratch.tokens.slice_mut(..t);
            Ok(stream.memcpy_htod(&ids, &mut dst)?)
        })?;
        self.launch_embedding(t)?;
        for l in 0..self.blocks.len() {
            self.launch_block(l, t, start)?;
        }
        let first = if all_logits { 0 } else { t - 1 };
        self.launch_head(t, first)?;
        let n = (t - first) * c.n_vocab;
        let logits_dev = &self.scratch.logits;
        catch(|| {
            stream.memcpy_dtoh(&logits_dev.slice(..n), &mut logits[..n])?;
            stream.synchronize()?;
            Ok(())
        })
    }

    fn launch_embedding(&mut self, t: usize) -> Result<()> {
        let c = self.config;
        let stream = self.device.stream().clone();
        let s = &mut self.scratch;
        let row_bytes = self.embd_row_bytes as u64;
        let (n_vocab, n_embd) = (c.n_vocab as i32, c.n_embd as i32);
        let scale = c.embedding_scale;
        let mut b = stream.launch_builder(&self.functions.get_rows);
        b.arg(&*self.token_embd)
            .arg(&row_bytes)
            .arg(&s.tokens)
            .arg(&n_vocab)
            .arg(&n_embd)
            .arg(&scale)
            .arg(&mut s.x);
        // SAFETY: the table is n_vocab rows of row_bytes bytes in the kernel's type (the
        // one `plan` checked); tokens holds t ids (< n_vocab, checked by forward; others
        // give a zero row); x holds max_batch ≥ t rows of n_embd; threads past n_embd
        // return.
        catch(|| Ok(unsafe { b.launch(cfg(c.n_embd.div_ceil(256), t, 256)) }?))?;
        Ok(())
    }

    /// One block: attention, its residual add, the FFN, its residual add.
    fn launch_block(&mut self, l: usize, t: usize, start: usize) -> Result<()> {
        let c = self.config;
        let stream = self.device.stream().clone();
        let f = &self.functions;
        let b = &mut self.blocks[l];
        let s = &mut self.scratch;
        let (kc, vc) = (&mut self.k_cache[l], &mut self.v_cache[l]);
        let n_embd = c.n_embd;

        rms_norm(
            &stream,
            f,
            &s.x.slice(..t * n_embd),
            &b.attn_norm,
            n_embd,
            t,
            c.rms_eps,
            &mut s.xn,
        )?;
        // Q, K, V from the normed rows (quantized once per activation format in a row).
        let mut quantized = None;
        for (m, out) in [(&b.wq, &mut s.q), (&b.wk, &mut s.k), (&b.wv, &mut s.v)] {
            if quantized != Some(m.format.act) {
                quantize(
                    &stream,
                    f,
                    &s.xn.slice(..t * n_embd),
                    m.format.act,
                    n_embd,
                    t,
                    &mut s.acts,
                )?;
                quantized = Some(m.format.act);
            }
            project(
                &stream,
                m,
                &s.xn.slice(..t * n_embd),
                &s.acts,
                t,
                &mut out.slice_mut(..t * m.n_out),
            )?;
        }
        let widths = [c.q_dim(), c.k_dim(), c.v_dim()];
        for ((bias, rows), width) in b
            .biases
            .iter()
            .zip([&mut s.q, &mut s.k, &mut s.v])
            .zip(widths)
        {
            if let Some(bias) = bias {
                let (w, n) = (width as i32, (t * width) as i32);
                let mut lb = stream.launch_builder(&f.add_bias);
                lb.arg(&mut *rows).arg(bias).arg(&w).arg(&n);
                // SAFETY: rows holds ≥ t rows of `width` floats (n elements) and bias
                // `width` floats (checked in plan); threads past n return.
                catch(|| Ok(unsafe { lb.launch(flat(t * width)) }?))?;
            }
        }
        for ((norm, rows), width) in b.qk_norms.iter().zip([&mut s.q, &mut s.k]).zip(widths) {
            if let Some((w, n)) = norm {
                let pieces = t * width / n;
                let (n_i, eps) = (*n as i32, c.rms_eps);
                let mut lb = stream.launch_builder(&f.rms_norm);
                // In place: the kernel reads each piece before it writes it.
                let (x_ptr, out_ptr) = (&*rows, &*rows);
                lb.arg(x_ptr).arg(w).arg(&n_i).arg(&eps).arg(out_ptr);
                // SAFETY: rows holds t · width floats = `pieces` pieces of n (n divides
                // width, checked in plan); w holds n floats; one block per piece, and
                // the kernel reads a piece fully before its barrier and writes it only
                // after, so reading and writing the same buffer is safe.
                catch(|| Ok(unsafe { lb.launch(cfg(pieces, 1, NORM_THREADS)) }?))?;
            }
        }
        let rope = rope_params(&c.rope);
        let half = c.rope.dims / 2;
        if half > 0 {
            for (rows, heads) in [(&mut s.q, c.n_head), (&mut s.k, c.n_head_kv)] {
                let (h, hd, st) = (heads as i32, c.head_dim as i32, start as i32);
                let mut lb = stream.launch_builder(&f.rope);
                lb.arg(&mut *rows).arg(&h).arg(&hd).arg(&st).arg(&rope);
                // SAFETY: rows holds ≥ t rows of heads · head_dim floats; thread (pair,
                // head) of grid row y < t touches two elements of head `head` of row y,
                // pair indices < dims/2 ≤ head_dim/2 (config-checked); threads past
                // heads · dims/2 return.
                catch(|| Ok(unsafe { lb.launch(cfg((heads * half).div_ceil(64), t, 64)) }?))?;
            }
        }
        for (src, cache, width) in [(&s.k, &mut *kc, c.k_dim()), (&s.v, &mut *vc, c.v_dim())] {
            let (st, w, n) = (start as i32, width as i32, (t * width) as i32);
            let mut lb = stream.launch_builder(&f.kv_store);
            lb.arg(src).arg(cache).arg(&st).arg(&w).arg(&n);
            // SAFETY: src holds t rows of width floats; the cache context rows of width,
            // and start + t ≤ context (checked by forward), so every write is in bounds.
            catch(|| Ok(unsafe { lb.launch(flat(t * width)) }?))?;
        }
        {
            let p = attn_params(&c, start);
            let mut lb = stream.launch_builder(&f.attention);
            lb.arg(&s.q).arg(&*kc).arg(&*vc).arg(&p).arg(&mut s.attn);
            // SAFETY: q holds t rows of q_dim, the caches positions 0..start + t (just
            // written) of k_dim / v_dim, attn t rows of attn_dim; head widths ≤
            // ATTN_MAX_DIM (checked in plan); block (h, y) reads positions ≤ start + y
            // of KV head h / group and writes row y, head h.
            catch(|| Ok(unsafe { lb.launch(cfg(c.n_head, t, ATTN_THREADS)) }?))?;
        }
        // The output projection and the residual add.
        let attn_dim = c.attn_dim();
        quantize(
            &stream,
            f,
            &s.attn.slice(..t * attn_dim),
            b.wo.format.act,
            attn_dim,
            t,
            &mut s.acts,
        )?;
        project(
            &stream,
            &b.wo,
            &s.attn.slice(..t * attn_dim),
            &s.acts,
            t,
            &mut s.proj.slice_mut(..t * n_embd),
        )?;
        add_scaled(&stream, f, &mut s.x, &s.proj, c.residual_scale, t * n_embd)?;

        // The FFN and its residual add.
        rms_norm(
            &stream,
            f,
            &s.x.slice(..t * n_embd),
            &b.ffn_norm,
            n_embd,
            t,
            c.rms_eps,
            &mut s.xn,
        )?;
        b.ffn.forward_device(&s.xn, &mut s.proj, t)?;
        add_scaled(&stream, f, &mut s.x, &s.proj, c.residual_scale, t * n_embd)
    }

    /// The final norm and the head over rows `first..t`, into `logits[..(t - first) ×
    /// n_vocab]`, divided by the logit scale when it is not 1.
    fn launch_head(&mut self, t: usize, first: usize) -> Result<()> {
        let c = self.config;
        let stream = self.device.stream().clone();
        let f = &self.functions;
        let s = &mut self.scratch;
        let n_embd = c.n_embd;
        let rows = t - first;
        rms_norm(
            &stream,
            f,
            &s.x.slice(first * n_embd..t * n_embd),
            &self.output_norm,
            n_embd,
            rows,
            c.rms_eps,
            &mut s.xn,
        )?;
        let m = &self.output;
        quantize(
            &stream,
            f,
            &s.xn.slice(..rows * n_embd),
            m.format.act,
            n_embd,
            rows,
            &mut s.acts,
        )?;
        let n = rows * c.n_vocab;
        project(
            &stream,
            m,
            &s.xn.slice(..rows * n_embd),
            &s.acts,
            rows,
            &mut s.logits.slice_mut(..n),
        )?;
        if c.logit_scale != 1.0 {
            let (d, n_i) = (c.logit_scale, n as i32);
            let mut lb = stream.launch_builder(&f.div);
            lb.arg(&mut s.logits).arg(&d).arg(&n_i);
            // SAFETY: logits holds max_batch · n_vocab ≥ n floats; threads past n return.
            catch(|| Ok(unsafe { lb.launch(flat(n)) }?))?;
        }
        Ok(())
    }
}

/// `out[r] = rms_norm(x[r]) · w` for `rows` rows of `n` (out from row 0).
#[allow(clippy::too_many_arguments)]
fn rms_norm(
    stream: &Arc<CudaStream>,
    f: &Functions,
    x: &CudaView<'_, f32>,
    w: &CudaSlice<f32>,
    n: usize,
    rows: usize,
    eps: f32,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let n_i = n as i32;
    let mut lb = stream.launch_builder(&f.rms_norm);
    lb.arg(x).arg(w).arg(&n_i).arg(&eps).arg(out);
    // SAFETY: x holds `rows` rows of n floats (a view of exactly those), w n floats and
    // out at least `rows` rows of n (the scratch is sized for max_batch rows); one block
    // of NORM_THREADS per row.
    catch(|| Ok(unsafe { lb.launch(cfg(rows, 1, NORM_THREADS)) }?))?;
    Ok(())
}

/// Quantizes `rows` rows of `width` floats into `acts` in format `act` (nothing for f32
/// rows, which the float kernels read directly).
#[allow(clippy::too_many_arguments)]
fn quantize(
    stream: &Arc<CudaStream>,
    f: &Functions,
    x: &CudaView<'_, f32>,
    act: TensorType,
    width: usize,
    rows: usize,
    acts: &mut CudaSlice<u8>,
) -> Result<()> {
    let q = match act {
        TensorType::Q8_0 => &f.quantize_q8_0,
        TensorType::Q8_K => &f.quantize_q8_k,
        _ => return Ok(()),
    };
    let n_blocks = rows * width / act.block_len();
    let n_i = n_blocks as i32;
    let mut lb = stream.launch_builder(q);
    lb.arg(x).arg(acts).arg(&n_i);
    // SAFETY: x holds rows · width floats = n_blocks whole blocks (width is a whole number
    // of the format's blocks, checked in plan); acts holds max_batch rows of the largest
    // activation row, ≥ rows rows of this one; one thread per block.
    catch(|| Ok(unsafe { lb.launch(cfg(n_blocks.div_ceil(128), 1, 128)) }?))?;
    Ok(())
}

/// `out[t · n_out + r] = W_r · x_t` for `rows` activation rows (`acts` in the weight's
/// format, or the f32 rows `x` for float weights).
fn project(
    stream: &Arc<CudaStream>,
    m: &Matrix,
    x: &CudaView<'_, f32>,
    acts: &CudaSlice<u8>,
    rows: usize,
    out: &mut CudaViewMut<'_, f32>,
) -> Result<()> {
    let act = m.format.act;
    let x_row_bytes = act_row_bytes(act, m.n_in) as u64;
    let (n_in, n_out, n_tokens) = (m.n_in as i32, m.n_out as i32, rows as i32);
    let tiled = rows > 1;
    let mut lb = stream.launch_builder(&m.kernels[usize::from(tiled)]);
    lb.arg(&*m.bytes);
    if act == TensorType::F32 {
        lb.arg(x);
    } else {
        lb.arg(acts);
    }
    lb.arg(&x_row_bytes)
        .arg(&n_in)
        .arg(&n_out)
        .arg(&n_tokens)
        .arg(out);
    let tiles = if tiled { rows.div_ceil(TILE) } else { rows };
    // SAFETY: the weight holds n_out rows of n_in elements in the kernel's type (checked in
    // plan); the activation rows are `rows` rows of x_row_bytes (f32 rows: x's view of
    // rows · n_in floats; else quantized just before into acts); out holds rows · n_out
    // floats (a view of exactly those); warps past n_out and tile rows past `rows` do
    // nothing.
    catch(|| {
        Ok(unsafe {
            lb.launch(cfg(
                m.n_out.div_ceil(ROWS_PER_BLOCK),
                tiles,
                32 * ROWS_PER_BLOCK as u32,
            ))
        }?)
    })?;
    Ok(())
}

/// `x[i] += scale · b[i]` for i < n.
fn add_scaled(
    stream: &Arc<CudaStream>,
    f: &Functions,
    x: &mut CudaSlice<f32>,
    b: &CudaSlice<f32>,
    scale: f32,
    n: usize,
) -> Result<()> {
    let n_i = n as i32;
    let mut lb = stream.launch_builder(&f.add_scaled);
    lb.arg(x).arg(b).arg(&scale).arg(&n_i);
    // SAFETY: x and b hold max_batch · n_embd ≥ n floats; threads past n return.
    catch(|| Ok(unsafe { lb.launch(flat(n)) }?))?;
    Ok(())
}

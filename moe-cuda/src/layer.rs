//! [`GpuDevice`] (a context, a stream and the compiled kernels) and [`GpuMoeLayer`] (one
//! MoE layer's routed experts, shared expert and router on the device).
//!
//! One forward pass is one sequence of launches on one stream with no host round trip
//! between them: quantize the input rows once per activation format some weight reads
//! (Q8_0 for Q4_0/Q5_0/Q8_0 weights, Q8_K for K-quants, f32 for F32/F16/BF16, as the CPU
//! pairs them), route on the device (or take the caller's selections), then either the decode
//! path (at most [`DECODE_MAX_PAIRS`] (token, slot) pairs: one warp per weight row per
//! pair, expert ids read from device memory) or the prefill path (align the pairs by
//! expert into tiles of [`PREFILL_TILE`], then one warp per weight row per tile), gate/up
//! with the activation fused, quantize the intermediate rows, down; then the shared
//! expert, if the layer has one (Qwen2-MoE's gate `sigmoid(gate · x)` per token, then its
//! FFN through the same kernels as a stack of one expert with one pair per token, tiles
//! of [`PREFILL_TILE`] tokens from two tokens on); and the combine: the routed outputs
//! weighted in ascending expert id, then the shared expert's, the CPU layer's order. The
//! host copies the input in and the output out.
//!
//! [`GpuMoeLayer::hybrid_forward`] splits that sequence after routing: the ids and
//! weights come back, the FFN launches go out, and the CPU runs the non-resident experts
//! while the device works.
//!
//! Unverified on hardware: nothing here has run on a GPU yet.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use moe_core::TensorType;
use moe_core::moe::{Activation, Ffn, FfnKind, MoeLayer, SharedExpert};
use moe_core::quant::dequantize_row;
use moe_core::router::{
    ExpertMask, GroupScore, Method, Normalize, RouterConfig, ScoreFunc, Selection,
};
use moe_core::tensor::TensorView;

use crate::error::{GpuError, Result, catch};
use crate::kernels;

/// Most (token, slot) pairs the decode kernels take; larger batches use the prefill
/// path.
pub const DECODE_MAX_PAIRS: usize = 64;
/// Pairs per tile of the prefill kernels (`M` of the `_m8` kernels).
pub const PREFILL_TILE: usize = 8;
/// Weight rows per thread block of the FFN kernels (one warp each).
pub(crate) const ROWS_PER_BLOCK: u32 = 4;
/// Largest grid y dimension.
const MAX_GRID_Y: usize = 65_535;

/// A CUDA device ready to run the kernels: context, stream and loaded module.
#[derive(Clone, Debug)]
pub struct GpuDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    /// `sm_XY`.
    arch: String,
    /// Whether the kernels came from the on-disk cache.
    cached: bool,
    /// NVRTC's log of a fresh compile (empty: no warning, or from the cache).
    log: String,
}

impl GpuDevice {
    /// Every kernel the host launches.
    pub const KERNEL_NAMES: [&'static str; 77] = [
        "moe_quantize_q8_0",
        "moe_quantize_q8_k",
        "moe_router_logits",
        "moe_router_select",
        "moe_combine",
        "moe_align",
        "moe_shared_gate",
        "moe_gate_up_q4_0_m1",
        "moe_gate_up_q4_0_m8",
        "moe_gate_up_q5_0_m1",
        "moe_gate_up_q5_0_m8",
        "moe_gate_up_q8_0_m1",
        "moe_gate_up_q8_0_m8",
        "moe_gate_up_q4_k_m1",
        "moe_gate_up_q4_k_m8",
        "moe_gate_up_q5_k_m1",
        "moe_gate_up_q5_k_m8",
        "moe_gate_up_q6_k_m1",
        "moe_gate_up_q6_k_m8",
        "moe_gate_up_f32_m1",
        "moe_gate_up_f32_m8",
        "moe_gate_up_f16_m1",
        "moe_gate_up_f16_m8",
        "moe_gate_up_bf16_m1",
        "moe_gate_up_bf16_m8",
        "moe_down_q4_0_m1",
        "moe_down_q4_0_m8",
        "moe_down_q5_0_m1",
        "moe_down_q5_0_m8",
        "moe_down_q8_0_m1",
        "moe_down_q8_0_m8",
        "moe_down_q4_k_m1",
        "moe_down_q4_k_m8",
        "moe_down_q5_k_m1",
        "moe_down_q5_k_m8",
        "moe_down_q6_k_m1",
        "moe_down_q6_k_m8",
        "moe_down_f32_m1",
        "moe_down_f32_m8",
        "moe_down_f16_m1",
        "moe_down_f16_m8",
        "moe_down_bf16_m1",
        "moe_down_bf16_m8",
        "model_get_rows_q4_0",
        "model_get_rows_q5_0",
        "model_get_rows_q8_0",
        "model_get_rows_q4_k",
        "model_get_rows_q5_k",
        "model_get_rows_q6_k",
        "model_get_rows_f32",
        "model_get_rows_f16",
        "model_get_rows_bf16",
        "model_matmul_q4_0_m1",
        "model_matmul_q4_0_m8",
        "model_matmul_q5_0_m1",
        "model_matmul_q5_0_m8",
        "model_matmul_q8_0_m1",
        "model_matmul_q8_0_m8",
        "model_matmul_q4_k_m1",
        "model_matmul_q4_k_m8",
        "model_matmul_q5_k_m1",
        "model_matmul_q5_k_m8",
        "model_matmul_q6_k_m1",
        "model_matmul_q6_k_m8",
        "model_matmul_f32_m1",
        "model_matmul_f32_m8",
        "model_matmul_f16_m1",
        "model_matmul_f16_m8",
        "model_matmul_bf16_m1",
        "model_matmul_bf16_m8",
        "model_rms_norm",
        "model_add_bias",
        "model_add_scaled",
        "model_div",
        "model_rope",
        "model_kv_store",
        "model_attention",
    ];

    /// Opens device `ordinal`, compiles (or loads from the cache) the kernels for its
    /// architecture and loads them.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !crate::driver_present() {
            return Err(GpuError::NoDriver);
        }
        let Some(info) = crate::devices().into_iter().find(|d| d.ordinal == ordinal) else {
            return Err(GpuError::NoDevice { ordinal });
        };
        let compiled = kernels::program_for(info.compute_major, info.compute_minor)?;
        catch(|| {
            let ctx = CudaContext::new(ordinal)?;
            let stream = ctx.default_stream();
            let module = ctx.load_module(Ptx::from_binary(compiled.cubin.clone()))?;
            Ok(GpuDevice {
                ctx,
                stream,
                module,
                arch: compiled.arch.clone(),
                cached: compiled.cached,
                log: compiled.log.clone(),
            })
        })
    }

    /// The first device, or `None` when there is no driver, no NVRTC or no device
    /// (tests print `skipped: no CUDA device` then).
    pub fn first() -> Option<Result<Self>> {
        if !crate::driver_present() || crate::devices().is_empty() {
            return None;
        }
        Some(Self::new(0))
    }

    /// `sm_XY` of the device.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Whether the kernels were loaded from the on-disk cache.
    pub fn kernels_cached(&self) -> bool {
        self.cached
    }

    /// NVRTC's log when the kernels were compiled now (empty without warnings).
    pub fn compile_log(&self) -> &str {
        &self.log
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `(free, total)` device memory in bytes.
    pub fn memory(&self) -> Result<(u64, u64)> {
        catch(|| {
            let (free, total) = self.ctx.mem_get_info()?;
            Ok((free as u64, total as u64))
        })
    }

    pub(crate) fn function(&self, name: &str) -> Result<CudaFunction> {
        Ok(self.module.load_function(name)?)
    }
}

/// The router tensors of a layer (`moe_core::router::Router` keeps its own private):
/// `ffn_gate_inp.weight` `[n_embd, n_expert]` (any type with a dequantizer; uploaded as
/// f32) and the optional selection bias `exp_probs_b` (F32 `[n_expert]`).
#[derive(Clone, Copy, Debug)]
pub struct RouterTensors<'a> {
    /// The router weight.
    pub weight: TensorView<'a>,
    /// The selection bias.
    pub bias: Option<TensorView<'a>>,
}

/// Kernel parameters of the FFN kernels (`FfnParams` in `kernels/moe.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FfnParams {
    n_embd: i32,
    n_ff: i32,
    k: i32,
    has_gate: i32,
    activation: i32,
    n_pairs: i32,
    gate_up_matrix_bytes: u64,
    down_matrix_bytes: u64,
    x_row_bytes: u64,
    h_row_bytes: u64,
}

// SAFETY: `FfnParams` is `#[repr(C)]` plain data whose field order, types and padding
// match `struct FfnParams` in kernels/moe.cu (six ints, then four 8-byte integers at
// offset 24), so passing it by value to a kernel copies exactly what the kernel reads.
unsafe impl DeviceRepr for FfnParams {}

/// Kernel parameters of `moe_router_select` (`RouteParams` in `kernels/route.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RouteParams {
    n_tokens: i32,
    n_expert: i32,
    k: i32,
    score: i32,
    normalize: i32,
    norm_eps: f32,
    scale: f32,
    has_bias: i32,
    n_group: i32,
    topk_group: i32,
    group_score: i32,
    group_m: i32,
}

// SAFETY: `RouteParams` is `#[repr(C)]` with twelve 4-byte fields in the order and types
// of `struct RouteParams` in kernels/route.cu, so the kernel reads exactly these bytes.
unsafe impl DeviceRepr for RouteParams {}

/// The layouts of this module's kernel params structs, for `param_layout`'s check
/// against the C structs.
#[cfg(test)]
pub(crate) fn param_layouts() -> Vec<crate::param_layout::Layout> {
    use crate::param_layout::layout;
    vec![
        layout!(FfnParams {
            n_embd,
            n_ff,
            k,
            has_gate,
            activation,
            n_pairs,
            gate_up_matrix_bytes,
            down_matrix_bytes,
            x_row_bytes,
            h_row_bytes,
        }),
        layout!(RouteParams {
            n_tokens,
            n_expert,
            k,
            score,
            normalize,
            norm_eps,
            scale,
            has_bias,
            n_group,
            topk_group,
            group_score,
            group_m,
        }),
    ]
}

/// A weight type the kernels read, with its kernel suffix and activation format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Format {
    pub(crate) ty: TensorType,
    pub(crate) suffix: &'static str,
    /// The activation format's type: Q8_0, Q8_K or F32.
    pub(crate) act: TensorType,
}

impl Format {
    /// Elements of one group of the kernels' dot product (a block; 32 for float weights).
    pub(crate) fn group(&self) -> usize {
        self.ty.block_len().max(32)
    }
}

/// The kernel suffix and activation format of weight type `ty` (`role` names the tensor
/// in the error for a type the kernels do not read).
pub(crate) fn format_of(ty: TensorType, role: &'static str) -> Result<Format> {
    let (suffix, act) = match ty {
        TensorType::Q4_0 => ("q4_0", TensorType::Q8_0),
        TensorType::Q5_0 => ("q5_0", TensorType::Q8_0),
        TensorType::Q8_0 => ("q8_0", TensorType::Q8_0),
        TensorType::Q4_K => ("q4_k", TensorType::Q8_K),
        TensorType::Q5_K => ("q5_k", TensorType::Q8_K),
        TensorType::Q6_K => ("q6_k", TensorType::Q8_K),
        TensorType::F32 => ("f32", TensorType::F32),
        TensorType::F16 => ("f16", TensorType::F32),
        TensorType::BF16 => ("bf16", TensorType::F32),
        _ => return Err(GpuError::UnsupportedType { role, ty }),
    };
    Ok(Format { ty, suffix, act })
}

/// Bytes of a row of `n` elements in activation format `act`.
pub(crate) fn act_row_bytes(act: TensorType, n: usize) -> usize {
    n / act.block_len() * act.block_bytes()
}

/// The device router.
#[derive(Debug)]
struct GpuRouter {
    weight: CudaSlice<f32>,
    bias: Option<CudaSlice<f32>>,
    params: RouteParams,
}

/// Buffers sized for a batch, grown when a larger batch comes.
#[derive(Debug)]
struct Scratch {
    tokens: usize,
    /// Input rows as f32 bytes (`T × n_embd × 4`).
    x: CudaSlice<u8>,
    /// Input rows quantized to Q8_0 (`T × n_embd / 32 × 34`; one byte when no weight of
    /// the layer reads Q8_0).
    x_q8_0: CudaSlice<u8>,
    /// Input rows quantized to Q8_K (`T × n_embd / 256 × 292`; one byte when unused).
    x_q8_k: CudaSlice<u8>,
    logits: CudaSlice<f32>,
    route: CudaSlice<f32>,
    ids: CudaSlice<i32>,
    weights: CudaSlice<f32>,
    /// Intermediate rows as f32 bytes (`P × n_ff × 4`).
    hidden: CudaSlice<u8>,
    /// Intermediate rows quantized for down.
    hq: CudaSlice<u8>,
    /// Down outputs (`P × n_embd`).
    y: CudaSlice<f32>,
    out: CudaSlice<f32>,
    counts: CudaSlice<i32>,
    cursor: CudaSlice<i32>,
    tile_pairs: CudaSlice<i32>,
    tile_expert: CudaSlice<i32>,
    /// `0, 1, 2, …` (decode's tile_pairs, and the shared expert's).
    identity: CudaSlice<i32>,
    /// The shared expert's buffers.
    shared: Option<SharedScratch>,
    /// Whether `ids` / `weights` hold a dense block's fixed choice (expert 0 at weight 1
    /// in every token's first slot) for all `tokens`, uploaded once by `forward_device`
    /// and overwritten by `forward_selected`.
    ids_are_dense: bool,
}

/// The shared expert's buffers: one "pair" per token.
#[derive(Debug)]
struct SharedScratch {
    /// Intermediate rows as f32 bytes (`T × n_ff_shared × 4`).
    hidden: CudaSlice<u8>,
    /// Intermediate rows quantized for its down.
    hq: CudaSlice<u8>,
    /// Down outputs (`T × n_embd`).
    y: CudaSlice<f32>,
    /// Per-token gate weights (Qwen2-MoE's `sigmoid(gate · x)`).
    w: CudaSlice<f32>,
    /// Zeros: the one-expert stack's tile_expert and slot_of.
    zeros: CudaSlice<i32>,
}

/// The kernels one layer launches besides its FFNs', looked up once.
#[derive(Debug)]
struct Functions {
    quantize_q8_0: CudaFunction,
    quantize_q8_k: CudaFunction,
    logits: CudaFunction,
    select: CudaFunction,
    combine: CudaFunction,
    align: CudaFunction,
    shared_gate: CudaFunction,
}

impl Functions {
    /// The quantizer of activation format `act` (`None` for f32).
    fn quantizer(&self, act: TensorType) -> Option<&CudaFunction> {
        match act {
            TensorType::Q8_0 => Some(&self.quantize_q8_0),
            TensorType::Q8_K => Some(&self.quantize_q8_k),
            _ => None,
        }
    }
}

/// What the kernels need to know about one FFN (an expert of the stack, or the shared
/// expert).
#[derive(Clone, Copy, Debug)]
struct FfnPlan {
    n_ff: usize,
    gate_up: Format,
    down: Format,
    activation: i32,
    has_gate: bool,
    gate_up_matrix_bytes: usize,
    down_matrix_bytes: usize,
}

/// The shared expert's plan: its FFN and, for Qwen2-MoE's gate, the gate vector's type
/// and the activation format its dot reads.
#[derive(Clone, Copy, Debug)]
struct SharedPlan {
    ffn: FfnPlan,
    gate: Option<(TensorType, TensorType)>,
}

/// What [`GpuMoeLayer::plan`] found out about a layer.
struct Plan {
    n_embd: usize,
    n_expert: usize,
    experts: FfnPlan,
    shared: Option<SharedPlan>,
    route_params: Option<RouteParams>,
}

/// One FFN shape on the device: its weights (a stack of experts, expert-major, or the
/// shared expert's three matrices) and its kernels.
#[derive(Debug)]
struct GpuFfn {
    plan: FfnPlan,
    gate: Option<CudaSlice<u8>>,
    up: CudaSlice<u8>,
    down: CudaSlice<u8>,
    /// `_m1` and `_m8` gate/up kernels.
    gate_up_fns: [CudaFunction; 2],
    /// `_m1` and `_m8` down kernels.
    down_fns: [CudaFunction; 2],
}

/// The shared expert on the device.
#[derive(Debug)]
struct GpuShared {
    ffn: GpuFfn,
    /// Qwen2-MoE's gate vector (its bytes unchanged), its GGUF type id and the activation
    /// format its dot reads.
    gate: Option<(CudaSlice<u8>, i32, TensorType)>,
    /// Bytes uploaded for it.
    bytes: u64,
}

/// One MoE layer's routed experts (and shared expert) on the device.
#[derive(Debug)]
pub struct GpuMoeLayer {
    device: GpuDevice,
    n_embd: usize,
    n_expert: usize,
    /// Slots per token (the layer's k).
    k: usize,
    experts: GpuFfn,
    slot_of: CudaSlice<i32>,
    shared: Option<GpuShared>,
    router: Option<GpuRouter>,
    functions: Functions,
    scratch: Option<Scratch>,
    /// Host staging of the input bytes.
    staging: Vec<u8>,
    /// Bytes of the uploaded routed expert weights.
    weight_bytes: u64,
    /// Which experts are on the device.
    resident: Vec<bool>,
}

fn check_router(config: &RouterConfig, mask: ExpertMask<'_>) -> Result<RouteParams> {
    match config.method {
        Method::TopK | Method::Greedy => {}
        _ => {
            return Err(GpuError::Unsupported {
                reason: "router methods other than top-k and greedy (hash, S-BASE)",
            });
        }
    }
    if config.noise.is_some() {
        return Err(GpuError::Unsupported {
            reason: "noisy gating",
        });
    }
    if mask != ExpertMask::All {
        return Err(GpuError::Unsupported {
            reason: "an expert mask",
        });
    }
    let greedy = config.method == Method::Greedy;
    let (normalize, norm_eps) = match (greedy, config.normalize) {
        (true, _) | (_, Normalize::None) => (0, 0.0),
        (false, Normalize::Sum { epsilon }) => (1, epsilon),
        (false, Normalize::ClampedSum { min_sum }) => (2, min_sum),
    };
    let (n_group, topk_group, group_score, group_m) = match config.groups {
        Some(g) => {
            let (kind, m) = match g.score {
                GroupScore::Max => (0, 0),
                GroupScore::SumTop(m) => (1, m as i32),
            };
            (g.n_group as i32, g.topk_group as i32, kind, m)
        }
        None => (0, 0, 0, 0),
    };
    Ok(RouteParams {
        n_tokens: 0,
        n_expert: config.n_expert as i32,
        k: config.experts_per_token() as i32,
        score: match config.score {
            ScoreFunc::Softmax => 0,
            ScoreFunc::Sigmoid => 1,
            ScoreFunc::SoftmaxSelected => 2,
        },
        normalize,
        norm_eps,
        scale: config.scale,
        has_bias: 0,
        n_group,
        topk_group,
        group_score,
        group_m,
    })
}

/// One matrix of every expert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Gate,
    Up,
    Down,
}

/// The bytes of matrix `role` of every resident expert, expert after expert (for separate stacks
/// exactly the GGUF tensor's bytes; for a fused gate_up stack its gate or up halves).
fn stack_bytes(
    experts: &moe_core::moe::ExpertStack<'_>,
    role: Role,
    resident: &[bool],
) -> Result<Vec<u8>> {
    let mut host = Vec::new();
    for e in (0..experts.n_expert()).filter(|&e| resident.get(e) == Some(&true)) {
        let ffn = experts.expert(e)?;
        let view = match role {
            Role::Gate => ffn.gate().copied(),
            Role::Up => Some(*ffn.up()),
            Role::Down => Some(*ffn.down()),
        };
        if let Some(v) = view {
            host.extend_from_slice(v.data());
        }
    }
    Ok(host)
}

/// The bytes of the `RouteParams` the select kernel takes for `config` (for the host
/// check of the kernels in `tests/host_check`; not a stable API).
#[doc(hidden)]
pub fn route_params_bytes(config: &RouterConfig, has_bias: bool) -> Result<Vec<u8>> {
    let p = check_router(config, ExpertMask::All)?;
    let ints = [p.n_tokens, p.n_expert, p.k, p.score, p.normalize];
    let mut out = Vec::with_capacity(48);
    for v in ints {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&p.norm_eps.to_le_bytes());
    out.extend_from_slice(&p.scale.to_le_bytes());
    for v in [
        i32::from(has_bias),
        p.n_group,
        p.topk_group,
        p.group_score,
        p.group_m,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Per token, the routed experts that are not resident (with their weights): the CPU's
/// share of a hybrid forward.
pub fn cpu_share(routed: &[Vec<(u32, f32)>], resident: &[bool]) -> Vec<Selection> {
    routed
        .iter()
        .map(|token| {
            let mut sel = Selection::new();
            for &(expert, weight) in token {
                if resident.get(expert as usize) != Some(&true) {
                    // Cannot fail: a token has at most MAX_K choices.
                    let _ = sel.push(moe_core::router::Choice { expert, weight });
                }
            }
            sel
        })
        .collect()
}

fn f32_bytes_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn grid_y(n: usize) -> Result<u32> {
    if n == 0 || n > MAX_GRID_Y {
        return Err(GpuError::Unsupported {
            reason: "a batch whose tile count exceeds the grid's y limit (65535)",
        });
    }
    Ok(n as u32)
}

/// The plan of one FFN (`roles`: its up and down tensors' names for errors).
fn plan_ffn(ffn: &Ffn<'_>, roles: [&'static str; 2]) -> Result<FfnPlan> {
    let up_ty = ffn.up().ty();
    if let Some(g) = ffn.gate()
        && g.ty() != up_ty
    {
        return Err(GpuError::Unsupported {
            reason: "gate and up matrices of different types",
        });
    }
    let gate_up = format_of(up_ty, roles[0])?;
    let down = format_of(ffn.down().ty(), roles[1])?;
    let n_ff = ffn.n_ff();
    for (len, block) in [
        (ffn.n_embd(), gate_up.ty.block_len()),
        (n_ff, down.ty.block_len()),
    ] {
        if len % block != 0 || len % 32 != 0 {
            return Err(GpuError::Unsupported {
                reason: "a row length that is not a whole number of 32-element groups",
            });
        }
    }
    let activation = match ffn.kind() {
        FfnKind::Gated(a) | FfnKind::Plain(a) => a,
    };
    let activation = match activation {
        Activation::Silu => 0,
        Activation::Gelu => 1,
        Activation::GeluErf => 2,
        Activation::Relu => 3,
    };
    Ok(FfnPlan {
        n_ff,
        gate_up,
        down,
        activation,
        has_gate: ffn.gate().is_some(),
        gate_up_matrix_bytes: ffn.up().data().len(),
        down_matrix_bytes: ffn.down().data().len(),
    })
}

/// The plan of a layer's shared expert (`None` without one).
fn plan_shared(shared: &SharedExpert<'_>, n_embd: usize) -> Result<Option<SharedPlan>> {
    let Some(ffn) = shared.ffn() else {
        return Ok(None);
    };
    let plan = plan_ffn(ffn, ["ffn_up_shexp", "ffn_down_shexp"])?;
    let gate = match shared.gate() {
        Some(g) => {
            let ty = g.ty();
            // F32 against the f32 rows; the others as the FFN kernels read them.
            let act = if ty == TensorType::F32 {
                TensorType::F32
            } else {
                format_of(ty, "ffn_gate_inp_shexp")?.act
            };
            if !n_embd.is_multiple_of(act.block_len())
                || g.data().len() != n_embd / ty.block_len() * ty.block_bytes()
            {
                return Err(GpuError::Unsupported {
                    reason: "a shared expert gate that is not one row of n_embd",
                });
            }
            Some((ty, act))
        }
        None => None,
    };
    Ok(Some(SharedPlan { ffn: plan, gate }))
}

/// The input rows in activation format `act`.
fn input_rows<'s>(
    act: TensorType,
    x: &'s CudaSlice<u8>,
    x_q8_0: &'s CudaSlice<u8>,
    x_q8_k: &'s CudaSlice<u8>,
) -> &'s CudaSlice<u8> {
    match act {
        TensorType::Q8_0 => x_q8_0,
        TensorType::Q8_K => x_q8_k,
        _ => x,
    }
}

/// A launch configuration of `gx × gy` blocks of `threads`.
fn cfg(gx: u32, gy: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (gx, gy, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Blocks of `per` covering `n`.
fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per) as u32
}

/// The buffers one FFN launch reads and writes.
struct FfnBuffers<'a> {
    /// Input rows in the FFN's gate/up activation format.
    x: &'a CudaSlice<u8>,
    tile_pairs: &'a CudaSlice<i32>,
    tile_expert: &'a CudaSlice<i32>,
    slot_of: &'a CudaSlice<i32>,
    hidden: &'a mut CudaSlice<u8>,
    hq: &'a mut CudaSlice<u8>,
    y: &'a mut CudaSlice<f32>,
}

/// Launches gate/up (with the activation), the intermediate rows' quantization and down
/// of `ffn` over `tiles_y` tiles (`m8`: tiles of [`PREFILL_TILE`] pairs, else of one).
fn launch_ffn(
    stream: &Arc<CudaStream>,
    ffn: &GpuFfn,
    functions: &Functions,
    params: &FfnParams,
    m8: bool,
    tiles_y: u32,
    b: FfnBuffers<'_>,
) -> Result<()> {
    let plan = &ffn.plan;
    let m = usize::from(m8);
    let (n_embd, n_ff, n_pairs) = (
        params.n_embd as usize,
        params.n_ff as usize,
        params.n_pairs as usize,
    );
    // gate/up with the activation.
    {
        let mut l = stream.launch_builder(&ffn.gate_up_fns[m]);
        match &ffn.gate {
            Some(g) => l.arg(g),
            None => l.arg(&ffn.up),
        };
        l.arg(&ffn.up)
            .arg(b.x)
            .arg(b.tile_pairs)
            .arg(b.tile_expert)
            .arg(b.slot_of)
            .arg(params)
            .arg(&mut *b.hidden);
        // SAFETY: the weights hold one gate_up_matrix_bytes matrix per slot that slot_of
        // gives (ids < n_expert map to slots < the resident count, or -1: skipped); tile
        // y reads tile_pairs[y·M..y·M+M) and tile_expert[y] for y < tiles_y, within the
        // sizes ensure_scratch gave them for this batch; pair indices >= n_pairs are
        // treated as padding, so hidden (n_pairs × n_ff f32) and the input rows
        // (n_pairs / k tokens × x_row_bytes) are in bounds.
        unsafe {
            l.launch(cfg(
                blocks(n_ff, ROWS_PER_BLOCK as usize),
                tiles_y,
                32 * ROWS_PER_BLOCK,
            ))
        }?;
    }
    // Quantize the intermediate rows for down.
    if let Some(q) = functions.quantizer(plan.down.act) {
        let n_blocks = (n_pairs * n_ff / plan.down.act.block_len()) as i32;
        let mut l = stream.launch_builder(q);
        l.arg(&*b.hidden).arg(&mut *b.hq).arg(&n_blocks);
        // SAFETY: hidden holds n_pairs rows of n_ff f32 and hq n_pairs rows of
        // h_row_bytes: n_blocks blocks are in bounds of both.
        unsafe { l.launch(cfg(blocks(n_blocks as usize, 128), 1, 128)) }?;
    }
    // down.
    {
        let h = if functions.quantizer(plan.down.act).is_some() {
            &*b.hq
        } else {
            &*b.hidden
        };
        let mut l = stream.launch_builder(&ffn.down_fns[m]);
        l.arg(&ffn.down)
            .arg(h)
            .arg(b.tile_pairs)
            .arg(b.tile_expert)
            .arg(b.slot_of)
            .arg(params)
            .arg(&mut *b.y);
        // SAFETY: as for gate/up, with down_matrix_bytes per slot, the intermediate rows
        // (n_pairs × h_row_bytes) and y (n_pairs × n_embd f32).
        unsafe {
            l.launch(cfg(
                blocks(n_embd, ROWS_PER_BLOCK as usize),
                tiles_y,
                32 * ROWS_PER_BLOCK,
            ))
        }?;
    }
    Ok(())
}

/// Uploads one FFN's matrices (`gate` empty: none) and looks up its kernels.
fn upload_ffn(
    device: &GpuDevice,
    plan: FfnPlan,
    gate: Vec<u8>,
    up: Vec<u8>,
    down: Vec<u8>,
) -> Result<GpuFfn> {
    let stream = device.stream.clone();
    let upload = |mut host: Vec<u8>| -> Result<CudaSlice<u8>> {
        if host.is_empty() {
            host.push(0); // no resident expert: a placeholder (never read)
        }
        catch(|| Ok(stream.clone_htod(&host)?))
    };
    let gate = if plan.has_gate {
        Some(upload(gate)?)
    } else {
        None
    };
    let up = upload(up)?;
    let down = upload(down)?;
    let f = |name: String| device.function(&name);
    let (gu, dn) = (plan.gate_up.suffix, plan.down.suffix);
    let (gate_up_fns, down_fns) = catch(|| {
        Ok((
            [
                f(format!("moe_gate_up_{gu}_m1"))?,
                f(format!("moe_gate_up_{gu}_m8"))?,
            ],
            [
                f(format!("moe_down_{dn}_m1"))?,
                f(format!("moe_down_{dn}_m8"))?,
            ],
        ))
    })?;
    Ok(GpuFfn {
        plan,
        gate,
        up,
        down,
        gate_up_fns,
        down_fns,
    })
}

impl GpuMoeLayer {
    /// Uploads `layer`'s routed experts (their blocks unchanged), its shared expert if it
    /// has one (its own blocks and types) and, when given, its router, checking device
    /// memory first. `router` must be the tensors the layer's router was built with.
    ///
    /// Errors (never panics): a weight type the kernels do not read
    /// ([`GpuError::UnsupportedType`]), a capacity limit or a router option the device
    /// path lacks ([`GpuError::Unsupported`]), too little free device memory
    /// ([`GpuError::OutOfMemory`]).
    pub fn new(
        device: &GpuDevice,
        layer: &MoeLayer<'_>,
        router: Option<RouterTensors<'_>>,
    ) -> Result<Self> {
        Self::with_budget(device, layer, router, None)
    }

    /// [`new`](Self::new) refusing to use more than `budget` bytes of device memory.
    pub fn with_budget(
        device: &GpuDevice,
        layer: &MoeLayer<'_>,
        router: Option<RouterTensors<'_>>,
        budget: Option<u64>,
    ) -> Result<Self> {
        Self::with_placement(device, layer, router, None, budget)
    }

    /// Uploads only the experts `resident` marks (for example
    /// [`placement::place`](crate::placement::place)'s choice; `None`: all). Routing
    /// still covers every expert; the FFN kernels skip the others, whose share the
    /// caller computes on the CPU ([`hybrid_forward`](Self::hybrid_forward)). A shared
    /// expert is always uploaded (every token runs it); its bytes count against
    /// `budget` too ([`placement::shared_bytes`](crate::placement::shared_bytes)).
    pub fn with_placement(
        device: &GpuDevice,
        layer: &MoeLayer<'_>,
        router: Option<RouterTensors<'_>>,
        resident: Option<&[bool]>,
        budget: Option<u64>,
    ) -> Result<Self> {
        let Plan {
            n_embd,
            n_expert,
            experts: plan,
            shared: shared_plan,
            route_params,
        } = Self::plan(layer, router.is_some())?;
        let experts = layer.experts();
        let per_expert = (plan.gate_up_matrix_bytes * if plan.has_gate { 2 } else { 1 }) as u64
            + plan.down_matrix_bytes as u64;
        let all = vec![true; n_expert];
        let resident = resident.unwrap_or(&all);
        if resident.len() != n_expert {
            return Err(GpuError::LengthMismatch {
                expected: n_expert,
                actual: resident.len(),
            });
        }
        let n_resident = resident.iter().filter(|&&r| r).count();
        let weight_bytes = per_expert * n_resident as u64;
        let shared_bytes = crate::placement::shared_bytes(layer);
        let router_bytes = (n_embd * n_expert * 4 + n_expert * 4) as u64;
        // Scratch for a decode batch; larger batches grow it later (and may then fail
        // with an allocation error from the driver).
        let needed = weight_bytes + shared_bytes + router_bytes + (64 << 20);
        let (free, _) = device.memory()?;
        let available = budget.map_or(free, |b| b.min(free));
        if needed > available {
            return Err(GpuError::OutOfMemory { needed, available });
        }

        // Upload every resident expert's matrices, expert-major, exactly their GGUF bytes.
        let routed = upload_ffn(
            device,
            plan,
            if plan.has_gate {
                stack_bytes(experts, Role::Gate, resident)?
            } else {
                Vec::new()
            },
            stack_bytes(experts, Role::Up, resident)?,
            stack_bytes(experts, Role::Down, resident)?,
        )?;
        let stream = device.stream.clone();
        // Resident experts take consecutive slots in expert order; the others -1.
        let mut next = 0;
        let slots: Vec<i32> = resident
            .iter()
            .map(|&r| {
                if r {
                    next += 1;
                    next - 1
                } else {
                    -1
                }
            })
            .collect();
        let slot_of = catch(|| Ok(stream.clone_htod(&slots)?))?;

        // The shared expert: its three matrices and Qwen's gate vector, bytes unchanged.
        let shared = match (shared_plan, layer.shared().ffn()) {
            (Some(sp), Some(ffn)) => {
                let ffn_dev = upload_ffn(
                    device,
                    sp.ffn,
                    ffn.gate().map_or_else(Vec::new, |g| g.data().to_vec()),
                    ffn.up().data().to_vec(),
                    ffn.down().data().to_vec(),
                )?;
                let gate = match (sp.gate, layer.shared().gate()) {
                    (Some((ty, act)), Some(view)) => {
                        let bytes = catch(|| Ok(stream.clone_htod(view.data())?))?;
                        Some((bytes, ty.id() as i32, act))
                    }
                    _ => None,
                };
                Some(GpuShared {
                    ffn: ffn_dev,
                    gate,
                    bytes: shared_bytes,
                })
            }
            _ => None,
        };

        let router = match (route_params, router) {
            (Some(mut params), Some(t)) => {
                let w = t.weight;
                if w.ne(0) as usize != n_embd || w.ne(1) as usize != n_expert {
                    return Err(GpuError::Unsupported {
                        reason: "router weight shape does not match the layer",
                    });
                }
                let mut host = vec![0f32; n_embd * n_expert];
                for (e, dst) in host.chunks_exact_mut(n_embd).enumerate() {
                    let row = w.row(e as u64).ok_or(GpuError::LengthMismatch {
                        expected: n_expert,
                        actual: e,
                    })?;
                    dequantize_row(w.ty(), row, dst)?;
                }
                let weight = catch(|| Ok(stream.clone_htod(&host)?))?;
                let bias = match t.bias {
                    Some(b) => {
                        if b.ty() != TensorType::F32 || b.data().len() != n_expert * 4 {
                            return Err(GpuError::UnsupportedType {
                                role: "exp_probs_b",
                                ty: b.ty(),
                            });
                        }
                        params.has_bias = 1;
                        let host = f32_bytes_le(b.data());
                        Some(catch(|| Ok(stream.clone_htod(&host)?))?)
                    }
                    None => None,
                };
                Some(GpuRouter {
                    weight,
                    bias,
                    params,
                })
            }
            _ => None,
        };

        let f = |name: &str| device.function(name);
        let functions = catch(|| {
            Ok(Functions {
                quantize_q8_0: f("moe_quantize_q8_0")?,
                quantize_q8_k: f("moe_quantize_q8_k")?,
                logits: f("moe_router_logits")?,
                select: f("moe_router_select")?,
                combine: f("moe_combine")?,
                align: f("moe_align")?,
                shared_gate: f("moe_shared_gate")?,
            })
        })?;

        Ok(GpuMoeLayer {
            device: device.clone(),
            n_embd,
            n_expert,
            k: layer.k(),
            experts: routed,
            slot_of,
            shared,
            router,
            functions,
            scratch: None,
            staging: Vec::new(),
            weight_bytes,
            resident: resident.to_vec(),
        })
    }

    /// Checks, without a device, that the GPU path can run `layer` (with the router
    /// tensors given or not): the errors [`new`](Self::new) would return for an
    /// unsupported weight type or layer feature.
    pub fn check(layer: &MoeLayer<'_>, has_router_tensors: bool) -> Result<()> {
        Self::plan(layer, has_router_tensors).map(|_| ())
    }

    fn plan(layer: &MoeLayer<'_>, has_router_tensors: bool) -> Result<Plan> {
        let experts = layer.experts();
        if *layer.capacity() != moe_core::moe::CapacityPolicy::DROPLESS {
            return Err(GpuError::Unsupported {
                reason: "a capacity limit (the GPU path is dropless)",
            });
        }
        let (n_embd, n_expert) = (experts.n_embd(), experts.n_expert());
        let plan = plan_ffn(&experts.expert(0)?, ["ffn_up_exps", "ffn_down_exps"])?;
        let shared = plan_shared(layer.shared(), n_embd)?;

        let route_params = match (layer.router(), has_router_tensors) {
            (Some(r), true) => Some(check_router(r.config(), r.mask())?),
            (Some(_), false) => {
                return Err(GpuError::Unsupported {
                    reason: "the layer has a router but its tensors were not given",
                });
            }
            (None, _) => None,
        };
        if let Some(p) = &route_params
            && p.k as usize > layer.k()
        {
            return Err(GpuError::Unsupported {
                reason: "the router chooses more experts than the layer's k",
            });
        }

        Ok(Plan {
            n_embd,
            n_expert,
            experts: plan,
            shared,
            route_params,
        })
    }

    /// Which experts are on the device.
    pub fn resident(&self) -> &[bool] {
        &self.resident
    }

    /// Hybrid forward: the device routes every token and runs its resident experts and
    /// the shared expert (if the layer has one: every token uses it, so it always runs
    /// on the device), while `cpu` (the same layer on the CPU path) runs the other
    /// selected experts with the device's routing; its share is added into `out`.
    ///
    /// Overlapped: the host launches quantize + route, copies back only the ids and
    /// weights (`T × k` of each) and synchronizes, launches the FFN kernels and the
    /// combine without waiting, computes the CPU share while the device works, and only
    /// then downloads the device output and adds the CPU share. The CPU share runs on a
    /// copy of `cpu` without its shared expert, so the shared expert is added once.
    /// `workspace` is the CPU layer's `workspace_bytes(T)` (which also covers the copy's).
    /// With every expert resident nothing runs on the CPU and nothing is read back early.
    /// [`routed`](Self::routed) afterwards reads this pass's routing, as after
    /// [`forward`](Self::forward).
    pub fn hybrid_forward(
        &mut self,
        cpu: &MoeLayer<'_>,
        hidden: &[f32],
        out: &mut [f32],
        workspace: &mut [u8],
    ) -> Result<()> {
        if self.router.is_none() {
            return Err(GpuError::Unsupported {
                reason: "the layer has no router: use forward_selected",
            });
        }
        if cpu.n_embd() != self.n_embd || cpu.experts().n_expert() != self.n_expert {
            return Err(GpuError::Unsupported {
                reason: "the CPU layer is not the layer uploaded",
            });
        }
        let n_tokens = self.check_lengths(hidden, out)?;
        self.ensure_scratch(n_tokens)?;
        self.upload_input(hidden)?;
        let slots = self.slots();
        self.launch_inputs(n_tokens, true)?;
        let share = if self.resident.iter().all(|&r| r) {
            Vec::new()
        } else {
            cpu_share(&self.read_routing(n_tokens)?, &self.resident)
        };
        self.launch_ffns(n_tokens, slots)?;
        // While the device runs the FFNs: the CPU's share, without the shared expert
        // (the device adds it).
        let cpu_out = if share.iter().any(|s| !s.is_empty()) {
            let routed_only = (*cpu).with_shared(SharedExpert::None)?;
            let mut cpu_out = vec![0f32; out.len()];
            routed_only.forward_selected(hidden, &share, &mut cpu_out, workspace)?;
            Some(cpu_out)
        } else {
            None
        };
        self.download_output(n_tokens, out)?;
        if let Some(cpu_out) = cpu_out {
            for (o, c) in out.iter_mut().zip(&cpu_out) {
                *o += c;
            }
        }
        Ok(())
    }

    /// Bytes of the uploaded expert weights: the resident routed experts' and the shared
    /// expert's ([`shared_weight_bytes`](Self::shared_weight_bytes)).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes + self.shared_weight_bytes()
    }

    /// Bytes of the uploaded shared expert (its matrices and gate vector; 0 without one).
    pub fn shared_weight_bytes(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.bytes)
    }

    /// Whether the layer's shared expert runs on the device (it does whenever the layer
    /// has one).
    pub fn has_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Model width.
    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    /// Slots per token: the router's experts per token, or the layer's k without a
    /// router.
    fn slots(&self) -> usize {
        self.router.as_ref().map_or(self.k, |r| r.params.k as usize)
    }

    /// Which quantized input formats (Q8_0, Q8_K) some weight of the layer reads.
    fn input_formats(&self) -> [bool; 2] {
        let mut acts = vec![self.experts.plan.gate_up.act];
        if let Some(sh) = &self.shared {
            acts.push(sh.ffn.plan.gate_up.act);
            if let Some((_, _, act)) = &sh.gate {
                acts.push(*act);
            }
        }
        [
            acts.contains(&TensorType::Q8_0),
            acts.contains(&TensorType::Q8_K),
        ]
    }

    fn ensure_scratch(&mut self, tokens: usize) -> Result<()> {
        if self.scratch.as_ref().is_some_and(|s| s.tokens >= tokens) {
            return Ok(());
        }
        let k = self.k.max(1);
        let pairs = tokens * k;
        let max_tiles = pairs.div_ceil(PREFILL_TILE) + self.n_expert;
        let [q8_0, q8_k] = self.input_formats();
        let x_rb = |act: TensorType, needed: bool| {
            if needed {
                (tokens * act_row_bytes(act, self.n_embd)).max(1)
            } else {
                1
            }
        };
        let (x_q8_0_bytes, x_q8_k_bytes) =
            (x_rb(TensorType::Q8_0, q8_0), x_rb(TensorType::Q8_K, q8_k));
        let plan = self.experts.plan;
        let h_rb = act_row_bytes(plan.down.act, plan.n_ff);
        let stream = self.device.stream.clone();
        // Decode's pairs, and the shared expert's tokens up to a whole prefill tile.
        let n_identity = DECODE_MAX_PAIRS
            .max(pairs)
            .max(tokens.next_multiple_of(PREFILL_TILE));
        let identity: Vec<i32> = (0..n_identity as i32).collect();
        let (n_embd, n_ff, n_expert) = (self.n_embd, plan.n_ff, self.n_expert);
        let shared_plan = self.shared.as_ref().map(|s| s.ffn.plan);
        let scratch = catch(|| {
            let shared = match shared_plan {
                Some(sp) => {
                    let sh_rb = act_row_bytes(sp.down.act, sp.n_ff);
                    Some(SharedScratch {
                        hidden: stream.alloc_zeros(tokens * sp.n_ff * 4)?,
                        hq: stream.alloc_zeros((tokens * sh_rb).max(1))?,
                        y: stream.alloc_zeros(tokens * n_embd)?,
                        w: stream.alloc_zeros(tokens)?,
                        zeros: stream.alloc_zeros(tokens.max(1))?,
                    })
                }
                None => None,
            };
            Ok(Scratch {
                tokens,
                x: stream.alloc_zeros(tokens * n_embd * 4)?,
                x_q8_0: stream.alloc_zeros(x_q8_0_bytes)?,
                x_q8_k: stream.alloc_zeros(x_q8_k_bytes)?,
                logits: stream.alloc_zeros(tokens * n_expert)?,
                route: stream.alloc_zeros(tokens * 2 * n_expert)?,
                ids: stream.alloc_zeros(pairs)?,
                weights: stream.alloc_zeros(pairs)?,
                hidden: stream.alloc_zeros(pairs * n_ff * 4)?,
                hq: stream.alloc_zeros((pairs * h_rb).max(1))?,
                y: stream.alloc_zeros(pairs * n_embd)?,
                out: stream.alloc_zeros(tokens * n_embd)?,
                counts: stream.alloc_zeros(n_expert)?,
                cursor: stream.alloc_zeros(n_expert)?,
                tile_pairs: stream.alloc_zeros(max_tiles * PREFILL_TILE)?,
                tile_expert: stream.alloc_zeros(max_tiles)?,
                identity: stream.clone_htod(&identity)?,
                shared,
                ids_are_dense: false,
            })
        })?;
        self.scratch = Some(scratch);
        Ok(())
    }
    fn check_lengths(&self, hidden: &[f32], out: &[f32]) -> Result<usize> {
        let n_tokens = hidden.len() / self.n_embd;
        if n_tokens * self.n_embd != hidden.len() || n_tokens == 0 {
            return Err(GpuError::LengthMismatch {
                expected: n_tokens.max(1) * self.n_embd,
                actual: hidden.len(),
            });
        }
        if out.len() != hidden.len() {
            return Err(GpuError::LengthMismatch {
                expected: hidden.len(),
                actual: out.len(),
            });
        }
        Ok(n_tokens)
    }

    /// Copies `hidden` to the device input buffer.
    fn upload_input(&mut self, hidden: &[f32]) -> Result<()> {
        self.staging.clear();
        self.staging
            .extend(hidden.iter().flat_map(|v| v.to_le_bytes()));
        let stream = self.device.stream.clone();
        let (staging, scratch) = (&self.staging, self.scratch.as_mut());
        let scratch = scratch.ok_or(GpuError::Unsupported {
            reason: "scratch missing",
        })?;
        catch(|| {
            let mut dst = scratch.x.slice_mut(..staging.len());
            Ok(stream.memcpy_htod(staging, &mut dst)?)
        })
    }

    /// Runs the layer on `T = hidden.len() / n_embd` tokens with the router on the
    /// device; `out` (`T × n_embd`) is overwritten.
    pub fn forward(&mut self, hidden: &[f32], out: &mut [f32]) -> Result<()> {
        if self.router.is_none() {
            return Err(GpuError::Unsupported {
                reason: "the layer has no router: use forward_selected",
            });
        }
        let n_tokens = self.check_lengths(hidden, out)?;
        self.ensure_scratch(n_tokens)?;
        self.upload_input(hidden)?;
        self.launch_all(n_tokens, true)?;
        self.download_output(n_tokens, out)
    }

    /// Runs the layer with the caller's selections (one per token, at most k each).
    pub fn forward_selected(
        &mut self,
        hidden: &[f32],
        selections: &[Selection],
        out: &mut [f32],
    ) -> Result<()> {
        let n_tokens = self.check_lengths(hidden, out)?;
        if selections.len() != n_tokens {
            return Err(GpuError::LengthMismatch {
                expected: n_tokens,
                actual: selections.len(),
            });
        }
        let k = self.k;
        let mut ids = vec![-1i32; n_tokens * k];
        let mut weights = vec![0f32; n_tokens * k];
        for (t, sel) in selections.iter().enumerate() {
            if sel.len() > k {
                return Err(GpuError::LengthMismatch {
                    expected: k,
                    actual: sel.len(),
                });
            }
            for (j, c) in sel.iter().enumerate() {
                if c.expert as usize >= self.n_expert {
                    return Err(GpuError::Core(moe_core::Error::ExpertOutOfRange {
                        expert: i64::from(c.expert),
                        n_expert: self.n_expert as u64,
                    }));
                }
                ids[t * k + j] = c.expert as i32;
                weights[t * k + j] = c.weight;
            }
        }
        self.ensure_scratch(n_tokens)?;
        self.upload_input(hidden)?;
        {
            let stream = self.device.stream.clone();
            let scratch = self.scratch.as_mut().ok_or(GpuError::Unsupported {
                reason: "scratch missing",
            })?;
            scratch.ids_are_dense = false;
            catch(|| {
                let mut dst = scratch.ids.slice_mut(..ids.len());
                stream.memcpy_htod(&ids, &mut dst)?;
                let mut dst = scratch.weights.slice_mut(..weights.len());
                stream.memcpy_htod(&weights, &mut dst)?;
                Ok(())
            })?;
        }
        self.launch_all_with_slots(n_tokens, false, k)?;
        self.download_output(n_tokens, out)
    }

    /// The experts and weights the last forward routed `n_tokens` tokens to, per token
    /// in rank order (read back from the device; for tests and statistics).
    pub fn routed(&self, n_tokens: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        self.read_routing(n_tokens)
    }

    /// Copies the first `n_tokens` tokens' ids and weights back (only those: `T × k`
    /// of each) once the device has written them, then synchronizes the stream.
    fn read_routing(&self, n_tokens: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        let k = self.slots();
        let scratch = self.scratch.as_ref().ok_or(GpuError::Unsupported {
            reason: "nothing was routed yet",
        })?;
        if n_tokens > scratch.tokens {
            return Err(GpuError::LengthMismatch {
                expected: scratch.tokens,
                actual: n_tokens,
            });
        }
        let stream = self.device.stream.clone();
        let (ids, weights) = catch(|| {
            let ids = stream.clone_dtoh(&scratch.ids.slice(..n_tokens * k))?;
            let weights = stream.clone_dtoh(&scratch.weights.slice(..n_tokens * k))?;
            // Pageable copies return when done; synchronizing makes it explicit.
            stream.synchronize()?;
            Ok((ids, weights))
        })?;
        Ok((0..n_tokens)
            .map(|t| {
                (0..k)
                    .filter(|&j| ids[t * k + j] >= 0)
                    .map(|j| (ids[t * k + j] as u32, weights[t * k + j]))
                    .collect()
            })
            .collect())
    }

    fn download_output(&mut self, n_tokens: usize, out: &mut [f32]) -> Result<()> {
        let stream = self.device.stream.clone();
        let n = n_tokens * self.n_embd;
        let scratch = self.scratch.as_ref().ok_or(GpuError::Unsupported {
            reason: "scratch missing",
        })?;
        catch(|| {
            stream.memcpy_dtoh(&scratch.out.slice(..n), &mut out[..n])?;
            stream.synchronize()?;
            Ok(())
        })
    }

    /// Launches the whole layer on the current device input (`n_tokens` rows already
    /// uploaded, and for `route == false` the ids and weights too), without host
    /// copies: what the bench times.
    pub fn launch_device_only(&mut self, n_tokens: usize, route: bool) -> Result<()> {
        self.ensure_scratch(n_tokens)?;
        if route && self.router.is_none() {
            return Err(GpuError::Unsupported {
                reason: "the layer has no router",
            });
        }
        let slots = if route { self.slots() } else { self.k };
        self.launch_all_with_slots(n_tokens, route, slots)
    }

    fn launch_all(&mut self, n_tokens: usize, route: bool) -> Result<()> {
        let slots = self.slots();
        self.launch_all_with_slots(n_tokens, route, slots)
    }

    fn launch_all_with_slots(&mut self, n_tokens: usize, route: bool, k: usize) -> Result<()> {
        self.launch_inputs(n_tokens, route)?;
        self.launch_ffns(n_tokens, k)
    }

    /// Steps 1–2 of a forward pass: quantize the uploaded input rows into every
    /// activation format a weight of the layer reads, then (`route`) route them on the
    /// device, writing the ids and weights.
    fn launch_inputs(&mut self, n_tokens: usize, route: bool) -> Result<()> {
        let tokens_y = grid_y(n_tokens)?;
        let [q8_0, q8_k] = self.input_formats();
        let stream = self.device.stream.clone();
        let s = self.scratch.as_mut().ok_or(GpuError::Unsupported {
            reason: "scratch missing",
        })?;
        let f = &self.functions;
        let n_embd = self.n_embd;
        let n_expert = self.n_expert;
        let (n_embd_i, n_expert_i, n_tokens_i) = (n_embd as i32, n_expert as i32, n_tokens as i32);
        catch(|| {
            // 1. Quantize the input rows (float weights read x itself).
            for (act, needed) in [(TensorType::Q8_0, q8_0), (TensorType::Q8_K, q8_k)] {
                let Some(q) = f.quantizer(act).filter(|_| needed) else {
                    continue;
                };
                let n_blocks = (n_tokens * n_embd / act.block_len()) as i32;
                let dst = if act == TensorType::Q8_0 {
                    &mut s.x_q8_0
                } else {
                    &mut s.x_q8_k
                };
                let mut b = stream.launch_builder(q);
                b.arg(&s.x).arg(dst).arg(&n_blocks);
                // SAFETY: `quantize_*(const float *x, u8 *out, int n_blocks)`: x holds
                // n_tokens rows of n_embd f32 and the destination n_tokens rows of this
                // format (ensure_scratch sized it because the format is needed), so
                // n_blocks blocks are in bounds of both.
                unsafe { b.launch(cfg(blocks(n_blocks as usize, 128), 1, 128)) }?;
            }
            if !route {
                return Ok(());
            }
            // 2. Route on the device.
            let r = self.router.as_ref().ok_or(GpuError::Unsupported {
                reason: "the layer has no router",
            })?;
            let mut b = stream.launch_builder(&f.logits);
            b.arg(&r.weight)
                .arg(&s.x)
                .arg(&mut s.logits)
                .arg(&n_tokens_i)
                .arg(&n_expert_i)
                .arg(&n_embd_i);
            // SAFETY: weight is n_expert × n_embd f32, x n_tokens × n_embd f32 and
            // logits n_tokens × n_expert f32 (scratch sized for at least n_tokens); the
            // kernel bounds-checks e and t against the grid.
            unsafe {
                b.launch(cfg(
                    blocks(n_expert, ROWS_PER_BLOCK as usize),
                    tokens_y,
                    32 * ROWS_PER_BLOCK,
                ))
            }?;
            let mut params = r.params;
            params.n_tokens = n_tokens_i;
            let mut b = stream.launch_builder(&f.select);
            // A null-free bias pointer: the logits when there is no bias (unread).
            match &r.bias {
                Some(bias) => b.arg(&s.logits).arg(bias),
                None => b.arg(&s.logits).arg(&s.logits),
            };
            b.arg(&params)
                .arg(&mut s.route)
                .arg(&mut s.ids)
                .arg(&mut s.weights);
            // SAFETY: logits n_tokens × n_expert, bias n_expert (read only when
            // has_bias), route scratch 2 · n_expert per token, ids and weights
            // n_tokens · k with k = params.k ≤ the layer's k the scratch is sized for.
            unsafe { b.launch(cfg(blocks(n_tokens, 64), 1, 64)) }?;
            Ok(())
        })
    }

    /// Steps 3–8 of a forward pass, on the ids and weights in device memory: align
    /// (prefill), the routed experts' gate/up, quantize, down; the shared expert's gate,
    /// gate/up, quantize, down; the combine. Launches only: nothing waits.
    fn launch_ffns(&mut self, n_tokens: usize, k: usize) -> Result<()> {
        let n_pairs = n_tokens * k;
        let plan = self.experts.plan;
        let params = FfnParams {
            n_embd: self.n_embd as i32,
            n_ff: plan.n_ff as i32,
            k: k as i32,
            has_gate: i32::from(plan.has_gate),
            activation: plan.activation,
            n_pairs: n_pairs as i32,
            gate_up_matrix_bytes: plan.gate_up_matrix_bytes as u64,
            down_matrix_bytes: plan.down_matrix_bytes as u64,
            x_row_bytes: act_row_bytes(plan.gate_up.act, self.n_embd) as u64,
            h_row_bytes: act_row_bytes(plan.down.act, plan.n_ff) as u64,
        };
        let decode = n_pairs <= DECODE_MAX_PAIRS;
        let n_tiles = if decode {
            n_pairs
        } else {
            n_pairs.div_ceil(PREFILL_TILE) + self.n_expert
        };
        let tiles_y = grid_y(n_tiles)?;
        let tokens_y = grid_y(n_tokens)?;
        // The shared expert: one pair per token, tiles of PREFILL_TILE tokens as soon as
        // there are two (its weights are then streamed once per eight tokens).
        let shared_m8 = n_tokens > 1;
        let shared_tiles_y = grid_y(if shared_m8 {
            n_tokens.div_ceil(PREFILL_TILE)
        } else {
            n_tokens
        })?;
        let shared_params = self.shared.as_ref().map(|sh| {
            let p = sh.ffn.plan;
            FfnParams {
                n_embd: self.n_embd as i32,
                n_ff: p.n_ff as i32,
                k: 1,
                has_gate: i32::from(p.has_gate),
                activation: p.activation,
                n_pairs: n_tokens as i32,
                gate_up_matrix_bytes: p.gate_up_matrix_bytes as u64,
                down_matrix_bytes: p.down_matrix_bytes as u64,
                x_row_bytes: act_row_bytes(p.gate_up.act, self.n_embd) as u64,
                h_row_bytes: act_row_bytes(p.down.act, p.n_ff) as u64,
            }
        });
        let stream = self.device.stream.clone();
        let s = self.scratch.as_mut().ok_or(GpuError::Unsupported {
            reason: "scratch missing",
        })?;
        let f = &self.functions;
        let n_embd = self.n_embd;
        let (n_embd_i, n_expert_i, n_tokens_i) =
            (n_embd as i32, self.n_expert as i32, n_tokens as i32);
        let k_i = k as i32;
        let n_pairs_i = n_pairs as i32;
        let max_tiles_i = n_tiles as i32;
        let tile_m = PREFILL_TILE as i32;

        catch(|| {
            // 3. Tiles: decode reads the ids directly; prefill aligns pairs by expert.
            if !decode {
                let mut b = stream.launch_builder(&f.align);
                b.arg(&s.ids)
                    .arg(&n_pairs_i)
                    .arg(&n_expert_i)
                    .arg(&tile_m)
                    .arg(&max_tiles_i)
                    .arg(&mut s.counts)
                    .arg(&mut s.cursor)
                    .arg(&mut s.tile_pairs)
                    .arg(&mut s.tile_expert);
                // SAFETY: ids has n_pairs entries; counts and cursor n_expert; tile_pairs
                // max_tiles · 8 and tile_expert max_tiles, the sizes ensure_scratch gave
                // them for this batch size (the kernel also bounds every write).
                unsafe { b.launch(cfg(1, 1, 1024)) }?;
            }
            // 4–6. The routed experts: gate/up with the activation, quantize, down.
            let (tp, te) = if decode {
                (&s.identity, &s.ids)
            } else {
                (&s.tile_pairs, &s.tile_expert)
            };
            launch_ffn(
                &stream,
                &self.experts,
                f,
                &params,
                !decode,
                tiles_y,
                FfnBuffers {
                    x: input_rows(plan.gate_up.act, &s.x, &s.x_q8_0, &s.x_q8_k),
                    tile_pairs: tp,
                    tile_expert: te,
                    slot_of: &self.slot_of,
                    hidden: &mut s.hidden,
                    hq: &mut s.hq,
                    y: &mut s.y,
                },
            )?;
            // 7. The shared expert over every token: Qwen's gate, then its FFN as a
            // one-expert stack (tile_pairs 0, 1, 2, …; tile_expert and slot_of 0).
            let mut shared_mode = 0i32;
            if let (Some(sh), Some(ss), Some(sp)) = (&self.shared, &mut s.shared, &shared_params) {
                shared_mode = 1;
                if let Some((gate, ty, act)) = &sh.gate {
                    shared_mode = 2;
                    let x_rb = act_row_bytes(*act, n_embd) as u64;
                    let mut b = stream.launch_builder(&f.shared_gate);
                    b.arg(gate)
                        .arg(ty)
                        .arg(input_rows(*act, &s.x, &s.x_q8_0, &s.x_q8_k))
                        .arg(&x_rb)
                        .arg(&n_embd_i)
                        .arg(&n_tokens_i)
                        .arg(&mut ss.w);
                    // SAFETY: the gate is one row of n_embd elements of type `ty` (checked
                    // in plan_shared); the input rows are n_tokens rows of x_rb bytes in
                    // the format that type's dot reads, quantized in step 1; w holds
                    // n_tokens floats; warps past n_tokens return.
                    unsafe {
                        b.launch(cfg(
                            blocks(n_tokens, ROWS_PER_BLOCK as usize),
                            1,
                            32 * ROWS_PER_BLOCK,
                        ))
                    }?;
                }
                launch_ffn(
                    &stream,
                    &sh.ffn,
                    f,
                    sp,
                    shared_m8,
                    shared_tiles_y,
                    FfnBuffers {
                        x: input_rows(sh.ffn.plan.gate_up.act, &s.x, &s.x_q8_0, &s.x_q8_k),
                        tile_pairs: &s.identity,
                        tile_expert: &ss.zeros,
                        slot_of: &ss.zeros,
                        hidden: &mut ss.hidden,
                        hq: &mut ss.hq,
                        y: &mut ss.y,
                    },
                )?;
            }
            // 8. Weighted combine in ascending expert id, then the shared expert.
            {
                let mut b = stream.launch_builder(&f.combine);
                b.arg(&s.y)
                    .arg(&s.ids)
                    .arg(&s.weights)
                    .arg(&self.slot_of)
                    .arg(&n_tokens_i)
                    .arg(&n_embd_i)
                    .arg(&k_i)
                    .arg(&shared_mode);
                // Null-free pointers: the routed outputs and weights when there is no
                // shared expert (unread).
                match &s.shared {
                    Some(ss) => b.arg(&ss.y).arg(&ss.w),
                    None => b.arg(&s.y).arg(&s.weights),
                };
                b.arg(&mut s.out);
                // SAFETY: y n_pairs × n_embd, ids and weights n_pairs, out n_tokens ×
                // n_embd; ids are -1 or < n_expert (slot_of's length); with a shared
                // expert its y is n_tokens × n_embd and its w n_tokens (read only when
                // shared_mode is 2).
                unsafe { b.launch(cfg(blocks(n_embd, 256), tokens_y, 256)) }?;
            }
            Ok(())
        })
    }

    /// Sizes the layer's scratch for batches of `n_tokens` now (it grows on demand
    /// otherwise), so a model's upload fails early when the device is too small.
    pub(crate) fn reserve_device(&mut self, n_tokens: usize) -> Result<()> {
        self.ensure_scratch(n_tokens)
    }

    /// Runs the layer on `n_tokens` rows already on the device (`x`, at least `n_tokens ×
    /// n_embd` f32) into the first `n_tokens × n_embd` floats of `out`, without host
    /// copies of the activations: the rows are copied into the layer's input buffer,
    /// the layer's launches follow (routing on the device; a layer without a router gives
    /// every token expert 0 with weight 1, a dense FFN), and the output is copied out —
    /// all on the device's stream, nothing waits.
    pub(crate) fn forward_device(
        &mut self,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        n_tokens: usize,
    ) -> Result<()> {
        let n = n_tokens * self.n_embd;
        if n_tokens == 0 || x.len() < n || out.len() < n {
            return Err(GpuError::LengthMismatch {
                expected: n.max(self.n_embd),
                actual: x.len().min(out.len()),
            });
        }
        self.ensure_scratch(n_tokens)?;
        let route = self.router.is_some();
        let k = self.k;
        let stream = self.device.stream.clone();
        let s = self.scratch.as_mut().ok_or(GpuError::Unsupported {
            reason: "scratch missing",
        })?;
        catch(|| {
            let have = s.x.len();
            // SAFETY: the input buffer holds scratch.tokens ≥ n_tokens rows of n_embd f32
            // as bytes (4 · n bytes or more) in one device allocation (256-byte aligned),
            // and every bit pattern is a valid f32.
            let mut dst =
                unsafe { s.x.transmute_mut::<f32>(n) }.ok_or(GpuError::LengthMismatch {
                    expected: n * 4,
                    actual: have,
                })?;
            stream.memcpy_dtod(&x.slice(..n), &mut dst)?;
            if !route && !s.ids_are_dense {
                // Without a router: expert 0 with weight 1 in each token's first slot,
                // for every token the scratch holds (once, not per call).
                let (ids, weights): (Vec<i32>, Vec<f32>) = (0..s.tokens * k)
                    .map(|p| if p % k == 0 { (0, 1.0) } else { (-1, 0.0) })
                    .unzip();
                let mut dst = s.ids.slice_mut(..ids.len());
                stream.memcpy_htod(&ids, &mut dst)?;
                let mut dst = s.weights.slice_mut(..weights.len());
                stream.memcpy_htod(&weights, &mut dst)?;
                s.ids_are_dense = true;
            }
            Ok(())
        })?;
        let slots = if route { self.slots() } else { k };
        self.launch_all_with_slots(n_tokens, route, slots)?;
        let s = self.scratch.as_ref().ok_or(GpuError::Unsupported {
            reason: "scratch missing",
        })?;
        catch(|| {
            let mut dst = out.slice_mut(..n);
            stream.memcpy_dtod(&s.out.slice(..n), &mut dst)?;
            Ok(())
        })
    }
}

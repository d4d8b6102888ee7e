//! [`GpuDevice`] (a context, a stream and the compiled kernels) and [`GpuMoeLayer`] (one
//! MoE layer's routed experts and router on the device).
//!
//! One forward pass is one sequence of launches on one stream with no host round trip
//! between them: quantize the input rows once (Q8_0 for Q4_0/Q8_0 weights, Q8_K for
//! K-quants, f32 for F16/BF16, as the CPU pairs them), route on the device (or take the
//! caller's selections), then either the decode path (at most [`DECODE_MAX_PAIRS`]
//! (token, slot) pairs: one warp per weight row per pair, expert ids read from device
//! memory) or the prefill path (align the pairs by expert into tiles of
//! [`PREFILL_TILE`], then one warp per weight row per tile), gate/up with the
//! activation fused, quantize the intermediate rows, down, and the weighted combine in
//! ascending expert id. The host copies the input in and the output out.
//!
//! Unverified on hardware: nothing here has run on a GPU yet.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use moe_core::TensorType;
use moe_core::moe::{Activation, MoeLayer};
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
const ROWS_PER_BLOCK: u32 = 4;
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
    pub const KERNEL_NAMES: [&'static str; 30] = [
        "moe_quantize_q8_0",
        "moe_quantize_q8_k",
        "moe_router_logits",
        "moe_router_select",
        "moe_combine",
        "moe_align",
        "moe_gate_up_q4_0_m1",
        "moe_gate_up_q4_0_m8",
        "moe_gate_up_q8_0_m1",
        "moe_gate_up_q8_0_m8",
        "moe_gate_up_q4_k_m1",
        "moe_gate_up_q4_k_m8",
        "moe_gate_up_q6_k_m1",
        "moe_gate_up_q6_k_m8",
        "moe_gate_up_f16_m1",
        "moe_gate_up_f16_m8",
        "moe_gate_up_bf16_m1",
        "moe_gate_up_bf16_m8",
        "moe_down_q4_0_m1",
        "moe_down_q4_0_m8",
        "moe_down_q8_0_m1",
        "moe_down_q8_0_m8",
        "moe_down_q4_k_m1",
        "moe_down_q4_k_m8",
        "moe_down_q6_k_m1",
        "moe_down_q6_k_m8",
        "moe_down_f16_m1",
        "moe_down_f16_m8",
        "moe_down_bf16_m1",
        "moe_down_bf16_m8",
    ];

    /// Opens device `ordinal`, compiles (or loads from the cache) the kernels for its
    /// architecture and loads them.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !crate::driver_present() {
            return Err(GpuError::NoDriver);
        }
        if !kernels::nvrtc_present() {
            return Err(GpuError::NoNvrtc);
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

    fn function(&self, name: &str) -> Result<CudaFunction> {
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

/// A weight type the kernels read, with its kernel suffix and activation format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Format {
    ty: TensorType,
    suffix: &'static str,
    /// The activation format's type: Q8_0, Q8_K or F32.
    act: TensorType,
}

fn format_of(ty: TensorType, role: &'static str) -> Result<Format> {
    let (suffix, act) = match ty {
        TensorType::Q4_0 => ("q4_0", TensorType::Q8_0),
        TensorType::Q8_0 => ("q8_0", TensorType::Q8_0),
        TensorType::Q4_K => ("q4_k", TensorType::Q8_K),
        TensorType::Q6_K => ("q6_k", TensorType::Q8_K),
        TensorType::F16 => ("f16", TensorType::F32),
        TensorType::BF16 => ("bf16", TensorType::F32),
        _ => return Err(GpuError::UnsupportedType { role, ty }),
    };
    Ok(Format { ty, suffix, act })
}

/// Bytes of a row of `n` elements in activation format `act`.
fn act_row_bytes(act: TensorType, n: usize) -> usize {
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
    /// Input rows quantized for gate/up (`T × x_row_bytes`; unused for float weights).
    xq: CudaSlice<u8>,
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
    /// `0, 1, 2, …` (decode's tile_pairs).
    identity: CudaSlice<i32>,
}

/// The kernels one layer launches, looked up once.
#[derive(Debug)]
struct Functions {
    quantize_x: Option<CudaFunction>,
    quantize_h: Option<CudaFunction>,
    logits: CudaFunction,
    select: CudaFunction,
    gate_up: [CudaFunction; 2],
    down: [CudaFunction; 2],
    combine: CudaFunction,
    align: CudaFunction,
}

/// What [`GpuMoeLayer::plan`] found out about a layer.
struct Plan {
    n_embd: usize,
    n_ff: usize,
    n_expert: usize,
    gate_up: Format,
    down: Format,
    activation: i32,
    has_gate: bool,
    gate_up_matrix_bytes: usize,
    down_matrix_bytes: usize,
    route_params: Option<RouteParams>,
}

/// One MoE layer's routed experts on the device.
#[derive(Debug)]
pub struct GpuMoeLayer {
    device: GpuDevice,
    n_embd: usize,
    n_ff: usize,
    n_expert: usize,
    /// Slots per token (the layer's k).
    k: usize,
    has_gate: bool,
    activation: i32,
    gate_up: Format,
    down: Format,
    gate: Option<CudaSlice<u8>>,
    up: CudaSlice<u8>,
    down_w: CudaSlice<u8>,
    gate_up_matrix_bytes: usize,
    down_matrix_bytes: usize,
    slot_of: CudaSlice<i32>,
    router: Option<GpuRouter>,
    functions: Functions,
    scratch: Option<Scratch>,
    /// Host staging of the input bytes.
    staging: Vec<u8>,
    /// Bytes of the uploaded weights.
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

impl GpuMoeLayer {
    /// Uploads `layer`'s routed experts (their blocks unchanged) and, when given, its
    /// router, checking device memory first. `router` must be the tensors the layer's
    /// router was built with.
    ///
    /// Errors (never panics): a weight type the kernels do not read
    /// ([`GpuError::UnsupportedType`]), a shared expert, a capacity limit or a router
    /// option the device path lacks ([`GpuError::Unsupported`]), too little free device
    /// memory ([`GpuError::OutOfMemory`]).
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
    /// caller computes on the CPU ([`hybrid_forward`](Self::hybrid_forward)).
    pub fn with_placement(
        device: &GpuDevice,
        layer: &MoeLayer<'_>,
        router: Option<RouterTensors<'_>>,
        resident: Option<&[bool]>,
        budget: Option<u64>,
    ) -> Result<Self> {
        let Plan {
            n_embd,
            n_ff,
            n_expert,
            gate_up,
            down,
            activation,
            has_gate,
            gate_up_matrix_bytes,
            down_matrix_bytes,
            route_params,
        } = Self::plan(layer, router.is_some())?;
        let experts = layer.experts();
        let per_expert =
            (gate_up_matrix_bytes * if has_gate { 2 } else { 1 }) as u64 + down_matrix_bytes as u64;
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
        let router_bytes = (n_embd * n_expert * 4 + n_expert * 4) as u64;
        // Scratch for a decode batch; larger batches grow it later (and may then fail
        // with an allocation error from the driver).
        let needed = weight_bytes + router_bytes + (64 << 20);
        let (free, _) = device.memory()?;
        let available = budget.map_or(free, |b| b.min(free));
        if needed > available {
            return Err(GpuError::OutOfMemory { needed, available });
        }

        // Upload every expert's matrices, expert-major, exactly their GGUF bytes.
        let stream = device.stream.clone();
        let upload = |role: Role| -> Result<CudaSlice<u8>> {
            let mut host = stack_bytes(experts, role, resident)?;
            if host.is_empty() {
                host.push(0); // no resident expert: a placeholder (never read)
            }
            catch(|| Ok(stream.clone_htod(&host)?))
        };
        let gate = if has_gate {
            Some(upload(Role::Gate)?)
        } else {
            None
        };
        let up = upload(Role::Up)?;
        let down_w = upload(Role::Down)?;
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

        let f = |name: String| device.function(&name);
        let quantize = |act: TensorType| -> Result<Option<CudaFunction>> {
            match act {
                TensorType::Q8_0 => Ok(Some(f("moe_quantize_q8_0".into())?)),
                TensorType::Q8_K => Ok(Some(f("moe_quantize_q8_k".into())?)),
                _ => Ok(None),
            }
        };
        let functions = catch(|| {
            Ok(Functions {
                quantize_x: quantize(gate_up.act)?,
                quantize_h: quantize(down.act)?,
                logits: f("moe_router_logits".into())?,
                select: f("moe_router_select".into())?,
                gate_up: [
                    f(format!("moe_gate_up_{}_m1", gate_up.suffix))?,
                    f(format!("moe_gate_up_{}_m8", gate_up.suffix))?,
                ],
                down: [
                    f(format!("moe_down_{}_m1", down.suffix))?,
                    f(format!("moe_down_{}_m8", down.suffix))?,
                ],
                combine: f("moe_combine".into())?,
                align: f("moe_align".into())?,
            })
        })?;

        Ok(GpuMoeLayer {
            device: device.clone(),
            n_embd,
            n_ff,
            n_expert,
            k: layer.k(),
            has_gate,
            activation,
            gate_up,
            down,
            gate,
            up,
            down_w,
            gate_up_matrix_bytes,
            down_matrix_bytes,
            slot_of,
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
        if layer.shared().ffn().is_some() {
            return Err(GpuError::Unsupported {
                reason: "a shared expert (run it on the CPU path)",
            });
        }
        if *layer.capacity() != moe_core::moe::CapacityPolicy::DROPLESS {
            return Err(GpuError::Unsupported {
                reason: "a capacity limit (the GPU path is dropless)",
            });
        }
        let (n_embd, n_ff, n_expert) = (experts.n_embd(), experts.n_ff(), experts.n_expert());
        let e0 = experts.expert(0)?;
        let up_ty = e0.up().ty();
        if let Some(g) = e0.gate()
            && g.ty() != up_ty
        {
            return Err(GpuError::Unsupported {
                reason: "gate and up matrices of different types",
            });
        }
        let gate_up = format_of(up_ty, "ffn_up_exps")?;
        let down = format_of(e0.down().ty(), "ffn_down_exps")?;
        for (len, block) in [
            (n_embd, gate_up.ty.block_len()),
            (n_ff, down.ty.block_len()),
        ] {
            if len % block != 0 || len % 32 != 0 {
                return Err(GpuError::Unsupported {
                    reason: "a row length that is not a whole number of 32-element groups",
                });
            }
        }
        let activation = match e0.kind() {
            moe_core::moe::FfnKind::Gated(a) | moe_core::moe::FfnKind::Plain(a) => a,
        };
        let activation = match activation {
            Activation::Silu => 0,
            Activation::Gelu => 1,
            Activation::GeluErf => 2,
            Activation::Relu => 3,
        };
        let has_gate = e0.gate().is_some();
        let gate_up_matrix_bytes = e0.up().data().len();
        let down_matrix_bytes = e0.down().data().len();

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
            n_ff,
            n_expert,
            gate_up,
            down,
            activation,
            has_gate,
            gate_up_matrix_bytes,
            down_matrix_bytes,
            route_params,
        })
    }

    /// Which experts are on the device.
    pub fn resident(&self) -> &[bool] {
        &self.resident
    }

    /// Hybrid forward: the device routes every token and runs its resident experts, then
    /// `cpu` (the same layer on the CPU path) runs the other selected experts with the
    /// device's routing, and its share is added into `out`. Sequential (the CPU part
    /// waits for the device), so it saves device memory, not time, until the two are
    /// overlapped. `workspace` is the CPU layer's `workspace_bytes(T)`.
    pub fn hybrid_forward(
        &mut self,
        cpu: &MoeLayer<'_>,
        hidden: &[f32],
        out: &mut [f32],
        workspace: &mut [u8],
    ) -> Result<()> {
        self.forward(hidden, out)?;
        let n_tokens = hidden.len() / self.n_embd;
        if self.resident.iter().all(|&r| r) {
            return Ok(());
        }
        let routed = self.routed(n_tokens)?;
        let selections = cpu_share(&routed, &self.resident);
        if selections.iter().all(|s| s.is_empty()) {
            return Ok(());
        }
        let mut cpu_out = vec![0f32; out.len()];
        cpu.forward_selected(hidden, &selections, &mut cpu_out, workspace)?;
        for (o, c) in out.iter_mut().zip(&cpu_out) {
            *o += c;
        }
        Ok(())
    }

    /// Bytes of the uploaded expert weights.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
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

    fn ensure_scratch(&mut self, tokens: usize) -> Result<()> {
        if self.scratch.as_ref().is_some_and(|s| s.tokens >= tokens) {
            return Ok(());
        }
        let k = self.k.max(1);
        let pairs = tokens * k;
        let max_tiles = pairs.div_ceil(PREFILL_TILE) + self.n_expert;
        let x_rb = act_row_bytes(self.gate_up.act, self.n_embd);
        let h_rb = act_row_bytes(self.down.act, self.n_ff);
        let stream = self.device.stream.clone();
        let identity: Vec<i32> = (0..DECODE_MAX_PAIRS.max(pairs) as i32).collect();
        let (n_embd, n_ff, n_expert) = (self.n_embd, self.n_ff, self.n_expert);
        let scratch = catch(|| {
            Ok(Scratch {
                tokens,
                x: stream.alloc_zeros(tokens * n_embd * 4)?,
                xq: stream.alloc_zeros((tokens * x_rb).max(1))?,
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
        let n_pairs = n_tokens * k;
        let x_rb = act_row_bytes(self.gate_up.act, self.n_embd);
        let h_rb = act_row_bytes(self.down.act, self.n_ff);
        let params = FfnParams {
            n_embd: self.n_embd as i32,
            n_ff: self.n_ff as i32,
            k: k as i32,
            has_gate: i32::from(self.has_gate),
            activation: self.activation,
            n_pairs: n_pairs as i32,
            gate_up_matrix_bytes: self.gate_up_matrix_bytes as u64,
            down_matrix_bytes: self.down_matrix_bytes as u64,
            x_row_bytes: x_rb as u64,
            h_row_bytes: h_rb as u64,
        };
        let decode = n_pairs <= DECODE_MAX_PAIRS;
        let n_tiles = if decode {
            n_pairs
        } else {
            n_pairs.div_ceil(PREFILL_TILE) + self.n_expert
        };
        let tiles_y = grid_y(n_tiles)?;
        let tokens_y = grid_y(n_tokens)?;
        let stream = self.device.stream.clone();
        let s = self.scratch.as_mut().ok_or(GpuError::Unsupported {
            reason: "scratch missing",
        })?;
        let f = &self.functions;
        let blocks = |n: usize, per: usize| n.div_ceil(per) as u32;
        let cfg = |gx: u32, gy: u32, threads: u32| LaunchConfig {
            grid_dim: (gx, gy, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n_embd, n_ff, n_expert) = (self.n_embd as i32, self.n_ff as i32, self.n_expert as i32);
        let n_tokens_i = n_tokens as i32;
        let k_i = k as i32;
        let n_pairs_i = n_pairs as i32;
        let max_tiles_i = n_tiles as i32;
        let tile_m = PREFILL_TILE as i32;

        catch(|| {
            // 1. Quantize the input rows for gate/up (float weights read x itself).
            if let Some(q) = &f.quantize_x {
                let n_blocks = (n_tokens * self.n_embd / self.gate_up.act.block_len()) as i32;
                let mut b = stream.launch_builder(q);
                b.arg(&s.x).arg(&mut s.xq).arg(&n_blocks);
                // SAFETY: `quantize_*(const float *x, u8 *out, int n_blocks)`: x holds
                // n_tokens rows of n_embd f32, xq n_tokens rows of x_row_bytes, so
                // n_blocks blocks are in bounds of both.
                unsafe { b.launch(cfg(blocks(n_blocks as usize, 128), 1, 128)) }?;
            }
            // 2. Route on the device.
            if route {
                let r = self.router.as_ref().ok_or(GpuError::Unsupported {
                    reason: "the layer has no router",
                })?;
                let mut b = stream.launch_builder(&f.logits);
                b.arg(&r.weight)
                    .arg(&s.x)
                    .arg(&mut s.logits)
                    .arg(&n_tokens_i)
                    .arg(&n_expert)
                    .arg(&n_embd);
                // SAFETY: weight is n_expert × n_embd f32, x n_tokens × n_embd f32 and
                // logits n_tokens × n_expert f32 (scratch sized for at least n_tokens);
                // the kernel bounds-checks e and t against the grid.
                unsafe {
                    b.launch(cfg(
                        blocks(self.n_expert, ROWS_PER_BLOCK as usize),
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
            }
            // 3. Tiles: decode reads the ids directly; prefill aligns pairs by expert.
            let m = if decode { 0 } else { 1 };
            if !decode {
                let mut b = stream.launch_builder(&f.align);
                b.arg(&s.ids)
                    .arg(&n_pairs_i)
                    .arg(&n_expert)
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
            let xq = if f.quantize_x.is_some() { &s.xq } else { &s.x };
            // 4. gate/up with the activation.
            {
                let (tp, te) = if decode {
                    (&s.identity, &s.ids)
                } else {
                    (&s.tile_pairs, &s.tile_expert)
                };
                let mut b = stream.launch_builder(&f.gate_up[m]);
                match &self.gate {
                    Some(g) => b.arg(g),
                    None => b.arg(&self.up),
                };
                b.arg(&self.up)
                    .arg(xq)
                    .arg(tp)
                    .arg(te)
                    .arg(&self.slot_of)
                    .arg(&params)
                    .arg(&mut s.hidden);
                // SAFETY: weights hold n_expert matrices of gate_up_matrix_bytes; slot_of
                // maps ids < n_expert to slots < n_expert; tile y reads tile_pairs[y·M..]
                // and tile_expert[y] for y < n_tiles, within their sizes; pair indices
                // are < n_pairs so hidden (n_pairs × n_ff f32) and the input rows
                // (n_tokens × x_row_bytes) are in bounds.
                unsafe {
                    b.launch(cfg(
                        blocks(self.n_ff, ROWS_PER_BLOCK as usize),
                        tiles_y,
                        32 * ROWS_PER_BLOCK,
                    ))
                }?;
            }
            // 5. Quantize the intermediate rows for down.
            if let Some(q) = &f.quantize_h {
                let n_blocks = (n_pairs * self.n_ff / self.down.act.block_len()) as i32;
                let mut b = stream.launch_builder(q);
                b.arg(&s.hidden).arg(&mut s.hq).arg(&n_blocks);
                // SAFETY: hidden holds n_pairs rows of n_ff f32, hq n_pairs rows of
                // h_row_bytes: n_blocks blocks are in bounds of both.
                unsafe { b.launch(cfg(blocks(n_blocks as usize, 128), 1, 128)) }?;
            }
            // 6. down.
            {
                let hq = if f.quantize_h.is_some() {
                    &s.hq
                } else {
                    &s.hidden
                };
                let (tp, te) = if decode {
                    (&s.identity, &s.ids)
                } else {
                    (&s.tile_pairs, &s.tile_expert)
                };
                let mut b = stream.launch_builder(&f.down[m]);
                b.arg(&self.down_w)
                    .arg(hq)
                    .arg(tp)
                    .arg(te)
                    .arg(&self.slot_of)
                    .arg(&params)
                    .arg(&mut s.y);
                // SAFETY: as for gate/up, with down_matrix_bytes per expert, the
                // quantized intermediate rows (n_pairs × h_row_bytes) and y
                // (n_pairs × n_embd f32).
                unsafe {
                    b.launch(cfg(
                        blocks(self.n_embd, ROWS_PER_BLOCK as usize),
                        tiles_y,
                        32 * ROWS_PER_BLOCK,
                    ))
                }?;
            }
            // 7. Weighted combine in ascending expert id.
            {
                let mut b = stream.launch_builder(&f.combine);
                b.arg(&s.y)
                    .arg(&s.ids)
                    .arg(&s.weights)
                    .arg(&self.slot_of)
                    .arg(&n_tokens_i)
                    .arg(&n_embd)
                    .arg(&k_i)
                    .arg(&mut s.out);
                // SAFETY: y n_pairs × n_embd, ids and weights n_pairs, out n_tokens ×
                // n_embd; ids are -1 or < n_expert (slot_of's length).
                unsafe { b.launch(cfg(blocks(self.n_embd, 256), tokens_y, 256)) }?;
            }
            let _ = n_ff;
            Ok(())
        })
    }
}

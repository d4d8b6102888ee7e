//! Shared by the `moe_*` tests: random weights of every type the kernels support, a small
//! MoE model held in owned buffers (quantized bytes and their f32 dequantization), and the
//! error bound of the quantized layer against the f32 reference.
#![allow(dead_code)]

use moe_core::TensorType;
use moe_core::moe::capacity::CapacityPolicy;
use moe_core::moe::{Activation, ExpertStack, Ffn, MoeLayer, SharedExpert};
use moe_core::quant::{dequantize_row, float::f32_to_f16, quantize_row};
use moe_core::reference::moe as reference;
use moe_core::router::{Choice, Selection};
use moe_core::tensor::TensorView;

/// Every weight type with a dot product.
pub const WEIGHT_TYPES: [TensorType; 15] = {
    use TensorType::*;
    [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS,
    ]
};

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Offsets of the f16 super-block scales of the formats without a quantizer, and the scale
/// that keeps their weights below about 1.
fn scale_fields(ty: TensorType) -> (&'static [usize], f32) {
    use TensorType::*;
    match ty {
        IQ4_NL | IQ4_XS => (&[0], 4e-3),
        Q2_K => (&[80, 82], 1e-2),
        Q3_K => (&[108], 4e-3),
        Q4_K | Q5_K => (&[0, 2], 4e-4),
        Q6_K => (&[208], 1e-4),
        _ => (&[], 0.0),
    }
}

/// Bytes of `rows` random rows of `cols` elements of type `ty`.
pub fn random_weights(rng: &mut Rng, ty: TensorType, rows: usize, cols: usize) -> Vec<u8> {
    let n_blocks = rows * cols / ty.block_len();
    if ty.can_quantize() {
        let src: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(-0.5, 0.5)).collect();
        let mut out = vec![0u8; n_blocks * ty.block_bytes()];
        quantize_row(ty, &src, &mut out).unwrap();
        return out;
    }
    let (fields, scale) = scale_fields(ty);
    assert!(!fields.is_empty(), "no generator for {ty}");
    let mut out: Vec<u8> = (0..n_blocks * ty.block_bytes())
        .map(|_| rng.next_u64() as u8)
        .collect();
    for block in out.chunks_exact_mut(ty.block_bytes()) {
        for &at in fields {
            let d = f32_to_f16(rng.uniform(0.2, 1.0) * scale).to_le_bytes();
            block[at..at + 2].copy_from_slice(&d);
        }
    }
    out
}

/// The f32 values of bytes of type `ty`.
pub fn dequantize(ty: TensorType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n];
    dequantize_row(ty, bytes, &mut out).unwrap();
    out
}

/// One FFN's (or expert stack's) matrices: quantized bytes plus f32 copies.
#[derive(Clone, Debug)]
pub struct Matrices {
    pub gate: Option<(TensorType, Vec<u8>, Vec<f32>)>,
    pub up: (TensorType, Vec<u8>, Vec<f32>),
    pub down: (TensorType, Vec<u8>, Vec<f32>),
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_expert: usize,
    pub activation: Activation,
}

impl Matrices {
    /// Random matrices of types `(gate, up, down)` (no gate: the two-matrix form) and
    /// sizes `[n_embd, n_ff, n_expert]`.
    pub fn random(
        rng: &mut Rng,
        (gate_ty, up_ty, down_ty): (Option<TensorType>, TensorType, TensorType),
        [n_embd, n_ff, n_expert]: [usize; 3],
        activation: Activation,
    ) -> Self {
        let mut make = |ty: TensorType, rows: usize, cols: usize| {
            let bytes = random_weights(rng, ty, rows * n_expert, cols);
            let f = dequantize(ty, &bytes, rows * n_expert * cols);
            (ty, bytes, f)
        };
        let gate = gate_ty.map(|g| make(g, n_ff, n_embd));
        let up = make(up_ty, n_ff, n_embd);
        let down = make(down_ty, n_embd, n_ff);
        Matrices {
            gate,
            up,
            down,
            n_embd,
            n_ff,
            n_expert,
            activation,
        }
    }

    pub fn stack(&self) -> ExpertStack<'_> {
        let (d, f, e) = (self.n_embd as u64, self.n_ff as u64, self.n_expert as u64);
        fn view<'m>(m: &'m (TensorType, Vec<u8>, Vec<f32>), dims: &[u64]) -> TensorView<'m> {
            TensorView::new(m.0, dims, &m.1).unwrap()
        }
        ExpertStack::new(
            self.gate.as_ref().map(|g| view(g, &[d, f, e])),
            view(&self.up, &[d, f, e]),
            view(&self.down, &[f, d, e]),
            self.activation,
        )
        .unwrap()
    }

    /// As a single FFN (`n_expert` must be 1).
    pub fn ffn(&self) -> Ffn<'_> {
        self.stack().expert(0).unwrap()
    }

    pub fn reference_experts(&self) -> reference::Experts<'_> {
        reference::Experts {
            gate: self.gate.as_ref().map(|g| g.2.as_slice()),
            up: &self.up.2,
            down: &self.down.2,
            n_embd: self.n_embd,
            n_ff: self.n_ff,
            n_expert: self.n_expert,
            activation: self.activation,
        }
    }

    pub fn reference_ffn(&self) -> reference::Ffn<'_> {
        self.reference_experts().expert(0).unwrap()
    }
}

/// How the shared expert is wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedKind {
    None,
    AlwaysOn,
    Gated,
}

/// A whole random MoE model.
#[derive(Clone, Debug)]
pub struct Model {
    pub experts: Matrices,
    pub shared: Option<Matrices>,
    pub shared_kind: SharedKind,
    /// Gate vector (F32 bytes and values).
    pub shared_gate: (Vec<u8>, Vec<f32>),
    pub k: usize,
    pub capacity: CapacityPolicy,
}

impl Model {
    pub fn layer(&self) -> MoeLayer<'_> {
        let layer = MoeLayer::new(self.experts.stack(), self.k)
            .unwrap()
            .with_capacity(self.capacity);
        let shared = match (&self.shared, self.shared_kind) {
            (Some(m), SharedKind::AlwaysOn) => SharedExpert::AlwaysOn(m.ffn()),
            (Some(m), SharedKind::Gated) => {
                let gate = TensorView::new(
                    TensorType::F32,
                    &[self.experts.n_embd as u64],
                    &self.shared_gate.0,
                )
                .unwrap();
                SharedExpert::gated(m.ffn(), gate).unwrap()
            }
            _ => SharedExpert::None,
        };
        layer.with_shared(shared).unwrap()
    }

    pub fn reference(&self) -> reference::Layer<'_> {
        let shared = match (&self.shared, self.shared_kind) {
            (Some(m), SharedKind::AlwaysOn) => reference::Shared::AlwaysOn(m.reference_ffn()),
            (Some(m), SharedKind::Gated) => reference::Shared::Gated {
                ffn: m.reference_ffn(),
                gate: &self.shared_gate.1,
            },
            _ => reference::Shared::None,
        };
        reference::Layer {
            experts: self.experts.reference_experts(),
            shared,
            capacity: self.capacity,
            k: self.k,
        }
    }

    /// The layer's output on `selections`.
    pub fn forward(&self, hidden: &[f32], selections: &[Selection]) -> Vec<f32> {
        let layer = self.layer();
        let mut out = vec![f32::NAN; hidden.len()];
        let mut ws = vec![0u8; layer.workspace_bytes(selections.len())];
        layer
            .forward_selected(hidden, selections, &mut out, &mut ws)
            .unwrap();
        out
    }

    /// The reference output on `selections`.
    pub fn reference_forward(&self, hidden: &[f32], selections: &[Selection]) -> Vec<f32> {
        let r = self.reference();
        let mut out = vec![f32::NAN; hidden.len()];
        let mut scratch = vec![0.0; r.scratch_len()];
        r.forward(hidden, selections, &mut out, &mut scratch)
            .unwrap();
        out
    }

    /// Per output element, a bound on |quantized layer − reference| (see [`ffn_bound`]).
    pub fn bound(&self, hidden: &[f32], selections: &[Selection]) -> Vec<f32> {
        let d = self.experts.n_embd;
        let r = self.reference();
        let mut bound = vec![0.0f32; hidden.len()];
        for (t, sel) in selections.iter().enumerate() {
            let x = &hidden[t * d..(t + 1) * d];
            let b = &mut bound[t * d..(t + 1) * d];
            for (j, c) in sel.iter().enumerate() {
                let kept = reference::kept(
                    selections,
                    t,
                    j,
                    self.k,
                    self.experts.n_expert,
                    &self.capacity,
                )
                .unwrap();
                if !kept {
                    continue;
                }
                let ffn = r.experts.expert(c.expert as usize).unwrap();
                let (_, err) = ffn_bound(&self.experts, &ffn, x);
                for (b, e) in b.iter_mut().zip(err) {
                    *b += c.weight.abs() * e;
                }
            }
            if let Some(m) = &self.shared {
                let ffn = m.reference_ffn();
                let (y, err) = ffn_bound(m, &ffn, x);
                let g = match self.shared_kind {
                    SharedKind::None => continue,
                    SharedKind::AlwaysOn => (1.0, 0.0),
                    SharedKind::Gated => {
                        // The gate is F32: its dot sees f32 activations, only rounding.
                        let s: f32 = self.shared_gate.1.iter().zip(x).map(|(w, x)| w * x).sum();
                        let mag: f32 = self
                            .shared_gate
                            .1
                            .iter()
                            .zip(x)
                            .map(|(w, x)| (w * x).abs())
                            .sum();
                        (sigmoid(s), 0.25 * 1e-5 * mag)
                    }
                };
                for ((b, e), y) in b.iter_mut().zip(err).zip(y) {
                    *b += g.0 * e + g.1 * (y.abs() + e);
                }
            }
        }
        bound
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// The activation row the kernels see for weights of type `ty`: `x` quantized to the
/// activation format and back (f32 weights see `x` itself).
fn as_kernel_sees(ty: TensorType, x: &[f32]) -> Vec<f32> {
    let act = ty.activation_type().unwrap();
    if act == TensorType::F32 {
        return x.to_vec();
    }
    let mut bytes = vec![0u8; x.len() / act.block_len() * act.block_bytes()];
    quantize_row(act, x, &mut bytes).unwrap();
    dequantize(act, &bytes, x.len())
}

/// Relative f32 rounding allowance of one dot product (sums of a few hundred terms in a
/// different order and grouping than the reference).
const ROUNDING: f32 = 2e-5;

/// Reference output `y` of one FFN on `x`, and per element a bound on how far the
/// quantized FFN can be from it. The weights are the same on both sides (the reference
/// uses their dequantization), so the error comes from the activations: the input row
/// is quantized to the weight type's activation format, the intermediate row to the down
/// type's, plus f32 rounding. Propagated with magnitudes:
///
/// - `|Δ(w·x)| ≤ Σ|w_i|·|x_i − x̂_i| + ROUNDING·Σ|w_i x_i|` for gate and up rows;
/// - `|Δh| ≤ L·Δg·(|u| + Δu) + |act(g)|·Δu` (L = 1.13 bounds |act'| for SiLU and GELU);
/// - the intermediate quantization adds at most one step of its block, `max|h|/127`
///   (grown by 10 % for the f16 scale), unless `down` is a float type;
/// - `|Δy_j| ≤ Σ_r |down_jr|·δh_r + ROUNDING·Σ_r |down_jr h_r|`.
pub fn ffn_bound(m: &Matrices, ffn: &reference::Ffn, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (d, f) = (ffn.n_embd, ffn.n_ff);
    const L: f32 = 1.13;
    let dot_bound = |ty: TensorType, w: &[f32]| {
        let xq = as_kernel_sees(ty, x);
        let mut exact = 0.0f32;
        let mut err = 0.0f32;
        let mut mag = 0.0f32;
        for ((w, x), xq) in w.iter().zip(x).zip(&xq) {
            exact += w * x;
            err += w.abs() * (x - xq).abs();
            mag += (w * x).abs();
        }
        (exact, err + ROUNDING * mag)
    };
    let mut h = vec![0.0f32; f];
    let mut dh = vec![0.0f32; f];
    for r in 0..f {
        let (u, du) = dot_bound(m.up.0, &ffn.up[r * d..(r + 1) * d]);
        match (ffn.gate, &m.gate) {
            (Some(gate), Some(g_m)) => {
                let (g, dg) = dot_bound(g_m.0, &gate[r * d..(r + 1) * d]);
                let a = ffn.activation.apply(g);
                h[r] = a * u;
                dh[r] = L * dg * (u.abs() + du) + a.abs() * du + ROUNDING * h[r].abs();
            }
            _ => {
                h[r] = ffn.activation.apply(u);
                dh[r] = L * du + ROUNDING * h[r].abs();
            }
        }
    }
    let down_act = m.down.0.activation_type().unwrap();
    if down_act != TensorType::F32 {
        let block = down_act.block_len();
        for b in 0..f / block {
            let range = b * block..(b + 1) * block;
            let amax = range
                .clone()
                .map(|r| h[r].abs() + dh[r])
                .fold(0.0f32, f32::max);
            for r in range {
                dh[r] += 1.1 * amax / 127.0;
            }
        }
    }
    let mut y = vec![0.0f32; d];
    let mut dy = vec![0.0f32; d];
    for j in 0..d {
        let row = &ffn.down[j * f..(j + 1) * f];
        let (mut s, mut e, mut mag) = (0.0f32, 0.0f32, 0.0f32);
        for r in 0..f {
            s += row[r] * h[r];
            e += row[r].abs() * dh[r];
            mag += (row[r] * h[r]).abs();
        }
        y[j] = s;
        dy[j] = e + ROUNDING * mag;
    }
    (y, dy)
}

/// `n` random rows of `d` values in `[-1, 1)`.
pub fn random_hidden(rng: &mut Rng, n: usize, d: usize) -> Vec<f32> {
    (0..n * d).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

/// A selection of `k` distinct experts among `n_expert` with weights in `[0.05, 1)`.
pub fn random_selection(rng: &mut Rng, n_expert: usize, k: usize) -> Selection {
    let mut sel = Selection::new();
    while sel.len() < k {
        let e = rng.below(n_expert) as u32;
        if sel.iter().all(|c| c.expert != e) {
            sel.push(Choice {
                expert: e,
                weight: rng.uniform(0.05, 1.0),
            })
            .unwrap();
        }
    }
    sel
}

/// Largest |a − b| / bound over the elements (≤ 1 means within the bound).
pub fn worst_ratio(actual: &[f32], expected: &[f32], bound: &[f32]) -> f32 {
    actual
        .iter()
        .zip(expected)
        .zip(bound)
        .map(|((a, e), b)| (a - e).abs() / b.max(f32::MIN_POSITIVE))
        .fold(0.0, f32::max)
}

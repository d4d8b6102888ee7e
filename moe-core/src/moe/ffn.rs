//! Expert feed-forward networks: the gated form `down(act(gate·x) ⊙ up·x)` (SwiGLU in
//! Mixtral, Qwen, DeepSeek, OLMoE; GEGLU) and the two-matrix form `down(act(up·x))`
//! (Switch/T5 `DenseActDense`, llama.cpp without a gate tensor).
//!
//! An FFN runs on a tile of tokens at once: every weight row is loaded once and dotted
//! with each token's activation row before the next row, so a batch streams the expert's
//! bytes once. Inputs arrive already quantized to the weight type's activation format
//! (`ActivationRows`); the intermediate row is quantized once before `down`.

use crate::quant::{TensorType, quantize_row};
use crate::tensor::TensorView;
use crate::workspace::Words;
use crate::{Error, Result};

/// A dot product of a weight row with an activation row, both as raw bytes (the weight's
/// type, then its [`activation_type`](TensorType::activation_type)).
///
/// This is where the kernel table plugs in: today every layer calls
/// [`kernels::scalar::dot`](crate::kernels::scalar::dot); once `Kernels` exists the
/// pointer is taken from the table chosen at start-up.
pub type DotKernel = fn(TensorType, &[u8], &[u8]) -> Result<f32>;

/// The element-wise nonlinearity of an FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `z · sigmoid(z)` (SwiGLU's gate).
    Silu,
    /// GELU, tanh approximation (ggml's `gelu`, HF `gelu_new` / `gelu_pytorch_tanh`).
    Gelu,
    /// GELU, exact: `z/2 · (1 + erf(z/√2))` (HF `gelu`).
    GeluErf,
    /// `max(z, 0)` (T5/Switch `DenseReluDense`).
    Relu,
}

impl Activation {
    /// The activation of `z`.
    #[inline]
    pub fn apply(self, z: f32) -> f32 {
        match self {
            Activation::Silu => silu(z),
            Activation::Gelu => gelu(z),
            Activation::GeluErf => gelu_erf(z),
            Activation::Relu => relu(z),
        }
    }

    /// [`apply`](Self::apply) as a function, picked once when an FFN or expert stack is
    /// built, so the forward pass calls it without matching and a program links only
    /// the activations it builds layers with (firmware loading a GGUF model gets SiLU
    /// alone: neither `erff` nor `tanhf`).
    #[inline(always)]
    pub(crate) fn function(self) -> fn(f32) -> f32 {
        match self {
            Activation::Silu => silu,
            Activation::Gelu => gelu,
            Activation::GeluErf => gelu_erf,
            Activation::Relu => relu,
        }
    }
}

fn silu(z: f32) -> f32 {
    z * sigmoid(z)
}

fn gelu(z: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * z * (1.0 + libm::tanhf(SQRT_2_OVER_PI * (z + 0.044_715 * z * z * z)))
}

fn gelu_erf(z: f32) -> f32 {
    0.5 * z * (1.0 + libm::erff(z * core::f32::consts::FRAC_1_SQRT_2))
}

fn relu(z: f32) -> f32 {
    z.max(0.0)
}

/// The logistic function, in the form that neither overflows nor cancels.
#[inline]
pub fn sigmoid(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + libm::expf(-z))
    } else {
        let e = libm::expf(z);
        e / (1.0 + e)
    }
}

/// How an FFN combines its matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnKind {
    /// `down(act(gate·x) ⊙ (up·x))`: three matrices.
    Gated(Activation),
    /// `down(act(up·x))`: two matrices.
    Plain(Activation),
}

/// The matrices of one FFN: `gate` and `up` are `[n_embd, n_ff]` (n_ff rows of n_embd),
/// `down` is `[n_ff, n_embd]`, in GGUF dimension order.
#[derive(Clone, Copy, Debug)]
pub struct Ffn<'a> {
    gate: Option<TensorView<'a>>,
    up: TensorView<'a>,
    down: TensorView<'a>,
    activation: Activation,
    /// `activation` as a function ([`Activation::function`]).
    act: fn(f32) -> f32,
}

impl<'a> Ffn<'a> {
    /// An FFN from 2-D views, checking shapes and that every type has a dot product.
    /// `gate: None` is the two-matrix form.
    pub fn new(
        gate: Option<TensorView<'a>>,
        up: TensorView<'a>,
        down: TensorView<'a>,
        activation: Activation,
    ) -> Result<Self> {
        Self::with_function(gate, up, down, activation, activation.function())
    }

    /// [`new`](Self::new) with the activation's function already picked (an expert
    /// stack picks it once for all its experts).
    pub(crate) fn with_function(
        gate: Option<TensorView<'a>>,
        up: TensorView<'a>,
        down: TensorView<'a>,
        activation: Activation,
        act: fn(f32) -> f32,
    ) -> Result<Self> {
        let (n_embd, n_ff) = (up.ne(0), up.ne(1));
        check_matrix(&up, "ffn_up", n_embd, n_ff)?;
        if let Some(gate) = &gate {
            check_matrix(gate, "ffn_gate", n_embd, n_ff)?;
        }
        check_matrix(&down, "ffn_down", n_ff, n_embd)?;
        Ok(Ffn {
            gate,
            up,
            down,
            activation,
            act,
        })
    }

    /// The form of this FFN.
    pub fn kind(&self) -> FfnKind {
        match self.gate {
            Some(_) => FfnKind::Gated(self.activation),
            None => FfnKind::Plain(self.activation),
        }
    }

    /// Model width (the input and output length).
    pub fn n_embd(&self) -> usize {
        self.up.ne(0) as usize
    }

    /// Hidden width.
    pub fn n_ff(&self) -> usize {
        self.up.ne(1) as usize
    }

    /// The gate matrix, if gated.
    pub fn gate(&self) -> Option<&TensorView<'a>> {
        self.gate.as_ref()
    }

    /// The up matrix.
    pub fn up(&self) -> &TensorView<'a> {
        &self.up
    }

    /// The down matrix.
    pub fn down(&self) -> &TensorView<'a> {
        &self.down
    }

    /// The activation types the input row must be quantized to.
    pub(crate) fn input_types(&self) -> impl Iterator<Item = TensorType> + '_ {
        self.gate
            .iter()
            .chain(core::iter::once(&self.up))
            .filter_map(|v| v.ty().activation_type())
    }

    /// Bytes of one intermediate row quantized for `down`.
    pub(crate) fn hidden_row_bytes(&self) -> usize {
        act_row_bytes(self.down_act(), self.n_ff())
    }

    fn down_act(&self) -> TensorType {
        // Checked in `new`.
        self.down.ty().activation_type().unwrap_or(TensorType::F32)
    }
}

/// A matrix view must be 2-D `[cols, rows]` with a dot product for its type. Views with
/// more dimensions are accepted when the extra ones are 1.
fn check_matrix(view: &TensorView<'_>, role: &str, cols: u64, rows: u64) -> Result<()> {
    if view.ty().activation_type().is_none() {
        return Err(Error::UnsupportedType { ty: view.ty() });
    }
    for (dim, expected) in [(0, cols), (1, rows), (2, 1), (3, 1)] {
        if view.ne(dim) != expected {
            return Err(Error::BadTensorShape {
                tensor: crate::error::name_of(role),
                dim: dim as u8,
                expected,
                actual: view.ne(dim),
            });
        }
    }
    if cols == 0 || rows == 0 {
        return Err(Error::InvalidMoeConfig {
            reason: "an FFN matrix has an empty dimension",
        });
    }
    Ok(())
}

/// Bytes of `n` elements of an activation type (`n` a whole number of blocks).
pub(crate) fn act_row_bytes(ty: TensorType, n: usize) -> usize {
    n / ty.block_len() * ty.block_bytes()
}

/// The activation formats, in a fixed order.
pub(crate) const ACT_TYPES: [TensorType; 4] = [
    TensorType::F32,
    TensorType::Q8_0,
    TensorType::Q8_1,
    TensorType::Q8_K,
];

/// Index of an activation type in [`ACT_TYPES`].
pub(crate) fn act_index(ty: TensorType) -> Option<usize> {
    ACT_TYPES.iter().position(|&t| t == ty)
}

/// The batch's input rows, each quantized once to every activation format some weight of
/// the layer needs.
pub(crate) struct ActivationRows<'w> {
    rows: [&'w [u8]; 4],
    row_bytes: [usize; 4],
}

impl<'w> ActivationRows<'w> {
    /// Quantizes the `n_tokens` rows of `hidden` (`n_embd` each) into `regions[i]` for every
    /// needed format `i`.
    pub(crate) fn quantize(
        hidden: &[f32],
        n_embd: usize,
        needed: [bool; 4],
        regions: [&'w mut [u8]; 4],
    ) -> Result<Self> {
        let mut rows: [&'w [u8]; 4] = [&[]; 4];
        let mut row_bytes = [0usize; 4];
        for (i, region) in regions.into_iter().enumerate() {
            if !needed[i] {
                continue;
            }
            let ty = ACT_TYPES[i];
            let rb = act_row_bytes(ty, n_embd);
            for (src, dst) in hidden.chunks_exact(n_embd).zip(region.chunks_exact_mut(rb)) {
                quantize_row(ty, src, dst)?;
            }
            rows[i] = region;
            row_bytes[i] = rb;
        }
        Ok(ActivationRows { rows, row_bytes })
    }

    /// Token `t`'s row in format `ty` (empty if that format was not prepared).
    #[inline]
    pub(crate) fn row(&self, ty: TensorType, t: usize) -> &'w [u8] {
        let Some(i) = act_index(ty) else { return &[] };
        let rb = self.row_bytes[i];
        self.rows[i].get(t * rb..(t + 1) * rb).unwrap_or(&[])
    }
}

/// Scratch for one tile of tokens: which tokens, their weights, the f32 intermediate
/// rows and their quantized copies.
pub(crate) struct TileScratch<'w> {
    /// `[tile]` token indices.
    pub tokens: Words<'w>,
    /// `[tile]` combine weights.
    pub weights: Words<'w>,
    /// `[tile × max n_ff]` words.
    pub hidden: Words<'w>,
    /// `[tile × max hidden_row_bytes]` bytes.
    pub quantized: &'w mut [u8],
}

impl Ffn<'_> {
    /// Adds `weights[i] · FFN(x[tokens[i]])` to `out[tokens[i]]` for the first `m` entries
    /// of the tile (`m ≤` the tile's size).
    pub(crate) fn run_tile(
        &self,
        dot: DotKernel,
        acts: &ActivationRows<'_>,
        m: usize,
        scratch: &mut TileScratch<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let (n_embd, n_ff) = (self.n_embd(), self.n_ff());
        if m > scratch.tokens.len() {
            return Err(Error::InvalidMoeConfig {
                reason: "tile larger than its scratch",
            });
        }
        let tokens = &scratch.tokens;
        let entry = |i: usize| (tokens.u32(i) as usize, scratch.weights.f32(i));
        let hidden = &mut scratch.hidden;

        // gate/up: each row once, dotted with every token of the tile.
        let up_act = self.up.ty().activation_type().unwrap_or(TensorType::F32);
        let up_rows = self.up.data().chunks_exact(self.up.row_bytes());
        match &self.gate {
            Some(gate) => {
                let gate_act = gate.ty().activation_type().unwrap_or(TensorType::F32);
                let gate_rows = gate.data().chunks_exact(gate.row_bytes());
                for (r, (g_row, u_row)) in gate_rows.zip(up_rows).enumerate() {
                    for i in 0..m {
                        let t = entry(i).0;
                        let g = dot(gate.ty(), g_row, acts.row(gate_act, t))?;
                        let u = dot(self.up.ty(), u_row, acts.row(up_act, t))?;
                        hidden.set_f32(i * n_ff + r, (self.act)(g) * u);
                    }
                }
            }
            None => {
                for (r, u_row) in up_rows.enumerate() {
                    for i in 0..m {
                        let u = dot(self.up.ty(), u_row, acts.row(up_act, entry(i).0))?;
                        hidden.set_f32(i * n_ff + r, (self.act)(u));
                    }
                }
            }
        }

        // Quantize each intermediate row once, block by block through the stack.
        let down_act = self.down_act();
        let block = down_act.block_len();
        let block_bytes = down_act.block_bytes();
        let hrb = self.hidden_row_bytes();
        let mut buf = [0.0f32; 256];
        let buf = buf
            .get_mut(..block)
            .ok_or(Error::UnsupportedType { ty: down_act })?;
        for (i, dst) in scratch.quantized.chunks_exact_mut(hrb).take(m).enumerate() {
            for (b, dst) in dst.chunks_exact_mut(block_bytes).enumerate() {
                hidden.read_f32s(i * n_ff + b * block, buf);
                quantize_row(down_act, buf, dst)?;
            }
        }

        // down: each row once, dotted with every token's intermediate row.
        let down_rows = self.down.data().chunks_exact(self.down.row_bytes());
        for (j, d_row) in down_rows.enumerate() {
            for (i, h) in scratch.quantized.chunks_exact(hrb).take(m).enumerate() {
                let (t, w) = entry(i);
                let y = dot(self.down.ty(), d_row, h)?;
                if let Some(o) = out.get_mut(t * n_embd + j) {
                    *o += w * y;
                }
            }
        }
        Ok(())
    }
}

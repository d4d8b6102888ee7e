//! Expert feed-forward networks: the gated form `down(act(gate·x) ⊙ up·x)` (SwiGLU in
//! Mixtral, Qwen, DeepSeek, OLMoE; GEGLU) and the two-matrix form `down(act(up·x))`
//! (Switch/T5 `DenseActDense`, llama.cpp without a gate tensor).
//!
//! An FFN runs on a tile of tokens at once: every weight row is loaded once and dotted
//! with each token's activation row before the next row, so a batch streams the expert's
//! bytes once. Inputs arrive already quantized to the weight type's activation format
//! (`ActivationRows`); the intermediate row is quantized once before `down`.

use crate::kernels::Kernels;
use crate::parallel::Parallel;
use crate::quant::{TensorType, quantize_row};
use crate::tensor::TensorView;
use crate::workspace::Words;
use crate::{Error, Result};

pub use crate::kernels::DotKernel;
/// The logistic function; the definition lives with the kernels' f32 helpers, whose
/// element functions are also these activations.
pub use crate::kernels::vector::sigmoid;
use crate::kernels::vector::{gelu_erf_of as gelu_erf, gelu_of as gelu, silu_of as silu};

/// Weight rows per batch-kernel call: the chunk stays in L2 while the tile's tokens pass,
/// and is long enough for the kernel to prefetch ahead within it.
const CHUNK_ROWS: usize = 64;

/// Tokens per batch-kernel call (the kernel outputs of one call live on the stack:
/// `CHUNK_ROWS × CHUNK_TOKENS` floats per matrix). The kernels unpack a weight block once
/// per call, so more tokens per call unpack less; 16 on 64-bit targets, 8 (4 KiB of
/// stack for two matrices) on microcontrollers.
const CHUNK_TOKENS: usize = if cfg!(target_pointer_width = "64") {
    16
} else {
    8
};

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

fn relu(z: f32) -> f32 {
    z.max(0.0)
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
    #[inline(never)] // Called per token of every tile; one copy keeps firmware small.
    pub(crate) fn row(&self, ty: TensorType, t: usize) -> &'w [u8] {
        let Some(i) = act_index(ty) else { return &[] };
        let rb = self.row_bytes[i];
        self.rows[i].get(t * rb..(t + 1) * rb).unwrap_or(&[])
    }
}

/// Scratch for one tile of tokens: which tokens, their weights, the f32 intermediate
/// rows and their quantized copies, and the `down` outputs before they are added in.
pub(crate) struct TileScratch<'w> {
    /// `[tile]` token indices.
    pub tokens: Words<'w>,
    /// `[tile]` combine weights.
    pub weights: Words<'w>,
    /// `[max n_ff × tile]` words, feature-major (hidden unit `r` of tile entry `i` at
    /// `r · m + i`), so a range of hidden units is one contiguous piece for a thread.
    pub hidden: Words<'w>,
    /// `[tile × max hidden_row_bytes]` bytes.
    pub quantized: &'w mut [u8],
    /// `[n_embd × tile]` words, feature-major like `hidden`.
    pub down: Words<'w>,
}

/// The first `len` bytes of a scratch region (sized by the layer's workspace layout, so
/// a shorter one is a sizing bug reported as such).
fn region(bytes: &mut [u8], len: usize) -> Result<&mut [u8]> {
    let actual = bytes.len();
    bytes.get_mut(..len).ok_or(Error::WorkspaceTooSmall {
        needed: len,
        actual,
    })
}

impl Ffn<'_> {
    /// Adds `weights[i] · FFN(x[tokens[i]])` to `out[tokens[i]]` for the first `m` entries
    /// of the tile (`m ≤` the tile's size).
    ///
    /// Both matrix phases (gate/up into `hidden`, then `down`) split their output rows
    /// across `parallel`; within a piece, [`CHUNK_ROWS`] rows at a time meet every token
    /// of the tile (in groups of [`CHUNK_TOKENS`], through the batch kernel) before the
    /// next rows are read, so the tile streams the expert's bytes once. The `down` outputs
    /// are added into `out` afterwards on the calling thread, in a fixed order.
    pub(crate) fn run_tile(
        &self,
        kernels: &Kernels,
        parallel: &dyn Parallel,
        acts: &ActivationRows<'_>,
        m: usize,
        scratch: &mut TileScratch<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let (n_embd, n_ff) = (self.n_embd(), self.n_ff());
        if m == 0 {
            return Ok(());
        }
        if m > scratch.tokens.len() {
            return Err(Error::InvalidMoeConfig {
                reason: "tile larger than its scratch",
            });
        }
        let tokens = &scratch.tokens;
        let token = |i: usize| tokens.u32(i) as usize;
        let row_words = m * 4;

        // gate/up: hidden[r · m + i] = act(gate_r · x_i) · (up_r · x_i).
        let up_act = self.up.ty().activation_type().unwrap_or(TensorType::F32);
        let gate = self.gate.as_ref().map(|g| {
            let act = g.ty().activation_type().unwrap_or(TensorType::F32);
            (g, act)
        });
        let hidden = region(scratch.hidden.bytes_mut(), n_ff * row_words)?;
        parallel.for_each_rows(hidden, row_words, CHUNK_ROWS, &|first, piece| {
            let mut piece = Words::new(piece);
            let n_rows = piece.len() / m;
            let mut gate_out = [0.0f32; CHUNK_ROWS * CHUNK_TOKENS];
            let mut up_out = [0.0f32; CHUNK_ROWS * CHUNK_TOKENS];
            for r0 in (0..n_rows).step_by(CHUNK_ROWS) {
                let rows = (n_rows - r0).min(CHUNK_ROWS);
                for i0 in (0..m).step_by(CHUNK_TOKENS) {
                    let n = (m - i0).min(CHUNK_TOKENS);
                    let x = |act| -> [&[u8]; CHUNK_TOKENS] {
                        core::array::from_fn(|j| {
                            if j < n {
                                acts.row(act, token(i0 + j))
                            } else {
                                &[]
                            }
                        })
                    };
                    let up_out = &mut up_out[..rows * n];
                    let up_rows = self.up.rows(first + r0, rows);
                    let up_x = x(up_act);
                    kernels.matmul(self.up.ty(), up_rows, &up_x[..n], up_out)?;
                    // Kernel outputs are token-major: entry `j` is token `j / rows`, row `j % rows`.
                    let at = |j: usize| (r0 + j % rows) * m + i0 + j / rows;
                    match gate {
                        Some((gate, gate_act)) => {
                            let gate_out = &mut gate_out[..rows * n];
                            let gate_rows = gate.rows(first + r0, rows);
                            // One set of rows when both matrices read the same activation format.
                            let gate_x = if gate_act == up_act {
                                up_x
                            } else {
                                x(gate_act)
                            };
                            kernels.matmul(gate.ty(), gate_rows, &gate_x[..n], gate_out)?;
                            for (j, (g, u)) in gate_out.iter().zip(up_out.iter()).enumerate() {
                                piece.set_f32(at(j), (self.act)(*g) * u);
                            }
                        }
                        None => {
                            for (j, u) in up_out.iter().enumerate() {
                                piece.set_f32(at(j), (self.act)(*u));
                            }
                        }
                    }
                }
            }
            Ok(())
        })?;

        // Quantize each entry's intermediate row once, block by block through the stack,
        // entries split across threads.
        let hidden = &scratch.hidden;
        let down_act = self.down_act();
        let block = down_act.block_len();
        let block_bytes = down_act.block_bytes();
        let hrb = self.hidden_row_bytes();
        let quantized = region(scratch.quantized, m * hrb)?;
        parallel.for_each_rows(quantized, hrb, 1, &|first, piece| {
            let mut buf = [0.0f32; 256];
            let buf = buf
                .get_mut(..block)
                .ok_or(Error::UnsupportedType { ty: down_act })?;
            for (i, dst) in piece.chunks_exact_mut(hrb).enumerate() {
                for (b, dst) in dst.chunks_exact_mut(block_bytes).enumerate() {
                    for (k, v) in buf.iter_mut().enumerate() {
                        *v = hidden.f32((b * block + k) * m + first + i);
                    }
                    quantize_row(down_act, buf, dst)?;
                }
            }
            Ok(())
        })?;

        // down: down[r · m + i] = down_r · h_i.
        let quantized = &*scratch.quantized;
        let down = region(scratch.down.bytes_mut(), n_embd * row_words)?;
        parallel.for_each_rows(down, row_words, CHUNK_ROWS, &|first, piece| {
            let mut piece = Words::new(piece);
            let n_rows = piece.len() / m;
            let mut down_out = [0.0f32; CHUNK_ROWS * CHUNK_TOKENS];
            for r0 in (0..n_rows).step_by(CHUNK_ROWS) {
                let rows = (n_rows - r0).min(CHUNK_ROWS);
                for i0 in (0..m).step_by(CHUNK_TOKENS) {
                    let n = (m - i0).min(CHUNK_TOKENS);
                    let h: [&[u8]; CHUNK_TOKENS] = core::array::from_fn(|j| {
                        let at = (i0 + j) * hrb;
                        quantized.get(at..at + hrb).filter(|_| j < n).unwrap_or(&[])
                    });
                    let down_out = &mut down_out[..rows * n];
                    let down_rows = self.down.rows(first + r0, rows);
                    kernels.matmul(self.down.ty(), down_rows, &h[..n], down_out)?;
                    for (j, y) in down_out.iter().enumerate() {
                        piece.set_f32((r0 + j % rows) * m + i0 + j / rows, *y);
                    }
                }
            }
            Ok(())
        })?;

        // out[token_i] += weight_i · down_i, row by row on this thread.
        for i in 0..m {
            let (t, w) = (token(i), scratch.weights.f32(i));
            let Some(out) = out.get_mut(t * n_embd..(t + 1) * n_embd) else {
                continue;
            };
            for (r, o) in out.iter_mut().enumerate() {
                *o += w * scratch.down.f32(r * m + i);
            }
        }
        Ok(())
    }
}

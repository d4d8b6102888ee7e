//! Routed experts as GGUF stores them: one 3-D tensor per matrix with the expert as the
//! outermost axis, `ffn_{gate,up}_exps` `[n_embd, n_ff, n_expert]` and `ffn_down_exps`
//! `[n_ff, n_embd, n_expert]`, so expert `e` of each stack is one contiguous byte range
//! and running it never touches the other experts' bytes.
//!
//! Newer files fuse gate and up into `ffn_gate_up_exps` `[n_embd, 2·n_ff, n_expert]`:
//! each expert's first `n_ff` rows are the gate, the next `n_ff` the up projection.

use super::ffn::{Activation, Ffn};
use crate::tensor::TensorView;
use crate::{Error, Result};

/// Where one matrix of every expert lives: inside a stacked tensor, or one tensor per
/// expert (Hugging Face checkpoints).
#[derive(Clone, Copy, Debug)]
enum Part<'a> {
    Stacked {
        view: TensorView<'a>,
        /// Rows of the stack per expert (`n_ff`, `2·n_ff` for the fused tensor, `n_embd`
        /// for down).
        stride: usize,
        /// First row of this matrix inside an expert's rows.
        first: usize,
        /// Rows of this matrix.
        rows: usize,
    },
    /// Expert `e`'s matrix is element `e` (shapes and types checked equal at build).
    Listed(&'a [TensorView<'a>]),
}

impl<'a> Part<'a> {
    fn matrix(&self, e: usize) -> Result<TensorView<'a>> {
        let (view, stride, first, rows) = match *self {
            Part::Stacked {
                view,
                stride,
                first,
                rows,
            } => (view, stride, first, rows),
            Part::Listed(list) => {
                return list.get(e).copied().ok_or(Error::ExpertOutOfRange {
                    expert: e as i64,
                    n_expert: list.len() as u64,
                });
            }
        };
        let rb = view.row_bytes();
        let start = (e * stride + first) * rb;
        let bytes = view
            .data()
            .get(start..start + rows * rb)
            .ok_or(Error::LengthMismatch {
                expected: start + rows * rb,
                actual: view.data().len(),
            })?;
        TensorView::new(view.ty(), &[view.ne(0), rows as u64], bytes)
    }
}

/// The routed experts of one layer.
#[derive(Clone, Copy, Debug)]
pub struct ExpertStack<'a> {
    gate: Option<Part<'a>>,
    up: Part<'a>,
    down: Part<'a>,
    activation: Activation,
    /// `activation` as a function, picked once ([`Activation::function`]).
    act: fn(f32) -> f32,
    n_embd: usize,
    n_ff: usize,
    n_expert: usize,
}

impl<'a> ExpertStack<'a> {
    /// Experts from separate stacks (`gate: None` for the two-matrix FFN), checking that
    /// the shapes agree: `up` (and `gate`) `[n_embd, n_ff, n_expert]`, `down`
    /// `[n_ff, n_embd, n_expert]`.
    pub fn new(
        gate: Option<TensorView<'a>>,
        up: TensorView<'a>,
        down: TensorView<'a>,
        activation: Activation,
    ) -> Result<Self> {
        let (n_embd, n_ff, n_expert) = (up.ne(0), up.ne(1), up.ne(2));
        check_stack(&up, "ffn_up_exps", [n_embd, n_ff, n_expert])?;
        if let Some(gate) = &gate {
            check_stack(gate, "ffn_gate_exps", [n_embd, n_ff, n_expert])?;
        }
        check_stack(&down, "ffn_down_exps", [n_ff, n_embd, n_expert])?;
        let part = |view, first, rows| Part::Stacked {
            view,
            stride: rows,
            first,
            rows,
        };
        Self::build(
            gate.map(|g| part(g, 0, n_ff as usize)),
            part(up, 0, n_ff as usize),
            part(down, 0, n_embd as usize),
            activation,
            [n_embd, n_ff, n_expert],
        )
    }

    /// Experts from a fused `gate_up` stack `[n_embd, 2·n_ff, n_expert]` and `down`.
    pub fn fused(
        gate_up: TensorView<'a>,
        down: TensorView<'a>,
        activation: Activation,
    ) -> Result<Self> {
        let (n_embd, n_ff2, n_expert) = (gate_up.ne(0), gate_up.ne(1), gate_up.ne(2));
        if !n_ff2.is_multiple_of(2) {
            return Err(Error::InvalidMoeConfig {
                reason: "fused gate_up stack has an odd number of rows per expert",
            });
        }
        let n_ff = n_ff2 / 2;
        check_stack(&gate_up, "ffn_gate_up_exps", [n_embd, n_ff2, n_expert])?;
        check_stack(&down, "ffn_down_exps", [n_ff, n_embd, n_expert])?;
        let dims = [n_embd, n_ff, n_expert];
        let (n_ff, n_embd) = (n_ff as usize, n_embd as usize);
        Self::build(
            Some(Part::Stacked {
                view: gate_up,
                stride: 2 * n_ff,
                first: 0,
                rows: n_ff,
            }),
            Part::Stacked {
                view: gate_up,
                stride: 2 * n_ff,
                first: n_ff,
                rows: n_ff,
            },
            Part::Stacked {
                view: down,
                stride: n_embd,
                first: 0,
                rows: n_embd,
            },
            activation,
            dims,
        )
    }

    /// Experts kept one matrix per expert: `up` (and `gate`) `[n_embd, n_ff]` each,
    /// `down` `[n_ff, n_embd]` each, expert `e` at index `e`; every list as long as `up`,
    /// and every matrix of a list of one type and shape.
    pub fn listed(
        gate: Option<&'a [TensorView<'a>]>,
        up: &'a [TensorView<'a>],
        down: &'a [TensorView<'a>],
        activation: Activation,
    ) -> Result<Self> {
        let first = up.first().ok_or(Error::InvalidMoeConfig {
            reason: "an expert stack without experts",
        })?;
        let (n_embd, n_ff, n_expert) = (first.ne(0), first.ne(1), up.len() as u64);
        check_list(up, "ffn_up_exps", [n_embd, n_ff, n_expert])?;
        if let Some(gate) = gate {
            check_list(gate, "ffn_gate_exps", [n_embd, n_ff, n_expert])?;
        }
        check_list(down, "ffn_down_exps", [n_ff, n_embd, n_expert])?;
        Self::build(
            gate.map(Part::Listed),
            Part::Listed(up),
            Part::Listed(down),
            activation,
            [n_embd, n_ff, n_expert],
        )
    }

    fn build(
        gate: Option<Part<'a>>,
        up: Part<'a>,
        down: Part<'a>,
        activation: Activation,
        [n_embd, n_ff, n_expert]: [u64; 3],
    ) -> Result<Self> {
        let stack = ExpertStack {
            gate,
            up,
            down,
            activation,
            act: activation.function(),
            n_embd: n_embd as usize,
            n_ff: n_ff as usize,
            n_expert: n_expert as usize,
        };
        if stack.n_expert == 0 {
            return Err(Error::InvalidMoeConfig {
                reason: "an expert stack without experts",
            });
        }
        // Validates shapes and types once (every expert has the same ones).
        stack.expert(0)?;
        Ok(stack)
    }

    /// Expert `e` as an [`Ffn`] over its own bytes.
    pub fn expert(&self, e: usize) -> Result<Ffn<'a>> {
        if e >= self.n_expert {
            return Err(Error::ExpertOutOfRange {
                expert: e as i64,
                n_expert: self.n_expert as u64,
            });
        }
        Ffn::with_function(
            self.gate.map(|g| g.matrix(e)).transpose()?,
            self.up.matrix(e)?,
            self.down.matrix(e)?,
            self.activation,
            self.act,
        )
    }

    /// Number of experts.
    pub fn n_expert(&self) -> usize {
        self.n_expert
    }

    /// Model width.
    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    /// Hidden width of one expert.
    pub fn n_ff(&self) -> usize {
        self.n_ff
    }
}

/// A stack must be exactly `[d0, d1, d2]` (a trailing 1 is allowed).
fn check_stack(view: &TensorView<'_>, role: &str, dims: [u64; 3]) -> Result<()> {
    for (dim, expected) in dims.into_iter().chain([1]).enumerate() {
        if view.ne(dim) != expected {
            return Err(Error::BadTensorShape {
                tensor: crate::error::name_of(role),
                dim: dim as u8,
                expected,
                actual: view.ne(dim),
            });
        }
    }
    Ok(())
}

/// Every matrix of a per-expert list must be `[d0, d1]` of the first one's type, and the
/// list `d2` long (reported as dimension 2, as for a stack).
fn check_list(list: &[TensorView<'_>], role: &str, [d0, d1, d2]: [u64; 3]) -> Result<()> {
    if list.len() as u64 != d2 {
        return Err(Error::BadTensorShape {
            tensor: crate::error::name_of(role),
            dim: 2,
            expected: d2,
            actual: list.len() as u64,
        });
    }
    let ty = list.first().map(|v| v.ty());
    for view in list {
        if Some(view.ty()) != ty {
            return Err(Error::UnsupportedType { ty: view.ty() });
        }
        check_stack(view, role, [d0, d1, 1])?;
    }
    Ok(())
}

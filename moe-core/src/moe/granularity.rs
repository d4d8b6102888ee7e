//! Granularity (Krajewski et al. 2024; DeepSeekMoE's fine-grained segmentation): split
//! every expert of width `n_ff` into `G` experts of width `n_ff / G`, so a layer of `E`
//! experts with top-k becomes one of `G·E` experts with top-`G·k` and the same active
//! parameters.
//!
//! The split is exact because an FFN is a sum over its hidden units: for slices
//! `S_0..S_{G-1}` of `0..n_ff`,
//! `down(act(gate·x) ⊙ up·x) = Σ_s down[:, S_s] (act(gate[S_s]·x) ⊙ up[S_s]·x)`.
//!
//! - `gate` and `up` stacks need no change: fine expert `e·G + s` is rows
//!   `s·n_ff/G..(s+1)·n_ff/G` of coarse expert `e`, which is where those rows already lie.
//!   Read the same bytes as `[n_embd, n_ff/G, G·E]`.
//! - `down` is sliced by columns ([`split_down`]) and multiplied by `G`;
//! - router rows are repeated `G` times ([`split_router`]).
//!
//! Why the factor G: with a repeated router row, a softmax router gives each of the G
//! copies `p/G` (and a renormalised router gives `w/G`, sigmoid scores included), so the G
//! slices are selected together, each with weight `w/G`; scaling `down` by G restores
//! `w · Expert(x)`. ([`split_selection`] builds those selections directly.)

use crate::router::{Choice, MAX_K, Selection};
use crate::{Error, Result};

/// Checks that `g` divides `n_ff` and the sizes of a pair of buffers.
fn check(g: usize, n_ff: usize, src: usize, dst: usize, expected_src: usize) -> Result<()> {
    if g == 0 || !n_ff.is_multiple_of(g) {
        return Err(Error::InvalidMoeConfig {
            reason: "granularity must divide the expert width",
        });
    }
    for actual in [src, dst] {
        if actual != expected_src {
            return Err(Error::LengthMismatch {
                expected: expected_src,
                actual,
            });
        }
    }
    Ok(())
}

/// Splits a coarse `down` stack (`n_expert` experts of `n_embd` rows of `n_ff`, GGUF
/// `[n_ff, n_embd, n_expert]`) into `g · n_expert` experts of `n_embd` rows of `n_ff / g`
/// (GGUF `[n_ff/g, n_embd, g·n_expert]`), multiplied by `g`.
pub fn split_down(
    g: usize,
    n_embd: usize,
    n_ff: usize,
    n_expert: usize,
    coarse: &[f32],
    fine: &mut [f32],
) -> Result<()> {
    let total = n_expert
        .checked_mul(n_embd)
        .and_then(|n| n.checked_mul(n_ff))
        .ok_or(Error::InvalidMoeConfig {
            reason: "expert stack too large",
        })?;
    check(g, n_ff, coarse.len(), fine.len(), total)?;
    if total == 0 {
        return Ok(());
    }
    let fine_ff = n_ff / g;
    let scale = g as f32;
    // Fine expert e·g + s, row j, column c = coarse expert e, row j, column s·fine_ff + c.
    for (fe, fine_expert) in fine.chunks_exact_mut(n_embd * fine_ff).enumerate() {
        let (e, s) = (fe / g, fe % g);
        for (j, row) in fine_expert.chunks_exact_mut(fine_ff).enumerate() {
            let start = (e * n_embd + j) * n_ff + s * fine_ff;
            for (dst, src) in row.iter_mut().zip(&coarse[start..start + fine_ff]) {
                *dst = src * scale;
            }
        }
    }
    Ok(())
}

/// Repeats each of the `n_expert` router rows (`n_embd` each, GGUF `[n_embd, n_expert]`)
/// `g` times: fine expert `e·g + s` gets coarse row `e`.
pub fn split_router(
    g: usize,
    n_embd: usize,
    n_expert: usize,
    coarse: &[f32],
    fine: &mut [f32],
) -> Result<()> {
    let expected = n_expert
        .checked_mul(n_embd)
        .ok_or(Error::InvalidMoeConfig {
            reason: "router too large",
        })?;
    let fine_len = expected.checked_mul(g).ok_or(Error::InvalidMoeConfig {
        reason: "router too large",
    })?;
    if g == 0 {
        return Err(Error::InvalidMoeConfig {
            reason: "granularity must be at least 1",
        });
    }
    for (actual, expected) in [(coarse.len(), expected), (fine.len(), fine_len)] {
        if actual != expected {
            return Err(Error::LengthMismatch { expected, actual });
        }
    }
    for (fe, row) in fine.chunks_exact_mut(n_embd.max(1)).enumerate() {
        let e = fe / g;
        row.copy_from_slice(&coarse[e * n_embd..(e + 1) * n_embd]);
    }
    Ok(())
}

/// The fine-grained selection equivalent to a coarse one: each choice `(e, w)` becomes
/// `(e·g + s, w / g)` for `s` in `0..g`, in rank order.
pub fn split_selection(g: usize, coarse: &Selection) -> Result<Selection> {
    let mut fine = Selection::new();
    let too_many = Error::InvalidMoeConfig {
        reason: "k · G exceeds MAX_K",
    };
    if g == 0 || coarse.len().saturating_mul(g) > MAX_K {
        return Err(too_many);
    }
    let g32 = u32::try_from(g).map_err(|_| too_many.clone())?;
    for c in coarse {
        for s in 0..g32 {
            let expert = c
                .expert
                .checked_mul(g32)
                .and_then(|e| e.checked_add(s))
                .ok_or(too_many.clone())?;
            fine.push(Choice {
                expert,
                weight: c.weight / g as f32,
            })
            .map_err(|_| too_many.clone())?;
        }
    }
    Ok(fine)
}

//! Log-domain Sinkhorn balancing of a batch's router logits (S-BASE, Clark et al. 2022).
//!
//! The plan is `P[t,e] = exp(log_d0[t] + L[t,e] + log_d1[e])`; balanced, its rows sum to
//! 1/T and its columns to 1/E (E = active experts). Working with logs never overflows
//! where `exp(L)` would (L > ~88). A token's choice `argmax_e P[t,e]` equals
//! `argmax_e (L[t,e] + log_d1[e])`: the row scale never changes it.

use super::mask::ExpertMask;
use super::score::finite_or_neg_inf;
use crate::error::{Error, Result};

/// How a balancing ended.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SinkhornReport {
    /// Column updates done.
    pub iterations: u32,
    /// Largest `|ln(T · row sum)|` of the final plan (0 when balanced).
    pub error: f32,
    /// Whether `error <= tolerance` was reached (columns are then exact).
    pub converged: bool,
}

/// `ln(n)` of a count.
fn ln(n: usize) -> f32 {
    libm::logf(n as f32)
}

/// Balances the `n_tokens × n_expert` logits (row-major; NaN counts as -inf) over the
/// active experts, writing `log_d0` (`n_tokens`) and `log_d1` (`n_expert`; -inf for
/// inactive experts). `work` holds `n_expert` elements. Each iteration updates the
/// columns (exact after it), then measures the row error and stops when it is within
/// `tolerance`, else updates the rows.
pub fn balance(
    logits: &[f32],
    mask: &ExpertMask,
    iterations: u32,
    tolerance: f32,
    log_d0: &mut [f32],
    log_d1: &mut [f32],
    work: &mut [f32],
) -> Result<SinkhornReport> {
    let (n_tokens, n_expert) = (log_d0.len(), log_d1.len());
    let cells = n_tokens
        .checked_mul(n_expert)
        .ok_or(Error::BufferTooSmall {
            needed: usize::MAX,
            actual: logits.len(),
        })?;
    if logits.len() != cells {
        return Err(Error::LengthMismatch {
            expected: cells,
            actual: logits.len(),
        });
    }
    if work.len() < n_expert {
        return Err(Error::BufferTooSmall {
            needed: n_expert,
            actual: work.len(),
        });
    }
    let n_active = mask.validate(n_expert)?;
    let mut report = SinkhornReport::default();
    if n_tokens == 0 {
        report.converged = true;
        return Ok(report);
    }
    let (ln_t, ln_e) = (ln(n_tokens), ln(n_active));
    for (e, d) in log_d1.iter_mut().enumerate() {
        *d = if e < mask.limit(n_expert) && mask.is_active(e) {
            0.0
        } else {
            f32::NEG_INFINITY
        };
    }
    for (t, d) in log_d0.iter_mut().enumerate() {
        let lse = row_lse(&logits[t * n_expert..(t + 1) * n_expert], log_d1, mask);
        *d = scale_for(lse, ln_t);
    }
    for it in 1..=iterations {
        column_update(logits, mask, log_d0, log_d1, &mut work[..n_expert], ln_e);
        report.iterations = it;
        let mut err = 0.0f32;
        for (t, &d) in log_d0.iter().enumerate() {
            let lse = row_lse(&logits[t * n_expert..(t + 1) * n_expert], log_d1, mask);
            if lse.is_finite() && d.is_finite() {
                let e = libm::fabsf(d + lse + ln_t);
                err = if e > err || e.is_nan() { e } else { err };
            }
        }
        report.error = err;
        if err <= tolerance {
            report.converged = true;
            break;
        }
        if it < iterations {
            for (t, d) in log_d0.iter_mut().enumerate() {
                let lse = row_lse(&logits[t * n_expert..(t + 1) * n_expert], log_d1, mask);
                *d = scale_for(lse, ln_t);
            }
        }
    }
    Ok(report)
}

/// `log d = -ln(n) - lse`, or -inf for a line without mass.
fn scale_for(lse: f32, ln_n: f32) -> f32 {
    if lse.is_finite() {
        -ln_n - lse
    } else {
        f32::NEG_INFINITY
    }
}

/// `logsumexp_e (L[t,e] + log_d1[e])` over the active experts of one row.
fn row_lse(row: &[f32], log_d1: &[f32], mask: &ExpertMask) -> f32 {
    let n = row.len();
    let mut m = f32::NEG_INFINITY;
    for e in mask.active(n) {
        let v = finite_or_neg_inf(row[e]) + log_d1[e];
        if v > m {
            m = v;
        }
    }
    if !m.is_finite() {
        return m;
    }
    let mut s = 0.0f32;
    for e in mask.active(n) {
        s += libm::expf(finite_or_neg_inf(row[e]) + log_d1[e] - m);
    }
    m + libm::logf(s)
}

/// `log_d1[e] = -ln(E) - logsumexp_t (L[t,e] + log_d0[t])`, two passes over the rows
/// (column maxima in `log_d1`, sums in `work`).
fn column_update(
    logits: &[f32],
    mask: &ExpertMask,
    log_d0: &[f32],
    log_d1: &mut [f32],
    work: &mut [f32],
    ln_e: f32,
) {
    let n_expert = log_d1.len();
    for e in mask.active(n_expert) {
        log_d1[e] = f32::NEG_INFINITY;
        work[e] = 0.0;
    }
    for (t, &d0) in log_d0.iter().enumerate() {
        let row = &logits[t * n_expert..(t + 1) * n_expert];
        for e in mask.active(n_expert) {
            let v = finite_or_neg_inf(row[e]) + d0;
            if v > log_d1[e] {
                log_d1[e] = v;
            }
        }
    }
    for (t, &d0) in log_d0.iter().enumerate() {
        let row = &logits[t * n_expert..(t + 1) * n_expert];
        for e in mask.active(n_expert) {
            let m = log_d1[e];
            if m.is_finite() {
                work[e] += libm::expf(finite_or_neg_inf(row[e]) + d0 - m);
            }
        }
    }
    for e in mask.active(n_expert) {
        let m = log_d1[e];
        log_d1[e] = if m.is_finite() {
            -ln_e - (m + libm::logf(work[e]))
        } else {
            f32::NEG_INFINITY
        };
    }
}

//! Reference routing (plain f32): the specification of every router in
//! [`crate::router`], one token at a time, by full sorts and brute force.
//!
//! For one token with logits `l` over `E` experts (`NaN` read as `-inf`), the active
//! experts `A` (all, or a mask), and a [`RouterConfig`]:
//!
//! 1. **Scores** `s`: softmax over `A` (`exp(l_e - max) / Σ_A exp(l_j - max)`, summed in
//!    ascending expert order; all mass on `+inf` logits if any, none if all are `-inf`),
//!    or `sigmoid(l_e)`, or `l_e` itself for softmax-over-selected.
//! 2. **Selection keys** `c_e = s_e + bias_e` (bias 0 when absent; `NaN` → `-inf`).
//! 3. **Groups** (if `n_group > 1`): experts `[g·E/G, (g+1)·E/G)` form group `g`; its score
//!    is the max of its active keys, or the sum of its `m` best (in rank order); a group
//!    without active experts scores `-inf`. The `topk_group` best groups (higher score,
//!    then lower index) are eligible; experts of other groups are never chosen.
//! 4. **Top-k**: eligible active experts sorted by key descending, then index ascending
//!    (IEEE comparison: `-0 == +0`); the first `k` (fewer only when fewer are eligible).
//! 5. **Weights** from the scores, never the keys: `s_e`, or the softmax over the selected
//!    logits for softmax-over-selected; renormalised (`w / (Σw + ε)` or `w / max(Σw, min)`,
//!    sums in rank order, 0 when the divisor is not positive); times the scale.
//!
//! Greedy takes k = 1 and skips renormalisation. Hash routing takes the table's row (or
//! [`crate::router::hash::seeded_experts`]' documented hash) and weights 1 or the scores.
//! S-BASE balances the batch with [`sinkhorn`] and takes each token's argmax of its plan
//! row, weighted by its unnormalised score.

// Index loops read like the formulas they spell out.
#![allow(clippy::needless_range_loop)]

use crate::error::Result;
use crate::quant::dequantize_row;
use crate::router::{
    Choice, GroupScore, HashGate, MAX_GROUPS, MAX_K, Method, Normalize, RouterConfig, ScoreFunc,
    Selection, SinkhornReport, noise::standard_normal, splitmix64,
};
use crate::tensor::TensorView;
use core::cmp::Ordering;

/// The router's tensors as plain values.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inputs<'a> {
    /// Selection bias per expert.
    pub bias: Option<&'a [f32]>,
    /// Active experts (`None`: all).
    pub active: Option<&'a [bool]>,
    /// Hash table, row-major `n_vocab × k`.
    pub hash_table: Option<&'a [u32]>,
}

impl Inputs<'_> {
    fn active(&self, e: usize) -> bool {
        self.active
            .is_none_or(|a| a.get(e).copied().unwrap_or(false))
    }
}

/// Logits of one token: `out[e] = Σ_i W[e][i] · x[i]`, summed in order, for every row of
/// `weight` (`[n_embd, n_expert]`); `row` holds `n_embd` elements. With `noise`
/// (`(seed, token index, W_noise)`), adds `N(0,1) · (softplus(x·W_noise) + ε)`.
pub fn logits(
    weight: &TensorView,
    x: &[f32],
    noise: Option<(u64, u64, f32, &TensorView)>,
    row: &mut [f32],
    out: &mut [f32],
) -> Result<()> {
    for (e, l) in out.iter_mut().enumerate() {
        dequantize_row(weight.ty(), weight.row(e as u64).unwrap_or(&[]), row)?;
        let mut sum = 0.0f32;
        for (w, v) in row.iter().zip(x) {
            sum += w * v;
        }
        if let Some((seed, token, epsilon, w_noise)) = noise {
            dequantize_row(w_noise.ty(), w_noise.row(e as u64).unwrap_or(&[]), row)?;
            let mut raw = 0.0f32;
            for (w, v) in row.iter().zip(x) {
                raw += w * v;
            }
            let softplus = if raw > 20.0 {
                raw
            } else {
                libm::log1pf(libm::expf(raw))
            };
            sum += standard_normal(seed, token, e as u64) * (softplus + epsilon);
        }
        *l = sum;
    }
    Ok(())
}

fn clean(x: f32) -> f32 {
    if x.is_nan() { f32::NEG_INFINITY } else { x }
}

/// Rank order: higher key first, then lower index.
fn rank(keys: &[f32], a: u32, b: u32) -> Ordering {
    let (ka, kb) = (keys[a as usize], keys[b as usize]);
    if ka > kb {
        Ordering::Less
    } else if ka < kb {
        Ordering::Greater
    } else {
        a.cmp(&b)
    }
}

/// Softmax over the experts where `active` holds, of NaN-cleaned `logits`.
fn softmax(logits: &[f32], active: impl Fn(usize) -> bool, out: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for (e, &l) in logits.iter().enumerate() {
        if active(e) && clean(l) > max {
            max = clean(l);
        }
    }
    let mut z = 0.0f32;
    for (e, &l) in logits.iter().enumerate() {
        if !active(e) {
            continue;
        }
        let l = clean(l);
        out[e] = if max == f32::INFINITY {
            if l == f32::INFINITY { 1.0 } else { 0.0 }
        } else if max == f32::NEG_INFINITY {
            0.0
        } else {
            libm::expf(l - max)
        };
        z += out[e];
    }
    for (e, p) in out.iter_mut().enumerate() {
        if active(e) {
            *p = if z > 0.0 { *p / z } else { 0.0 };
        }
    }
}

/// Scores of step 1 into `scores` (active experts only).
fn scores_of(config: &RouterConfig, logits: &[f32], inputs: &Inputs, scores: &mut [f32]) {
    match config.score {
        ScoreFunc::Softmax => softmax(logits, |e| inputs.active(e), scores),
        ScoreFunc::Sigmoid => {
            for (s, &l) in scores.iter_mut().zip(logits) {
                let l = clean(l);
                *s = if l >= 0.0 {
                    1.0 / (1.0 + libm::expf(-l))
                } else {
                    libm::expf(l) / (1.0 + libm::expf(l))
                };
            }
        }
        ScoreFunc::SoftmaxSelected => {
            for (s, &l) in scores.iter_mut().zip(logits) {
                *s = clean(l);
            }
        }
    }
}

/// Step 5: weights of `ids`, renormalised when `normalize`, scaled.
fn weights(
    config: &RouterConfig,
    logits: &[f32],
    scores: &[f32],
    ids: &[u32],
    constant: bool,
    normalize: bool,
) -> Selection {
    let mut w = [0.0f32; MAX_K];
    for (j, &e) in ids.iter().enumerate() {
        w[j] = if constant {
            1.0
        } else if config.score == ScoreFunc::SoftmaxSelected {
            let max = ids
                .iter()
                .map(|&i| clean(logits[i as usize]))
                .fold(f32::NEG_INFINITY, |m, l| if l > m { l } else { m });
            let num = |i: u32| {
                let l = clean(logits[i as usize]);
                if max == f32::INFINITY {
                    if l == f32::INFINITY { 1.0 } else { 0.0 }
                } else if max == f32::NEG_INFINITY {
                    0.0
                } else {
                    libm::expf(l - max)
                }
            };
            let z = ids.iter().fold(0.0f32, |z, &i| z + num(i));
            if z > 0.0 { num(e) / z } else { 0.0 }
        } else {
            scores[e as usize]
        };
    }
    let w = &mut w[..ids.len()];
    if normalize {
        let sum = w.iter().fold(0.0f32, |s, &x| s + x);
        let divisor = match config.normalize {
            Normalize::None => None,
            Normalize::Sum { epsilon } => Some(sum + epsilon),
            Normalize::ClampedSum { min_sum } => Some(if sum > min_sum { sum } else { min_sum }),
        };
        if let Some(d) = divisor {
            for x in w.iter_mut() {
                *x = if d > 0.0 { *x / d } else { 0.0 };
            }
        }
    }
    let mut sel = Selection::new();
    for (&e, &x) in ids.iter().zip(w.iter()) {
        let _ = sel.push(Choice {
            expert: e,
            weight: x * config.scale,
        });
    }
    sel
}

/// The eligible groups of step 3 as a bitset (all ones without groups); `members` is
/// room for one group's expert ids.
fn eligible_groups(
    config: &RouterConfig,
    keys: &[f32],
    inputs: &Inputs,
    members: &mut [u32],
) -> u64 {
    let Some(g) = config.groups.filter(|g| g.n_group > 1) else {
        return u64::MAX;
    };
    let n_group = g.n_group as usize;
    let per_group = config.n_expert / n_group;
    let mut group_scores = [f32::NEG_INFINITY; MAX_GROUPS];
    for (group, score) in group_scores.iter_mut().enumerate().take(n_group) {
        // The group's active members, best first (a full sort of the group).
        let mut n = 0;
        for e in group * per_group..(group + 1) * per_group {
            if inputs.active(e) {
                members[n] = e as u32;
                n += 1;
            }
        }
        let members = &mut members[..n];
        members.sort_unstable_by(|&a, &b| rank(keys, a, b));
        *score = match g.score {
            _ if n == 0 => f32::NEG_INFINITY,
            GroupScore::Max => keys[members[0] as usize],
            GroupScore::SumTop(m) => clean(
                members
                    .iter()
                    .take(m as usize)
                    .fold(0.0f32, |s, &e| s + keys[e as usize]),
            ),
        };
    }
    let mut order = [0u32; MAX_GROUPS];
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u32;
    }
    let order = &mut order[..n_group];
    order.sort_unstable_by(|&a, &b| rank(&group_scores, a, b));
    order
        .iter()
        .take(g.topk_group as usize)
        .fold(0u64, |bits, &g| bits | 1 << g)
}

/// Routes one token with [`Method::TopK`], [`Method::Greedy`] or [`Method::Hash`] (S-BASE
/// needs the batch: [`route_sbase`]). `scores`, `keys` and `order` hold `n_expert`
/// elements each. For
/// hash routing without a table, `token_id` picks the seeded experts; a token outside
/// the table gets an empty selection.
pub fn route_token(
    config: &RouterConfig,
    logits: &[f32],
    token_id: u32,
    inputs: &Inputs,
    scores: &mut [f32],
    keys: &mut [f32],
    order: &mut [u32],
) -> Selection {
    let n = config.n_expert;
    scores_of(config, logits, inputs, scores);
    if let Method::Hash { seed, gate } = config.method {
        let mut ids = [0u32; MAX_K];
        let k = config.k;
        match inputs.hash_table {
            Some(table) => {
                let Some(row) = table.get(token_id as usize * k..(token_id as usize + 1) * k)
                else {
                    return Selection::new();
                };
                ids[..k].copy_from_slice(row);
            }
            None => {
                // Rank r names the r-th active expert; probe forward past taken ranks.
                let active: usize = (0..n).filter(|&e| inputs.active(e)).count();
                let base = splitmix64(seed ^ u64::from(token_id));
                let mut ranks = [usize::MAX; MAX_K];
                for j in 0..k {
                    let mut r = (splitmix64(base.wrapping_add(j as u64)) % active as u64) as usize;
                    while ranks[..j].contains(&r) {
                        r = (r + 1) % active;
                    }
                    ranks[j] = r;
                    ids[j] = (0..n).filter(|&e| inputs.active(e)).nth(r).unwrap_or(0) as u32;
                }
            }
        }
        let constant = gate == HashGate::Constant;
        return weights(config, logits, scores, &ids[..k], constant, true);
    }
    let (k, normalize) = match config.method {
        Method::Greedy => (1, false),
        _ => (config.k, true),
    };
    let keys = &mut keys[..n];
    for (e, c) in keys.iter_mut().enumerate() {
        *c = clean(scores[e] + inputs.bias.map_or(0.0, |b| b[e]));
    }
    let groups = eligible_groups(config, keys, inputs, order);
    let per_group = config
        .groups
        .filter(|g| g.n_group > 1)
        .map_or(n, |g| n / g.n_group as usize);
    for (i, o) in order.iter_mut().enumerate().take(n) {
        *o = i as u32;
    }
    let order = &mut order[..n];
    order.sort_unstable_by(|&a, &b| rank(keys, a, b));
    let mut ids = [0u32; MAX_K];
    let mut len = 0;
    for &e in order.iter() {
        if len == k {
            break;
        }
        let group = e as usize / per_group;
        if inputs.active(e as usize) && (groups >> group) & 1 == 1 {
            ids[len] = e;
            len += 1;
        }
    }
    weights(config, logits, scores, &ids[..len], false, normalize)
}

/// `logsumexp` of `f(i)` for `i` in `0..n` where `keep(i)`, by max then sum.
fn logsumexp(n: usize, keep: impl Fn(usize) -> bool, f: impl Fn(usize) -> f32) -> f32 {
    let mut max = f32::NEG_INFINITY;
    for i in (0..n).filter(|&i| keep(i)) {
        if f(i) > max {
            max = f(i);
        }
    }
    if !max.is_finite() {
        return max;
    }
    let mut s = 0.0f32;
    for i in (0..n).filter(|&i| keep(i)) {
        s += libm::expf(f(i) - max);
    }
    max + libm::logf(s)
}

/// Log-domain Sinkhorn on the `n_tokens × n_expert` logits (`log_d0.len()` tokens,
/// `log_d1.len()` experts): `log_d1 = 0`, rows scaled to 1/T; then repeatedly columns
/// scaled to 1/E (E = active experts), stop when every `|ln(T · row sum)| <= tolerance`,
/// else rows scaled to 1/T again. Lines without any finite logit get scale `-inf`.
pub fn sinkhorn(
    logits: &[f32],
    inputs: &Inputs,
    iterations: u32,
    tolerance: f32,
    log_d0: &mut [f32],
    log_d1: &mut [f32],
) -> SinkhornReport {
    let (t_n, e_n) = (log_d0.len(), log_d1.len());
    let active = |e: usize| inputs.active(e);
    let n_active = (0..e_n).filter(|&e| active(e)).count();
    let l = |t: usize, e: usize| clean(logits[t * e_n + e]);
    let (ln_t, ln_e) = (libm::logf(t_n as f32), libm::logf(n_active as f32));
    let scale = |lse: f32, ln_n: f32| {
        if lse.is_finite() {
            -ln_n - lse
        } else {
            f32::NEG_INFINITY
        }
    };
    let mut report = SinkhornReport::default();
    if t_n == 0 {
        report.converged = true;
        return report;
    }
    for (e, d) in log_d1.iter_mut().enumerate() {
        *d = if active(e) { 0.0 } else { f32::NEG_INFINITY };
    }
    for t in 0..t_n {
        log_d0[t] = scale(logsumexp(e_n, active, |e| l(t, e) + log_d1[e]), ln_t);
    }
    for it in 1..=iterations {
        for e in (0..e_n).filter(|&e| active(e)) {
            log_d1[e] = scale(logsumexp(t_n, |_| true, |t| l(t, e) + log_d0[t]), ln_e);
        }
        report.iterations = it;
        let mut err = 0.0f32;
        for t in 0..t_n {
            let lse = logsumexp(e_n, active, |e| l(t, e) + log_d1[e]);
            if lse.is_finite() && log_d0[t].is_finite() {
                err = err.max(libm::fabsf(log_d0[t] + lse + ln_t));
            }
        }
        report.error = err;
        if err <= tolerance {
            report.converged = true;
            break;
        }
        if it < iterations {
            for t in 0..t_n {
                log_d0[t] = scale(logsumexp(e_n, active, |e| l(t, e) + log_d1[e]), ln_t);
            }
        }
    }
    report
}

/// S-BASE over a batch: [`sinkhorn`], then token `t` takes the expert maximising its plan
/// entry `exp(log_d0[t] + l[t,e] + log_d1[e])` (lower index on ties), weighted by its
/// unnormalised score times the scale. `scores` holds `n_expert` elements.
pub fn route_sbase(
    config: &RouterConfig,
    logits: &[f32],
    inputs: &Inputs,
    log_d0: &mut [f32],
    log_d1: &mut [f32],
    scores: &mut [f32],
    out: &mut [Selection],
) -> SinkhornReport {
    let Method::SBase {
        iterations,
        tolerance,
    } = config.method
    else {
        return SinkhornReport::default();
    };
    let n = config.n_expert;
    let report = sinkhorn(logits, inputs, iterations, tolerance, log_d0, log_d1);
    for (t, sel) in out.iter_mut().enumerate().take(log_d0.len()) {
        let row = &logits[t * n..(t + 1) * n];
        scores_of(config, row, inputs, scores);
        let mut best: Option<(f32, usize)> = None;
        for e in (0..n).filter(|&e| inputs.active(e)) {
            let p = libm::expf(log_d0[t] + clean(row[e]) + log_d1[e]);
            let p = clean(p);
            if best.is_none_or(|(b, _)| p > b) {
                best = Some((p, e));
            }
        }
        *sel = match best {
            Some((_, e)) => weights(config, row, scores, &[e as u32], false, false),
            None => Selection::new(),
        };
    }
    report
}

//! [`Router`]: a [`RouterConfig`] plus borrowed tensors, routing a batch of tokens into
//! caller-provided [`Selection`]s without allocating.
//!
//! Per token (token-choice top-k), as specified in [`crate::reference::router`]:
//! logits `l` (NaN → -inf) → scores `s` → selection keys `c = s + bias` → group limit →
//! top-k of `c` (higher first, then lower index) → weights from `s`, never from the bias
//! → renormalisation → routed scaling factor.
//!
//! The code only some routers need is chosen once, when the router is built, and kept as
//! function pointers (as kernels are): S-BASE's Sinkhorn balancing and hash routing by
//! [`Router::new`] from the method, the noise of noisy gating by
//! [`Router::with_noise_weight`]. A router built by [`Router::token_choice`] (as
//! [`Router::from_gguf`] builds every router) never names them, so firmware that routes
//! with one does not link them.

use super::config::{
    GroupScore, HashGate, LOGIT_ROWS, Method, NoisyGating, RouterConfig, ScoreFunc,
};
use super::hash::{HashTable, seeded_experts};
use super::mask::ExpertMask;
use super::noise::{noisy_logit, standard_normal};
use super::score::{
    divide, finite_or_neg_inf, norm_divisor, shifted_exp, sigmoid_fast, softmax_in_place,
};
use super::sinkhorn::{SinkhornReport, balance};
use super::stats::RouterStats;
use super::topk::TopK;
use super::{Choice, MAX_K, Selection};
use crate::error::{Error, Result, name_of};
use crate::quant::{TensorType, dequantize_row};
use crate::tensor::TensorView;

/// What happened while routing a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RouteReport {
    /// Tokens routed.
    pub n_tokens: usize,
    /// NaN logits or selection keys (of active experts) that were read as -inf.
    pub nan_scores: usize,
    /// Tokens that got fewer experts than asked for (groups whose active experts run
    /// out under a mask).
    pub short_selections: usize,
    /// How Sinkhorn balancing ended (S-BASE only).
    pub sinkhorn: Option<SinkhornReport>,
}

/// A router: configuration plus borrowed tensors.
#[derive(Clone, Copy, Debug)]
pub struct Router<'a> {
    config: RouterConfig,
    weight: Option<TensorView<'a>>,
    bias: Option<TensorView<'a>>,
    noise: Option<NoiseWeight<'a>>,
    hash_table: Option<HashTable<'a>>,
    mask: ExpertMask<'a>,
    method: MethodCode,
}

/// The noise weight of noisy gating, with the code that draws and adds the noise: only a
/// router given a noise weight reaches the normal generator.
#[derive(Clone, Copy, Debug)]
struct NoiseWeight<'a> {
    view: TensorView<'a>,
    /// The noisy logit of expert `e` for token `t` from its clean and raw-noise logits.
    add: fn(NoisyGating, usize, usize, f32, f32) -> f32,
}

/// `clean + N(0,1) · (softplus(raw) + ε)` with the draw of `(seed, t, e)`.
fn add_noise(nz: NoisyGating, t: usize, e: usize, clean: f32, raw: f32) -> f32 {
    let draw = standard_normal(nz.seed, t as u64, e as u64);
    noisy_logit(clean, raw, nz.epsilon, draw)
}

/// What one token's routing reads, for a method's own choice routine.
struct Token<'x> {
    /// The token id (0 when the caller gave none).
    id: u32,
    /// Its logits.
    row: &'x [f32],
    /// Its scores.
    scores: &'x [f32],
    /// S-BASE's column scales `log d1` (empty for other methods).
    log_d1: &'x [f32],
}

/// The code S-BASE and hash routing add to token-choice routing, chosen from the method
/// when the router is built.
#[derive(Clone, Copy, Debug)]
struct MethodCode {
    /// A pass over the whole batch before any token chooses: S-BASE's Sinkhorn balancing,
    /// writing `log d0` (`n_tokens`) and `log d1` (`n_expert`) with `n_expert` of work.
    balance: Option<BalanceFn>,
    /// One token's choice, for the methods [`Router::top_k`] does not cover.
    choose: Option<ChooseFn>,
}

type ChooseFn = fn(&Router<'_>, Token<'_>, &mut Selection) -> Result<()>;
type BalanceFn =
    fn(&Router<'_>, &[f32], &mut [f32], &mut [f32], &mut [f32]) -> Result<SinkhornReport>;

impl MethodCode {
    /// Top-k and greedy: everything is in [`Router::top_k`].
    const TOKEN_CHOICE: MethodCode = MethodCode {
        balance: None,
        choose: None,
    };

    /// The code of `method`.
    fn of(method: Method) -> MethodCode {
        match method {
            Method::TopK | Method::Greedy => Self::TOKEN_CHOICE,
            Method::SBase { .. } => MethodCode {
                balance: Some(sbase_balance),
                choose: Some(|router, token, sel| {
                    router.sbase_token(token.row, token.scores, token.log_d1, sel);
                    Ok(())
                }),
            },
            Method::Hash { .. } => MethodCode {
                balance: None,
                choose: Some(hash_choose),
            },
        }
    }
}

/// S-BASE's balancing of the batch's logits (see [`balance`]).
fn sbase_balance(
    router: &Router<'_>,
    logits: &[f32],
    log_d0: &mut [f32],
    log_d1: &mut [f32],
    work: &mut [f32],
) -> Result<SinkhornReport> {
    match router.config.method {
        Method::SBase {
            iterations,
            tolerance,
        } => balance(
            logits,
            &router.mask,
            iterations,
            tolerance,
            log_d0,
            log_d1,
            work,
        ),
        _ => Ok(SinkhornReport::default()),
    }
}

/// Hash routing of one token: its experts from the router's table, or the seeded hash
/// without one, weighted by the gate.
fn hash_choose(router: &Router<'_>, token: Token<'_>, sel: &mut Selection) -> Result<()> {
    let c = &router.config;
    let Method::Hash { seed, gate } = c.method else {
        return Ok(());
    };
    let mut ids = [0u32; MAX_K];
    match &router.hash_table {
        Some(table) => table.experts(token.id, &mut ids)?,
        None => seeded_experts(seed, token.id, c.k, c.n_expert, &router.mask, &mut ids),
    }
    router.weigh(
        token.row,
        token.scores,
        &ids[..c.k],
        gate == HashGate::Constant,
        true,
        sel,
    );
    Ok(())
}

/// Checks that `view` is `[n_embd, n_expert]` (`role` names it in errors).
fn check_matrix(view: &TensorView, n_embd: usize, n_expert: usize, role: &str) -> Result<()> {
    let dims = view.dims();
    let expected = [n_embd as u64, n_expert as u64];
    if dims.len() > 2 {
        return Err(Error::BadTensorShape {
            tensor: name_of(role),
            dim: 2,
            expected: 1,
            actual: view.ne(2),
        });
    }
    for (i, &want) in expected.iter().enumerate() {
        if view.ne(i) != want {
            return Err(Error::BadTensorShape {
                tensor: name_of(role),
                dim: i as u8,
                expected: want,
                actual: view.ne(i),
            });
        }
    }
    // Router rows are decoded to f32 (no dot kernel of the weight type is used).
    if !view.ty().can_dequantize() {
        return Err(Error::UnsupportedType { ty: view.ty() });
    }
    Ok(())
}

/// The bytes of row `e` of `view` (`role` names it in the error).
fn row_of<'v>(view: &TensorView<'v>, e: usize, role: &str) -> Result<&'v [u8]> {
    view.row(e as u64).ok_or_else(|| Error::TensorTooLarge {
        tensor: name_of(role),
    })
}

/// `a · b` with eight independent lanes (vectorisable without reassociating a single sum).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, ar) = a.as_chunks::<8>();
    let (bc, br) = b.as_chunks::<8>();
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

impl<'a> Router<'a> {
    /// A router for `config` with no tensors yet (hash routing with constant gates needs
    /// none); add them with the `with_*` methods.
    pub fn new(config: RouterConfig) -> Result<Self> {
        Self::build(config, MethodCode::of(config.method))
    }

    /// [`new`](Self::new) for the token-choice methods only ([`Method::TopK`] and
    /// [`Method::Greedy`]; others are [`Error::InvalidRouterConfig`]): the same router,
    /// built without naming S-BASE's or hash routing's code, so firmware whose routers
    /// are all built this way (as [`from_gguf`](Self::from_gguf) builds them) does not
    /// link that code.
    pub fn token_choice(config: RouterConfig) -> Result<Self> {
        if !matches!(config.method, Method::TopK | Method::Greedy) {
            return Err(Error::InvalidRouterConfig {
                reason: "Router::token_choice takes top-k or greedy configs (Router::new takes any)",
            });
        }
        Self::build(config, MethodCode::TOKEN_CHOICE)
    }

    fn build(config: RouterConfig, method: MethodCode) -> Result<Self> {
        config.validate()?;
        Ok(Router {
            config,
            weight: None,
            bias: None,
            noise: None,
            hash_table: None,
            mask: ExpertMask::All,
            method,
        })
    }

    /// Adds the router weight `ffn_gate_inp` (`[n_embd, n_expert]`, any float or quant
    /// type with a dequantizer).
    pub fn with_weight(mut self, weight: TensorView<'a>) -> Result<Self> {
        check_matrix(
            &weight,
            self.config.n_embd,
            self.config.n_expert,
            "ffn_gate_inp.weight",
        )?;
        self.weight = Some(weight);
        Ok(self)
    }

    /// Adds the selection bias `exp_probs_b` (F32 `[n_expert]`): it changes which experts
    /// are chosen, never their weights.
    pub fn with_bias(mut self, bias: TensorView<'a>) -> Result<Self> {
        if bias.ty() != TensorType::F32 {
            return Err(Error::UnsupportedType { ty: bias.ty() });
        }
        if bias.dims().len() != 1 || bias.ne(0) != self.config.n_expert as u64 {
            return Err(Error::BadTensorShape {
                tensor: name_of("exp_probs_b.bias"),
                dim: 0,
                expected: self.config.n_expert as u64,
                actual: bias.ne(0),
            });
        }
        self.bias = Some(bias);
        Ok(self)
    }

    /// Adds the noise weight `W_noise` of noisy gating (same shape as the router weight).
    pub fn with_noise_weight(mut self, weight: TensorView<'a>) -> Result<Self> {
        check_matrix(
            &weight,
            self.config.n_embd,
            self.config.n_expert,
            "noise weight",
        )?;
        self.noise = Some(NoiseWeight {
            view: weight,
            add: add_noise,
        });
        Ok(self)
    }

    /// Adds the token → experts table of hash routing (I32 `[k, n_vocab]`), checking
    /// every entry against the active experts.
    pub fn with_hash_table(mut self, table: TensorView<'a>) -> Result<Self> {
        let table = HashTable::new(table, self.config.k, self.config.n_expert, &self.mask)?;
        self.hash_table = Some(table);
        Ok(self)
    }

    /// Restricts routing to the active experts of `mask` (at least k of them).
    pub fn with_mask(mut self, mask: ExpertMask<'a>) -> Result<Self> {
        let n_active = mask.validate(self.config.n_expert)?;
        if n_active < self.config.experts_per_token() {
            return Err(Error::InvalidRouterConfig {
                reason: "mask leaves fewer active experts than k",
            });
        }
        if let Some(t) = self.hash_table {
            // Re-check the table against the narrower set.
            HashTable::new(t.view(), self.config.k, self.config.n_expert, &mask)?;
        }
        self.mask = mask;
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The active-expert mask.
    pub fn mask(&self) -> ExpertMask<'a> {
        self.mask
    }

    /// The gate weight `[n_embd, n_expert]`, when the router has one (hash routers do
    /// not): for running the same router elsewhere (a GPU).
    pub fn weight(&self) -> Option<&TensorView<'a>> {
        self.weight.as_ref()
    }

    /// The selection bias `[n_expert]`, when the router has one.
    pub fn bias(&self) -> Option<&TensorView<'a>> {
        self.bias.as_ref()
    }

    /// Exact f32 scratch length [`route`](Self::route) needs for `n_tokens` tokens.
    pub fn scratch_len(&self, n_tokens: usize) -> usize {
        self.config.scratch_len(n_tokens)
    }

    /// Exact f32 scratch length [`route_logits`](Self::route_logits) needs.
    pub fn logits_scratch_len(&self, n_tokens: usize) -> usize {
        let c = &self.config;
        if n_tokens == 0 {
            return 0;
        }
        let mut len = c.n_expert.saturating_mul(2);
        if let Method::SBase { .. } = c.method {
            len = len.saturating_add(n_tokens).saturating_add(c.n_expert);
        }
        len
    }

    /// Routes `hidden` (`n_tokens × n_embd`, row-major) into `out[..n_tokens]`.
    ///
    /// `token_ids` holds one id per token (hash routing needs them; other methods accept
    /// an empty slice). `scratch` holds at least [`scratch_len`](Self::scratch_len)
    /// elements. `stats`, when given, accumulates [`RouterStats`] for this layer.
    pub fn route(
        &self,
        hidden: &[f32],
        token_ids: &[u32],
        scratch: &mut [f32],
        out: &mut [Selection],
        stats: Option<&mut RouterStats>,
    ) -> Result<RouteReport> {
        let c = &self.config;
        let n_tokens = hidden.len() / c.n_embd;
        if n_tokens * c.n_embd != hidden.len() {
            return Err(Error::LengthMismatch {
                expected: n_tokens * c.n_embd,
                actual: hidden.len(),
            });
        }
        let needed = self.scratch_len(n_tokens);
        if scratch.len() < needed {
            return Err(Error::BufferTooSmall {
                needed,
                actual: scratch.len(),
            });
        }
        if n_tokens == 0 {
            return self.select(&[], 0, token_ids, &mut [], out, stats);
        }
        let (logits, rest) = scratch.split_at_mut(n_tokens * c.n_expert);
        let rows = LOGIT_ROWS.min(c.n_expert) * if c.noise.is_some() { 2 } else { 1 };
        let (row_buf, work) = rest.split_at_mut(rows * c.n_embd);
        if c.needs_logits() {
            self.compute_logits(hidden, n_tokens, row_buf, logits)?;
        } else {
            logits.fill(0.0);
        }
        self.select(logits, n_tokens, token_ids, work, out, stats)
    }

    /// Routes from precomputed logits (`n_tokens × n_expert`, row-major; noise is not
    /// added here), with at least [`logits_scratch_len`](Self::logits_scratch_len)
    /// scratch elements.
    pub fn route_logits(
        &self,
        logits: &[f32],
        token_ids: &[u32],
        scratch: &mut [f32],
        out: &mut [Selection],
        stats: Option<&mut RouterStats>,
    ) -> Result<RouteReport> {
        let n_expert = self.config.n_expert;
        let n_tokens = logits.len() / n_expert;
        if n_tokens * n_expert != logits.len() {
            return Err(Error::LengthMismatch {
                expected: n_tokens * n_expert,
                actual: logits.len(),
            });
        }
        let needed = self.logits_scratch_len(n_tokens);
        if scratch.len() < needed {
            return Err(Error::BufferTooSmall {
                needed,
                actual: scratch.len(),
            });
        }
        self.select(logits, n_tokens, token_ids, scratch, out, stats)
    }

    /// Router logits (plus noise when configured) of the active experts; -inf elsewhere.
    /// Rows are dequantized [`LOGIT_ROWS`] at a time and each token's hidden state is
    /// dotted with the whole block while it is in cache.
    fn compute_logits(
        &self,
        hidden: &[f32],
        n_tokens: usize,
        rows: &mut [f32],
        logits: &mut [f32],
    ) -> Result<()> {
        let c = &self.config;
        let (n_embd, n_expert) = (c.n_embd, c.n_expert);
        let weight = self.weight.ok_or_else(|| Error::MissingTensor {
            tensor: name_of("ffn_gate_inp.weight"),
        })?;
        let noise = match c.noise {
            Some(n) => Some((
                n,
                self.noise.ok_or_else(|| Error::MissingTensor {
                    tensor: name_of("noise weight"),
                })?,
            )),
            None => None,
        };
        let block = LOGIT_ROWS.min(n_expert);
        let (w_rows, noise_rows) = rows.split_at_mut(block * n_embd);
        logits.fill(f32::NEG_INFINITY);
        let mut active = self.mask.active(n_expert).peekable();
        while active.peek().is_some() {
            let mut ids = [0usize; LOGIT_ROWS];
            let mut n = 0;
            for (slot, e) in ids.iter_mut().zip(active.by_ref().take(block)) {
                *slot = e;
                n += 1;
            }
            for (j, &e) in ids[..n].iter().enumerate() {
                let dst = &mut w_rows[j * n_embd..(j + 1) * n_embd];
                dequantize_row(weight.ty(), row_of(&weight, e, "ffn_gate_inp.weight")?, dst)?;
                if let Some((_, w)) = noise {
                    let dst = &mut noise_rows[j * n_embd..(j + 1) * n_embd];
                    dequantize_row(w.view.ty(), row_of(&w.view, e, "noise weight")?, dst)?;
                }
            }
            for t in 0..n_tokens {
                let x = &hidden[t * n_embd..(t + 1) * n_embd];
                let out = &mut logits[t * n_expert..(t + 1) * n_expert];
                for (j, &e) in ids[..n].iter().enumerate() {
                    let mut l = dot(&w_rows[j * n_embd..(j + 1) * n_embd], x);
                    if let Some((nz, w)) = noise {
                        let raw = dot(&noise_rows[j * n_embd..(j + 1) * n_embd], x);
                        l = (w.add)(nz, t, e, l, raw);
                    }
                    out[e] = l;
                }
            }
        }
        Ok(())
    }

    /// The mask's bitset, when it is one.
    fn mask_bits(&self) -> Option<&'a [u64]> {
        match self.mask {
            ExpertMask::Bits(bits) => Some(bits),
            _ => None,
        }
    }

    /// The bias of expert `e` (0 without a bias).
    #[inline]
    fn bias_of(&self, e: usize) -> f32 {
        match self.bias {
            Some(b) => match b.data().get(e * 4..e * 4 + 4) {
                Some(x) => f32::from_le_bytes([x[0], x[1], x[2], x[3]]),
                None => 0.0,
            },
            None => 0.0,
        }
    }

    /// Routes every token of `logits` (see [`route`](Self::route)).
    fn select(
        &self,
        logits: &[f32],
        n_tokens: usize,
        token_ids: &[u32],
        work: &mut [f32],
        out: &mut [Selection],
        mut stats: Option<&mut RouterStats>,
    ) -> Result<RouteReport> {
        let c = &self.config;
        let n_expert = c.n_expert;
        let is_hash = matches!(c.method, Method::Hash { .. });
        if token_ids.len() != n_tokens && (is_hash || !token_ids.is_empty()) {
            return Err(Error::LengthMismatch {
                expected: n_tokens,
                actual: token_ids.len(),
            });
        }
        if out.len() < n_tokens {
            return Err(Error::BufferTooSmall {
                needed: n_tokens,
                actual: out.len(),
            });
        }
        if let Some(s) = stats.as_deref()
            && s.n_expert() != n_expert
        {
            return Err(Error::LengthMismatch {
                expected: n_expert,
                actual: s.n_expert(),
            });
        }
        if n_tokens == 0 {
            return Ok(RouteReport::default());
        }
        let (scores, rest) = work.split_at_mut(n_expert);
        let (keys, rest) = rest.split_at_mut(n_expert);
        let mut report = RouteReport {
            n_tokens,
            ..RouteReport::default()
        };
        let mut log_d1: &[f32] = &[];
        if let Some(balance) = self.method.balance {
            let (d0, rest) = rest.split_at_mut(n_tokens);
            let d1 = &mut rest[..n_expert];
            report.sinkhorn = Some(balance(self, &logits[..n_tokens * n_expert], d0, d1, keys)?);
            log_d1 = d1;
        }
        let scored = c.needs_logits();
        for (t, sel) in out.iter_mut().enumerate().take(n_tokens) {
            sel.clear();
            let row = &logits[t * n_expert..(t + 1) * n_expert];
            let lse = if scored {
                self.score_token(row, scores, &mut report.nan_scores)
            } else {
                f32::NEG_INFINITY
            };
            match c.method {
                Method::TopK => self.top_k(row, scores, keys, c.k, true, sel, &mut report),
                Method::Greedy => self.top_k(row, scores, keys, 1, false, sel, &mut report),
                Method::SBase { .. } | Method::Hash { .. } => {
                    // Set for these methods by `Router::new`; `token_choice` refuses them.
                    let choose = self.method.choose.ok_or(Error::InvalidRouterConfig {
                        reason: "the router was built without its method's code",
                    })?;
                    let id = token_ids.get(t).copied().unwrap_or(0);
                    let token = Token {
                        id,
                        row,
                        scores,
                        log_d1,
                    };
                    choose(self, token, sel)?;
                }
            }
            if sel.len() < c.experts_per_token() {
                report.short_selections += 1;
            }
            if let Some(s) = stats.as_deref_mut() {
                let probs = if !scored {
                    None
                } else if c.score == ScoreFunc::Softmax {
                    Some((&*scores, lse))
                } else {
                    let limit = self.mask.limit(n_expert);
                    load_logits(row, &self.mask, &mut keys[..limit], &mut 0);
                    let lse = softmax_in_place(&mut keys[..limit], self.mask_bits());
                    Some((&*keys, lse))
                };
                s.record_token(
                    probs,
                    self.mask.active(n_expert),
                    sel.iter().map(|ch| (ch.expert, ch.weight)),
                );
            }
        }
        Ok(report)
    }

    /// Fills `scores[..limit]` for one token (inactive experts: 0, or -inf for
    /// softmax-over-selected); returns the logsumexp of its logits for softmax scoring
    /// (-inf otherwise).
    fn score_token(&self, row: &[f32], scores: &mut [f32], nan: &mut usize) -> f32 {
        let limit = self.mask.limit(self.config.n_expert);
        let scores = &mut scores[..limit];
        load_logits(row, &self.mask, scores, nan);
        match self.config.score {
            ScoreFunc::Softmax => softmax_in_place(scores, self.mask_bits()),
            ScoreFunc::Sigmoid => {
                for x in scores.iter_mut() {
                    *x = sigmoid_fast(*x);
                }
                f32::NEG_INFINITY
            }
            ScoreFunc::SoftmaxSelected => f32::NEG_INFINITY,
        }
    }

    /// Token-choice selection of `k` experts and their weights.
    #[allow(clippy::too_many_arguments)]
    fn top_k(
        &self,
        row: &[f32],
        scores: &[f32],
        keys: &mut [f32],
        k: usize,
        normalize: bool,
        sel: &mut Selection,
        report: &mut RouteReport,
    ) {
        let c = &self.config;
        let n_expert = c.n_expert;
        // Selection keys: scores plus the bias (never NaN).
        let limit = self.mask.limit(n_expert);
        let keys: &[f32] = match self.bias {
            Some(bias) => {
                let (bias, _) = bias.data().as_chunks::<4>();
                let mut nan = 0;
                for ((c, &s), b) in keys[..limit].iter_mut().zip(&scores[..limit]).zip(bias) {
                    let v = s + f32::from_le_bytes(*b);
                    nan += v.is_nan() as usize;
                    *c = finite_or_neg_inf(v);
                }
                if nan > 0 {
                    // Count only the active experts' NaN keys.
                    report.nan_scores += self
                        .mask
                        .active(n_expert)
                        .filter(|&e| (scores[e] + self.bias_of(e)).is_nan())
                        .count();
                }
                keys
            }
            None => scores,
        };
        let mut top = TopK::new(k);
        match c.groups {
            Some(g) if g.n_group > 1 => {
                let chosen =
                    self.chosen_groups(keys, g.n_group as usize, g.topk_group as usize, g.score);
                let per_group = n_expert / g.n_group as usize;
                for group in 0..g.n_group as usize {
                    if (chosen >> group) & 1 == 0 {
                        continue;
                    }
                    let start = group * per_group;
                    let end = (start + per_group).min(self.mask.limit(n_expert));
                    for (e, &key) in keys.iter().enumerate().take(end).skip(start) {
                        if self.mask.is_active(e) {
                            top.push(key, e as u32);
                        }
                    }
                }
            }
            _ => match self.mask {
                ExpertMask::Bits(_) => {
                    for e in self.mask.active(n_expert) {
                        top.push(keys[e], e as u32);
                    }
                }
                _ => top.push_all(&keys[..limit], 0),
            },
        }
        let mut ids = [0u32; MAX_K];
        let ranked = top.sorted();
        for (id, r) in ids.iter_mut().zip(ranked) {
            *id = r.index;
        }
        let n = ranked.len();
        self.weigh(row, scores, &ids[..n], false, normalize, sel);
    }

    /// The `topk_group` best groups of one token as a bitset.
    fn chosen_groups(
        &self,
        keys: &[f32],
        n_group: usize,
        topk_group: usize,
        score: GroupScore,
    ) -> u64 {
        let n_expert = self.config.n_expert;
        let per_group = n_expert / n_group;
        let limit = self.mask.limit(n_expert);
        let mut best = TopK::new(topk_group);
        for g in 0..n_group {
            let (start, end) = (g * per_group, ((g + 1) * per_group).min(limit));
            let group_score = match score {
                GroupScore::Max => {
                    let mut m = f32::NEG_INFINITY;
                    for (e, &key) in keys.iter().enumerate().take(end).skip(start) {
                        if self.mask.is_active(e) && key > m {
                            m = key;
                        }
                    }
                    m
                }
                GroupScore::SumTop(m) => {
                    let mut top = TopK::new(m as usize);
                    for (e, &key) in keys.iter().enumerate().take(end).skip(start) {
                        if self.mask.is_active(e) {
                            top.push(key, e as u32);
                        }
                    }
                    let ranked = top.sorted();
                    if ranked.is_empty() {
                        f32::NEG_INFINITY
                    } else {
                        finite_or_neg_inf(ranked.iter().fold(0.0f32, |s, r| s + r.key))
                    }
                }
            };
            best.push(group_score, g as u32);
        }
        best.sorted()
            .iter()
            .fold(0u64, |bits, r| bits | 1 << r.index)
    }

    /// S-BASE: the argmax of `l + log d1` over the active experts, weighted by its score.
    fn sbase_token(&self, row: &[f32], scores: &[f32], log_d1: &[f32], sel: &mut Selection) {
        let mut best: Option<(f32, usize)> = None;
        for e in self.mask.active(self.config.n_expert) {
            let v = finite_or_neg_inf(finite_or_neg_inf(row[e]) + log_d1[e]);
            if best.is_none_or(|(b, _)| v > b) {
                best = Some((v, e));
            }
        }
        if let Some((_, e)) = best {
            self.weigh(row, scores, &[e as u32], false, false, sel);
        }
    }

    /// Pushes `ids` with their weights: raw scores (or 1 with `constant`; the softmax of
    /// the selected logits for [`ScoreFunc::SoftmaxSelected`]), then renormalisation when
    /// `normalize`, then the scale.
    fn weigh(
        &self,
        row: &[f32],
        scores: &[f32],
        ids: &[u32],
        constant: bool,
        normalize: bool,
        sel: &mut Selection,
    ) {
        let c = &self.config;
        let mut w = [0.0f32; MAX_K];
        let w = &mut w[..ids.len()];
        if constant {
            w.fill(1.0);
        } else if c.score == ScoreFunc::SoftmaxSelected {
            let mut m = f32::NEG_INFINITY;
            for &e in ids {
                let l = finite_or_neg_inf(row[e as usize]);
                if l > m {
                    m = l;
                }
            }
            let mut z = 0.0f32;
            for (wj, &e) in w.iter_mut().zip(ids) {
                *wj = shifted_exp(finite_or_neg_inf(row[e as usize]), m);
                z += *wj;
            }
            for wj in w.iter_mut() {
                *wj = divide(*wj, z);
            }
        } else {
            for (wj, &e) in w.iter_mut().zip(ids) {
                *wj = scores[e as usize];
            }
        }
        if normalize {
            let sum = w.iter().fold(0.0f32, |s, &x| s + x);
            if let Some(d) = norm_divisor(c.normalize, sum) {
                for wj in w.iter_mut() {
                    *wj = divide(*wj, d);
                }
            }
        }
        for (&e, &wj) in ids.iter().zip(w.iter()) {
            // Cannot fail: at most MAX_K ids.
            let _ = sel.push(Choice {
                expert: e,
                weight: wj * c.scale,
            });
        }
    }
}

/// Copies `row[..out.len()]` into `out` as routing reads it: NaN → -inf (counted in `nan`
/// for active experts), inactive experts → -inf.
fn load_logits(row: &[f32], mask: &ExpertMask, out: &mut [f32], nan: &mut usize) {
    // A u32 count keeps the loop in 4-wide vector lanes.
    let mut n = 0u32;
    for (o, &l) in out.iter_mut().zip(row) {
        n += l.is_nan() as u32;
        *o = finite_or_neg_inf(l);
    }
    let mut n = n as usize;
    if let ExpertMask::Bits(_) = mask {
        for (e, o) in out.iter_mut().enumerate() {
            if !mask.is_active(e) {
                n -= row[e].is_nan() as usize;
                *o = f32::NEG_INFINITY;
            }
        }
    }
    *nan += n;
}

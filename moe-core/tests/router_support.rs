//! Shared helpers of the router tests: random configurations of every kind, building the
//! fast router and the reference inputs from one description, and the comparison rule.
#![allow(dead_code, clippy::needless_range_loop, clippy::should_implement_trait)]

use moe_core::TensorType;
use moe_core::reference::router as reference;
use moe_core::router::{
    ExpertMask, GroupLimit, GroupScore, HashGate, MAX_K, Method, Normalize, Router, RouterConfig,
    ScoreFunc, Selection,
};
use moe_core::tensor::TensorView;

/// SplitMix64 stream: deterministic values from a proptest seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn i32_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The active-expert set of a case.
#[derive(Clone, Debug)]
pub enum MaskKind {
    All,
    First(usize),
    Bits(Vec<u64>),
}

/// One random routing problem: a config, its tensors as plain values, and logits.
#[derive(Clone, Debug)]
pub struct Case {
    pub config: RouterConfig,
    pub bias: Option<Vec<f32>>,
    pub mask: MaskKind,
    pub active: Vec<bool>,
    /// Hash table, `n_vocab × k` row-major.
    pub table: Option<Vec<u32>>,
    pub n_tokens: usize,
    pub logits: Vec<f32>,
    pub token_ids: Vec<u32>,
}

/// Logit values with frequent exact ties, signed zeros, and (when `wild`) NaN and ±inf.
pub fn logit(rng: &mut Rng, pool: &[f32], wild: bool) -> f32 {
    match rng.below(100) {
        0..=14 if !pool.is_empty() => pool[rng.below(pool.len())],
        15..=24 => (rng.uniform(-8.0, 8.0) * 4.0).round() / 4.0,
        25 => -0.0,
        26 => 0.0,
        27 if wild => f32::NAN,
        28 if wild => f32::NEG_INFINITY,
        29 if wild && rng.chance(20) => f32::INFINITY,
        _ => rng.uniform(-8.0, 8.0),
    }
}

/// A random case with `n_expert` experts; `seed` decides everything else.
pub fn random_case(n_expert: usize, seed: u64) -> Case {
    let mut rng = Rng(seed);
    let method = match rng.below(20) {
        0..=11 => Method::TopK,
        12..=13 => Method::Greedy,
        14..=16 => Method::Hash {
            seed: rng.next(),
            gate: if rng.chance(50) {
                HashGate::Constant
            } else {
                HashGate::Scores
            },
        },
        _ => Method::SBase {
            iterations: 1 + rng.below(60) as u32,
            tolerance: [0.0, 1e-6, 1e-3][rng.below(3)],
        },
    };
    let sbase = matches!(method, Method::SBase { .. });
    let hash = matches!(method, Method::Hash { .. });
    // Mask first: k must fit the active experts.
    let mask = match rng.below(6) {
        0 => MaskKind::First(1 + rng.below(n_expert)),
        1 => {
            let mut bits = vec![0u64; n_expert.div_ceil(64)];
            for e in 0..n_expert {
                if rng.chance(60) {
                    bits[e / 64] |= 1 << (e % 64);
                }
            }
            let e = rng.below(n_expert);
            bits[e / 64] |= 1 << (e % 64);
            MaskKind::Bits(bits)
        }
        _ => MaskKind::All,
    };
    let active: Vec<bool> = (0..n_expert)
        .map(|e| match &mask {
            MaskKind::All => true,
            MaskKind::First(n) => e < *n,
            MaskKind::Bits(b) => (b[e / 64] >> (e % 64)) & 1 == 1,
        })
        .collect();
    let n_active = active.iter().filter(|&&a| a).count();
    // Groups (not with hash or S-BASE, which ignore them anyway).
    let divisors: Vec<usize> = (2..=64.min(n_expert))
        .filter(|g| n_expert.is_multiple_of(*g))
        .collect();
    let groups = if !hash && !sbase && !divisors.is_empty() && rng.chance(40) {
        let n_group = divisors[rng.below(divisors.len())];
        let per_group = n_expert / n_group;
        Some(GroupLimit {
            n_group: n_group as u32,
            topk_group: 1 + rng.below(n_group) as u32,
            score: if rng.chance(50) {
                GroupScore::Max
            } else {
                GroupScore::SumTop(1 + rng.below(per_group.min(4)) as u32)
            },
        })
    } else {
        None
    };
    let mut k_max = n_expert.min(MAX_K).min(n_active);
    if let Some(g) = groups {
        k_max = k_max.min(g.topk_group as usize * (n_expert / g.n_group as usize));
    }
    let k = if rng.chance(30) {
        k_max
    } else {
        1 + rng.below(k_max.min(8))
    };
    let config = RouterConfig {
        n_embd: 1,
        n_expert,
        k,
        score: match rng.below(3) {
            0 => ScoreFunc::Softmax,
            1 => ScoreFunc::Sigmoid,
            _ => ScoreFunc::SoftmaxSelected,
        },
        normalize: match rng.below(4) {
            0 => Normalize::None,
            1 => Normalize::Sum { epsilon: 0.0 },
            2 => Normalize::Sum { epsilon: 1e-20 },
            _ => Normalize::ClampedSum { min_sum: 6.1e-5 },
        },
        scale: if rng.chance(50) {
            1.0
        } else {
            rng.uniform(0.1, 16.0)
        },
        groups,
        method,
        noise: None,
    };
    let bias = (!sbase && rng.chance(40)).then(|| {
        let spread = [0.01, 0.5, 4.0][rng.below(3)];
        (0..n_expert)
            .map(|_| {
                if rng.chance(5) {
                    0.0
                } else {
                    rng.uniform(-spread, spread)
                }
            })
            .collect()
    });
    let n_tokens = 1 + rng.below(if sbase { 16 } else { 6 });
    let mut pool = Vec::new();
    let logits: Vec<f32> = (0..n_tokens * n_expert)
        .map(|_| {
            let v = logit(&mut rng, &pool, !sbase);
            if pool.len() < 16 {
                pool.push(v);
            }
            v
        })
        .collect();
    let n_vocab = 1 + rng.below(50);
    let table = (hash && rng.chance(50)).then(|| {
        let ids: Vec<usize> = (0..n_expert).filter(|&e| active[e]).collect();
        let mut table = Vec::new();
        for _ in 0..n_vocab {
            let mut ids = ids.clone();
            for j in 0..k {
                let pick = j + rng.below(ids.len() - j);
                ids.swap(j, pick);
                table.push(ids[j] as u32);
            }
        }
        table
    });
    let token_ids = (0..n_tokens).map(|_| rng.below(n_vocab) as u32).collect();
    Case {
        config,
        bias,
        mask,
        active,
        table,
        n_tokens,
        logits,
        token_ids,
    }
}

/// Owned bytes of a case's tensors, so views can borrow them.
pub struct Tensors {
    pub bias: Option<Vec<u8>>,
    pub table: Option<Vec<u8>>,
}

impl Case {
    pub fn tensors(&self) -> Tensors {
        Tensors {
            bias: self.bias.as_deref().map(f32_bytes),
            table: self
                .table
                .as_ref()
                .map(|t| i32_bytes(&t.iter().map(|&x| x as i32).collect::<Vec<_>>())),
        }
    }

    pub fn mask(&self) -> ExpertMask<'_> {
        match &self.mask {
            MaskKind::All => ExpertMask::All,
            MaskKind::First(n) => ExpertMask::First(*n),
            MaskKind::Bits(b) => ExpertMask::Bits(b),
        }
    }

    /// The fast router of this case (no weight: it routes precomputed logits).
    pub fn router<'a>(&'a self, t: &'a Tensors) -> Router<'a> {
        self.router_from(t, Router::new(self.config).unwrap())
    }

    /// [`router`](Self::router) starting from `r`, a router for this case's config.
    pub fn router_from<'a>(&'a self, t: &'a Tensors, mut r: Router<'a>) -> Router<'a> {
        let e = self.config.n_expert as u64;
        r = r.with_mask(self.mask()).unwrap();
        if let Some(b) = &t.bias {
            r = r
                .with_bias(TensorView::new(TensorType::F32, &[e], b).unwrap())
                .unwrap();
        }
        if let Some(tb) = &t.table {
            let n_vocab = (tb.len() / 4 / self.config.k) as u64;
            let view =
                TensorView::new(TensorType::I32, &[self.config.k as u64, n_vocab], tb).unwrap();
            r = r.with_hash_table(view).unwrap();
        }
        r
    }

    pub fn inputs(&self) -> reference::Inputs<'_> {
        reference::Inputs {
            bias: self.bias.as_deref(),
            active: Some(&self.active),
            hash_table: self.table.as_deref(),
        }
    }

    /// Routes with the fast router.
    pub fn route_fast(&self) -> (Vec<Selection>, moe_core::router::RouteReport) {
        let t = self.tensors();
        let router = self.router(&t);
        let mut scratch = vec![f32::NAN; router.logits_scratch_len(self.n_tokens)];
        let mut out = vec![Selection::new(); self.n_tokens];
        let report = router
            .route_logits(&self.logits, &self.token_ids, &mut scratch, &mut out, None)
            .unwrap();
        (out, report)
    }

    /// Routes with the reference; returns the selections and, per token, the values the
    /// selection ranked (keys, or `l + log d1` for S-BASE).
    pub fn route_reference(&self) -> (Vec<Selection>, Vec<Vec<f32>>) {
        let n = self.config.n_expert;
        let inputs = self.inputs();
        let mut scores = vec![0.0; n];
        let mut keys = vec![0.0; n];
        let mut order = vec![0u32; n];
        let mut out = vec![Selection::new(); self.n_tokens];
        let mut ranked = Vec::new();
        if let Method::SBase { .. } = self.config.method {
            let mut d0 = vec![0.0; self.n_tokens];
            let mut d1 = vec![0.0; n];
            reference::route_sbase(
                &self.config,
                &self.logits,
                &inputs,
                &mut d0,
                &mut d1,
                &mut scores,
                &mut out,
            );
            for t in 0..self.n_tokens {
                ranked.push((0..n).map(|e| self.logits[t * n + e] + d1[e]).collect());
            }
        } else {
            for t in 0..self.n_tokens {
                out[t] = reference::route_token(
                    &self.config,
                    &self.logits[t * n..(t + 1) * n],
                    self.token_ids[t],
                    &inputs,
                    &mut scores,
                    &mut keys,
                    &mut order,
                );
                ranked.push(keys.clone());
            }
        }
        (out, ranked)
    }
}

/// `a` and `b` agree within `tol` relative to their size (at least `tol` absolute).
pub fn close(a: f32, b: f32, tol: f32) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0)
}

/// The comparison rule: the same expert at every rank unless the two candidates' ranked
/// values are within `tie` (relative) of each other, and weights within `tol` wherever
/// the whole id lists agree.
pub fn check_same(
    fast: &Selection,
    reference: &Selection,
    ranked: &[f32],
    tie: f32,
    tol: f32,
) -> Result<(), String> {
    if fast.len() != reference.len() {
        return Err(format!("lengths differ: {fast:?} vs {reference:?}"));
    }
    let mut same = true;
    for (f, r) in fast.iter().zip(reference.iter()) {
        if f.expert != r.expert {
            same = false;
            let (a, b) = (ranked[f.expert as usize], ranked[r.expert as usize]);
            let near = a == b || (a - b).abs() <= tie * a.abs().max(b.abs());
            if !near {
                return Err(format!(
                    "expert {} (ranked {a}) vs {} (ranked {b}): {fast:?} vs {reference:?}",
                    f.expert, r.expert
                ));
            }
        }
    }
    if same {
        for (f, r) in fast.iter().zip(reference.iter()) {
            if !close(f.weight, r.weight, tol) {
                return Err(format!("weights differ: {fast:?} vs {reference:?}"));
            }
        }
    }
    Ok(())
}

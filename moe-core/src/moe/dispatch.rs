//! Dispatch: group the batch's (token, slot) pairs by expert, in caller memory, so each
//! expert's weights stream once per batch; apply the capacity limit on the way.
//!
//! Pair `f = t·k + j` is slot `j` (the token's `j`-th choice) of token `t`. Planning is two
//! counting passes over the pairs (O(T·k + E), no sorting unless batch-prioritised):
//! 1. with a capacity, walk the pairs in priority order (all slot-0 pairs of the batch, then
//!    all slot-1 pairs, …; tokens in sequence order or by descending top-1 weight) and keep
//!    a pair iff its expert has accepted fewer than C pairs so far;
//! 2. count kept pairs per expert, take the exclusive prefix sum as offsets, and place each
//!    kept pair at its expert's cursor in ascending `f` (a stable order: within an expert,
//!    tokens appear in batch order).
//!
//! A dropped pair contributes zero to its token's output; the token's surviving weights
//! are never renormalised (Mesh-TF, GShard; HF Switch's `p · x` for drops was a bug).

use super::capacity::{CapacityPolicy, DropPriority, LimitFn};
use crate::router::Selection;
use crate::workspace::{Carver, Layout, Words, mul};
use crate::{Error, Result};

/// Marks an empty slot (a token with fewer than k choices).
const EMPTY: u32 = u32::MAX;
/// Set on a dropped pair's expert id; expert ids stay below 2^31.
const DROPPED: u32 = 1 << 31;

/// Largest number of experts a layer may have (2^31 - 1: dispatch keeps a drop flag in the
/// top bit of an expert id).
pub const MAX_EXPERTS: usize = (DROPPED - 1) as usize;

/// One pair routed to an expert.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pair {
    /// Token index in the batch.
    pub token: usize,
    /// The token's choice rank (0 = first choice).
    pub slot: usize,
    /// Combine weight, from the router, unchanged.
    pub weight: f32,
}

/// What a dispatch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchReport {
    /// Pairs routed (choices present in the selections).
    pub pairs: usize,
    /// Pairs dropped by the capacity limit.
    pub dropped: usize,
    /// The capacity per expert, `None` when dropless.
    pub capacity: Option<usize>,
    /// The most pairs any expert runs.
    pub max_load: usize,
    /// Experts with at least one pair to run.
    pub active_experts: usize,
}

/// The pairs of a batch grouped by expert, living in caller memory.
#[derive(Debug)]
pub struct Dispatch<'w> {
    n_tokens: usize,
    k: usize,
    n_expert: usize,
    /// `[T·k]`: expert of pair f, `EMPTY`, or expert | `DROPPED`.
    pair_expert: Words<'w>,
    /// `[T·k]`: weight of pair f.
    pair_weight: Words<'w>,
    /// `[E + 1]`: start of each expert's run in `grouped`.
    offsets: Words<'w>,
    /// `[T·k]`: kept pair ids, grouped by expert.
    grouped: Words<'w>,
    report: DispatchReport,
}

/// The word counts of the regions [`Dispatch::plan`] carves, in carving order.
fn regions(n_tokens: usize, k: usize, n_expert: usize) -> [Option<usize>; 6] {
    let pairs = mul(n_tokens, k);
    [
        pairs,                   // pair_expert
        pairs,                   // pair_weight
        Some(n_tokens),          // token_order
        Some(n_expert),          // fill (counts, then cursors)
        n_expert.checked_add(1), // offsets
        pairs,                   // grouped
    ]
}

impl<'w> Dispatch<'w> {
    /// Exact bytes [`plan`](Self::plan) needs for `n_tokens` tokens (saturating at
    /// `usize::MAX`).
    pub fn workspace_bytes(n_tokens: usize, k: usize, n_expert: usize) -> usize {
        let mut layout = Layout::new();
        for words in regions(n_tokens, k, n_expert) {
            layout.words(words);
        }
        layout.total()
    }

    /// Groups the pairs of `selections` (one per token, at most `k` choices each, in rank
    /// order) by expert under `policy`. `on_drop(expert)` is called once per dropped pair
    /// (the router-statistics hook). Errors: a choice naming an expert outside
    /// `0..n_expert`, a selection longer than `k`, a bad capacity policy, or a workspace
    /// shorter than [`workspace_bytes`](Self::workspace_bytes).
    pub fn plan(
        selections: &[Selection],
        n_expert: usize,
        k: usize,
        policy: &CapacityPolicy,
        workspace: &'w mut [u8],
        on_drop: impl FnMut(u32),
    ) -> Result<Self> {
        let limit: LimitFn = CapacityPolicy::limit;
        Self::plan_with(selections, n_expert, k, policy, limit, workspace, on_drop)
    }

    /// [`plan`](Self::plan) with the capacity computed by `limit` (a layer's choice).
    pub(crate) fn plan_with(
        selections: &[Selection],
        n_expert: usize,
        k: usize,
        policy: &CapacityPolicy,
        limit: LimitFn,
        workspace: &'w mut [u8],
        mut on_drop: impl FnMut(u32),
    ) -> Result<Self> {
        let n_tokens = selections.len();
        if n_expert == 0 || n_expert > MAX_EXPERTS {
            return Err(Error::InvalidMoeConfig {
                reason: "expert count must be between 1 and 2^31 - 1",
            });
        }
        if k == 0 {
            return Err(Error::InvalidMoeConfig {
                reason: "k (experts per token) must be at least 1",
            });
        }
        if n_tokens
            .checked_mul(k)
            .is_none_or(|p| p > u32::MAX as usize)
        {
            return Err(Error::InvalidMoeConfig {
                reason: "more than 2^32 (token, slot) pairs in one batch",
            });
        }
        let needed = Self::workspace_bytes(n_tokens, k, n_expert);
        if workspace.len() < needed {
            return Err(Error::WorkspaceTooSmall {
                needed,
                actual: workspace.len(),
            });
        }
        let capacity = limit(policy, n_tokens, k, n_expert)?;

        let [r_expert, r_weight, r_order, r_fill, r_offsets, r_grouped] =
            regions(n_tokens, k, n_expert);
        let mut carver = Carver::new(workspace);
        let mut pair_expert = carver.words(r_expert)?;
        let mut pair_weight = carver.words(r_weight)?;
        let mut order = carver.words(r_order)?;
        let mut fill = carver.words(r_fill)?;
        let mut offsets = carver.words(r_offsets)?;
        let mut grouped = carver.words(r_grouped)?;

        // Flatten the selections into pair arrays, checking every id.
        let mut report = DispatchReport {
            capacity,
            ..DispatchReport::default()
        };
        for (t, sel) in selections.iter().enumerate() {
            if sel.len() > k {
                return Err(Error::TooManyChoices {
                    token: t,
                    count: sel.len(),
                    k,
                });
            }
            for j in 0..k {
                let f = t * k + j;
                match sel.get(j) {
                    Some(choice) => {
                        if choice.expert as usize >= n_expert {
                            return Err(Error::ExpertOutOfRange {
                                expert: choice.expert.into(),
                                n_expert: n_expert as u64,
                            });
                        }
                        pair_expert.set_u32(f, choice.expert);
                        pair_weight.set_f32(f, choice.weight);
                        report.pairs += 1;
                    }
                    None => {
                        pair_expert.set_u32(f, EMPTY);
                        pair_weight.set_f32(f, 0.0);
                    }
                }
            }
        }

        // Capacity: mark the pairs that do not fit, in priority order.
        if let Some(capacity) = capacity {
            for t in 0..n_tokens {
                order.set_u32(t, t as u32);
            }
            if policy.priority == DropPriority::BatchPrioritized {
                let top1 = |t: u32| -> f32 {
                    let w = selections
                        .get(t as usize)
                        .and_then(|s| s.first())
                        .map_or(f32::NEG_INFINITY, |c| c.weight);
                    if w.is_nan() { f32::NEG_INFINITY } else { w }
                };
                // Descending top-1 weight, ties to the earlier token: a total order.
                crate::sort::sort_by(order.raw_mut(), |a, b| {
                    let (a, b) = (u32::from_ne_bytes(*a), u32::from_ne_bytes(*b));
                    let (wa, wb) = (top1(a), top1(b));
                    wa > wb || (wa == wb && a < b)
                });
            }
            fill.fill_u32(0);
            for j in 0..k {
                for i in 0..n_tokens {
                    let f = order.u32(i) as usize * k + j;
                    let e = pair_expert.u32(f);
                    if e == EMPTY {
                        continue;
                    }
                    let taken = fill.u32(e as usize);
                    if (taken as usize) < capacity {
                        fill.set_u32(e as usize, taken + 1);
                    } else {
                        pair_expert.set_u32(f, e | DROPPED);
                        report.dropped += 1;
                        on_drop(e);
                    }
                }
            }
        }

        // Count kept pairs, prefix-sum into offsets, place in ascending pair id.
        fill.fill_u32(0);
        for f in 0..n_tokens * k {
            let e = pair_expert.u32(f);
            if e & DROPPED == 0 {
                let e = e as usize;
                fill.set_u32(e, fill.u32(e) + 1);
            }
        }
        let mut start = 0u32;
        for e in 0..n_expert {
            let count = fill.u32(e);
            offsets.set_u32(e, start);
            fill.set_u32(e, start);
            start += count;
            report.max_load = report.max_load.max(count as usize);
            report.active_experts += usize::from(count > 0);
        }
        offsets.set_u32(n_expert, start);
        for f in 0..n_tokens * k {
            let e = pair_expert.u32(f);
            if e & DROPPED == 0 {
                let cursor = fill.u32(e as usize);
                grouped.set_u32(cursor as usize, f as u32);
                fill.set_u32(e as usize, cursor + 1);
            }
        }

        Ok(Dispatch {
            n_tokens,
            k,
            n_expert,
            pair_expert,
            pair_weight,
            offsets,
            grouped,
            report,
        })
    }

    /// What the plan did.
    pub fn report(&self) -> DispatchReport {
        self.report
    }

    /// Number of tokens in the batch.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Number of experts.
    pub fn n_expert(&self) -> usize {
        self.n_expert
    }

    /// Number of pairs expert `e` runs (0 for an id out of range).
    pub fn load(&self, e: usize) -> usize {
        if e >= self.n_expert {
            return 0;
        }
        (self.offsets.u32(e + 1) - self.offsets.u32(e)) as usize
    }

    /// The `i`-th pair expert `e` runs (in batch order), if there is one.
    pub fn pair(&self, e: usize, i: usize) -> Option<Pair> {
        if i >= self.load(e) {
            return None;
        }
        let f = self.grouped.u32(self.offsets.u32(e) as usize + i) as usize;
        Some(self.pair_at(f))
    }

    /// The pairs expert `e` runs, in batch order.
    pub fn expert_pairs(&self, e: usize) -> impl Iterator<Item = Pair> + '_ {
        (0..self.load(e)).filter_map(move |i| self.pair(e, i))
    }

    /// Whether slot `slot` of token `token` holds a choice that runs (false for an empty
    /// slot, a dropped pair, or indices out of range).
    pub fn is_kept(&self, token: usize, slot: usize) -> bool {
        if token >= self.n_tokens || slot >= self.k {
            return false;
        }
        let e = self.pair_expert.u32(token * self.k + slot);
        e != EMPTY && e & DROPPED == 0
    }

    /// Whether slot `slot` of token `token` holds a choice the capacity limit dropped.
    pub fn is_dropped(&self, token: usize, slot: usize) -> bool {
        if token >= self.n_tokens || slot >= self.k {
            return false;
        }
        let e = self.pair_expert.u32(token * self.k + slot);
        e != EMPTY && e & DROPPED != 0
    }

    fn pair_at(&self, f: usize) -> Pair {
        Pair {
            token: f / self.k,
            slot: f % self.k,
            weight: self.pair_weight.f32(f),
        }
    }
}

//! [`MoeLayer`]: routed experts, an optional shared expert and a capacity policy, run
//! on a batch of 1..T tokens entirely inside a caller-provided workspace.
//!
//! One forward pass: flatten the selections into (token, slot) pairs and group them by
//! expert ([`Dispatch`]); quantize every input row once per activation format the layer's
//! weights need; run each expert with at least one pair once over its tokens (tiles of at
//! most T rows), adding `weight · expert(x)` into `out`; then the shared expert over all
//! tokens. Per token the routed contributions are added in ascending expert id, so a
//! token's output does not depend on the rest of the batch (unless capacity drops it).

use super::capacity::{CapacityPolicy, LimitFn, no_limit};
use super::dispatch::{Dispatch, DispatchReport, MAX_EXPERTS};
use super::experts::ExpertStack;
use super::ffn::{ACT_TYPES, ActivationRows, Ffn, TileScratch, act_index, act_row_bytes};
use super::shared::{SharedExpert, gate_weight};
use crate::kernels::Kernels;
use crate::parallel::{Parallel, Serial};
use crate::router::{MAX_K, RouteReport, Router, Selection};
use crate::workspace::{Carver, Layout, mul};
use crate::{Error, Result};

/// What one forward pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ForwardReport {
    /// Tokens in the batch.
    pub n_tokens: usize,
    /// What the router reported (`None` when the caller routed).
    pub route: Option<RouteReport>,
    /// Pairs, drops, capacity and load of the dispatch.
    pub dispatch: DispatchReport,
}

/// A Mixture-of-Experts FFN layer over borrowed weights.
#[derive(Clone, Copy, Debug)]
pub struct MoeLayer<'a> {
    router: Option<Router<'a>>,
    experts: ExpertStack<'a>,
    shared: SharedExpert<'a>,
    k: usize,
    capacity: CapacityPolicy,
    /// How `capacity` becomes a number: [`no_limit`] until
    /// [`with_capacity`](Self::with_capacity), so a dropless layer links no capacity
    /// formula.
    limit: LimitFn,
    kernels: Kernels,
    parallel: &'a dyn Parallel,
}

/// Byte and word counts of the forward workspace regions, in carving order.
struct Regions {
    dispatch: usize,
    activations: [Option<usize>; 4],
    tile_tokens: Option<usize>,
    hidden: Option<usize>,
    quantized: Option<usize>,
    down: Option<usize>,
}

impl<'a> MoeLayer<'a> {
    /// A dropless layer routing each token to at most `k` of `experts`, without a shared
    /// expert, using the scalar kernels.
    pub fn new(experts: ExpertStack<'a>, k: usize) -> Result<Self> {
        if k == 0 || k > MAX_K || k > experts.n_expert() {
            return Err(Error::InvalidMoeConfig {
                reason: "k must be between 1 and min(MAX_K, n_expert)",
            });
        }
        if experts.n_expert() > MAX_EXPERTS {
            return Err(Error::InvalidMoeConfig {
                reason: "more than 2^31 - 1 experts",
            });
        }
        Ok(MoeLayer {
            router: None,
            experts,
            shared: SharedExpert::None,
            k,
            capacity: CapacityPolicy::DROPLESS,
            limit: no_limit,
            kernels: Kernels::scalar(),
            parallel: &Serial,
        })
    }

    /// The same layer with a shared expert (its width must match the experts').
    pub fn with_shared(mut self, shared: SharedExpert<'a>) -> Result<Self> {
        if let Some(ffn) = shared.ffn()
            && ffn.n_embd() != self.experts.n_embd()
        {
            return Err(Error::BadTensorShape {
                tensor: crate::error::name_of("ffn_up_shexp"),
                dim: 0,
                expected: self.experts.n_embd() as u64,
                actual: ffn.n_embd() as u64,
            });
        }
        self.shared = shared;
        Ok(self)
    }

    /// The same layer routed by `router`, which must route over the layer's experts and
    /// width and choose at most the layer's k experts per token.
    pub fn with_router(mut self, router: Router<'a>) -> Result<Self> {
        let c = router.config();
        if c.n_expert != self.experts.n_expert() {
            return Err(Error::BadTensorShape {
                tensor: crate::error::name_of("ffn_gate_inp.weight"),
                dim: 1,
                expected: self.experts.n_expert() as u64,
                actual: c.n_expert as u64,
            });
        }
        if c.n_embd != self.experts.n_embd() {
            return Err(Error::BadTensorShape {
                tensor: crate::error::name_of("ffn_gate_inp.weight"),
                dim: 0,
                expected: self.experts.n_embd() as u64,
                actual: c.n_embd as u64,
            });
        }
        if c.experts_per_token() > self.k {
            return Err(Error::InvalidMoeConfig {
                reason: "the router chooses more experts per token than the layer's k",
            });
        }
        self.router = Some(router);
        Ok(self)
    }

    /// The router, if the layer has one.
    pub fn router(&self) -> Option<&Router<'a>> {
        self.router.as_ref()
    }

    /// The same layer with a capacity limit.
    pub fn with_capacity(mut self, capacity: CapacityPolicy) -> Self {
        self.capacity = capacity;
        self.limit = CapacityPolicy::limit;
        self
    }

    /// The same layer computing through `kernels` (chosen once, for example by
    /// `moe_std::kernels::detect()`; [`Kernels::scalar`] by default). Every level gives
    /// the same bits for quantized weights.
    pub fn with_kernels(mut self, kernels: &Kernels) -> Self {
        self.kernels = *kernels;
        self
    }

    /// The same layer splitting each expert's matrices by rows across `parallel` (for
    /// example `moe_std::pool::ThreadPool`; [`Serial`] by default). The results are the
    /// same bits whatever the runner.
    pub fn with_parallel(mut self, parallel: &'a dyn Parallel) -> Self {
        self.parallel = parallel;
        self
    }

    /// The routed experts.
    pub fn experts(&self) -> &ExpertStack<'a> {
        &self.experts
    }

    /// The shared expert.
    pub fn shared(&self) -> &SharedExpert<'a> {
        &self.shared
    }

    /// Experts per token the layer is sized for.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The capacity policy.
    pub fn capacity(&self) -> &CapacityPolicy {
        &self.capacity
    }

    /// Model width.
    pub fn n_embd(&self) -> usize {
        self.experts.n_embd()
    }

    /// The activation formats some weight of the layer reads its input in.
    fn needed_activations(&self) -> Result<[bool; 4]> {
        let mut needed = [false; 4];
        let expert = self.experts.expert(0)?;
        let shared_gate = self.shared.gate().and_then(|g| g.ty().activation_type());
        let types = expert
            .input_types()
            .chain(self.shared.ffn().into_iter().flat_map(Ffn::input_types))
            .chain(shared_gate);
        for ty in types {
            if let Some(i) = act_index(ty) {
                needed[i] = true;
            }
        }
        Ok(needed)
    }

    fn regions(&self, n_tokens: usize) -> Result<Regions> {
        let needed = self.needed_activations()?;
        let mut activations = [Some(0); 4];
        for (i, a) in activations.iter_mut().enumerate() {
            if needed[i] {
                *a = mul(n_tokens, act_row_bytes(ACT_TYPES[i], self.n_embd()));
            }
        }
        let expert = self.experts.expert(0)?;
        let shared = self.shared.ffn();
        let max_ff = expert.n_ff().max(shared.map_or(0, Ffn::n_ff));
        let max_hrb = expert
            .hidden_row_bytes()
            .max(shared.map_or(0, Ffn::hidden_row_bytes));
        Ok(Regions {
            dispatch: Dispatch::workspace_bytes(n_tokens, self.k, self.experts.n_expert()),
            activations,
            tile_tokens: Some(n_tokens),
            hidden: mul(n_tokens, max_ff),
            quantized: mul(n_tokens, max_hrb),
            down: mul(n_tokens, self.n_embd()),
        })
    }

    /// Exact bytes [`forward_selected`](Self::forward_selected) (and the `bytes` part of
    /// [`forward`](Self::forward)'s workspace) needs for a batch of `n_tokens` tokens
    /// (any alignment; saturates at `usize::MAX`).
    pub fn workspace_bytes(&self, n_tokens: usize) -> usize {
        if n_tokens == 0 {
            return 0;
        }
        let Ok(r) = self.regions(n_tokens) else {
            return usize::MAX;
        };
        let mut layout = Layout::new();
        layout.bytes(Some(r.dispatch));
        for a in r.activations {
            layout.bytes(a);
        }
        layout
            .words(r.tile_tokens)
            .words(r.tile_tokens)
            .words(r.hidden)
            .bytes(r.quantized)
            .words(r.down);
        layout.total()
    }

    /// Runs the layer on `selections.len()` tokens routed by the caller: `hidden` and `out`
    /// are `T × n_embd` row-major; `out` is overwritten. Dropped pairs contribute zero.
    pub fn forward_selected(
        &self,
        hidden: &[f32],
        selections: &[Selection],
        out: &mut [f32],
        workspace: &mut [u8],
    ) -> Result<ForwardReport> {
        self.forward_selected_with(hidden, selections, out, workspace, |_| {})
    }

    /// [`forward_selected`](Self::forward_selected) calling `on_drop(expert)` for each
    /// pair the capacity limit drops (the router-statistics hook).
    pub fn forward_selected_with(
        &self,
        hidden: &[f32],
        selections: &[Selection],
        out: &mut [f32],
        workspace: &mut [u8],
        on_drop: impl FnMut(u32),
    ) -> Result<ForwardReport> {
        let n_tokens = selections.len();
        let n_embd = self.n_embd();
        let len = mul(n_tokens, n_embd).ok_or(Error::InvalidMoeConfig {
            reason: "batch too large",
        })?;
        for actual in [hidden.len(), out.len()] {
            if actual != len {
                return Err(Error::LengthMismatch {
                    expected: len,
                    actual,
                });
            }
        }
        let needed = self.workspace_bytes(n_tokens);
        if workspace.len() < needed {
            return Err(Error::WorkspaceTooSmall {
                needed,
                actual: workspace.len(),
            });
        }
        if n_tokens == 0 {
            return Ok(ForwardReport::default());
        }

        let r = self.regions(n_tokens)?;
        let mut carver = Carver::new(workspace);
        let dispatch_ws = carver.bytes(Some(r.dispatch))?;
        let needed_acts = self.needed_activations()?;
        let act_regions = [
            carver.bytes(r.activations[0])?,
            carver.bytes(r.activations[1])?,
            carver.bytes(r.activations[2])?,
            carver.bytes(r.activations[3])?,
        ];
        let mut tile = TileScratch {
            tokens: carver.words(r.tile_tokens)?,
            weights: carver.words(r.tile_tokens)?,
            hidden: carver.words(r.hidden)?,
            quantized: carver.bytes(r.quantized)?,
            down: carver.words(r.down)?,
        };

        let dispatch = Dispatch::plan_with(
            selections,
            self.experts.n_expert(),
            self.k,
            &self.capacity,
            self.limit,
            dispatch_ws,
            on_drop,
        )?;
        let acts = ActivationRows::quantize(hidden, n_embd, needed_acts, act_regions)?;
        out.fill(0.0);

        // Routed experts, each streamed once per tile of at most T pairs.
        for e in 0..self.experts.n_expert() {
            let load = dispatch.load(e);
            if load == 0 {
                continue;
            }
            let ffn = self.experts.expert(e)?;
            let mut start = 0;
            while start < load {
                let m = (load - start).min(n_tokens);
                for i in 0..m {
                    if let Some(p) = dispatch.pair(e, start + i) {
                        tile.tokens.set_u32(i, p.token as u32);
                        tile.weights.set_f32(i, p.weight);
                    }
                }
                ffn.run_tile(&self.kernels, self.parallel, &acts, m, &mut tile, out)?;
                start += m;
            }
        }

        // The shared expert, over every token.
        if let Some(ffn) = self.shared.ffn() {
            for t in 0..n_tokens {
                let w = match self.shared.gate() {
                    Some(gate) => {
                        let act = gate.ty().activation_type().unwrap_or(gate.ty());
                        gate_weight(self.kernels.dot_kernel(), gate, acts.row(act, t))?
                    }
                    None => 1.0,
                };
                tile.tokens.set_u32(t, t as u32);
                tile.weights.set_f32(t, w);
            }
            ffn.run_tile(
                &self.kernels,
                self.parallel,
                &acts,
                n_tokens,
                &mut tile,
                out,
            )?;
        }

        Ok(ForwardReport {
            n_tokens,
            route: None,
            dispatch: dispatch.report(),
        })
    }
}

//! `--gpu`: a model on a CUDA device ([`moe_cuda`]), whole or in part ([`GpuRun`]).
//!
//! Without a budget the whole model goes to the device ([`moe_cuda::GpuModel`]:
//! embeddings, attention with its KV cache, FFNs, head) when the GPU path runs every
//! part of it; otherwise (DeepSeek's latent attention, a weight type the kernels lack,
//! [`GpuOptions::ffn_only`]) the FFN blocks go there ([`GpuOffload`]) while attention,
//! norms and the head stay on the CPU path ([`Model::forward_offloaded`]). With a budget
//! ([`GpuOptions::budget`]), [`place_blocks`] chooses what fits: dense FFNs and shared
//! experts first (every token uses them), then routed experts most-used first
//! ([`GpuOptions::counts`], router statistics from `moe route --json`; without them an
//! even spread: expert 0 of every block, then expert 1, …). A block's routed experts
//! that are not on the device run on the CPU path with the device's routing
//! ([`GpuMoeLayer::hybrid_forward`]). A block the device cannot run (a weight type or
//! router the kernels lack) stays on the CPU path, and [`GpuOffload::skipped`] says why.

use moe_core::model::{FfnOffload, Model};
use moe_core::moe::MoeLayer;
use moe_core::router::{Choice, Selection};
use moe_cuda::{GpuDevice, GpuError, GpuModel, GpuMoeLayer, RouterTensors, placement};

/// What to put on the device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// The CUDA device's ordinal.
    pub ordinal: usize,
    /// At most this many bytes of FFN weights on the device; `None`: all of them (an
    /// error when they do not fit in its free memory).
    pub budget: Option<u64>,
    /// Tokens routed to each expert of each block (`counts[layer][expert]`); missing
    /// blocks or an empty list: an even spread.
    pub counts: Vec<Vec<u64>>,
    /// Only the FFN blocks on the device, even when the whole model could go (the
    /// routing of each block is then reported, as `moe route` needs).
    pub ffn_only: bool,
}

/// What runs on the device.
#[derive(Debug)]
pub enum GpuRun {
    /// The whole model: its own KV cache on the device.
    Whole {
        /// The device.
        device: GpuDevice,
        /// The model on it.
        model: Box<GpuModel>,
    },
    /// The FFN blocks (all, or within a budget); the rest on the CPU path.
    Blocks(GpuOffload),
}

impl GpuRun {
    /// Puts `model` on the device as `options` say: the whole model when there is no
    /// budget, `whole_allowed` (no position evaluated on the CPU yet), not
    /// [`GpuOptions::ffn_only`], and [`GpuModel::check`] accepts it; else its FFN blocks.
    /// `context` and `max_batch` size the whole model's KV cache and scratch.
    pub fn new(
        model: &Model<'_>,
        options: &GpuOptions,
        whole_allowed: bool,
        context: usize,
        max_batch: usize,
    ) -> Result<Self, GpuError> {
        let whole = whole_allowed
            && options.budget.is_none()
            && !options.ffn_only
            && GpuModel::check(model).is_ok();
        if whole {
            let device = GpuDevice::new(options.ordinal)?;
            let gpu = GpuModel::new(&device, model, context, max_batch)?;
            return Ok(GpuRun::Whole {
                device,
                model: Box::new(gpu),
            });
        }
        GpuOffload::new(model, options).map(GpuRun::Blocks)
    }

    /// Blocks left on the CPU path because the device cannot run them, and why (none
    /// for a whole model).
    pub fn skipped(&self) -> &[(usize, GpuError)] {
        match self {
            GpuRun::Whole { .. } => &[],
            GpuRun::Blocks(b) => b.skipped(),
        }
    }

    /// Whether the whole model runs on the device.
    pub fn is_whole(&self) -> bool {
        matches!(self, GpuRun::Whole { .. })
    }

    /// One line: the device and what is on it.
    pub fn summary(&self) -> String {
        match self {
            GpuRun::Whole { device, model } => format!(
                "gpu: {} ({}): the whole model, {:.1} MiB of weights",
                device.arch(),
                kernels_origin(device),
                model.weight_bytes() as f64 / (1u64 << 20) as f64,
            ),
            GpuRun::Blocks(b) => b.summary(),
        }
    }
}

fn kernels_origin(device: &GpuDevice) -> &'static str {
    if device.kernels_cached() {
        "kernels cached"
    } else {
        "kernels compiled"
    }
}

/// One block's FFN weights as placement sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockWeights {
    /// Bytes that run for every token whenever the block is on the device: its shared
    /// expert (0 without one).
    pub fixed: u64,
    /// Bytes of each routed expert; a dense block is one expert every token uses.
    pub experts: Vec<u64>,
    /// Whether the block is dense.
    pub dense: bool,
}

impl BlockWeights {
    /// The sizes of `layer`'s weights (dense when it has no router).
    pub fn of(layer: &MoeLayer<'_>) -> Result<Self, GpuError> {
        Ok(BlockWeights {
            fixed: placement::shared_bytes(layer),
            experts: placement::expert_bytes(layer.experts())?,
            dense: layer.router().is_none(),
        })
    }
}

/// Chooses, per block, which experts go to the device within `budget` bytes: `None`
/// for a block left on the CPU path, else `resident[expert]`.
///
/// First every block's fixed part (its shared expert) and every dense block, in layer
/// order, while they fit: every token runs them. A block whose fixed part does not fit
/// stays on the CPU whole. Then the routed experts of the other blocks, most-used first
/// by `counts` (ties and missing counts: lower expert id first, then lower layer, so
/// equal counts spread evenly over the blocks), each placed when it still fits.
pub fn place_blocks(
    blocks: &[BlockWeights],
    counts: &[Vec<u64>],
    budget: u64,
) -> Vec<Option<Vec<bool>>> {
    let mut left = budget;
    let mut take = |bytes: u64| {
        let fits = bytes <= left;
        if fits {
            left -= bytes;
        }
        fits
    };
    let mut placed: Vec<Option<Vec<bool>>> = vec![None; blocks.len()];
    let mut open = vec![false; blocks.len()];
    for (l, b) in blocks.iter().enumerate() {
        if b.dense {
            if take(b.experts.iter().sum::<u64>() + b.fixed) {
                placed[l] = Some(vec![true; b.experts.len()]);
            }
        } else {
            open[l] = take(b.fixed);
        }
    }
    // The routed experts of the open blocks in (expert, layer) order, so that
    // `placement::place` (most-used first, ties to the lower index) spreads equal counts
    // evenly over the blocks.
    let mut units: Vec<(usize, usize)> = blocks
        .iter()
        .enumerate()
        .filter(|&(l, _)| open[l])
        .flat_map(|(l, b)| (0..b.experts.len()).map(move |e| (l, e)))
        .collect();
    units.sort_by_key(|&(l, e)| (e, l));
    let unit_counts: Vec<u64> = units
        .iter()
        .map(|&(l, e)| counts.get(l).and_then(|c| c.get(e)).copied().unwrap_or(0))
        .collect();
    let unit_bytes: Vec<u64> = units.iter().map(|&(l, e)| blocks[l].experts[e]).collect();
    // Cannot fail: the two lists have one entry per unit.
    if let Ok(chosen) = placement::place(&unit_counts, &unit_bytes, left) {
        for (&(l, e), _) in units.iter().zip(&chosen.resident).filter(|(_, r)| **r) {
            placed[l].get_or_insert_with(|| vec![false; blocks[l].experts.len()])[e] = true;
        }
    }
    // A block with a shared expert on the device runs it even with no routed expert.
    for (l, b) in blocks.iter().enumerate() {
        if open[l] && b.fixed > 0 && placed[l].is_none() {
            placed[l] = Some(vec![false; b.experts.len()]);
        }
    }
    placed
}

/// The FFN blocks of a model on a CUDA device: the [`FfnOffload`] a
/// [`Session`](crate::session::Session) runs with.
#[derive(Debug)]
pub struct GpuOffload {
    device: GpuDevice,
    blocks: Vec<Option<GpuMoeLayer>>,
    skipped: Vec<(usize, GpuError)>,
}

impl GpuOffload {
    /// Opens the device and uploads `model`'s FFN blocks as `options` say.
    ///
    /// Errors: no driver, NVRTC or device; device memory too small for what was asked
    /// (without a budget: the whole model's FFNs); a driver failure. A block the kernels
    /// cannot run is not an error: it stays on the CPU path (see [`skipped`](Self::skipped)).
    pub fn new(model: &Model<'_>, options: &GpuOptions) -> Result<Self, GpuError> {
        let device = GpuDevice::new(options.ordinal)?;
        let n_layer = model.config().n_layer;
        let mut weights = Vec::with_capacity(n_layer);
        for l in 0..n_layer {
            let layer = model.ffn(l).ok_or(GpuError::Unsupported {
                reason: "a block without an FFN",
            })?;
            weights.push(BlockWeights::of(layer)?);
        }
        let placement = match options.budget {
            Some(budget) => place_blocks(&weights, &options.counts, budget),
            None => weights
                .iter()
                .map(|w| Some(vec![true; w.experts.len()]))
                .collect(),
        };
        let mut blocks = Vec::with_capacity(n_layer);
        let mut skipped = Vec::new();
        for (l, resident) in placement.into_iter().enumerate() {
            let (Some(resident), Some(layer)) = (resident, model.ffn(l)) else {
                blocks.push(None);
                continue;
            };
            let router = layer.router().and_then(|r| {
                r.weight().map(|w| RouterTensors {
                    weight: *w,
                    bias: r.bias().copied(),
                })
            });
            match GpuMoeLayer::with_placement(&device, layer, router, Some(&resident), None) {
                Ok(gpu) => blocks.push(Some(gpu)),
                Err(e @ (GpuError::Unsupported { .. } | GpuError::UnsupportedType { .. })) => {
                    skipped.push((l, e));
                    blocks.push(None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(GpuOffload {
            device,
            blocks,
            skipped,
        })
    }

    /// The device.
    pub fn device(&self) -> &GpuDevice {
        &self.device
    }

    /// Blocks left on the CPU path because the device cannot run them, and why.
    pub fn skipped(&self) -> &[(usize, GpuError)] {
        &self.skipped
    }

    /// Per block: `None` on the CPU path, else which of its experts are on the device.
    pub fn resident(&self) -> Vec<Option<&[bool]>> {
        self.blocks
            .iter()
            .map(|b| b.as_ref().map(GpuMoeLayer::resident))
            .collect()
    }

    /// Bytes of FFN weights on the device.
    pub fn weight_bytes(&self) -> u64 {
        self.blocks
            .iter()
            .flatten()
            .map(GpuMoeLayer::weight_bytes)
            .sum()
    }

    /// One line: the device, and how many blocks and experts are on it.
    pub fn summary(&self) -> String {
        let (mut experts, mut total) = (0, 0);
        for r in self.resident().into_iter().flatten() {
            experts += r.iter().filter(|&&x| x).count();
            total += r.len();
        }
        let on = self.blocks.iter().flatten().count();
        format!(
            "gpu: {} ({}): {on} of {} FFN blocks, {experts} of their {total} experts, {:.1} MiB",
            self.device.arch(),
            kernels_origin(&self.device),
            self.blocks.len(),
            self.weight_bytes() as f64 / (1u64 << 20) as f64,
        )
    }
}

impl FfnOffload for GpuOffload {
    type Error = GpuError;

    fn takes(&self, layer: usize) -> bool {
        self.blocks.get(layer).is_some_and(Option::is_some)
    }

    fn forward(
        &mut self,
        layer: usize,
        cpu: &MoeLayer<'_>,
        input: &[f32],
        selections: &mut [Selection],
        out: &mut [f32],
        workspace: &mut [u8],
    ) -> Result<(), GpuError> {
        let gpu =
            self.blocks
                .get_mut(layer)
                .and_then(Option::as_mut)
                .ok_or(GpuError::Unsupported {
                    reason: "a block that is not on the device",
                })?;
        if cpu.router().is_none() {
            // Dense: the model filled in expert 0 at weight 1.
            return gpu.forward_selected(input, selections, out);
        }
        gpu.hybrid_forward(cpu, input, out, workspace)?;
        let routed = gpu.routed(selections.len())?;
        for (sel, routed) in selections.iter_mut().zip(routed) {
            *sel = Selection::new();
            for (expert, weight) in routed {
                // Cannot fail: the device writes at most the layer's k choices.
                let _ = sel.push(Choice { expert, weight });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(experts: &[u64]) -> BlockWeights {
        BlockWeights {
            fixed: 0,
            experts: experts.to_vec(),
            dense: false,
        }
    }

    #[test]
    fn without_counts_the_budget_spreads_evenly_over_blocks() {
        let blocks = vec![routed(&[10; 4]), routed(&[10; 4]), routed(&[10; 4])];
        let p = place_blocks(&blocks, &[], 60);
        for r in &p {
            assert_eq!(r.as_deref(), Some(&[true, true, false, false][..]));
        }
    }

    #[test]
    fn counts_put_the_most_used_experts_first_across_blocks() {
        let blocks = vec![routed(&[10; 3]), routed(&[10; 3])];
        let counts = vec![vec![1, 50, 2], vec![40, 3, 0]];
        let p = place_blocks(&blocks, &counts, 25);
        assert_eq!(p[0].as_deref(), Some(&[false, true, false][..]));
        assert_eq!(p[1].as_deref(), Some(&[true, false, false][..]));
    }

    #[test]
    fn dense_blocks_and_shared_experts_come_first_and_gate_their_block() {
        let dense = BlockWeights {
            fixed: 0,
            experts: vec![30],
            dense: true,
        };
        let shared = |fixed| BlockWeights {
            fixed,
            experts: vec![10; 2],
            dense: false,
        };
        // 30 (dense) + 5 (first shared) fit; the second shared expert (20) does not,
        // so its block stays on the CPU although its experts would fit.
        let p = place_blocks(&[dense, shared(5), shared(20)], &[], 45);
        assert_eq!(p[0].as_deref(), Some(&[true][..]));
        assert_eq!(p[1].as_deref(), Some(&[true, false][..]));
        assert_eq!(p[2], None);
        // A shared expert alone still puts its block on the device.
        let p = place_blocks(&[shared(5)], &[], 9);
        assert_eq!(p[0].as_deref(), Some(&[false, false][..]));
        // Nothing fits: everything on the CPU.
        assert_eq!(place_blocks(&[routed(&[10])], &[], 9), vec![None]);
    }

    #[test]
    fn the_budget_is_never_exceeded_and_larger_experts_are_skipped_for_smaller() {
        let blocks = vec![routed(&[8, 3, 3]), routed(&[5, 1])];
        let counts = vec![vec![9, 1, 1], vec![5, 0]];
        let p = place_blocks(&blocks, &counts, 10);
        let used: u64 = p
            .iter()
            .zip(&blocks)
            .filter_map(|(r, b)| r.as_ref().map(|r| (r, b)))
            .flat_map(|(r, b)| r.iter().zip(&b.experts).filter(|x| *x.0).map(|x| *x.1))
            .sum();
        assert!(used <= 10);
        // 8 (most used: 2 left), then neither 5 nor the 3s fit, then 1 does.
        assert_eq!(p[0].as_deref(), Some(&[true, false, false][..]));
        assert_eq!(p[1].as_deref(), Some(&[false, true][..]));
    }

    #[test]
    fn no_device_is_a_clear_error() {
        if !moe_cuda::devices().is_empty() {
            println!("skipped: a CUDA device is present");
            return;
        }
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../moe-core/tests/fixtures/models/mixtral-tiny-q4_0.gguf"
        ))
        .unwrap();
        let file = moe_core::gguf::File::parse(&bytes).unwrap();
        let model: Model<'_> = Model::from_gguf(&file).unwrap();
        let err = GpuOffload::new(&model, &GpuOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                GpuError::NoDriver | GpuError::NoNvrtc | GpuError::NoDevice { .. }
            ),
            "{err:?}"
        );
    }
}

//! Granularity sweep at fixed active parameters (Krajewski et al. 2024): d_model 4096, the
//! total expert width of a Mixtral expert (14336) split G ways. G = 1 is Mixtral's layer
//! (8 experts, top-2); G = 2, 4, 8, 16, 32 have 8·G experts of width 14336/G and top-2G,
//! so every token runs 2 × 14336 hidden units. Reported: layer time per token (router,
//! dispatch, quantized experts, combine) and the router's share of it.
//!
//! Weights are Q4_0 (random blocks with sane scales), one buffer reused by every G: a
//! stack of E·n_ff rows is the same bytes whatever the split, so the sweep holds about
//! 0.8 GiB of experts. The router is F32 (llama.cpp never quantizes it).
//!
//! G = 64 would need top-128, above `router::MAX_K` = 64, so the sweep stops at G = 32.
//! `MOE_GRANULARITY_TOKENS` (default 1) sets the batch; per-token times divide by it.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use moe_benches::random::Rng;
use moe_benches::timing::median_seconds;
use moe_core::TensorType;
use moe_core::moe::{Activation, ExpertStack, MoeLayer, Workspace};
use moe_core::quant::float::f32_to_f16;
use moe_core::router::{MAX_K, Router, RouterConfig, Selection};
use moe_core::tensor::TensorView;

const D_MODEL: usize = 4096;
const EXPERT_WIDTH: usize = 14336;
const COARSE_EXPERTS: usize = 8;
const COARSE_K: usize = 2;
const GRANULARITIES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
const WEIGHT_TYPE: TensorType = TensorType::Q4_0;

/// `n_elements` of random Q4_0: random nibbles, scales around 0.01.
fn random_q4_0(rng: &mut Rng, n_elements: usize) -> Vec<u8> {
    let bb = WEIGHT_TYPE.block_bytes();
    let mut out = vec![0u8; n_elements / WEIGHT_TYPE.block_len() * bb];
    for block in out.chunks_exact_mut(bb) {
        let d = f32_to_f16(rng.uniform(0.005, 0.015)).to_le_bytes();
        block[..2].copy_from_slice(&d);
        let r = rng.next_u64().to_le_bytes();
        let s = rng.next_u64().to_le_bytes();
        block[2..10].copy_from_slice(&r);
        block[10..18].copy_from_slice(&s);
    }
    out
}

/// The sweep's shared buffers.
struct Weights {
    gate: Vec<u8>,
    up: Vec<u8>,
    down: Vec<u8>,
    /// F32 router rows for the largest E.
    router: Vec<u8>,
    hidden: Vec<f32>,
}

fn weights(n_tokens: usize) -> Weights {
    let mut rng = Rng(42);
    let n = D_MODEL * EXPERT_WIDTH * COARSE_EXPERTS;
    let max_e = COARSE_EXPERTS * GRANULARITIES.iter().max().unwrap();
    Weights {
        gate: random_q4_0(&mut rng, n),
        up: random_q4_0(&mut rng, n),
        down: random_q4_0(&mut rng, n),
        router: (0..D_MODEL * max_e)
            .flat_map(|_| rng.uniform(-0.05, 0.05).to_le_bytes())
            .collect(),
        hidden: (0..n_tokens * D_MODEL)
            .map(|_| rng.uniform(-1.0, 1.0))
            .collect(),
    }
}

/// The layer at granularity `g`: 8·g experts of width 14336/g, top-2g, softmax router
/// renormalised (Mixtral's rule).
fn layer(w: &Weights, g: usize) -> MoeLayer<'_> {
    let (e, f, k) = (COARSE_EXPERTS * g, EXPERT_WIDTH / g, COARSE_K * g);
    let (d64, f64_, e64) = (D_MODEL as u64, f as u64, e as u64);
    let stack = ExpertStack::new(
        Some(TensorView::new(WEIGHT_TYPE, &[d64, f64_, e64], &w.gate).unwrap()),
        TensorView::new(WEIGHT_TYPE, &[d64, f64_, e64], &w.up).unwrap(),
        TensorView::new(WEIGHT_TYPE, &[f64_, d64, e64], &w.down).unwrap(),
        Activation::Silu,
    )
    .unwrap();
    let router_bytes = &w.router[..D_MODEL * e * 4];
    let router = Router::new(RouterConfig::mixtral(D_MODEL, e, k))
        .unwrap()
        .with_weight(TensorView::new(TensorType::F32, &[d64, e64], router_bytes).unwrap())
        .unwrap();
    MoeLayer::new(stack, k)
        .unwrap()
        .with_router(router)
        .unwrap()
}

/// Caller memory for one layer and batch.
struct Memory {
    selections: Vec<Selection>,
    router: Vec<f32>,
    bytes: Vec<u8>,
    out: Vec<f32>,
}

impl Memory {
    fn new(layer: &MoeLayer, n_tokens: usize) -> Self {
        let size = layer.workspace_size(n_tokens);
        Memory {
            selections: vec![Selection::new(); size.selections],
            router: vec![0.0; size.router],
            bytes: vec![0; size.bytes],
            out: vec![0.0; n_tokens * D_MODEL],
        }
    }

    fn forward(&mut self, layer: &MoeLayer, hidden: &[f32]) {
        let mut ws = Workspace {
            selections: &mut self.selections,
            router: &mut self.router,
            bytes: &mut self.bytes,
        };
        layer
            .forward(black_box(hidden), &[], &mut self.out, &mut ws)
            .unwrap();
        black_box(&self.out);
    }

    fn route(&mut self, layer: &MoeLayer, hidden: &[f32]) {
        let router = layer.router().unwrap();
        router
            .route(
                black_box(hidden),
                &[],
                &mut self.router,
                &mut self.selections,
                None,
            )
            .unwrap();
        black_box(&self.selections);
    }
}

fn n_tokens() -> usize {
    std::env::var("MOE_GRANULARITY_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Granularities whose top-k fits a selection.
fn granularities() -> impl Iterator<Item = usize> {
    GRANULARITIES.into_iter().filter(|g| COARSE_K * g <= MAX_K)
}

fn granularity(c: &mut Criterion) {
    let t = n_tokens();
    for g in GRANULARITIES.into_iter().filter(|g| COARSE_K * g > MAX_K) {
        eprintln!(
            "granularity: skipping G = {g}: top-{} exceeds MAX_K = {MAX_K}",
            COARSE_K * g
        );
    }
    let w = weights(t);
    let mut group = c.benchmark_group(format!("granularity/T={t}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(t as u64));
    for g in granularities() {
        let layer = layer(&w, g);
        let mut mem = Memory::new(&layer, t);
        group.bench_with_input(BenchmarkId::new("layer", g), &g, |b, _| {
            b.iter(|| mem.forward(&layer, &w.hidden))
        });
        group.bench_with_input(BenchmarkId::new("route", g), &g, |b, _| {
            b.iter(|| mem.route(&layer, &w.hidden))
        });
    }
    group.finish();

    // A summary table from plain medians (criterion's own report has the details).
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test") {
        println!("\ngranularity sweep, T = {t}, {WEIGHT_TYPE} experts, scalar kernels (medians)");
        println!("   G     E    k  n_ff  layer ms/token  route ms/token  route share");
        for g in granularities() {
            let layer = layer(&w, g);
            let mut mem = Memory::new(&layer, t);
            let layer_s = median_seconds(5, || mem.forward(&layer, &w.hidden));
            let route_s = median_seconds(21, || mem.route(&layer, &w.hidden));
            println!(
                "{g:>4} {:>5} {:>4} {:>5} {:>15.2} {:>15.4} {:>11.3}%",
                COARSE_EXPERTS * g,
                COARSE_K * g,
                EXPERT_WIDTH / g,
                layer_s * 1e3 / t as f64,
                route_s * 1e3 / t as f64,
                100.0 * route_s / layer_s
            );
        }
    }
}

criterion_group!(benches, granularity);
criterion_main!(benches);

//! A PEER layer against a dense FFN and a top-2 MoE of the same parameter count (issue 7's
//! second benchmark): d_model 512, every matrix Q8_0, the same machine and kernels.
//!
//! - **peer**: H = 8 heads, k = 16 (per half and per head, softmax over 16), d_key = 256,
//!   N = 2^L singleton experts (default L = 16, n = 256 sub-keys per half), GELU; query
//!   projection Q8_0, sub-keys F16 (as `peer.rs`), u and v Q8_0. P = query + sub-keys + u +
//!   v parameters.
//! - **dense**: one SwiGLU FFN (`MoeLayer` with E = 1, k = 1, the token routed by the caller
//!   to expert 0 with weight 1), width F = 8·f so that 3·d·F ≈ P.
//! - **moe**: 8 SwiGLU experts of width f (3·d·8·f ≈ P, the same bytes as the dense FFN),
//!   an F32 softmax router, top-2 renormalised (Mixtral's rule).
//!
//! Weights are random f32 quantized with `moe_core::quant::quantize_row`. Each layer runs
//! one token and a batch of `MOE_PVD_TOKENS` (default 8), with the scalar kernels and the
//! best table this CPU runs (`moe_std::kernels::detect()`). Benchmarks:
//! `peer_vs_dense/{kernels}/T{T}/{peer,dense,moe}`. First a table of parameters and weight
//! bytes each token touches (for the batch: distinct weights the batch reads, divided by T);
//! with `--bench`, a per-token latency table from plain medians follows.
//!
//! `MOE_PVD_LOG2N` (default 16) sets N = 2^L (even L).
//!
//! ```text
//! cargo bench -p moe-benches --bench peer_vs_dense
//! ```

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use moe_benches::random::Rng;
use moe_benches::timing::median_seconds;
use moe_core::TensorType;
use moe_core::kernels::Kernels;
use moe_core::moe::{Activation, ExpertStack, MoeLayer, Workspace};
use moe_core::peer::{IndexMajor, PeerConfig, PeerLayer, PeerTensors, ScoreActivation};
use moe_core::quant::quantize_row;
use moe_core::router::{Choice, Router, RouterConfig, Selection};
use moe_core::tensor::TensorView;

const D: usize = 512;
const HEADS: usize = 8;
const K: usize = 16;
const DK: usize = D / 2;
const MOE_EXPERTS: usize = 8;
const MOE_K: usize = 2;
const WEIGHT_TYPE: TensorType = TensorType::Q8_0;
const KEY_TYPE: TensorType = TensorType::F16;

/// `n_elements` uniform in `[-scale, scale)`, quantized to `ty` 4096 elements at a time.
fn random_weights(rng: &mut Rng, ty: TensorType, n_elements: usize, scale: f32) -> Vec<u8> {
    const CHUNK: usize = 4096;
    assert_eq!(n_elements % CHUNK, 0);
    let chunk_bytes = CHUNK / ty.block_len() * ty.block_bytes();
    let mut out = vec![0u8; n_elements / CHUNK * chunk_bytes];
    let mut src = [0.0f32; CHUNK];
    for dst in out.chunks_exact_mut(chunk_bytes) {
        for x in &mut src {
            *x = rng.uniform(-scale, scale);
        }
        quantize_row(ty, &src, dst).unwrap();
    }
    out
}

fn log2_n() -> u32 {
    std::env::var("MOE_PVD_LOG2N")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|l: &u32| l.is_multiple_of(2) && (4..=20).contains(l))
        .unwrap_or(16)
}

fn batch() -> usize {
    std::env::var("MOE_PVD_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&t: &usize| t > 1)
        .unwrap_or(8)
}

/// Every weight buffer: the PEER layer's, and one FFN buffer shared by the dense layer
/// (E = 1, width 8·f) and the MoE (E = 8, width f): the same bytes either way.
struct Weights {
    n_expert: usize,
    query: Vec<u8>,
    keys: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    /// SwiGLU width of one MoE expert.
    f: usize,
    gate: Vec<u8>,
    up: Vec<u8>,
    down: Vec<u8>,
    router: Vec<u8>,
}

impl Weights {
    fn new(log2_n: u32) -> Self {
        let n_expert = 1usize << log2_n;
        let n_keys = 1usize << (log2_n / 2);
        let peer_params = peer_params(n_expert, n_keys);
        // 3 · D · 8 · f ≈ P, f a multiple of 32 (rows of the down matrices are whole blocks).
        let f = ((peer_params as f64 / (3 * D * MOE_EXPERTS) as f64 / 32.0).round() as usize)
            .max(1)
            * 32;
        let mut rng = Rng(512);
        let ffn = D * f * MOE_EXPERTS;
        Weights {
            n_expert,
            query: random_weights(&mut rng, WEIGHT_TYPE, D * 2 * HEADS * DK, 0.05),
            keys: random_weights(&mut rng, KEY_TYPE, HEADS * n_keys * 2 * DK, 0.5),
            u: random_weights(&mut rng, WEIGHT_TYPE, n_expert * D, 0.1),
            v: random_weights(&mut rng, WEIGHT_TYPE, n_expert * D, 0.1),
            f,
            gate: random_weights(&mut rng, WEIGHT_TYPE, ffn, 0.05),
            up: random_weights(&mut rng, WEIGHT_TYPE, ffn, 0.05),
            down: random_weights(&mut rng, WEIGHT_TYPE, ffn, 0.05),
            router: random_weights(&mut rng, TensorType::F32, D * MOE_EXPERTS, 0.05),
        }
    }

    fn peer(&self) -> PeerLayer<'_> {
        let config = PeerConfig {
            n_embd: D,
            n_head: HEADS,
            n_expert: self.n_expert,
            key_length: DK,
            product_key_topk: K,
            experts_per_head: K,
            score_activation: ScoreActivation::Softmax,
            index_major: IndexMajor::First,
            shared_keys: false,
            separate_embed_per_head: false,
            activation: Activation::GeluErf,
            query_norm_epsilon: 1e-5,
        };
        let (d, dk, n, h) = (D as u64, DK as u64, config.n_keys() as u64, HEADS as u64);
        let n_expert = self.n_expert as u64;
        let tensors = PeerTensors {
            query: TensorView::new(WEIGHT_TYPE, &[d, 2 * h * dk], &self.query).unwrap(),
            query_bias: None,
            query_norm: None,
            norm: None,
            keys: TensorView::new(KEY_TYPE, &[dk, 2, n, h], &self.keys).unwrap(),
            down: TensorView::new(WEIGHT_TYPE, &[d, n_expert], &self.u).unwrap(),
            up: TensorView::new(WEIGHT_TYPE, &[d, n_expert], &self.v).unwrap(),
        };
        PeerLayer::new(config, tensors).unwrap()
    }

    /// SwiGLU experts: `e` of width `f`.
    fn stack(&self, e: usize, f: usize) -> ExpertStack<'_> {
        let (d, f, e) = (D as u64, f as u64, e as u64);
        ExpertStack::new(
            Some(TensorView::new(WEIGHT_TYPE, &[d, f, e], &self.gate).unwrap()),
            TensorView::new(WEIGHT_TYPE, &[d, f, e], &self.up).unwrap(),
            TensorView::new(WEIGHT_TYPE, &[f, d, e], &self.down).unwrap(),
            Activation::Silu,
        )
        .unwrap()
    }

    /// The dense FFN: one expert of width 8·f, every token routed to it by the caller.
    fn dense(&self) -> MoeLayer<'_> {
        MoeLayer::new(self.stack(1, MOE_EXPERTS * self.f), 1).unwrap()
    }

    /// The MoE: 8 experts of width f, softmax router, top-2 renormalised.
    fn moe(&self) -> MoeLayer<'_> {
        let router = Router::new(RouterConfig::mixtral(D, MOE_EXPERTS, MOE_K))
            .unwrap()
            .with_weight(
                TensorView::new(
                    TensorType::F32,
                    &[D as u64, MOE_EXPERTS as u64],
                    &self.router,
                )
                .unwrap(),
            )
            .unwrap();
        MoeLayer::new(self.stack(MOE_EXPERTS, self.f), MOE_K)
            .unwrap()
            .with_router(router)
            .unwrap()
    }
}

/// Parameters of the PEER layer: query projection, sub-keys, u and v.
fn peer_params(n_expert: usize, n_keys: usize) -> usize {
    D * 2 * HEADS * DK + HEADS * n_keys * 2 * DK + 2 * n_expert * D
}

/// One of the three layers with its caller memory.
enum Runner<'a> {
    Peer {
        layer: PeerLayer<'a>,
        ws: Vec<u8>,
    },
    Dense {
        layer: MoeLayer<'a>,
        selections: Vec<Selection>,
        ws: Vec<u8>,
    },
    Moe {
        layer: MoeLayer<'a>,
        selections: Vec<Selection>,
        router: Vec<f32>,
        ws: Vec<u8>,
    },
}

impl<'a> Runner<'a> {
    fn new(w: &'a Weights, which: &str, kernels: &Kernels, t: usize) -> Self {
        match which {
            "peer" => {
                let layer = w.peer().with_kernels(kernels);
                let ws = vec![0; layer.workspace_bytes(t)];
                Runner::Peer { layer, ws }
            }
            "dense" => {
                let layer = w.dense().with_kernels(kernels);
                let mut one = Selection::new();
                one.push(Choice {
                    expert: 0,
                    weight: 1.0,
                })
                .unwrap();
                Runner::Dense {
                    selections: vec![one; t],
                    ws: vec![0; layer.workspace_bytes(t)],
                    layer,
                }
            }
            _ => {
                let layer = w.moe().with_kernels(kernels);
                let size = layer.workspace_size(t);
                Runner::Moe {
                    selections: vec![Selection::new(); size.selections],
                    router: vec![0.0; size.router],
                    ws: vec![0; size.bytes],
                    layer,
                }
            }
        }
    }

    fn forward(&mut self, hidden: &[f32], out: &mut [f32]) {
        match self {
            Runner::Peer { layer, ws } => layer.forward(black_box(hidden), out, ws).unwrap(),
            Runner::Dense {
                layer,
                selections,
                ws,
            } => {
                layer
                    .forward_selected(black_box(hidden), selections, out, ws)
                    .unwrap();
            }
            Runner::Moe {
                layer,
                selections,
                router,
                ws,
            } => {
                let mut ws = Workspace {
                    selections,
                    router,
                    bytes: ws,
                };
                layer.forward(black_box(hidden), &[], out, &mut ws).unwrap();
            }
        }
        black_box(out);
    }

    /// (parameters read, weight bytes read) by one forward of `hidden`, counting each
    /// distinct weight once per batch.
    fn touched(&mut self, hidden: &[f32], out: &mut [f32]) -> (usize, usize) {
        match self {
            Runner::Peer { layer, ws } => {
                let mut experts = BTreeSet::new();
                layer
                    .forward_with(hidden, out, ws, |s| {
                        experts.extend(s.experts.iter().map(|e| e.index))
                    })
                    .unwrap();
                let t = layer.tensors();
                let params = (t.query.data().len() / WEIGHT_TYPE.block_bytes()
                    * WEIGHT_TYPE.block_len())
                    + t.keys.data().len() / 2
                    + experts.len() * 2 * D;
                let bytes = t.query.data().len()
                    + t.keys.data().len()
                    + experts.len() * (t.down.row_bytes() + t.up.row_bytes());
                (params, bytes)
            }
            Runner::Dense { layer, .. } => {
                let s = layer.experts();
                (3 * D * s.n_ff(), ffn_bytes(layer, 0))
            }
            Runner::Moe {
                layer,
                selections,
                router,
                ..
            } => {
                let t = hidden.len() / D;
                layer
                    .router()
                    .unwrap()
                    .route(hidden, &[], router, &mut selections[..t], None)
                    .unwrap();
                let experts: BTreeSet<u32> = selections[..t]
                    .iter()
                    .flat_map(|s| s.iter().map(|c| c.expert))
                    .collect();
                let f = layer.experts().n_ff();
                let router_params = D * MOE_EXPERTS;
                (
                    router_params + experts.len() * 3 * D * f,
                    router_params * 4 + experts.len() * ffn_bytes(layer, 0),
                )
            }
        }
    }
}

/// Weight bytes of expert `e` of `layer` (gate, up, down).
fn ffn_bytes(layer: &MoeLayer, e: usize) -> usize {
    let ffn = layer.experts().expert(e).unwrap();
    [ffn.gate().copied(), Some(*ffn.up()), Some(*ffn.down())]
        .into_iter()
        .flatten()
        .map(|v| v.data().len())
        .sum()
}

const LAYERS: [&str; 3] = ["peer", "dense", "moe"];

fn peer_vs_dense(c: &mut Criterion) {
    let l = log2_n();
    let batch = batch();
    let summary = {
        let args: Vec<String> = std::env::args().collect();
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
    };
    let w = Weights::new(l);
    let mut rng = Rng(7);
    let hidden: Vec<f32> = (0..batch * D).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mut out = vec![0.0f32; batch * D];

    let n_keys = 1usize << (l / 2);
    let peer_p = peer_params(w.n_expert, n_keys);
    let ffn_p = 3 * D * MOE_EXPERTS * w.f;
    eprintln!(
        "peer_vs_dense, d_model {D}, {WEIGHT_TYPE} weights (PEER sub-keys {KEY_TYPE}, MoE router F32)"
    );
    eprintln!(
        "  peer:  H = {HEADS}, k = {K}, d_key = {DK}, N = 2^{l} (n = {n_keys}), {:.2} M params",
        peer_p as f64 / 1e6
    );
    eprintln!(
        "  dense: SwiGLU width {}, {:.2} M params",
        MOE_EXPERTS * w.f,
        ffn_p as f64 / 1e6
    );
    eprintln!(
        "  moe:   {MOE_EXPERTS} SwiGLU experts of width {}, top-{MOE_K}, {:.2} M params",
        w.f,
        (ffn_p + D * MOE_EXPERTS) as f64 / 1e6
    );
    eprintln!("weights touched per token (batch: distinct weights the batch reads / T)");
    eprintln!(
        "{:>6} {:>5} {:>14} {:>12}",
        "layer", "T", "M params/tok", "MiB/tok"
    );
    let scalar = Kernels::scalar();
    for which in LAYERS {
        for t in [1, batch] {
            let mut r = Runner::new(&w, which, &scalar, t);
            let (p, b) = r.touched(&hidden[..t * D], &mut out[..t * D]);
            eprintln!(
                "{which:>6} {t:>5} {:>14.3} {:>12.3}",
                p as f64 / 1e6 / t as f64,
                b as f64 / (1024.0 * 1024.0) / t as f64
            );
        }
    }

    let best = moe_std::kernels::detect();
    let mut kernel_tables = vec![("scalar".to_string(), scalar)];
    if best.level() != Kernels::scalar().level() {
        kernel_tables.push((format!("{:?}", best.level()).to_lowercase(), best));
    }
    for (name, kernels) in &kernel_tables {
        for t in [1, batch] {
            let mut group = c.benchmark_group(format!("peer_vs_dense/{name}/T{t}"));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(200))
                .measurement_time(Duration::from_secs(1))
                .throughput(Throughput::Elements(t as u64));
            for which in LAYERS {
                let mut r = Runner::new(&w, which, kernels, t);
                let (hidden, out) = (&hidden[..t * D], &mut out[..t * D]);
                group.bench_function(which, |b| b.iter(|| r.forward(hidden, out)));
            }
            group.finish();
        }
    }

    if summary {
        println!("\npeer_vs_dense: per-token latency, d_model {D}, {WEIGHT_TYPE}, medians of 11");
        print!("{:>8} {:>5}", "kernels", "T");
        for which in LAYERS {
            print!(" {:>12}", format!("{which} µs/tok"));
        }
        println!();
        for (name, kernels) in &kernel_tables {
            for t in [1, batch] {
                print!("{name:>8} {t:>5}");
                for which in LAYERS {
                    let mut r = Runner::new(&w, which, kernels, t);
                    let (hidden, out) = (&hidden[..t * D], &mut out[..t * D]);
                    let s = median_seconds(11, || r.forward(hidden, out));
                    print!(" {:>12.1}", s * 1e6 / t as f64);
                }
                println!();
            }
        }
    }
}

criterion_group!(benches, peer_vs_dense);
criterion_main!(benches);

//! PEER per-token cost against N (He 2024): H = 8 heads, k = 16 per half and per head
//! (softmax over 16, the paper's setting), d_key = d_model / 2 (peer-pytorch's default),
//! N = 2^10, 2^12, …, 2^20, d_model 512 and 1024. Retrieval should grow like √N (2·n
//! sub-key dot products per head) and the expert work like H·k (128 u and v rows), not
//! like N.
//!
//! Weights: query projection Q8_0, sub-keys F16, u and v Q8_0 (random blocks with sane
//! scales). One u/v buffer per d_model is shared by every N (a table of N rows is a
//! prefix of the 2^20-row one): 2 × 2^20 × 1088 B ≈ 2.3 GiB at d_model 1024.
//!
//! Benchmarks, each with the scalar kernels and with the best table this CPU runs
//! (`moe_std::kernels::detect()`): `peer/layer/{kernels}/d{D}` (one token through
//! `PeerLayer::forward`), `peer/retrieval/{kernels}/d{D}` (one head's product-key
//! retrieval: 2·n sub-key dots, the two bounded top-16 and the candidate scan) and
//! `peer/brute_force/{kernels}/d512` (one head scoring all N = 2^20 full keys with the same
//! dot kernel, keeping the top 16). First a table gives the weight bytes each token reads;
//! with `--bench`, the product-key vs brute-force speedup from plain medians follows.
//!
//! `MOE_PEER_DMODELS` (default `512,1024`) and `MOE_PEER_MAX_LOG2N` (default 20) shrink the
//! sweep.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use moe_benches::random::Rng;
use moe_benches::timing::median_seconds;
use moe_core::TensorType;
use moe_core::kernels::{DotKernel, Kernels};
use moe_core::moe::Activation;
use moe_core::peer::{
    IndexMajor, PeerConfig, PeerLayer, PeerTensors, ScoreActivation, TopList, product_key_topk,
};
use moe_core::quant::float::f32_to_f16;
use moe_core::tensor::TensorView;

const HEADS: usize = 8;
const K: usize = 16;
const TABLE_TYPE: TensorType = TensorType::Q8_0;
const QUERY_TYPE: TensorType = TensorType::Q8_0;
const KEY_TYPE: TensorType = TensorType::F16;

/// `n_elements` of random Q8_0: random quants, scales around `scale / 127`.
fn random_q8_0(rng: &mut Rng, n_elements: usize, scale: f32) -> Vec<u8> {
    let bb = TensorType::Q8_0.block_bytes();
    let mut out = vec![0u8; n_elements / 32 * bb];
    for block in out.chunks_exact_mut(bb) {
        let d = f32_to_f16(rng.uniform(0.5, 1.0) * scale / 127.0).to_le_bytes();
        block[..2].copy_from_slice(&d);
        for q in block[2..].chunks_exact_mut(8) {
            q.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
    }
    out
}

/// `n_elements` of random F16 in `[-0.5, 0.5)`.
fn random_f16(rng: &mut Rng, n_elements: usize) -> Vec<u8> {
    (0..n_elements)
        .flat_map(|_| f32_to_f16(rng.uniform(-0.5, 0.5)).to_le_bytes())
        .collect()
}

fn d_models() -> Vec<usize> {
    std::env::var("MOE_PEER_DMODELS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![512, 1024])
}

fn log2_ns() -> Vec<u32> {
    let max = std::env::var("MOE_PEER_MAX_LOG2N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20u32);
    (10..=max).step_by(2).collect()
}

/// The weights of one d_model: the largest u/v tables and the query projection.
struct Tables {
    d: usize,
    query: Vec<u8>,
    down: Vec<u8>,
    up: Vec<u8>,
}

impl Tables {
    fn new(d: usize, max_n_expert: usize) -> Self {
        let mut rng = Rng(d as u64);
        let dk = d / 2;
        Tables {
            d,
            query: random_q8_0(&mut rng, d * 2 * HEADS * dk, 0.1),
            down: random_q8_0(&mut rng, max_n_expert * d, 0.1),
            up: random_q8_0(&mut rng, max_n_expert * d, 0.1),
        }
    }

    fn config(&self, n_expert: usize) -> PeerConfig {
        PeerConfig {
            n_embd: self.d,
            n_head: HEADS,
            n_expert,
            key_length: self.d / 2,
            product_key_topk: K,
            experts_per_head: K,
            score_activation: ScoreActivation::Softmax,
            index_major: IndexMajor::First,
            shared_keys: false,
            separate_embed_per_head: false,
            activation: Activation::GeluErf,
            query_norm_epsilon: 1e-5,
        }
    }

    /// The layer with N = `n_expert` over a prefix of the tables and `keys`.
    fn layer<'a>(&'a self, n_expert: usize, keys: &'a [u8]) -> PeerLayer<'a> {
        let c = self.config(n_expert);
        let (d, dk, n) = (self.d as u64, (self.d / 2) as u64, c.n_keys() as u64);
        let table = |bytes: &'a [u8]| {
            let len = n_expert * (self.d / 32) * 34;
            TensorView::new(TABLE_TYPE, &[d, n_expert as u64], &bytes[..len]).unwrap()
        };
        let tensors = PeerTensors {
            query: TensorView::new(QUERY_TYPE, &[d, 2 * HEADS as u64 * dk], &self.query).unwrap(),
            query_bias: None,
            query_norm: None,
            norm: None,
            keys: TensorView::new(KEY_TYPE, &[dk, 2, n, HEADS as u64], keys).unwrap(),
            down: table(&self.down),
            up: table(&self.up),
        };
        PeerLayer::new(c, tensors).unwrap()
    }
}

/// Sub-keys of all heads for n = √N.
fn keys(d: usize, n_keys: usize) -> Vec<u8> {
    random_f16(&mut Rng(n_keys as u64), HEADS * n_keys * 2 * (d / 2))
}

/// One head's query halves as F32 activation bytes.
fn query_halves(d: usize) -> [Vec<u8>; 2] {
    let mut rng = Rng(99);
    let mut half = || {
        (0..d / 2)
            .flat_map(|_| rng.uniform(-1.0, 1.0).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    [half(), half()]
}

/// Head 0's product-key retrieval: every sub-key of both halves, the two top-k lists,
/// the candidate scan.
fn product_key(dot: DotKernel, keys: &TensorView, n: usize, q: &[Vec<u8>; 2]) -> TopList {
    let mut halves = [TopList::new(K); 2];
    for i in 0..n {
        for (half, top) in halves.iter_mut().enumerate() {
            let row = keys.row((i * 2 + half) as u64).unwrap();
            top.push(dot(KEY_TYPE, row, &q[half]).unwrap(), i as u32);
        }
    }
    product_key_topk(&halves[0], &halves[1], n as u32, IndexMajor::First, K)
}

/// Head 0's brute force: all N = n² full keys, each a dot product over both halves
/// (2·d_key multiply-adds, nothing shared between keys), top 16 kept.
fn brute_force(dot: DotKernel, keys: &TensorView, n: usize, q: &[Vec<u8>; 2]) -> TopList {
    let mut top = TopList::new(K);
    for a in 0..n {
        let first = keys.row((a * 2) as u64).unwrap();
        for b in 0..n {
            let second = keys.row((b * 2 + 1) as u64).unwrap();
            let s = dot(KEY_TYPE, first, &q[0]).unwrap() + dot(KEY_TYPE, second, &q[1]).unwrap();
            top.push(s, (a * n + b) as u32);
        }
    }
    top
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn peer(c: &mut Criterion) {
    let log2_ns = log2_ns();
    let max_n = 1usize << log2_ns.last().copied().unwrap_or(10);
    let summary = {
        let args: Vec<String> = std::env::args().collect();
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
    };
    // The portable specification and the best table this CPU runs.
    let best = moe_std::kernels::detect();
    let mut tables_of_kernels = vec![("scalar".to_string(), Kernels::scalar())];
    if best.level() != Kernels::scalar().level() {
        tables_of_kernels.push((format!("{:?}", best.level()).to_lowercase(), best));
    }
    for d in d_models() {
        let tables = Tables::new(d, max_n);
        eprintln!(
            "peer d_model {d}: H = {HEADS}, k = {K}, d_key = {}; bytes each token reads",
            d / 2
        );
        eprintln!(
            "{:>8} {:>12} {:>12} {:>12} {:>12}",
            "N", "query", "sub-keys", "experts", "total"
        );
        for &l in &log2_ns {
            let n_expert = 1usize << l;
            let keys = keys(d, 1usize << (l / 2));
            let layer = tables.layer(n_expert, &keys);
            let t = layer.tensors();
            let experts = HEADS * K * (t.down.row_bytes() + t.up.row_bytes());
            eprintln!(
                "{:>8} {:>10.2}Mi {:>10.2}Mi {:>10.2}Mi {:>10.2}Mi",
                format!("2^{l}"),
                mib(t.query.data().len()),
                mib(t.keys.data().len()),
                mib(experts),
                mib(layer.weight_bytes_per_token()),
            );
        }
        let q = query_halves(d);
        for (name, kernels) in &tables_of_kernels {
            let mut group = c.benchmark_group(format!("peer/layer/{name}/d{d}"));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1));
            for &l in &log2_ns {
                let keys = keys(d, 1usize << (l / 2));
                let layer = tables.layer(1usize << l, &keys).with_kernels(kernels);
                let mut rng = Rng(7);
                let hidden: Vec<f32> = (0..d).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let mut ws = vec![0u8; layer.workspace_bytes(1)];
                let mut out = vec![0.0f32; d];
                group.bench_function(format!("2^{l}"), |b| {
                    b.iter(|| {
                        layer
                            .forward(black_box(&hidden), &mut out, &mut ws)
                            .unwrap();
                        black_box(&out);
                    })
                });
            }
            group.finish();

            let dot = kernels.dot_kernel();
            let mut group = c.benchmark_group(format!("peer/retrieval/{name}/d{d}"));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1));
            for &l in &log2_ns {
                let n = 1usize << (l / 2);
                let keys = keys(d, n);
                let dk = (d / 2) as u64;
                let view =
                    TensorView::new(KEY_TYPE, &[dk, 2, n as u64, HEADS as u64], &keys).unwrap();
                group.bench_function(format!("2^{l}"), |b| {
                    b.iter(|| black_box(product_key(dot, &view, n, black_box(&q))))
                });
            }
            group.finish();

            // Brute force at the largest N, one head, d_model 512 only (it takes seconds).
            if d != 512 {
                continue;
            }
            let l = log2_ns.last().copied().unwrap_or(10);
            let n = 1usize << (l / 2);
            let keys = keys(d, n);
            let dk = (d / 2) as u64;
            let view = TensorView::new(KEY_TYPE, &[dk, 2, n as u64, HEADS as u64], &keys).unwrap();
            let fast = product_key(dot, &view, n, &q);
            let slow = brute_force(dot, &view, n, &q);
            assert_eq!(
                fast.as_slice(),
                slow.as_slice(),
                "product key != brute force"
            );
            let mut group = c.benchmark_group(format!("peer/brute_force/{name}/d512"));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(1))
                .measurement_time(Duration::from_secs(5));
            group.bench_function(format!("2^{l}"), |b| {
                b.iter(|| black_box(brute_force(dot, &view, n, black_box(&q))))
            });
            group.finish();
            if summary {
                let pk = Duration::from_secs_f64(median_seconds(21, || {
                    black_box(product_key(dot, &view, n, &q));
                }));
                let bf = Duration::from_secs_f64(median_seconds(3, || {
                    black_box(brute_force(dot, &view, n, &q));
                }));
                eprintln!(
                    "peer ({name}): one head at N = 2^{l}, d_key {dk}: product key {pk:?}, brute force {bf:?}, speedup {:.0}x (same top-16)",
                    bf.as_secs_f64() / pk.as_secs_f64()
                );
            }
        }
    }
}

criterion_group!(benches, peer);
criterion_main!(benches);

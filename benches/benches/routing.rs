//! Routing alone: selection from precomputed logits over the grid
//! (E ∈ {8, 64, 160, 256, 1024} × k ∈ {1, 2, 6, 8, 64}, k ≤ E, 1 and 512 tokens), and the
//! whole `Router::route` (F32 router matmul at d_model 4096 plus selection) per E.
//!
//! Run: `cargo bench -p moe-benches --bench routing`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use moe_core::TensorType;
use moe_core::router::{
    GroupLimit, GroupScore, Normalize, Router, RouterConfig, ScoreFunc, Selection,
};
use moe_core::tensor::TensorView;

const EXPERTS: [usize; 5] = [8, 64, 160, 256, 1024];
const KS: [usize; 5] = [1, 2, 6, 8, 64];
const TOKENS: [usize; 2] = [1, 512];
const D_MODEL: usize = 4096;

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing/select");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for &n_tokens in &TOKENS {
        for &n_expert in &EXPERTS {
            let logits = values(n_tokens * n_expert, n_expert as u64, 4.0);
            for &k in KS.iter().filter(|&&k| k <= n_expert) {
                let router = Router::new(RouterConfig::mixtral(D_MODEL, n_expert, k)).unwrap();
                let mut scratch = vec![0.0; router.logits_scratch_len(n_tokens)];
                let mut out = vec![Selection::new(); n_tokens];
                group.throughput(Throughput::Elements(n_tokens as u64));
                let id =
                    BenchmarkId::new(format!("softmax_T{n_tokens}"), format!("E{n_expert}_k{k}"));
                group.bench_function(id, |b| {
                    b.iter(|| {
                        router
                            .route_logits(black_box(&logits), &[], &mut scratch, &mut out, None)
                            .unwrap()
                    })
                });
            }
        }
    }
    // DeepSeek-V3: sigmoid, selection bias, 8 groups scored by top-2 sum, 4 used, k = 8.
    let n_expert = 256;
    let config = RouterConfig {
        score: ScoreFunc::Sigmoid,
        normalize: Normalize::Sum { epsilon: 1e-20 },
        scale: 2.5,
        groups: Some(GroupLimit {
            n_group: 8,
            topk_group: 4,
            score: GroupScore::SumTop(2),
        }),
        ..RouterConfig::top_k(D_MODEL, n_expert, 8)
    };
    let bias: Vec<u8> = values(n_expert, 3, 0.1)
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let router = Router::new(config)
        .unwrap()
        .with_bias(TensorView::new(TensorType::F32, &[n_expert as u64], &bias).unwrap())
        .unwrap();
    for &n_tokens in &TOKENS {
        let logits = values(n_tokens * n_expert, 11, 4.0);
        let mut scratch = vec![0.0; router.logits_scratch_len(n_tokens)];
        let mut out = vec![Selection::new(); n_tokens];
        group.throughput(Throughput::Elements(n_tokens as u64));
        let id = BenchmarkId::new(format!("deepseek_v3_T{n_tokens}"), "E256_k8");
        group.bench_function(id, |b| {
            b.iter(|| {
                router
                    .route_logits(black_box(&logits), &[], &mut scratch, &mut out, None)
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing/route_d4096");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for &n_expert in &EXPERTS {
        let k = n_expert.min(8);
        let w: Vec<u8> = values(D_MODEL * n_expert, 5, 0.05)
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let view =
            TensorView::new(TensorType::F32, &[D_MODEL as u64, n_expert as u64], &w).unwrap();
        let router = Router::new(RouterConfig::mixtral(D_MODEL, n_expert, k))
            .unwrap()
            .with_weight(view)
            .unwrap();
        // 512 tokens only where the matmul stays under a second per call.
        for &n_tokens in TOKENS.iter().filter(|&&t| t == 1 || n_expert <= 64) {
            let hidden = values(n_tokens * D_MODEL, 9, 1.0);
            let mut scratch = vec![0.0; router.scratch_len(n_tokens)];
            let mut out = vec![Selection::new(); n_tokens];
            group.throughput(Throughput::Elements(n_tokens as u64));
            let id = BenchmarkId::new(format!("T{n_tokens}"), format!("E{n_expert}_k{k}"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    router
                        .route(black_box(&hidden), &[], &mut scratch, &mut out, None)
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, select, route);
criterion_main!(benches);

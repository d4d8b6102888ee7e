//! Token sampling (`moe_core::sample`) over a Qwen2-sized vocabulary (151,936 logits), one
//! call per iteration as at each decode step: greedy, llama.cpp's default chain (top-k 40,
//! top-p 0.95, min-p 0.05, temperature 0.8), top-p alone (no top-k: the selection rounds),
//! temperature alone (a softmax over every logit), and top-p alone on flat logits (the
//! worst case: the cut lies deep in the vocabulary, so nearly everything is sorted).
//!
//! The logits imitate a model's: a bell around 0 (sum of three uniforms, σ = 2) with 40
//! tokens at 12–20 holding nearly all the probability. Throughput is logits per second.
//!
//! Run: `cargo bench -p moe-benches --bench sample`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use moe_benches::random::Rng;
use moe_core::sample::{Candidate, Sampler, SamplerConfig};

const N_VOCAB: usize = 151_936;

fn model_like_logits(seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    let mut logits: Vec<f32> = (0..N_VOCAB)
        .map(|_| rng.uniform(-2.0, 2.0) + rng.uniform(-2.0, 2.0) + rng.uniform(-2.0, 2.0))
        .collect();
    for _ in 0..40 {
        let i = (rng.next_u64() % N_VOCAB as u64) as usize;
        logits[i] = rng.uniform(12.0, 20.0);
    }
    logits
}

fn sample(c: &mut Criterion) {
    let peaked = model_like_logits(1);
    let mut flat_rng = Rng(2);
    let flat: Vec<f32> = (0..N_VOCAB).map(|_| flat_rng.uniform(-0.5, 0.5)).collect();
    let plain = SamplerConfig {
        temperature: 0.8,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..SamplerConfig::default()
    };
    let cases: [(&str, SamplerConfig, &[f32]); 5] = [
        ("greedy", SamplerConfig::greedy(), &peaked),
        ("llama.cpp defaults", SamplerConfig::default(), &peaked),
        (
            "top-p 0.95",
            SamplerConfig {
                top_p: 0.95,
                ..plain
            },
            &peaked,
        ),
        ("temperature 0.8", plain, &peaked),
        (
            "top-p 0.95, flat",
            SamplerConfig {
                top_p: 0.95,
                ..plain
            },
            &flat,
        ),
    ];
    let recent: Vec<u32> = (0..64).map(|i| i * 2371 % N_VOCAB as u32).collect();
    let mut ws = vec![Candidate::default(); Sampler::workspace_len(N_VOCAB)];
    let mut group = c.benchmark_group(format!("sample/{N_VOCAB}"));
    group.throughput(Throughput::Elements(N_VOCAB as u64));
    for (name, config, logits) in cases {
        let mut sampler = Sampler::new(config, &mut ws).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| sampler.sample(black_box(logits), &recent).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, sample);
criterion_main!(benches);

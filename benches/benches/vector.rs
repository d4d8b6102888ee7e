//! The f32 helpers of the kernel table (RMSNorm, softmax, SiLU, GELU tanh / erf, SwiGLU,
//! axpy) at the scalar level and the best level this CPU has, one thread, at a model
//! width (n = 4096) and an FFN width (n = 14336). Throughput is elements per second.
//!
//! In-place helpers get a fresh copy of the same input every call (the copy is made
//! outside the timing), so repeated calls never feed a helper its own output; axpy
//! accumulates into the same `y` (`a` small, so it stays finite).
//!
//! Run: `cargo bench -p moe-benches --bench vector`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use moe_benches::random::Rng;
use moe_core::kernels::Kernels;

const SIZES: [usize; 2] = [4096, 14336];

/// A helper that works in place, as a table method.
type InPlace = fn(&Kernels, &mut [f32]);

fn uniform(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

fn vector(c: &mut Criterion) {
    let best = moe_std::kernels::detect();
    let mut tables = vec![Kernels::scalar()];
    if best.level() != Kernels::scalar().level() {
        tables.push(best);
    }
    let in_place: [(&str, InPlace, f32); 4] = [
        ("softmax", Kernels::softmax, 10.0),
        ("silu", Kernels::silu, 5.0),
        ("gelu", Kernels::gelu, 5.0),
        ("gelu_erf", Kernels::gelu_erf, 5.0),
    ];
    for n in SIZES {
        let x = uniform(n, -5.0, 5.0, 1);
        let w = uniform(n, 0.5, 1.5, 2);
        let mut out = vec![0.0f32; n];
        let mut group = c.benchmark_group(format!("vector/{n}"));
        group.throughput(Throughput::Elements(n as u64));
        for k in &tables {
            let level = k.level();
            group.bench_function(format!("rms_norm/{level}"), |b| {
                b.iter(|| k.rms_norm(black_box(&x), &w, 1e-5, &mut out).unwrap())
            });
            for (name, f, range) in in_place {
                let src = uniform(n, -range, range, 3);
                group.bench_function(format!("{name}/{level}"), |b| {
                    b.iter_batched_ref(
                        || src.clone(),
                        |v| f(k, black_box(v)),
                        BatchSize::PerIteration,
                    )
                });
            }
            group.bench_function(format!("swiglu/{level}"), |b| {
                b.iter(|| k.swiglu(black_box(&x), &w, &mut out).unwrap())
            });
            let mut y = w.clone();
            group.bench_function(format!("axpy/{level}"), |b| {
                b.iter(|| k.axpy(1e-3, black_box(&x), &mut y).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = vector
}
criterion_main!(benches);

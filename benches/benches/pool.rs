//! The thread pool (`moe_std::pool`): matrix × vector at Mixtral's `ffn_down` shape
//! (4096 × 14336) for Q4_0 and Q8_0 with the detected kernels, serial and through
//! `matvec_parallel` with 1 and 2 threads, as GB/s of weight bytes; and the per-call cost of
//! an empty job (`for_each_range` over `threads` items, one per thread) with 1, 2 and 4
//! threads, back to back (workers still spinning) and with workers asleep (no spin).
//!
//! Run: `cargo bench -p moe-benches --bench pool`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use moe_benches::random::{matvec_activations, matvec_weights};
use moe_core::TensorType;
use moe_std::pool::{ThreadPool, matvec_parallel};

const ROWS: usize = 4096;
const COLS: usize = 14336;

fn matvec(c: &mut Criterion) {
    let k = moe_std::kernels::detect();
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    for ty in [TensorType::Q4_0, TensorType::Q8_0] {
        let w = matvec_weights(ty, ROWS, COLS);
        let a = matvec_activations(ty, COLS);
        let mut out = vec![0f32; ROWS];
        let mut group = c.benchmark_group(format!("pool_matvec/{ty}/{ROWS}x{COLS}/{}", k.level()));
        group.throughput(Throughput::Bytes(w.len() as u64));
        group.bench_function("serial", |b| {
            b.iter(|| {
                k.matvec(ty, black_box(&w), black_box(&a), &mut out)
                    .unwrap();
                black_box(&out);
            })
        });
        for pool in &pools {
            group.bench_function(BenchmarkId::new("threads", pool.threads()), |b| {
                b.iter(|| {
                    matvec_parallel(pool, &k, ty, black_box(&w), black_box(&a), &mut out).unwrap();
                    black_box(&out);
                })
            });
        }
        group.finish();
    }
}

fn empty_job(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool_empty_job");
    for (label, spin) in [
        ("spinning", moe_std::pool::DEFAULT_SPIN),
        ("asleep", Duration::ZERO),
    ] {
        for threads in [1usize, 2, 4] {
            let pool = ThreadPool::with_spin(threads, spin);
            group.bench_function(BenchmarkId::new(label, threads), |b| {
                b.iter(|| {
                    pool.for_each_range(black_box(threads), 1, |r| {
                        black_box(r);
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = empty_job, matvec
}
criterion_main!(benches);

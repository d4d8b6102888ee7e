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
use moe_core::TensorType;
use moe_core::quant::quantize_row;
use moe_std::pool::{ThreadPool, matvec_parallel};

const ROWS: usize = 4096;
const COLS: usize = 14336;

/// Deterministic pseudo-random bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

/// Random quants with every block's f16 scale set to 1/64.
fn weights(ty: TensorType) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut w = bytes(ROWS * COLS / ty.block_len() * bb, 7);
    for block in w.chunks_exact_mut(bb) {
        block[..2].copy_from_slice(&0x2400u16.to_le_bytes());
    }
    w
}

fn activations(ty: TensorType) -> Vec<u8> {
    let act = ty.activation_type().unwrap();
    let x: Vec<f32> = bytes(COLS, 3)
        .into_iter()
        .map(|b| (f32::from(b) - 127.5) / 64.0)
        .collect();
    let mut a = vec![0u8; COLS / act.block_len() * act.block_bytes()];
    quantize_row(act, &x, &mut a).unwrap();
    a
}

fn matvec(c: &mut Criterion) {
    let k = moe_std::kernels::detect();
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    for ty in [TensorType::Q4_0, TensorType::Q8_0] {
        let w = weights(ty);
        let a = activations(ty);
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

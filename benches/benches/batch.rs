//! Matrix × batch against repeated matrix × vector: 32 activation rows through one
//! `Kernels::matmul` call, and the same 32 rows as 32 `Kernels::matvec` calls, at
//! Mixtral's gate/up shape (14336 × 4096), one thread, the best level this CPU has. The
//! issue's target is ≥ 3× the per-row throughput of the repeated matrix × vector.
//!
//! Throughput is weight bytes × 32 (the work both variants do), so the GB/s figures are
//! directly comparable. Run: `cargo bench -p moe-benches --bench batch`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use moe_benches::random::{matvec_activations, matvec_weights};
use moe_core::TensorType;

const ROWS: usize = 14336;
const COLS: usize = 4096;
const BATCH: usize = 32;

fn batch(c: &mut Criterion) {
    let k = moe_std::kernels::detect();
    for ty in [
        TensorType::Q4_0,
        TensorType::Q8_0,
        TensorType::Q4_K,
        TensorType::Q6_K,
    ] {
        let w = matvec_weights(ty, ROWS, COLS);
        let acts: Vec<Vec<u8>> = (0..BATCH).map(|_| matvec_activations(ty, COLS)).collect();
        let refs: Vec<&[u8]> = acts.iter().map(Vec::as_slice).collect();
        let mut out = vec![0f32; ROWS * BATCH];
        let mut group = c.benchmark_group(format!("batch/{ty}/{ROWS}x{COLS}/{}", k.level()));
        group.throughput(Throughput::Bytes((w.len() * BATCH) as u64));
        group.bench_function(format!("matmul{BATCH}"), |b| {
            b.iter(|| {
                k.matmul(ty, black_box(&w), black_box(&refs), &mut out)
                    .unwrap();
                black_box(&out);
            })
        });
        group.bench_function(format!("matvec_x{BATCH}"), |b| {
            b.iter(|| {
                for (a, o) in refs.iter().zip(out.chunks_exact_mut(ROWS)) {
                    k.matvec(ty, black_box(&w), a, o).unwrap();
                }
                black_box(&out);
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = batch
}
criterion_main!(benches);

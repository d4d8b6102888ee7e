//! Kernel tables: matrix × vector at Mixtral 8x7B expert shapes (gate/up 14336 × 4096,
//! down 4096 × 14336) for every weight type with a SIMD kernel, at every kernel level this CPU
//! supports, as GB/s of weight bytes; and a memory-bandwidth probe (a summing read and a
//! `copy_from_slice`) over a buffer that fits the last-level cache and one that does not,
//! so kernel throughput can be stated as a fraction of what memory delivers.
//!
//! One thread. Each matrix is read once per iteration; the same matrix is reused, so it
//! stays in the last-level cache when that is larger than the matrix (compare with the
//! in-cache probe).
//!
//! Run: `cargo bench -p moe-benches --bench kernels` (`-- probe` for the probe alone,
//! `-- matvec/Q5_K/` for one type).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use moe_benches::random::{matvec_activations, matvec_weights};
use moe_core::TensorType;
use moe_core::kernels::{Kernels, Level};

/// (rows, columns): Mixtral's `ffn_gate/up` (14336 × 4096) and `ffn_down` (4096 × 14336).
const SHAPES: [(usize, usize); 2] = [(14336, 4096), (4096, 14336)];
const TYPES: [TensorType; 13] = [
    TensorType::Q4_0,
    TensorType::Q8_0,
    TensorType::Q4_K,
    TensorType::Q6_K,
    TensorType::Q4_1,
    TensorType::Q5_0,
    TensorType::Q5_1,
    TensorType::IQ4_NL,
    TensorType::Q2_K,
    TensorType::Q3_K,
    TensorType::Q5_K,
    TensorType::IQ4_XS,
    TensorType::BF16,
];

fn tables() -> Vec<Kernels> {
    Level::ALL
        .into_iter()
        .filter_map(|l| {
            let k = moe_std::kernels::with_level(l);
            if k.is_none() {
                eprintln!("skipping kernel level {l}: not supported by this CPU");
            }
            k
        })
        .collect()
}

fn matvec(c: &mut Criterion) {
    let tables = tables();
    for ty in TYPES {
        for (rows, cols) in SHAPES {
            let w = matvec_weights(ty, rows, cols);
            let a = matvec_activations(ty, cols);
            let mut out = vec![0f32; rows];
            let mut group = c.benchmark_group(format!("matvec/{ty}/{rows}x{cols}"));
            group.throughput(Throughput::Bytes(w.len() as u64));
            for k in &tables {
                group.bench_function(BenchmarkId::from_parameter(k.level()), |b| {
                    b.iter(|| {
                        k.matvec(ty, black_box(&w), black_box(&a), &mut out)
                            .unwrap();
                        black_box(&out);
                    })
                });
            }
            group.finish();
        }
    }
}

/// Sums a buffer as `u64` words (eight independent lanes, so the loop is load-bound).
fn read_sum(buf: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in buf.chunks_exact(8) {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*v);
        }
    }
    acc.iter().fold(0, |s, v| s.wrapping_add(*v))
}

fn probe(c: &mut Criterion) {
    // 32 MiB: about one Mixtral Q4_0 expert matrix (fits a large last-level cache);
    // 1 GiB: larger than any last-level cache, so it streams from DRAM.
    for mib in [32usize, 1024] {
        let words = mib << 17;
        let src: Vec<u64> = (0..words as u64).collect();
        let mut dst = vec![0u64; words];
        let mut group = c.benchmark_group(format!("probe/{mib}MiB"));
        group.throughput(Throughput::Bytes((words * 8) as u64));
        group.bench_function("read", |b| b.iter(|| black_box(read_sum(black_box(&src)))));
        group.bench_function("copy (bytes read)", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = probe, matvec
}
criterion_main!(benches);

//! Roofline: matrix × vector streamed from DRAM, beside a memory-bandwidth probe measured in
//! the same run, so each kernel's GB/s reads as a fraction of what memory delivers.
//!
//! - `bandwidth/{dram,cache}/{read,copy,triad}/{1,2}t`: the probe
//!   ([`moe_benches::bandwidth`]) over buffers of 4 × the last-level cache (at most 1 GiB
//!   each) and of an eighth of it, with 1 and 2 threads.
//! - `stream_matvec/{type}/{rows}x{cols}/{level}/{threads}t`: Q4_0, Q8_0, Q4_K, Q6_K at
//!   Mixtral's expert shapes; each iteration multiplies the next of several copies of the
//!   matrix, more than 2 × the last-level cache in all, so the weights come from DRAM as
//!   in a real model rather than from a cache the previous iteration warmed. The detected
//!   kernels with 1 and 2 threads (`matvec_parallel`), the scalar specification at one
//!   shape and one thread (it is slow).
//!
//! Throughput is weight bytes (bytes moved, for the probe). `cargo xtask bench` runs this
//! with the `kernels` bench and turns criterion's estimates into a table of GB/s, GFLOP/s
//! and ratio to the probe. With `MOE_BENCH_OUT=DIR` the run also writes `DIR/machine.json`
//! (the cache size the sizes came from); `MOE_BENCH_SMOKE=1` shrinks everything for an
//! emulated smoke test.
//!
//! Run: `cargo bench -p moe-benches --bench roofline` (`-- bandwidth` for the probe alone).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use moe_benches::bandwidth::{Buffers, Pattern, Sizes, smoke};
use moe_benches::random::{matvec_activations, matvec_weights};
use moe_core::TensorType;
use moe_core::kernels::Kernels;
use moe_std::pool::{ThreadPool, matvec_parallel};

const TYPES: [TensorType; 4] = [
    TensorType::Q4_0,
    TensorType::Q8_0,
    TensorType::Q4_K,
    TensorType::Q6_K,
];

/// Thread counts of every parallel figure.
const THREADS: [usize; 2] = [1, 2];

/// (rows, columns): Mixtral's `ffn_gate/up` (14336 × 4096) and `ffn_down` (4096 × 14336);
/// in a smoke run, small shapes with the same whole 256-wide blocks.
fn shapes() -> [(usize, usize); 2] {
    if smoke() {
        [(512, 2048), (2048, 512)]
    } else {
        [(14336, 4096), (4096, 14336)]
    }
}

/// Writes `$MOE_BENCH_OUT/machine.json` when asked: what `cargo xtask bench` needs to read
/// the results (which cache size the sizes came from), wherever the run happened.
fn write_machine(sizes: &Sizes) {
    let Some(dir) = std::env::var_os("MOE_BENCH_OUT") else {
        return;
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let json = format!(
        "{{\"arch\":\"{}\",\"cpus\":{cpus},\"llc_level\":{},\"llc_bytes\":{},\
         \"dram_buffer\":{},\"cache_buffer\":{},\"stream_bytes\":{},\"smoke\":{}}}\n",
        std::env::consts::ARCH,
        sizes.llc_level,
        sizes.llc_bytes,
        sizes.dram_buffer,
        sizes.cache_buffer,
        sizes.stream_bytes,
        smoke(),
    );
    let dir = std::path::PathBuf::from(dir);
    if let Err(e) =
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("machine.json"), json))
    {
        eprintln!("roofline: could not write {}: {e}", dir.display());
    }
}

fn bandwidth(c: &mut Criterion) {
    let sizes = Sizes::detect();
    write_machine(&sizes);
    eprintln!(
        "roofline: last-level cache {} MiB (level {}), probe buffers {} MiB (DRAM) and {} KiB (cache), matrix copies {} MiB",
        sizes.llc_bytes >> 20,
        sizes.llc_level,
        sizes.dram_buffer >> 20,
        sizes.cache_buffer >> 10,
        sizes.stream_bytes >> 20,
    );
    let pools = THREADS.map(ThreadPool::new);
    for (place, bytes) in [("dram", sizes.dram_buffer), ("cache", sizes.cache_buffer)] {
        // Allocated on first use, so a filter that skips the group allocates nothing.
        let mut buffers: Option<Buffers> = None;
        let mut group = c.benchmark_group(format!("bandwidth/{place}"));
        for pattern in Pattern::ALL {
            group.throughput(Throughput::Bytes(pattern.bytes_moved(bytes / 8 * 8) as u64));
            for pool in &pools {
                let id = BenchmarkId::new(pattern.name(), format!("{}t", pool.threads()));
                group.bench_function(id, |b| {
                    let buffers = buffers.get_or_insert_with(|| Buffers::new(bytes));
                    b.iter(|| buffers.run(pattern, pool));
                });
            }
        }
        group.finish();
    }
}

/// `copies` back-to-back copies of one random matrix, as one buffer.
fn matrix_copies(ty: TensorType, rows: usize, cols: usize, copies: usize) -> Vec<u8> {
    let one = matvec_weights(ty, rows, cols);
    let mut all = Vec::with_capacity(one.len() * copies);
    for _ in 0..copies {
        all.extend_from_slice(&one);
    }
    all
}

fn stream_matvec(c: &mut Criterion) {
    let sizes = Sizes::detect();
    let best = moe_std::kernels::detect();
    let pools = THREADS.map(ThreadPool::new);
    for ty in TYPES {
        for (shape, (rows, cols)) in shapes().into_iter().enumerate() {
            let matrix_bytes = rows * cols / ty.block_len() * ty.block_bytes();
            let copies = sizes.stream_bytes / matrix_bytes + 1;
            let a = matvec_activations(ty, cols);
            let mut out = vec![0f32; rows];
            // Built by the first benchmark that runs, dropped with the group.
            let mut weights: Option<Vec<u8>> = None;
            let mut group = c.benchmark_group(format!("stream_matvec/{ty}/{rows}x{cols}"));
            group.throughput(Throughput::Bytes(matrix_bytes as u64));
            let mut bench = |level: &Kernels, pool: &ThreadPool| {
                let id = BenchmarkId::new(level.level().name(), format!("{}t", pool.threads()));
                group.bench_function(id, |b| {
                    let w = weights.get_or_insert_with(|| matrix_copies(ty, rows, cols, copies));
                    let mut next = 0;
                    b.iter(|| {
                        let m = &w[next * matrix_bytes..(next + 1) * matrix_bytes];
                        next = (next + 1) % copies;
                        matvec_parallel(pool, level, ty, black_box(m), black_box(&a), &mut out)
                            .unwrap();
                        black_box(&out);
                    })
                });
            };
            for pool in &pools {
                bench(&best, pool);
            }
            if shape == 0 && best.level() != Kernels::scalar().level() {
                bench(&Kernels::scalar(), &pools[0]);
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = bandwidth, stream_matvec
}
criterion_main!(benches);

//! Opening a checkpoint is O(metadata): `GgufFile::open` on a sparse 10 GiB GGUF (large
//! tensors whose data are holes) maps the file and parses header, metadata (a 32,000-entry
//! vocabulary) and the tensor table, without reading a byte of weights.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use moe_benches::mixtral_like;
use moe_std::GgufFile;

fn gguf_open(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gguf_open");
    std::fs::create_dir_all(&dir).expect("create bench temp dir");
    let path = dir.join("sparse-10gib.gguf");
    let spec = mixtral_like(10);
    spec.write(&path).expect("write sparse GGUF");
    let meta = std::fs::metadata(&path).expect("stat");
    eprintln!(
        "gguf_open: {} ({:.2} GiB, {} tensors, {} header bytes, {} bytes on disk)",
        path.display(),
        meta.len() as f64 / (1u64 << 30) as f64,
        spec.tensors.len(),
        spec.header_bytes().len(),
        on_disk(&meta)
    );

    let mut group = c.benchmark_group("gguf_open");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("sparse_10gib_open_and_parse", |b| {
        b.iter(|| {
            let gguf = GgufFile::open(black_box(&path)).expect("open");
            black_box(gguf.file().tensor_count())
        })
    });
    group.finish();
    let _ = std::fs::remove_file(&path);
}

/// Bytes the file really occupies (its holes take none).
#[cfg(unix)]
fn on_disk(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(meta) * 512
}

#[cfg(not(unix))]
fn on_disk(meta: &std::fs::Metadata) -> u64 {
    meta.len()
}

criterion_group!(benches, gguf_open);
criterion_main!(benches);

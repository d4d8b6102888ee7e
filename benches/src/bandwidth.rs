//! A memory-bandwidth probe: read (sum), copy and triad over buffers sized from the
//! last-level cache, so a matrix × vector kernel's GB/s can be stated as a fraction of what
//! memory delivers on the same machine in the same run.
//!
//! A matrix × vector streams its weights once and writes almost nothing, so the read probe
//! is its roof; copy and triad are the usual STREAM figures, printed beside it for
//! comparison. Bytes are counted as STREAM counts them: copy moves `2·n` (read + write),
//! triad `3·n` (two reads, one write), read `n`.
//!
//! [`Sizes`] picks the buffers: several times the last-level cache for the DRAM figure (at
//! most 1 GiB each, so triad's three buffers stay near 3 GiB), an eighth of it for the
//! in-cache figure.

use std::fs;
use std::hint::black_box;
use std::path::Path;

use moe_std::pool::ThreadPool;

/// The LLC size assumed when sysfs does not say (or on a system without it).
pub const FALLBACK_LLC_BYTES: usize = 256 << 20;

/// One DRAM probe buffer is at most this large: triad uses three, about 3 GiB in all.
pub const MAX_DRAM_BUFFER: usize = 1 << 30;

/// `MOE_BENCH_SMOKE=1` (set by `cargo xtask bench --runner qemu`): small buffers and
/// matrices, so an emulated run finishes in minutes; its timings mean nothing.
pub const SMOKE_ENV: &str = "MOE_BENCH_SMOKE";

/// Whether the smoke-test sizes are asked for ([`SMOKE_ENV`]).
pub fn smoke() -> bool {
    std::env::var_os(SMOKE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The last-level cache: `(level, bytes)` of CPU 0's highest level-3 cache, else level 2,
/// from `/sys/devices/system/cpu/cpu0/cache/index*/`; `None` where sysfs does not say.
pub fn llc() -> Option<(u32, usize)> {
    llc_in(Path::new("/sys/devices/system/cpu/cpu0/cache"))
}

/// [`llc`] over a sysfs-like folder (tests pass their own).
pub fn llc_in(dir: &Path) -> Option<(u32, usize)> {
    let mut best: Option<(u32, usize)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("index") {
            continue;
        }
        let read = |name: &str| fs::read_to_string(entry.path().join(name)).ok();
        let (Some(level), Some(size)) = (read("level"), read("size")) else {
            continue;
        };
        if read("type").is_some_and(|t| t.trim() == "Instruction") {
            continue;
        }
        let (Ok(level), Some(bytes)) = (level.trim().parse::<u32>(), parse_size(&size)) else {
            continue;
        };
        if (2..=3).contains(&level) && best.is_none_or(|(l, _)| level > l) {
            best = Some((level, bytes));
        }
    }
    best
}

/// A sysfs cache size: `"491520K"`, `"2M"`, or plain bytes.
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let shift = match unit.trim() {
        "" => 0,
        "K" | "KB" | "KiB" => 10,
        "M" | "MB" | "MiB" => 20,
        "G" | "GB" | "GiB" => 30,
        _ => return None,
    };
    digits.parse::<usize>().ok()?.checked_mul(1 << shift)
}

/// The sizes one run uses, all derived from the last-level cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// The last-level cache in bytes (sysfs, the fallback, or 1 MiB in a smoke run).
    pub llc_bytes: usize,
    /// Its level (0 when unknown).
    pub llc_level: u32,
    /// One DRAM probe buffer: 4 × LLC, at most [`MAX_DRAM_BUFFER`].
    pub dram_buffer: usize,
    /// One in-cache probe buffer: LLC / 8 (triad's three fit with room to spare).
    pub cache_buffer: usize,
    /// Bytes of matrix copies a streaming matrix × vector rotates through: 2 × LLC.
    pub stream_bytes: usize,
}

impl Sizes {
    /// The sizes for a last-level cache of `llc_bytes`.
    pub fn for_llc(llc_level: u32, llc_bytes: usize) -> Sizes {
        Sizes {
            llc_bytes,
            llc_level,
            dram_buffer: llc_bytes.saturating_mul(4).min(MAX_DRAM_BUFFER),
            cache_buffer: (llc_bytes / 8).max(4096),
            stream_bytes: llc_bytes.saturating_mul(2),
        }
    }

    /// This machine's sizes: 1 MiB of "cache" in a smoke run, else sysfs or the fallback.
    pub fn detect() -> Sizes {
        if smoke() {
            return Sizes::for_llc(0, 1 << 20);
        }
        let (level, bytes) = llc().unwrap_or((0, FALLBACK_LLC_BYTES));
        Sizes::for_llc(level, bytes)
    }
}

/// The probe's three access patterns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Sum every word of one buffer.
    Read,
    /// `dst = src`.
    Copy,
    /// `a = b + s·c`.
    Triad,
}

impl Pattern {
    /// All three, in the order they are reported.
    pub const ALL: [Pattern; 3] = [Pattern::Read, Pattern::Copy, Pattern::Triad];

    /// Its name in benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Read => "read",
            Pattern::Copy => "copy",
            Pattern::Triad => "triad",
        }
    }

    /// Bytes moved per pass over buffers of `n` bytes each (STREAM's counting).
    pub fn bytes_moved(self, n: usize) -> usize {
        match self {
            Pattern::Read => n,
            Pattern::Copy => 2 * n,
            Pattern::Triad => 3 * n,
        }
    }
}

/// Three buffers of `f64` for the probe (read uses the first, copy two, triad three).
pub struct Buffers {
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
}

/// Each thread's share is at least this many words, so small buffers run on one thread.
const MIN_CHUNK: usize = 4096;

impl Buffers {
    /// Three buffers of `bytes` bytes each (rounded down to whole `f64`s), every page
    /// written so the first pass does not measure page faults.
    pub fn new(bytes: usize) -> Buffers {
        let n = (bytes / 8).max(8);
        Buffers {
            a: vec![1.0; n],
            b: vec![2.0; n],
            c: vec![0.5; n],
        }
    }

    /// Bytes of one buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.a.len() * 8
    }

    /// One pass of `pattern`, split across `pool`'s threads.
    pub fn run(&mut self, pattern: Pattern, pool: &ThreadPool) {
        let Buffers { a, b, c } = self;
        match pattern {
            Pattern::Read => pool.for_each_range(b.len(), MIN_CHUNK, |r| {
                black_box(read_sum(&b[r]));
            }),
            Pattern::Copy => pool.for_each_chunk_mut(a, MIN_CHUNK, |start, dst| {
                dst.copy_from_slice(&b[start..start + dst.len()]);
            }),
            Pattern::Triad => {
                let s = black_box(3.0);
                pool.for_each_chunk_mut(a, MIN_CHUNK, |start, dst| {
                    let (b, c) = (&b[start..], &c[start..]);
                    for ((d, x), y) in dst.iter_mut().zip(b).zip(c) {
                        *d = x + s * y;
                    }
                })
            }
        }
        black_box(&self.a);
    }
}

/// Sums `buf`'s bit patterns as integers with eight independent accumulators: integer
/// adds vectorise freely (float adds may not be reordered), so the loop is bound by loads,
/// not by the latency of one chain of additions.
pub fn read_sum(buf: &[f64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = buf.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(v.to_bits());
        }
    }
    let tail = chunks.remainder().iter();
    acc.iter()
        .copied()
        .chain(tail.map(|v| v.to_bits()))
        .fold(0, u64::wrapping_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_sizes_parse() {
        assert_eq!(parse_size("491520K\n"), Some(491520 << 10));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12X"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn llc_is_the_highest_data_cache() {
        let dir = std::env::temp_dir().join(format!("moe-llc-test-{}", std::process::id()));
        for (i, level, ty, size) in [
            (0, "1", "Data", "48K"),
            (1, "1", "Instruction", "64K"),
            (2, "2", "Unified", "2048K"),
            (3, "3", "Unified", "491520K"),
        ] {
            let d = dir.join(format!("index{i}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("level"), level).unwrap();
            fs::write(d.join("type"), ty).unwrap();
            fs::write(d.join("size"), size).unwrap();
        }
        assert_eq!(llc_in(&dir), Some((3, 491520 << 10)));
        fs::remove_dir_all(dir.join("index3")).unwrap();
        assert_eq!(llc_in(&dir), Some((2, 2 << 20)));
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(llc_in(&dir), None);
    }

    #[test]
    fn sizes_follow_the_cache_and_cap_memory() {
        let big = Sizes::for_llc(3, 480 << 20);
        assert_eq!(big.dram_buffer, MAX_DRAM_BUFFER);
        assert_eq!(big.cache_buffer, 60 << 20);
        assert_eq!(big.stream_bytes, 960 << 20);
        let small = Sizes::for_llc(2, 2 << 20);
        assert_eq!(small.dram_buffer, 8 << 20);
    }

    #[test]
    fn patterns_compute_what_they_say() {
        let pool = ThreadPool::new(2);
        let mut bufs = Buffers::new(1 << 20);
        assert_eq!(
            read_sum(&bufs.b),
            2f64.to_bits().wrapping_mul(bufs.b.len() as u64)
        );
        bufs.run(Pattern::Copy, &pool);
        assert!(bufs.a.iter().all(|&v| v == 2.0));
        bufs.run(Pattern::Triad, &pool);
        assert!(bufs.a.iter().all(|&v| v == 3.5));
        bufs.run(Pattern::Read, &pool);
        assert_eq!(Pattern::Triad.bytes_moved(10), 30);
        assert_eq!(read_sum(&[1.0; 11]), 1f64.to_bits().wrapping_mul(11));
    }
}

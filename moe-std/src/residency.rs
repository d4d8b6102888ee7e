//! Where a checkpoint's bytes live while the engine runs: mapped from the file, or read
//! into anonymous memory backed by transparent huge pages.
//!
//! A decoded token streams every active weight once, hundreds of megabytes, so address
//! translation counts: a file mapping is made of 4 KiB page-cache pages (a TLB miss
//! every 4 KiB, and the hardware prefetchers stop at each page boundary), while an
//! anonymous region the kernel backs with 2 MiB pages has neither cost. On the
//! Mixtral-shaped perf model (`perf-q4_k_m.gguf`, 1.5 GB, 2 vCPUs) reading the file into
//! huge-page memory made decode 31 % faster at one thread (14.5 → 19.0 tokens/s; the same
//! copy in 4 KiB pages gave 16.6) and prefill 9 % faster. The price is the read at open
//! and resident memory the size of the file, so [`Residency::Auto`] loads only what fits
//! comfortably in the memory available, and maps anything larger (a model bigger than
//! memory still runs, from the page cache).

use std::fs;
use std::io::Read;
use std::path::Path;

use memmap2::{Mmap, MmapMut};

use crate::{Error, Result};

/// How a checkpoint's bytes are held (`moe run --mmap / --no-mmap`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Residency {
    /// Mapped read-only: zero-copy and instant to open, pages read on first touch and
    /// shared with the page cache; the file may be larger than memory.
    #[default]
    Map,
    /// Read into anonymous memory, advised to use transparent huge pages: faster
    /// decoding (see the module docs), a full read at open, resident memory the size of
    /// the file.
    Load,
    /// [`Load`](Residency::Load) when the checkpoint takes at most half of the memory
    /// available now (Linux's `MemAvailable`), [`Map`](Residency::Map) otherwise or
    /// where that cannot be read.
    Auto,
}

impl Residency {
    /// Whether a checkpoint of `bytes` bytes in all is loaded rather than mapped.
    pub fn loads(self, bytes: u64) -> bool {
        match self {
            Residency::Map => false,
            Residency::Load => true,
            Residency::Auto => available_memory().is_some_and(|free| bytes <= free / 2),
        }
    }
}

/// The bytes of the open file `file` (at `path`, for errors), mapped or, when `load`,
/// read into huge-page-advised anonymous memory (read-only once filled, as a mapping is).
pub(crate) fn hold(file: &fs::File, path: &Path, load: bool) -> Result<Mmap> {
    if !load {
        // SAFETY: the file is opened read-only and mapped read-only (`Mmap`, not
        // `MmapMut`), so this process never writes through the mapping. What `Mmap::map`
        // cannot rule out is another process changing the file while it is mapped: the
        // bytes behind our `&[u8]` would then change under us, and if the file is
        // *truncated* the pages past the new end fault with SIGBUS on access. Like every
        // mmap-based model loader, we accept that hazard: checkpoints are not edited in
        // place while being served, and the alternative (reading tens of GiB into memory
        // every time) defeats zero-copy; `Residency::Load` is that alternative, chosen.
        #[allow(unsafe_code)]
        return unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, e));
    }
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let len = usize::try_from(len).map_err(|_| {
        Error::io(
            path,
            std::io::Error::other("file larger than the address space"),
        )
    })?;
    let mut memory = MmapMut::map_anon(len).map_err(|e| Error::io(path, e))?;
    // Only advice: without transparent huge pages the copy still works, in 4 KiB pages.
    #[cfg(target_os = "linux")]
    let _ = memory.advise(memmap2::Advice::HugePage);
    let mut reader = file;
    reader
        .read_exact(&mut memory)
        .map_err(|e| Error::io(path, e))?;
    memory.make_read_only().map_err(|e| Error::io(path, e))
}

/// Bytes of memory available to a new allocation without swapping, where the operating
/// system says (Linux: `MemAvailable` in `/proc/meminfo`).
fn available_memory() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_and_load_hold_the_same_bytes() {
        let path = std::env::temp_dir().join(format!("moe-residency-{}", std::process::id()));
        let bytes: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&path, &bytes).unwrap();
        let file = fs::File::open(&path).unwrap();
        let mapped = hold(&file, &path, false).unwrap();
        let loaded = hold(&file, &path, true).unwrap();
        assert_eq!(&mapped[..], &bytes[..]);
        assert_eq!(&loaded[..], &bytes[..]);
        fs::write(&path, b"").unwrap();
        let empty = fs::File::open(&path).unwrap();
        assert!(hold(&empty, &path, true).unwrap().is_empty());
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn auto_loads_only_what_fits() {
        assert!(!Residency::Map.loads(0));
        assert!(Residency::Load.loads(u64::MAX));
        assert!(!Residency::Auto.loads(u64::MAX));
        if cfg!(target_os = "linux") {
            assert!(
                Residency::Auto.loads(4096),
                "MemAvailable: {:?}",
                available_memory()
            );
        }
    }
}

//! Duplicate-name and overlap detection without an allocator.
//!
//! Names are checked with a fixed 2 KiB open-addressing table of 32-bit hashes, one chunk
//! of [`CHUNK`] names at a time: a file with up to [`CHUNK`] keys or tensors is checked in
//! the single pass that parses it, a larger one costs one extra walk of its (small) table
//! per chunk. A hash hit is confirmed by comparing the actual strings, so the answer is
//! exact. Tensor overlap is checked in the parsing pass when tensors are in offset order
//! (as every writer lays them out); otherwise sorted chunks of intervals are used.

use crate::error::Result;

/// Names checked per table fill (half the slots, so probes stay short).
pub(crate) const CHUNK: usize = 256;
const SLOTS: usize = 2 * CHUNK;

/// FNV-1a, 32 bits: tiny, and good enough to make true matches the only likely hits.
fn hash(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in name.as_bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h
}

/// A set of name hashes; zero marks an empty slot.
pub(crate) struct HashSet {
    slots: [u32; SLOTS],
}

impl HashSet {
    pub(crate) fn new() -> Self {
        HashSet { slots: [0; SLOTS] }
    }

    /// Inserts `name`'s hash; returns true if it was already present (a probable
    /// duplicate that the caller confirms).
    pub(crate) fn insert(&mut self, name: &str) -> bool {
        self.probe(name, true)
    }

    /// Whether `name`'s hash is present.
    pub(crate) fn contains(&mut self, name: &str) -> bool {
        self.probe(name, false)
    }

    fn probe(&mut self, name: &str, insert: bool) -> bool {
        let tag = hash(name).max(1);
        let mut slot = tag as usize % SLOTS;
        // The table never holds more than CHUNK < SLOTS tags, so an empty slot exists.
        for _ in 0..SLOTS {
            match self.slots[slot] {
                0 => {
                    if insert {
                        self.slots[slot] = tag;
                    }
                    return false;
                }
                t if t == tag => return true,
                _ => slot = (slot + 1) % SLOTS,
            }
        }
        false
    }
}

/// Finds a name that occurs twice among the names `walk()` yields, checking only pairs
/// whose later member has index `>= from` (earlier pairs were checked by the caller's
/// parsing pass). `walk` must yield the same names each time it is called.
pub(crate) fn find_duplicate<'a, I>(
    count: usize,
    from: usize,
    walk: &dyn Fn() -> I,
) -> Result<Option<&'a str>>
where
    I: Iterator<Item = Result<&'a str>>,
{
    let mut chunk_start = from;
    while chunk_start < count {
        let chunk_end = count.min(chunk_start + CHUNK);
        let mut set = HashSet::new();
        for name in walk().take(chunk_end).skip(chunk_start) {
            let name = name?;
            if set.insert(name) && occurs_twice(name, walk())? {
                return Ok(Some(name));
            }
        }
        for name in walk().take(chunk_start) {
            let name = name?;
            if set.contains(name) && occurs_twice(name, walk())? {
                return Ok(Some(name));
            }
        }
        chunk_start = chunk_end;
    }
    Ok(None)
}

/// Whether `name` occurs at least twice in `names` (confirms a hash hit).
pub(crate) fn occurs_twice<'a>(
    name: &str,
    names: impl Iterator<Item = Result<&'a str>>,
) -> Result<bool> {
    let mut seen = 0;
    for other in names {
        if other? == name {
            seen += 1;
            if seen == 2 {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A non-empty byte range `[start, end)` of tensor `index`.
#[derive(Clone, Copy, Default)]
pub(crate) struct Extent {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) index: usize,
}

const EXTENT_CHUNK: usize = 128;

/// Finds two overlapping extents among those `walk()` yields (empty extents are skipped
/// by the caller), in any order, returning their indices in file order.
pub(crate) fn find_overlap<I>(walk: impl Fn() -> I) -> Result<Option<(usize, usize)>>
where
    I: Iterator<Item = Result<Extent>>,
{
    let mut chunk_start = 0;
    loop {
        let mut chunk = [Extent::default(); EXTENT_CHUNK];
        let mut len = 0;
        for extent in walk().skip(chunk_start).take(EXTENT_CHUNK) {
            chunk[len] = extent?;
            len += 1;
        }
        if len == 0 {
            return Ok(None);
        }
        let chunk = &mut chunk[..len];
        sort_by_start(chunk);
        for pair in chunk.windows(2) {
            if pair[1].start < pair[0].end {
                return Ok(Some(ordered(pair[0].index, pair[1].index)));
            }
        }
        // Every earlier extent against the sorted chunk: the chunk extent with the largest
        // start below `e.end` is the only one that can overlap `e`, since the chunk's
        // extents are disjoint and sorted.
        for e in walk().take(chunk_start) {
            let e = e?;
            let after = chunk.partition_point(|c| c.start < e.end);
            if let Some(c) = after.checked_sub(1).map(|i| chunk[i])
                && c.end > e.start
            {
                return Ok(Some(ordered(e.index, c.index)));
            }
        }
        chunk_start += len;
    }
}

/// Insertion sort: at most [`EXTENT_CHUNK`] items, and far less code than the standard
/// library's sort, which matters on a microcontroller.
fn sort_by_start(extents: &mut [Extent]) {
    for i in 1..extents.len() {
        let mut j = i;
        while j > 0 && extents[j - 1].start > extents[j].start {
            extents.swap(j - 1, j);
            j -= 1;
        }
    }
}

fn ordered(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

//! Caller memory for a forward pass: exact sizes up front, then regions cut from one
//! `&mut [u8]`.
//!
//! Firmware keeps its workspace in a `static` byte array, so the core can neither choose
//! the buffer's alignment nor (without `unsafe`) reinterpret its bytes as `f32`. Regions are
//! therefore plain byte slices, and the numbers kept in them (u32 indices, f32 scratch)
//! are 4-byte native-endian [`Words`]. Any alignment works, and a size computed by
//! [`Layout`] is exact: not a byte of padding is hidden in it.
//!
//! Crate-internal: callers only ever see sizes (`workspace_bytes`) and hand over buffers.

use crate::{Error, Result};

/// Sizes of consecutive regions, summed with overflow checks. The same `Layout` code
/// that sizes a workspace is used to carve it, so the two cannot disagree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    total: Option<usize>,
}

impl Layout {
    /// An empty layout.
    pub const fn new() -> Self {
        Layout { total: Some(0) }
    }

    /// Appends a region of `n` bytes (`None`: a size that already overflowed).
    pub fn bytes(&mut self, n: Option<usize>) -> &mut Self {
        self.total = match (self.total, n) {
            (Some(t), Some(n)) => t.checked_add(n),
            _ => None,
        };
        self
    }

    /// Appends a region of `n` 4-byte words.
    pub fn words(&mut self, n: Option<usize>) -> &mut Self {
        self.bytes(n.and_then(|n| n.checked_mul(4)))
    }

    /// The total in bytes, or `usize::MAX` when it does not fit in `usize` (no buffer
    /// can be that long, so a caller checking against it gets a clean error).
    pub fn total(&self) -> usize {
        self.total.unwrap_or(usize::MAX)
    }
}

/// `a · b` with overflow as `None`, for sizes.
pub fn mul(a: usize, b: usize) -> Option<usize> {
    a.checked_mul(b)
}

/// Cuts consecutive regions off the front of a caller's buffer.
#[derive(Debug)]
pub struct Carver<'w> {
    rest: &'w mut [u8],
}

impl<'w> Carver<'w> {
    /// Starts carving `buffer`.
    pub fn new(buffer: &'w mut [u8]) -> Self {
        Carver { rest: buffer }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: Option<usize>) -> Result<&'w mut [u8]> {
        let rest = core::mem::take(&mut self.rest);
        let available = rest.len();
        match n {
            Some(n) if n <= available => {
                let (head, tail) = rest.split_at_mut(n);
                self.rest = tail;
                Ok(head)
            }
            _ => Err(Error::WorkspaceTooSmall {
                needed: n.unwrap_or(usize::MAX),
                actual: available,
            }),
        }
    }

    /// The next `n` words.
    pub fn words(&mut self, n: Option<usize>) -> Result<Words<'w>> {
        Ok(Words::new(self.bytes(n.and_then(|n| n.checked_mul(4)))?))
    }
}

/// A run of 4-byte words in caller memory holding `u32` or `f32` values (native byte
/// order; the bytes never leave the process).
///
/// Indexing past the end panics like a slice does; every index the core uses is bounded by
/// the sizes the region was carved with, never by input values.
#[derive(Debug)]
pub struct Words<'w> {
    words: &'w mut [[u8; 4]],
}

impl<'w> Words<'w> {
    /// Views `bytes` as words (a trailing partial word is ignored).
    pub fn new(bytes: &'w mut [u8]) -> Self {
        Words {
            words: bytes.as_chunks_mut::<4>().0,
        }
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Word `i` as a `u32`.
    #[inline]
    pub fn u32(&self, i: usize) -> u32 {
        u32::from_ne_bytes(self.words[i])
    }

    /// Stores `v` in word `i`.
    #[inline]
    pub fn set_u32(&mut self, i: usize, v: u32) {
        self.words[i] = v.to_ne_bytes();
    }

    /// Word `i` as an `f32`.
    #[inline]
    pub fn f32(&self, i: usize) -> f32 {
        f32::from_ne_bytes(self.words[i])
    }

    /// Stores `v` in word `i`.
    #[inline]
    pub fn set_f32(&mut self, i: usize, v: f32) {
        self.words[i] = v.to_ne_bytes();
    }

    /// Sets every word to `v`.
    pub fn fill_u32(&mut self, v: u32) {
        self.words.fill(v.to_ne_bytes());
    }

    /// The words as bytes, for splitting into pieces of whole rows.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.words.as_flattened_mut()
    }

    /// The raw words, for sorting and bulk copies.
    pub fn raw_mut(&mut self) -> &mut [[u8; 4]] {
        self.words
    }

    /// Words `start..start + len` as f32 values copied into `dst` (`dst.len()` = `len`).
    #[inline]
    pub fn read_f32s(&self, start: usize, dst: &mut [f32]) {
        let words = &self.words[start..start + dst.len()];
        for (d, w) in dst.iter_mut().zip(words) {
            *d = f32::from_ne_bytes(*w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_carver_agree() {
        let mut layout = Layout::new();
        layout.bytes(Some(3)).words(Some(5)).bytes(Some(0));
        assert_eq!(layout.total(), 23);
        let mut buf = [0u8; 23];
        let mut carver = Carver::new(&mut buf);
        assert_eq!(carver.bytes(Some(3)).unwrap().len(), 3);
        let mut w = carver.words(Some(5)).unwrap();
        w.set_f32(4, -1.5);
        assert_eq!(w.f32(4), -1.5);
        assert!(carver.bytes(Some(1)).is_err());
    }

    #[test]
    fn overflow_saturates() {
        let mut layout = Layout::new();
        layout.words(Some(usize::MAX / 2));
        assert_eq!(layout.total(), usize::MAX);
    }
}

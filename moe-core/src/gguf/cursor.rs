//! A bounds-checked little-endian reader over a byte slice.
//!
//! Every read either returns bytes that are inside the slice or a typed error naming the
//! section and offset; nothing here can index out of bounds or overflow.

use crate::error::{Error, Result, Section};

/// Reads little-endian values from `bytes`, starting at `pos`.
#[derive(Clone)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    section: Section,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8], pos: usize, section: Section) -> Self {
        Cursor {
            bytes,
            pos,
            section,
        }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn set_section(&mut self, section: Section) {
        self.section = section;
    }

    /// Takes the next `n` bytes; `Truncated` if fewer remain.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let truncated = Error::Truncated {
            section: self.section,
            offset: self.pos,
        };
        let end = self.pos.checked_add(n).ok_or(truncated.clone())?;
        let slice = self.bytes.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(slice)
    }

    /// The bytes from `start` (a position this cursor has passed) to the current position.
    pub(crate) fn passed_since(&self, start: usize) -> &'a [u8] {
        self.bytes.get(start..self.pos).unwrap_or(&[])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn bytes_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.array()
    }

    /// Reads a count (u64) of items taking at least `min_item_bytes` each, and refuses
    /// it if the items could not fit in the whole input. Such a count is a lie, not a
    /// truncation; loops over the items stay bounded by the input size either way, and a
    /// file that merely ends early is reported as [`Error::Truncated`] when the bytes run out.
    pub(crate) fn count(&mut self, min_item_bytes: usize) -> Result<u64> {
        let offset = self.pos;
        let count = self.u64()?;
        self.check_count(count, min_item_bytes, offset)?;
        Ok(count)
    }

    /// Checks a count read at `offset` as [`Cursor::count`] does.
    pub(crate) fn check_count(
        &self,
        count: u64,
        min_item_bytes: usize,
        offset: usize,
    ) -> Result<()> {
        match count.checked_mul(min_item_bytes as u64) {
            Some(needed) if needed <= self.bytes.len() as u64 => Ok(()),
            _ => Err(Error::CountTooLarge {
                section: self.section,
                offset,
                count,
            }),
        }
    }

    /// Reads a GGUF string: a u64 byte length, then that many bytes of UTF-8.
    pub(crate) fn string(&mut self) -> Result<&'a str> {
        let len = self.count(1)?;
        let start = self.pos;
        // `count` checked that `len` is at most the input length, so it fits in usize.
        let bytes = self.take(len as usize)?;
        core::str::from_utf8(bytes).map_err(|_| Error::InvalidUtf8 { offset: start })
    }
}

//! The KV cache's element types: f32, or f16 for half the memory (llama.cpp's default).

use crate::quant::float::{f16_to_f32, f32_to_f16};

/// The KV cache in caller memory: every layer's keys, then values, per position.
#[derive(Debug)]
pub enum KvCache<'w> {
    /// f32 elements: exact.
    F32(&'w mut [f32]),
    /// IEEE half-precision elements (raw `u16` bits): half the memory; keys and values are
    /// rounded to f16 when stored, as llama.cpp's default cache does.
    F16(&'w mut [u16]),
}

impl KvCache<'_> {
    /// Elements (of either type).
    pub fn len(&self) -> usize {
        match self {
            KvCache::F32(c) => c.len(),
            KvCache::F16(c) => c.len(),
        }
    }

    /// Whether the cache has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An element the cache can hold.
pub(crate) trait Element: Copy + Send + Sync {
    /// The value as f32.
    fn load(self) -> f32;
    /// `v` rounded to this type.
    fn store(v: f32) -> Self;
}

impl Element for f32 {
    #[inline]
    fn load(self) -> f32 {
        self
    }

    #[inline]
    fn store(v: f32) -> Self {
        v
    }
}

impl Element for u16 {
    #[inline]
    fn load(self) -> f32 {
        f16_to_f32(self)
    }

    #[inline]
    fn store(v: f32) -> Self {
        f32_to_f16(v)
    }
}

/// Writes `values` at the front of `dst`, rounded to the cache's element type.
pub(crate) fn store<E: Element>(dst: &mut [E], values: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(values) {
        *d = E::store(v);
    }
}

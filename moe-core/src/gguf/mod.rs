//! Zero-copy GGUF reader (work in progress).

/// Deepest nesting of arrays inside arrays that the reader accepts.
pub const MAX_ARRAY_NESTING: usize = 8;

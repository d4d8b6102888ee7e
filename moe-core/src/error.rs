//! The one error type of the crate.
//!
//! Every failure on untrusted input is a variant here, carrying enough context (byte
//! offset, tensor name, the offending number) for a user to see what is wrong with a file
//! without a debugger. Errors are small and cheap to clone, and need no allocator.

use core::fmt;

use crate::quant::TensorType;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// The part of a GGUF file a problem was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Magic, version and the two counts (the first 24 bytes).
    Header,
    /// The key/value metadata pairs.
    Metadata,
    /// The tensor-info records.
    TensorInfo,
    /// The tensor data blob after the padding.
    Data,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Header => "header",
            Section::Metadata => "metadata",
            Section::TensorInfo => "tensor info",
            Section::Data => "tensor data",
        })
    }
}

/// A tensor or key name kept inside an error (truncated to 48 bytes at a character
/// boundary), so errors can name what they are about without borrowing the file. 48 bytes
/// hold every tensor name and key llama.cpp writes while keeping `Error` small.
pub type Name = heapless::String<NAME_BYTES>;

/// Copies `s` into a [`Name`], truncating at a character boundary if it is too long.
pub(crate) fn name_of(s: &str) -> Name {
    let mut end = s.len().min(NAME_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut name = Name::new();
    // Cannot fail: at most NAME_BYTES bytes.
    let _ = name.push_str(&s[..end]);
    name
}

/// The capacity of a [`Name`].
const NAME_BYTES: usize = 48;

/// Everything that can go wrong in `moe-core`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The first four bytes are not `GGUF`.
    BadMagic {
        /// The bytes found instead.
        found: [u8; 4],
    },
    /// A GGUF version other than 2 or 3.
    UnsupportedVersion {
        /// The version field as read (little-endian).
        version: u32,
    },
    /// The file was written big-endian (byte-swapped); only little-endian files are read.
    BigEndian,
    /// The bytes end before the structure being read does.
    Truncated {
        /// Where the file ends too early.
        section: Section,
        /// Byte offset at which the missing structure starts.
        offset: usize,
    },
    /// A count (of keys, tensors, array elements, string bytes) larger than the whole
    /// input could hold: a lying length. (A file that merely ends early is `Truncated`.)
    CountTooLarge {
        /// The section holding the count.
        section: Section,
        /// Byte offset of the count field.
        offset: usize,
        /// The count as read.
        count: u64,
    },
    /// A metadata value type id outside 0..=12.
    UnknownValueType {
        /// The id read.
        type_id: u32,
        /// Byte offset of the type field.
        offset: usize,
    },
    /// Arrays nested deeper than [`crate::gguf::MAX_ARRAY_NESTING`].
    NestingTooDeep {
        /// Byte offset of the innermost array header.
        offset: usize,
    },
    /// A string (key, value or tensor name) that is not valid UTF-8.
    InvalidUtf8 {
        /// Byte offset of the string's bytes.
        offset: usize,
    },
    /// The same metadata key appears twice.
    DuplicateKey {
        /// The key.
        key: Name,
    },
    /// A known key holds a value of the wrong type (for example `general.alignment` that is
    /// not an integer).
    WrongValueType {
        /// The key.
        key: Name,
    },
    /// `general.alignment` is zero or not a power of two.
    BadAlignment {
        /// The value found.
        alignment: u64,
    },
    /// A tensor type id that GGUF never defined.
    UnknownTensorType {
        /// The id read.
        type_id: u32,
    },
    /// A tensor type id that ggml defined once and removed (4, 5, 31–33, 36–38).
    RemovedTensorType {
        /// The id read.
        type_id: u32,
    },
    /// A tensor with more than four dimensions.
    TooManyDims {
        /// The tensor's name.
        tensor: Name,
        /// The dimension count read.
        n_dims: u32,
    },
    /// A tensor whose element count or byte size does not fit in 64 bits / the address
    /// space.
    TensorTooLarge {
        /// The tensor's name.
        tensor: Name,
    },
    /// A row (`ne[0]` elements) is not a whole number of quantization blocks.
    RowNotBlockMultiple {
        /// The tensor's name (empty when the check is about a bare row).
        tensor: Name,
        /// Elements per row.
        row_len: u64,
        /// Elements per block of the tensor's type.
        block_len: u64,
    },
    /// A tensor whose bytes extend past the end of the file.
    TensorOutOfBounds {
        /// The tensor's name.
        tensor: Name,
        /// Its offset relative to the data section.
        offset: u64,
        /// Its size in bytes.
        size: u64,
    },
    /// A tensor offset that is not a multiple of the file's alignment.
    MisalignedOffset {
        /// The tensor's name.
        tensor: Name,
        /// Its offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// Two tensors share bytes.
    OverlappingTensors {
        /// The first tensor (in file order).
        first: Name,
        /// The second tensor (in file order).
        second: Name,
    },
    /// The same tensor name appears twice.
    DuplicateTensorName {
        /// The name.
        tensor: Name,
    },
    /// A buffer's length does not match what the operation needs.
    LengthMismatch {
        /// Bytes or elements expected.
        expected: usize,
        /// Bytes or elements given.
        actual: usize,
    },
    /// A metadata key the operation needs is absent.
    MissingKey {
        /// The key.
        key: Name,
    },
    /// A tensor the operation needs is absent.
    MissingTensor {
        /// The tensor's name.
        tensor: Name,
    },
    /// A tensor whose shape does not match what its role requires.
    BadTensorShape {
        /// The tensor's name or role.
        tensor: Name,
        /// The dimension (GGUF order) that is wrong.
        dim: u8,
        /// The size it must have.
        expected: u64,
        /// The size it has.
        actual: u64,
    },
    /// A router configuration that cannot route (k = 0, k above the expert count, groups
    /// that do not divide the experts, …).
    InvalidRouterConfig {
        /// What is wrong, in words.
        reason: &'static str,
    },
    /// An `expert_gating_func` value this engine does not know.
    UnknownGatingFunc {
        /// The value read.
        value: u64,
    },
    /// An expert id (in a hash table or a statistics call) outside the layer's active
    /// experts.
    ExpertOutOfRange {
        /// The id found.
        expert: i64,
        /// Number of experts of the layer.
        n_expert: u64,
    },
    /// A token id outside a hash-routing table.
    TokenOutOfRange {
        /// The token id.
        token: u32,
        /// Number of token ids the table covers.
        n_vocab: u64,
    },
    /// A caller-provided buffer shorter than the operation needs.
    BufferTooSmall {
        /// Elements needed.
        needed: usize,
        /// Elements given.
        actual: usize,
    },
    /// A caller-provided workspace shorter than [`workspace_bytes`] says the call needs.
    ///
    /// [`workspace_bytes`]: crate::moe::MoeLayer::workspace_bytes
    WorkspaceTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        actual: usize,
    },
    /// A token routed to more experts than the MoE layer was sized for (its k).
    TooManyChoices {
        /// The token's index in the batch.
        token: usize,
        /// Number of experts it was routed to.
        count: usize,
        /// The layer's k.
        k: usize,
    },
    /// An MoE layer configuration that cannot run (a capacity factor that is not a positive
    /// finite number, k = 0, an FFN width that does not split into G parts, …).
    InvalidMoeConfig {
        /// What is wrong, in words.
        reason: &'static str,
    },
    /// The operation is not implemented for this tensor type (for example dequantizing
    /// an IQ2 tensor).
    UnsupportedType {
        /// The type asked for.
        ty: TensorType,
    },
    /// A PEER layer whose expert count is not a perfect square: product keys need
    /// N = n · n.
    ExpertCountNotSquare {
        /// The expert count found.
        n_expert: u64,
    },
    /// A PEER layer configuration that cannot run (k = 0, a per-half top-k above the
    /// sub-key count, an unknown score function, …).
    InvalidPeerConfig {
        /// What is wrong, in words.
        reason: &'static str,
    },
    /// A model whose `general.architecture` this engine does not run.
    UnsupportedArchitecture {
        /// The architecture named in the file.
        arch: Name,
    },
    /// A model whose metadata cannot describe a runnable network (heads that do not divide
    /// the width, a RoPE width larger than a head, …).
    InvalidModelConfig {
        /// What is wrong, in words.
        reason: &'static str,
    },
    /// A token position at or past the context the workspace was sized for, or a batch
    /// that skips positions the KV cache does not hold yet.
    PositionOutOfRange {
        /// The position asked for.
        position: usize,
        /// Positions the KV cache holds (`0..filled` are valid inputs to attention).
        filled: usize,
        /// The context length the workspace was sized for.
        context: usize,
    },
    /// A sampler configuration that cannot sample (a NaN temperature, `top_p` outside
    /// `(0, 1]`, …) or logits with nothing to draw (every one NaN or `-inf`).
    CannotSample {
        /// What is wrong, in words.
        reason: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic { found } => write!(
                f,
                "not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\""
            ),
            Error::UnsupportedVersion { version } => {
                write!(
                    f,
                    "unsupported GGUF version {version} (versions 2 and 3 are read)"
                )
            }
            Error::BigEndian => {
                f.write_str("big-endian (byte-swapped) GGUF files are not supported")
            }
            Error::Truncated { section, offset } => {
                write!(
                    f,
                    "file is truncated in the {section} section (at byte {offset})"
                )
            }
            Error::CountTooLarge {
                section,
                offset,
                count,
            } => write!(
                f,
                "count {count} at byte {offset} ({section} section) is larger than the whole file could hold"
            ),
            Error::UnknownValueType { type_id, offset } => {
                write!(f, "unknown metadata value type {type_id} at byte {offset}")
            }
            Error::NestingTooDeep { offset } => write!(
                f,
                "arrays nested more than {} deep at byte {offset}",
                crate::gguf::MAX_ARRAY_NESTING
            ),
            Error::InvalidUtf8 { offset } => {
                write!(f, "string at byte {offset} is not valid UTF-8")
            }
            Error::DuplicateKey { key } => write!(f, "metadata key '{key}' appears more than once"),
            Error::WrongValueType { key } => {
                write!(f, "metadata key '{key}' has the wrong value type")
            }
            Error::BadAlignment { alignment } => {
                write!(
                    f,
                    "general.alignment {alignment} is not a non-zero power of two"
                )
            }
            Error::UnknownTensorType { type_id } => write!(f, "unknown tensor type id {type_id}"),
            Error::RemovedTensorType { type_id } => {
                write!(
                    f,
                    "tensor type id {type_id} was removed from GGUF and is not supported"
                )
            }
            Error::TooManyDims { tensor, n_dims } => {
                write!(f, "tensor '{tensor}' has {n_dims} dimensions (at most 4)")
            }
            Error::TensorTooLarge { tensor } => {
                write!(f, "tensor '{tensor}' is too large to address")
            }
            Error::RowNotBlockMultiple {
                tensor,
                row_len,
                block_len,
            } => write!(
                f,
                "tensor '{tensor}': row length {row_len} is not a multiple of the block size {block_len}"
            ),
            Error::TensorOutOfBounds {
                tensor,
                offset,
                size,
            } => write!(
                f,
                "tensor '{tensor}' ({size} bytes at data offset {offset}) extends past the end of the file"
            ),
            Error::MisalignedOffset {
                tensor,
                offset,
                alignment,
            } => write!(
                f,
                "tensor '{tensor}' offset {offset} is not a multiple of the alignment {alignment}"
            ),
            Error::OverlappingTensors { first, second } => {
                write!(f, "tensors '{first}' and '{second}' overlap")
            }
            Error::DuplicateTensorName { tensor } => {
                write!(f, "tensor name '{tensor}' appears more than once")
            }
            Error::LengthMismatch { expected, actual } => {
                write!(
                    f,
                    "buffer length {actual} does not match the expected {expected}"
                )
            }
            Error::MissingKey { key } => write!(f, "metadata key '{key}' is missing"),
            Error::MissingTensor { tensor } => write!(f, "tensor '{tensor}' is missing"),
            Error::BadTensorShape {
                tensor,
                dim,
                expected,
                actual,
            } => write!(
                f,
                "tensor '{tensor}': dimension {dim} is {actual}, expected {expected}"
            ),
            Error::InvalidRouterConfig { reason } => {
                write!(f, "invalid router configuration: {reason}")
            }
            Error::UnknownGatingFunc { value } => {
                write!(f, "unknown expert_gating_func value {value}")
            }
            Error::ExpertOutOfRange { expert, n_expert } => write!(
                f,
                "expert id {expert} is not an active expert of a layer with {n_expert} experts"
            ),
            Error::TokenOutOfRange { token, n_vocab } => write!(
                f,
                "token id {token} is outside the hash table ({n_vocab} token ids)"
            ),
            Error::BufferTooSmall { needed, actual } => write!(
                f,
                "buffer of {actual} elements is too small: {needed} needed"
            ),
            Error::WorkspaceTooSmall { needed, actual } => write!(
                f,
                "workspace of {actual} bytes is too small: {needed} bytes needed"
            ),
            Error::TooManyChoices { token, count, k } => write!(
                f,
                "token {token} is routed to {count} experts, more than the layer's k = {k}"
            ),
            Error::InvalidMoeConfig { reason } => {
                write!(f, "invalid MoE layer configuration: {reason}")
            }
            Error::UnsupportedArchitecture { arch } => write!(
                f,
                "model architecture '{arch}' is not supported (supported: llama)"
            ),
            Error::InvalidModelConfig { reason } => {
                write!(f, "invalid model configuration: {reason}")
            }
            Error::PositionOutOfRange {
                position,
                filled,
                context,
            } => write!(
                f,
                "position {position} cannot be evaluated: the KV cache holds {filled} positions of a {context}-token context"
            ),
            Error::UnsupportedType { ty } => {
                write!(f, "operation not supported for tensor type {}", ty.name())
            }
            Error::ExpertCountNotSquare { n_expert } => write!(
                f,
                "PEER expert count {n_expert} is not a perfect square (product keys need N = n * n)"
            ),
            Error::InvalidPeerConfig { reason } => {
                write!(f, "invalid PEER layer configuration: {reason}")
            }
            Error::CannotSample { reason } => write!(f, "cannot sample a token: {reason}"),
        }
    }
}

impl core::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_the_longest_whole_character_prefix() {
        assert_eq!(
            name_of("blk.0.ffn_up_exps.weight"),
            "blk.0.ffn_up_exps.weight"
        );
        let ascii = [b'a'; 60];
        let ascii = core::str::from_utf8(&ascii).unwrap();
        assert_eq!(name_of(ascii), &ascii[..48]);
        // 47 ASCII bytes, then a 2-byte 'é' across the 48-byte line: it is dropped whole.
        let mut mixed = heapless::String::<64>::new();
        for _ in 0..47 {
            mixed.push('a').unwrap();
        }
        mixed.push_str("éz").unwrap();
        assert_eq!(name_of(&mixed), &mixed[..47]);
        // Exactly 48 bytes ending in a 2-byte character stays whole.
        let mut exact = heapless::String::<64>::new();
        for _ in 0..46 {
            exact.push('a').unwrap();
        }
        exact.push('é').unwrap();
        assert_eq!(name_of(&exact), exact.as_str());
    }
}

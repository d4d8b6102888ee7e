//! Tensor element types and their block formats.
//!
//! GGUF stores every tensor as rows of fixed-size blocks along `ne[0]`; a block holds
//! [`TensorType::block_len`] elements in [`TensorType::block_bytes`] bytes. The ids are
//! ggml's (`enum ggml_type`), which is what a GGUF tensor-info record stores.

use crate::error::{Error, Result};

pub mod float;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;
mod round;

/// A GGUF tensor element type, with ggml's numeric id as discriminant.
///
/// Every id GGUF defines is listed so any file can be inspected; which types can be
/// decoded is a separate question (see [`TensorType::can_dequantize`]).
#[allow(non_camel_case_types, missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TensorType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
}

/// Every type, in id order.
pub const ALL_TYPES: [TensorType; 34] = {
    use TensorType::*;
    [
        F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ2_XXS,
        IQ2_XS, IQ3_XXS, IQ1_S, IQ4_NL, IQ3_S, IQ2_S, IQ4_XS, I8, I16, I32, I64, F64, IQ1_M, BF16,
        TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0,
    ]
};

impl TensorType {
    /// The type with ggml id `id`, or a typed error for ids that were removed from ggml
    /// (4, 5, 31–33, 36–38) or never existed.
    pub const fn from_id(id: u32) -> Result<Self> {
        use TensorType::*;
        Ok(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            16 => IQ2_XXS,
            17 => IQ2_XS,
            18 => IQ3_XXS,
            19 => IQ1_S,
            20 => IQ4_NL,
            21 => IQ3_S,
            22 => IQ2_S,
            23 => IQ4_XS,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            29 => IQ1_M,
            30 => BF16,
            34 => TQ1_0,
            35 => TQ2_0,
            39 => MXFP4,
            40 => NVFP4,
            41 => Q1_0,
            4 | 5 | 31..=33 | 36..=38 => return Err(Error::RemovedTensorType { type_id: id }),
            _ => return Err(Error::UnknownTensorType { type_id: id }),
        })
    }

    /// ggml's numeric id, as stored in GGUF.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The name gguf-py and llama.cpp's tools print (`"Q4_K"`, `"F16"`, …).
    pub const fn name(self) -> &'static str {
        use TensorType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
            NVFP4 => "NVFP4",
            Q1_0 => "Q1_0",
        }
    }

    /// The type whose [`name`](Self::name) is `name` (ASCII case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        ALL_TYPES
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Elements per block (1 for plain float and integer types).
    pub const fn block_len(self) -> usize {
        use TensorType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4 => 32,
            NVFP4 => 64,
            Q1_0 => 128,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S
            | IQ3_S | IQ2_S | IQ4_XS | IQ1_M | TQ1_0 | TQ2_0 => 256,
        }
    }

    /// Bytes per block, as ggml lays the block out.
    ///
    /// Q8_1 is 36 bytes (`d`, `s` as f16), as in current ggml; gguf-py 0.19 still lists
    /// the old 40-byte layout with f32 `d` and `s`.
    pub const fn block_bytes(self) -> usize {
        use TensorType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
            IQ2_XXS => 66,
            IQ2_XS => 74,
            IQ3_XXS => 98,
            IQ1_S => 50,
            IQ4_NL => 18,
            IQ3_S => 110,
            IQ2_S => 82,
            IQ4_XS => 136,
            IQ1_M => 56,
            TQ1_0 => 54,
            TQ2_0 => 66,
            MXFP4 => 17,
            NVFP4 => 36,
            Q1_0 => 18,
        }
    }

    /// `log2` of [`block_len`](Self::block_len): every block length is a power of two, so
    /// block counts are shifts, not the 64-bit divisions a 32-bit core does in software.
    pub(crate) const fn block_shift(self) -> u32 {
        self.block_len().trailing_zeros()
    }

    /// Bytes taken by `n_elements` elements laid out as whole blocks, or `None` when
    /// `n_elements` is not a multiple of the block length or the size overflows.
    pub const fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let shift = self.block_shift();
        if n_elements & ((1 << shift) - 1) != 0 {
            return None;
        }
        (n_elements >> shift).checked_mul(self.block_bytes() as u64)
    }
}

const _: () = {
    let mut i = 0;
    while i < ALL_TYPES.len() {
        assert!(ALL_TYPES[i].block_len().is_power_of_two());
        i += 1;
    }
};

impl core::fmt::Display for TensorType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl TensorType {
    /// Whether this build of the crate includes this type as a weight format, through its
    /// cargo feature (`q8_0`, `q4_k`, `f16`, `f32`, …; the default feature `all-formats`
    /// turns them all on). Firmware enables only the formats its model's weights use and
    /// so links only their code; a tensor of a format left out is
    /// [`Error::UnsupportedType`] when a layer or router is built from it.
    ///
    /// F32 rows always decode and encode ([`can_dequantize`](Self::can_dequantize)): a
    /// router reads its F32 weight that way, and F32 is an activation format. The `f32`
    /// feature adds F32 *weights* to the dot products (float FFN matrices, the F32 gate of
    /// a shared expert), like every other format's feature.
    ///
    /// The block modules themselves ([`q4_k`], …) are always there for direct calls; the
    /// features decide what [`dequantize_row`], [`quantize_row`],
    /// [`activation_type`](Self::activation_type) and the kernels dispatch to.
    pub const fn format_enabled(self) -> bool {
        use TensorType::*;
        match self {
            F32 => cfg!(feature = "f32"),
            F16 => cfg!(feature = "f16"),
            BF16 => cfg!(feature = "bf16"),
            Q4_0 => cfg!(feature = "q4_0"),
            Q4_1 => cfg!(feature = "q4_1"),
            Q5_0 => cfg!(feature = "q5_0"),
            Q5_1 => cfg!(feature = "q5_1"),
            Q8_0 => cfg!(feature = "q8_0"),
            Q8_1 => cfg!(feature = "q8_1"),
            Q2_K => cfg!(feature = "q2_k"),
            Q3_K => cfg!(feature = "q3_k"),
            Q4_K => cfg!(feature = "q4_k"),
            Q5_K => cfg!(feature = "q5_k"),
            Q6_K => cfg!(feature = "q6_k"),
            Q8_K => cfg!(feature = "q8_k"),
            IQ4_NL => cfg!(feature = "iq4_nl"),
            IQ4_XS => cfg!(feature = "iq4_xs"),
            IQ2_XXS | IQ2_XS | IQ3_XXS | IQ1_S | IQ3_S | IQ2_S | IQ1_M | I8 | I16 | I32 | I64
            | F64 | TQ1_0 | TQ2_0 | MXFP4 | NVFP4 | Q1_0 => false,
        }
    }

    /// Whether [`dequantize_row`] decodes this type: F32, and the formats this build
    /// includes ([`format_enabled`](Self::format_enabled)).
    ///
    /// The IQ1/IQ2/IQ3 grids, the ternary, FP4 and integer types are not decoded yet.
    pub const fn can_dequantize(self) -> bool {
        matches!(self, TensorType::F32) || self.format_enabled()
    }

    /// Whether [`quantize_row`] encodes this type.
    ///
    /// These are the types with a deterministic reference quantizer: the float rows, the
    /// legacy 32-element formats and the activation formats Q8_1 and Q8_K (when this build
    /// includes them). K-quant and IQ weights are produced offline by llama.cpp's
    /// search-based quantizers.
    pub const fn can_quantize(self) -> bool {
        use TensorType::*;
        self.can_dequantize()
            && matches!(
                self,
                F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | Q8_K
            )
    }

    /// The type activations are quantized to for a dot product with a row of this type,
    /// as ggml's CPU backend pairs them (`vec_dot_type`), or `None` when no dot product
    /// is implemented for this type (or its format is not in this build).
    ///
    /// Float rows are paired with F32 activations (ggml rounds activations to F16/BF16
    /// first; keeping them in f32 costs nothing here and loses nothing). Each format's
    /// feature turns on its activation format's too.
    pub const fn activation_type(self) -> Option<TensorType> {
        use TensorType::*;
        if !self.format_enabled() {
            return None;
        }
        match self {
            F32 | F16 | BF16 => Some(F32),
            Q4_0 | Q5_0 | Q8_0 | IQ4_NL => Some(Q8_0),
            Q4_1 | Q5_1 => Some(Q8_1),
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS => Some(Q8_K),
            _ => None,
        }
    }
}

/// Decodes `dst.len()` elements of type `ty` from `src` into f32.
///
/// `dst.len()` must be a whole number of blocks and `src` exactly the bytes of those
/// blocks. Results are bit-identical to gguf-py 0.19's numpy `dequantize`.
pub fn dequantize_row(ty: TensorType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    use TensorType::*;
    // Formats left out of the build (see `TensorType::format_enabled`) fall to the last
    // arm, so their code is not linked.
    match ty {
        F32 => float::dequantize_row_f32(src, dst),
        #[cfg(feature = "f16")]
        F16 => float::dequantize_row_f16(src, dst),
        #[cfg(feature = "bf16")]
        BF16 => float::dequantize_row_bf16(src, dst),
        #[cfg(feature = "q4_0")]
        Q4_0 => q4_0::dequantize_row(src, dst),
        #[cfg(feature = "q4_1")]
        Q4_1 => q4_1::dequantize_row(src, dst),
        #[cfg(feature = "q5_0")]
        Q5_0 => q5_0::dequantize_row(src, dst),
        #[cfg(feature = "q5_1")]
        Q5_1 => q5_1::dequantize_row(src, dst),
        #[cfg(feature = "q8_0")]
        Q8_0 => q8_0::dequantize_row(src, dst),
        #[cfg(feature = "q8_1")]
        Q8_1 => q8_1::dequantize_row(src, dst),
        #[cfg(feature = "q2_k")]
        Q2_K => q2_k::dequantize_row(src, dst),
        #[cfg(feature = "q3_k")]
        Q3_K => q3_k::dequantize_row(src, dst),
        #[cfg(feature = "q4_k")]
        Q4_K => q4_k::dequantize_row(src, dst),
        #[cfg(feature = "q5_k")]
        Q5_K => q5_k::dequantize_row(src, dst),
        #[cfg(feature = "q6_k")]
        Q6_K => q6_k::dequantize_row(src, dst),
        #[cfg(feature = "q8_k")]
        Q8_K => q8_k::dequantize_row(src, dst),
        #[cfg(feature = "iq4_nl")]
        IQ4_NL => iq4_nl::dequantize_row(src, dst),
        #[cfg(feature = "iq4_xs")]
        IQ4_XS => iq4_xs::dequantize_row(src, dst),
        _ => Err(Error::UnsupportedType { ty }),
    }
}

/// Encodes the f32 values `src` as type `ty` into `dst`.
///
/// `src.len()` must be a whole number of blocks and `dst` exactly the bytes of those
/// blocks. Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 are bit-identical to gguf-py 0.19's numpy
/// `quantize`; Q8_1 and Q8_K follow ggml's reference quantizers.
pub fn quantize_row(ty: TensorType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    use TensorType::*;
    match ty {
        F32 => float::quantize_row_f32(src, dst),
        #[cfg(feature = "f16")]
        F16 => float::quantize_row_f16(src, dst),
        #[cfg(feature = "bf16")]
        BF16 => float::quantize_row_bf16(src, dst),
        #[cfg(feature = "q4_0")]
        Q4_0 => q4_0::quantize_row(src, dst),
        #[cfg(feature = "q4_1")]
        Q4_1 => q4_1::quantize_row(src, dst),
        #[cfg(feature = "q5_0")]
        Q5_0 => q5_0::quantize_row(src, dst),
        #[cfg(feature = "q5_1")]
        Q5_1 => q5_1::quantize_row(src, dst),
        #[cfg(feature = "q8_0")]
        Q8_0 => q8_0::quantize_row(src, dst),
        #[cfg(feature = "q8_1")]
        Q8_1 => q8_1::quantize_row(src, dst),
        #[cfg(feature = "q8_k")]
        Q8_K => q8_k::quantize_row(src, dst),
        _ => Err(Error::UnsupportedType { ty }),
    }
}

/// Checks that `n_elements` is a whole number of `ty` blocks held in exactly `n_bytes`
/// bytes, and returns the number of blocks.
pub(crate) fn check_row(ty: TensorType, n_elements: usize, n_bytes: usize) -> Result<usize> {
    let block_len = ty.block_len();
    if !n_elements.is_multiple_of(block_len) {
        return Err(Error::RowNotBlockMultiple {
            tensor: crate::error::Name::new(),
            row_len: n_elements as u64,
            block_len: block_len as u64,
        });
    }
    let n_blocks = n_elements / block_len;
    let expected = n_blocks.checked_mul(ty.block_bytes());
    match expected {
        Some(expected) if expected == n_bytes => Ok(n_blocks),
        _ => Err(Error::LengthMismatch {
            expected: expected.unwrap_or(usize::MAX),
            actual: n_bytes,
        }),
    }
}

/// Checks lengths, then decodes `src` block by block with `decode`.
///
/// `B` and `N` must be `ty`'s block bytes and block length; each format module asserts
/// that at compile time.
pub(crate) fn dequantize_blocks<const B: usize, const N: usize>(
    ty: TensorType,
    src: &[u8],
    dst: &mut [f32],
    decode: fn(&[u8; B], &mut [f32; N]),
) -> Result<()> {
    check_row(ty, dst.len(), src.len())?;
    let (blocks, _) = src.as_chunks::<B>();
    let (outs, _) = dst.as_chunks_mut::<N>();
    for (block, out) in blocks.iter().zip(outs) {
        decode(block, out);
    }
    Ok(())
}

/// Checks lengths, then encodes `src` block by block with `encode`.
pub(crate) fn quantize_blocks<const B: usize, const N: usize>(
    ty: TensorType,
    src: &[f32],
    dst: &mut [u8],
    encode: fn(&[f32; N], &mut [u8; B]),
) -> Result<()> {
    check_row(ty, src.len(), dst.len())?;
    let (xs, _) = src.as_chunks::<N>();
    let (blocks, _) = dst.as_chunks_mut::<B>();
    for (x, block) in xs.iter().zip(blocks) {
        encode(x, block);
    }
    Ok(())
}

/// Reads the little-endian u16 at `at` of a block.
pub(crate) fn le_u16<const B: usize>(block: &[u8; B], at: usize) -> u16 {
    u16::from_le_bytes([block[at], block[at + 1]])
}

/// Reads the little-endian f16 at `at` of a block as f32.
pub(crate) fn le_f16<const B: usize>(block: &[u8; B], at: usize) -> f32 {
    float::f16_to_f32(le_u16(block, at))
}

//! [`TensorView`]: a tensor's type, shape and bytes, borrowed from wherever the bytes live.

use crate::error::{Error, Result, name_of};
use crate::quant::TensorType;

/// Most dimensions a GGUF tensor can have.
pub const MAX_DIMS: usize = 4;

/// A typed, shaped view of a tensor's bytes. Dimensions are in GGUF (ggml) order:
/// `dims()[0]` is the row length, the contiguous axis along which quant blocks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorView<'a> {
    ty: TensorType,
    dims: [u64; MAX_DIMS],
    n_dims: usize,
    data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// A view of `data` as a tensor of type `ty` and shape `dims` (GGUF order), checking
    /// that rows are whole blocks and that `data` is exactly the tensor's size.
    pub fn new(ty: TensorType, dims: &[u64], data: &'a [u8]) -> Result<Self> {
        let size = tensor_bytes(ty, dims, "")?;
        if size != data.len() as u64 {
            return Err(Error::LengthMismatch {
                expected: size as usize,
                actual: data.len(),
            });
        }
        let mut all = [1u64; MAX_DIMS];
        all[..dims.len()].copy_from_slice(dims);
        Ok(TensorView {
            ty,
            dims: all,
            n_dims: dims.len(),
            data,
        })
    }

    /// The element type.
    pub fn ty(&self) -> TensorType {
        self.ty
    }

    /// The dimensions as stored (GGUF order, `ne[0]` first).
    pub fn dims(&self) -> &[u64] {
        &self.dims[..self.n_dims]
    }

    /// Dimension `i`, or 1 past the stored ones (as ggml pads shapes).
    pub fn ne(&self, i: usize) -> u64 {
        self.dims.get(i).copied().unwrap_or(1)
    }

    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        // Checked at construction not to overflow.
        self.dims.iter().product()
    }

    /// Elements per row (`ne[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims[0]
    }

    /// Number of rows (the product of every dimension but the first).
    pub fn n_rows(&self) -> u64 {
        self.dims[1..].iter().product()
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        // ne[0] is a whole number of blocks and the whole tensor fits in `data`.
        (self.row_len() >> self.ty.block_shift()) as usize * self.ty.block_bytes()
    }

    /// All of the tensor's bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The bytes of row `index`, if there is such a row.
    pub fn row(&self, index: u64) -> Option<&'a [u8]> {
        let index = usize::try_from(index).ok()?;
        let start = index.checked_mul(self.row_bytes())?;
        self.data.get(start..start.checked_add(self.row_bytes())?)
    }

    /// The bytes of `count` consecutive rows from row `first`, or an empty slice where the
    /// tensor has fewer rows (a batch kernel then reports the length mismatch).
    pub fn rows(&self, first: usize, count: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        let range = first
            .checked_mul(rb)
            .and_then(|start| Some(start..start.checked_add(count.checked_mul(rb)?)?));
        range.and_then(|r| self.data.get(r)).unwrap_or(&[])
    }
}

/// Size in bytes of a tensor of type `ty` and shape `dims`, with every check GGUF needs:
/// at most four dims, rows made of whole blocks, no overflow. `name` is for the error.
pub(crate) fn tensor_bytes(ty: TensorType, dims: &[u64], name: &str) -> Result<u64> {
    if dims.len() > MAX_DIMS {
        return Err(Error::TooManyDims {
            tensor: name_of(name),
            n_dims: dims.len() as u32,
        });
    }
    let row_len = dims.first().copied().unwrap_or(1);
    if row_len & ((1 << ty.block_shift()) - 1) != 0 {
        return Err(Error::RowNotBlockMultiple {
            tensor: name_of(name),
            row_len,
            block_len: ty.block_len() as u64,
        });
    }
    let too_large = || Error::TensorTooLarge {
        tensor: name_of(name),
    };
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(too_large)?;
    // Element counts must also fit in i64, as ggml stores them.
    if n_elements > i64::MAX as u64 {
        return Err(too_large());
    }
    ty.bytes_for(n_elements).ok_or_else(too_large)
}

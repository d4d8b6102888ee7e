//! A reader of the safetensors format over borrowed bytes (an mmap): an 8-byte
//! little-endian header length, a JSON header naming each tensor's dtype, shape and byte
//! range, then the data. [`parse`] validates everything the header claims — size limits,
//! JSON, duplicate names, known dtypes, shapes whose byte size matches the range, ranges
//! inside the data and not overlapping — and returns the tensors as borrowed slices, so no
//! weight is ever copied. Every malformed input is a [`SafetensorsError`], never a panic.
//!
//! Our own code rather than the `safetensors` crate: the header is one JSON object that
//! `serde_json` (already a dependency) parses, the checks are a page of code, and our errors
//! name the tensor at fault in the terms the rest of the loader uses.

use std::fmt;

use moe_core::TensorType;
use moe_core::tensor::{MAX_DIMS, TensorView};

/// Largest JSON header accepted (the `safetensors` crate's limit too): a header claiming
/// more is refused before anything is read.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The element types of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E4M3,
    F8E5M2,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl Dtype {
    fn from_name(name: &str) -> Option<Self> {
        use Dtype::*;
        Some(match name {
            "BOOL" => Bool,
            "U8" => U8,
            "I8" => I8,
            "F8_E4M3" => F8E4M3,
            "F8_E5M2" => F8E5M2,
            "I16" => I16,
            "U16" => U16,
            "F16" => F16,
            "BF16" => BF16,
            "I32" => I32,
            "U32" => U32,
            "F32" => F32,
            "F64" => F64,
            "I64" => I64,
            "U64" => U64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        use Dtype::*;
        match self {
            Bool | U8 | I8 | F8E4M3 | F8E5M2 => 1,
            I16 | U16 | F16 | BF16 => 2,
            I32 | U32 | F32 => 4,
            F64 | I64 | U64 => 8,
        }
    }

    /// The engine's tensor type for this dtype: F32, F16 and BF16 weights are used in
    /// place; the others are not weights the engine reads.
    pub fn tensor_type(self) -> Option<TensorType> {
        match self {
            Dtype::F32 => Some(TensorType::F32),
            Dtype::F16 => Some(TensorType::F16),
            Dtype::BF16 => Some(TensorType::BF16),
            _ => None,
        }
    }
}

/// One tensor of a safetensors file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor<'a> {
    /// Its name in the header.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, outermost dimension first (row-major, as PyTorch writes it).
    pub shape: Vec<u64>,
    /// Its bytes.
    pub data: &'a [u8],
}

impl<'a> Tensor<'a> {
    /// The tensor as a [`TensorView`]: the shape reversed into GGUF order (the last,
    /// contiguous dimension first), the bytes borrowed.
    pub fn view(&self) -> Result<TensorView<'a>, SafetensorsError> {
        let ty = self
            .dtype
            .tensor_type()
            .ok_or_else(|| SafetensorsError::UnsupportedDtype {
                tensor: self.name.clone(),
                dtype: self.dtype,
            })?;
        if self.shape.len() > MAX_DIMS {
            return Err(SafetensorsError::TooManyDims {
                tensor: self.name.clone(),
                n_dims: self.shape.len(),
            });
        }
        let dims: Vec<u64> = self.shape.iter().rev().copied().collect();
        TensorView::new(ty, &dims, self.data).map_err(|e| SafetensorsError::View {
            tensor: self.name.clone(),
            source: Box::new(e),
        })
    }
}

/// What is wrong with a safetensors file.
#[derive(Debug)]
#[non_exhaustive]
pub enum SafetensorsError {
    /// Shorter than the 8-byte header length, or than the header it announces.
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes there are.
        actual: u64,
    },
    /// The header length is over [`MAX_HEADER_BYTES`].
    HeaderTooLarge {
        /// The announced length.
        len: u64,
    },
    /// The header is not a JSON object of tensor entries.
    BadHeader {
        /// What the JSON parser or the checks said.
        reason: String,
    },
    /// Two entries share a name.
    DuplicateName,
    /// An entry lacks a field, or a field has the wrong JSON type.
    BadEntry {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A dtype name the format does not define.
    UnknownDtype {
        /// The tensor.
        tensor: String,
        /// The name found.
        dtype: String,
    },
    /// A dtype the engine does not read as weights.
    UnsupportedDtype {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: Dtype,
    },
    /// The byte range does not match the shape, or lies outside the data.
    BadRange {
        /// The tensor.
        tensor: String,
        /// `[begin, end)` as the header says.
        range: [u64; 2],
        /// Bytes the shape needs.
        needed: Option<u64>,
        /// Bytes of data after the header.
        data_len: u64,
    },
    /// Two tensors' byte ranges overlap.
    Overlap {
        /// One tensor.
        first: String,
        /// The other.
        second: String,
    },
    /// More dimensions than a [`TensorView`] holds.
    TooManyDims {
        /// The tensor.
        tensor: String,
        /// Its dimension count.
        n_dims: usize,
    },
    /// The core refused the view (rows not whole blocks, size overflow).
    View {
        /// The tensor.
        tensor: String,
        /// The core's error.
        source: Box<moe_core::Error>,
    },
}

impl fmt::Display for SafetensorsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SafetensorsError::*;
        match self {
            Truncated { needed, actual } => write!(
                f,
                "truncated safetensors file: {needed} bytes needed, {actual} present"
            ),
            HeaderTooLarge { len } => write!(
                f,
                "safetensors header of {len} bytes is over the limit of {MAX_HEADER_BYTES}"
            ),
            BadHeader { reason } => write!(f, "bad safetensors header: {reason}"),
            DuplicateName => write!(f, "the safetensors header names a tensor twice"),
            BadEntry { tensor, reason } => write!(f, "tensor '{tensor}': {reason}"),
            UnknownDtype { tensor, dtype } => {
                write!(f, "tensor '{tensor}': unknown dtype '{dtype}'")
            }
            UnsupportedDtype { tensor, dtype } => write!(
                f,
                "tensor '{tensor}': dtype {dtype:?} is not a weight type (F32, F16, BF16)"
            ),
            BadRange {
                tensor,
                range,
                needed,
                data_len,
            } => {
                write!(
                    f,
                    "tensor '{tensor}': data_offsets [{}, {}) ",
                    range[0], range[1]
                )?;
                match needed {
                    Some(n) => write!(f, "for a shape of {n} bytes "),
                    None => write!(f, "for a shape too large to address "),
                }?;
                write!(f, "in {data_len} bytes of data")
            }
            Overlap { first, second } => {
                write!(f, "tensors '{first}' and '{second}' share bytes")
            }
            TooManyDims { tensor, n_dims } => write!(
                f,
                "tensor '{tensor}': {n_dims} dimensions (at most {MAX_DIMS})"
            ),
            View { tensor, source } => write!(f, "tensor '{tensor}': {source}"),
        }
    }
}

impl std::error::Error for SafetensorsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SafetensorsError::View { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// Counts the keys of the top-level JSON object in `json` (which must already have parsed
/// as an object): `serde_json` keeps only the last of duplicate keys, so comparing this
/// count with the parsed map's length finds them.
fn top_level_keys(json: &str) -> usize {
    let (mut depth, mut in_string, mut escaped, mut keys) = (0usize, false, false, 0usize);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' if depth == 1 => keys += 1,
            _ => {}
        }
    }
    keys
}

/// Parses and validates a whole safetensors file; the tensors in header order (the
/// optional `__metadata__` entry is skipped).
pub fn parse(bytes: &[u8]) -> Result<Vec<Tensor<'_>>, SafetensorsError> {
    let total = bytes.len() as u64;
    let len_bytes: [u8; 8] =
        bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(SafetensorsError::Truncated {
                needed: 8,
                actual: total,
            })?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(SafetensorsError::HeaderTooLarge { len: header_len });
    }
    let data_start = 8 + header_len;
    if data_start > total {
        return Err(SafetensorsError::Truncated {
            needed: data_start,
            actual: total,
        });
    }
    let header = std::str::from_utf8(&bytes[8..data_start as usize]).map_err(|e| {
        SafetensorsError::BadHeader {
            reason: e.to_string(),
        }
    })?;
    let json: serde_json::Value =
        serde_json::from_str(header).map_err(|e| SafetensorsError::BadHeader {
            reason: e.to_string(),
        })?;
    let map = json
        .as_object()
        .ok_or_else(|| SafetensorsError::BadHeader {
            reason: "not a JSON object".into(),
        })?;
    if top_level_keys(header) != map.len() {
        return Err(SafetensorsError::DuplicateName);
    }
    let data = &bytes[data_start as usize..];
    let data_len = data.len() as u64;
    let mut tensors = Vec::with_capacity(map.len());
    let mut ranges = Vec::with_capacity(map.len());
    for (name, entry) in map {
        if name == "__metadata__" {
            continue;
        }
        let bad = |reason| SafetensorsError::BadEntry {
            tensor: name.clone(),
            reason,
        };
        let entry = entry
            .as_object()
            .ok_or_else(|| bad("entry is not an object"))?;
        let dtype_name = entry
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("no string 'dtype'"))?;
        let dtype = Dtype::from_name(dtype_name).ok_or_else(|| SafetensorsError::UnknownDtype {
            tensor: name.clone(),
            dtype: dtype_name.to_string(),
        })?;
        let shape = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no array 'shape'"))?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| bad("a dimension of 'shape' is not a non-negative integer"))?;
        let offsets = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some([a[0].as_u64()?, a[1].as_u64()?]))
            .ok_or_else(|| bad("'data_offsets' is not two non-negative integers"))?;
        let needed = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
        let [begin, end] = offsets;
        if begin > end || end > data_len || Some(end - begin) != needed {
            return Err(SafetensorsError::BadRange {
                tensor: name.clone(),
                range: offsets,
                needed,
                data_len,
            });
        }
        ranges.push((begin, end, tensors.len()));
        tensors.push(Tensor {
            name: name.clone(),
            dtype,
            shape,
            data: &data[begin as usize..end as usize],
        });
    }
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let ((_, end_a, a), (begin_b, end_b, b)) = (pair[0], pair[1]);
        // Empty tensors occupy no bytes and overlap nothing.
        if begin_b < end_a && begin_b < end_b {
            return Err(SafetensorsError::Overlap {
                first: tensors[a].name.clone(),
                second: tensors[b].name.clone(),
            });
        }
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file from a header string and data bytes.
    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_tensors_in_place() {
        let bytes = file(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}}"#,
            &[0u8; 16],
        );
        let t = parse(&bytes).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "b");
        assert_eq!(t[1].shape, [2, 2]);
        let v = t[1].view().unwrap();
        assert_eq!((v.ty(), v.dims()), (TensorType::BF16, &[2u64, 2][..]));
    }

    #[test]
    fn refuses_malformed_headers() {
        let e = |h: &str, data_len: usize| parse(&file(h, &vec![0; data_len])).unwrap_err();
        let one = |o: &str| format!(r#"{{"x":{{"dtype":"F32","shape":[2],"data_offsets":{o}}}}}"#);
        assert!(matches!(
            parse(&[1, 0]),
            Err(SafetensorsError::Truncated { .. })
        ));
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(
            parse(&huge),
            Err(SafetensorsError::HeaderTooLarge { .. })
        ));
        let mut short = 100u64.to_le_bytes().to_vec();
        short.extend_from_slice(b"{}");
        assert!(matches!(
            parse(&short),
            Err(SafetensorsError::Truncated { needed: 108, .. })
        ));
        assert!(matches!(
            e("{not json", 0),
            SafetensorsError::BadHeader { .. }
        ));
        assert!(matches!(e("[1]", 0), SafetensorsError::BadHeader { .. }));
        assert!(matches!(
            e(&one("[0,4]"), 8),
            SafetensorsError::BadRange { .. }
        ));
        assert!(matches!(
            e(&one("[0,8]"), 4),
            SafetensorsError::BadRange { .. }
        ));
        assert!(matches!(
            e(&one("[8,0]"), 8),
            SafetensorsError::BadRange { .. }
        ));
        assert!(matches!(
            e(&one("[0]"), 8),
            SafetensorsError::BadEntry { .. }
        ));
        assert!(matches!(
            e(
                r#"{"x":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#,
                4
            ),
            SafetensorsError::UnknownDtype { .. }
        ));
        assert!(matches!(
            e(
                r#"{"x":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,4]}}"#,
                4
            ),
            SafetensorsError::BadRange { needed: None, .. }
        ));
        assert!(matches!(
            e(
                r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8
            ),
            SafetensorsError::DuplicateName
        ));
        assert!(matches!(
            e(
                r#"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12
            ),
            SafetensorsError::Overlap { .. }
        ));
        // A key containing ':' and quotes is one key.
        let odd = r#"{"a:\"b{":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
        let bytes = file(odd, &[0; 8]);
        let t = parse(&bytes).unwrap();
        assert!(matches!(
            t[0].view(),
            Err(SafetensorsError::UnsupportedDtype { .. })
        ));
    }
}

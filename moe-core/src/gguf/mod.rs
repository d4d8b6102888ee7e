//! Zero-copy GGUF reader.
//!
//! [`File::parse`] validates a whole file once — header, every metadata value, every
//! tensor-info record, alignment, bounds, duplicates and overlaps — and after that every
//! accessor hands out slices of the original bytes. Nothing is copied and nothing is
//! allocated; large arrays (vocabularies, merges) are walked once at open and decoded
//! lazily afterwards.
//!
//! Layout (little-endian): `"GGUF"`, version (u32: 2 or 3), tensor count (u64), metadata
//! count (u64), the metadata pairs, the tensor-info records, zero padding to the
//! alignment, then the tensor data. Tensor offsets are relative to the data start.

mod cursor;
pub(crate) mod names;
mod unique;
mod value;

pub use value::{Array, ArrayIter, MAX_ARRAY_NESTING, Value, ValueType};

use crate::error::{Error, Result, Section, name_of};
use crate::quant::TensorType;
use crate::tensor::{MAX_DIMS, TensorView, tensor_bytes};
use cursor::Cursor;
use unique::{CHUNK, Extent, HashSet, find_duplicate, find_overlap, occurs_twice};
use value::{LongArrays, read_metadata_value, read_value, read_value_type};

/// The four magic bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The key holding a file's alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The key holding a file's architecture name, the prefix of its model keys.
pub const ARCHITECTURE_KEY: &str = "general.architecture";

/// Fewest bytes a metadata pair takes: key length, value type, one byte of value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Fewest bytes a tensor-info record takes: name length, dim count, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

/// A parsed, validated GGUF file borrowing its bytes.
#[derive(Clone, Copy)]
pub struct File<'a> {
    bytes: &'a [u8],
    version: u32,
    alignment: u64,
    metadata_start: usize,
    metadata_count: usize,
    tensors_start: usize,
    tensor_count: usize,
    data_offset: usize,
    long_arrays: LongArrays,
}

impl core::fmt::Debug for File<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("File")
            .field("len", &self.bytes.len())
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("metadata_count", &self.metadata_count)
            .field("tensor_count", &self.tensor_count)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// One tensor-info record: where the tensor is and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    /// The tensor's name (`blk.0.ffn_up_exps.weight`, …).
    pub name: &'a str,
    /// Offset of its data relative to the start of the data section.
    pub offset: u64,
    /// Type, shape and bytes.
    pub view: TensorView<'a>,
}

/// A tensor-info record as read, before its bytes are located.
struct RawTensorInfo<'a> {
    name: &'a str,
    ty: TensorType,
    dims: [u64; MAX_DIMS],
    n_dims: usize,
    offset: u64,
    size: u64,
}

impl<'a> File<'a> {
    /// Parses and validates a GGUF file. Every problem becomes a typed [`Error`]; on
    /// success every accessor is infallible and every slice it returns is in bounds.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut cursor = Cursor::new(bytes, 0, Section::Header);
        let magic: [u8; 4] = cursor.bytes_array()?;
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = cursor.u32()?;
        // A byte-swapped file has its version in the high bytes (3 reads as 0x0300_0000).
        if version != 0 && version & 0xffff == 0 {
            return Err(Error::BigEndian);
        }
        if !(2..=3).contains(&version) {
            return Err(Error::UnsupportedVersion { version });
        }
        let tensor_count = cursor.u64()?;
        let metadata_count = cursor.u64()?;
        cursor.check_count(tensor_count, MIN_TENSOR_INFO_BYTES, 8)?;
        cursor.check_count(metadata_count, MIN_KV_BYTES, 16)?;
        // Both are at most the input length, so they fit in usize.
        let (tensor_count, metadata_count) = (tensor_count as usize, metadata_count as usize);

        cursor.set_section(Section::Metadata);
        let metadata_start = cursor.pos();
        let (alignment, long_arrays) = Self::check_metadata(bytes, &mut cursor, metadata_count)?;

        cursor.set_section(Section::TensorInfo);
        let tensors_start = cursor.pos();
        let mut file = File {
            bytes,
            version,
            alignment,
            metadata_start,
            metadata_count,
            tensors_start,
            tensor_count,
            data_offset: 0,
            long_arrays,
        };
        let data_end = file.check_tensor_infos(&mut cursor)?;

        // The alignment is a power of two (checked in `check_metadata`): round up by mask.
        let data_offset = (cursor.pos() as u64)
            .checked_add(alignment - 1)
            .map_or(u64::MAX, |end| end & !(alignment - 1));
        if tensor_count > 0 && data_offset > bytes.len() as u64 {
            return Err(Error::Truncated {
                section: Section::Data,
                offset: bytes.len(),
            });
        }
        // Without tensors a file may end before the padding; clamp so slices stay valid.
        file.data_offset = data_offset.min(bytes.len() as u64) as usize;
        if data_end > (bytes.len() - file.data_offset) as u64 {
            return Err(file.first_out_of_bounds());
        }
        Ok(file)
    }

    /// Walks every metadata pair once: validates it, finds the alignment, and rejects
    /// duplicate keys. Returns the alignment and the long arrays to jump over later.
    fn check_metadata(
        bytes: &'a [u8],
        cursor: &mut Cursor<'a>,
        count: usize,
    ) -> Result<(u64, LongArrays)> {
        let mut alignment = DEFAULT_ALIGNMENT;
        let mut long_arrays = LongArrays::default();
        let mut seen = HashSet::new();
        let start = cursor.pos();
        let keys = |long_arrays| {
            let cursor = Cursor::new(bytes, start, Section::Metadata);
            RawNames::Keys(MetadataIter::raw(cursor, count, long_arrays))
        };
        for index in 0..count {
            let key = cursor.string()?;
            let ty = read_value_type(cursor)?;
            let value_at = cursor.pos();
            let value = read_value(cursor, ty, 0)?;
            long_arrays.note(value_at, cursor.pos(), &value);
            if key == ALIGNMENT_KEY {
                alignment = value
                    .as_u64()
                    .ok_or(Error::WrongValueType { key: name_of(key) })?;
                if !alignment.is_power_of_two() {
                    return Err(Error::BadAlignment { alignment });
                }
            }
            if index < CHUNK
                && seen.insert(key)
                && occurs_twice(key, keys(long_arrays).take(index + 1))?
            {
                return Err(Error::DuplicateKey { key: name_of(key) });
            }
        }
        if let Some(key) = find_duplicate(count, CHUNK, &|| keys(long_arrays))? {
            return Err(Error::DuplicateKey { key: name_of(key) });
        }
        Ok((alignment, long_arrays))
    }

    /// Walks every tensor-info record once: validates it, rejects duplicate names and
    /// overlapping tensors. Returns the end of the furthest tensor, relative to the data
    /// section.
    fn check_tensor_infos(&self, cursor: &mut Cursor<'a>) -> Result<u64> {
        let mut seen = HashSet::new();
        let mut data_end = 0u64;
        let mut in_offset_order = true;
        for index in 0..self.tensor_count {
            let info = read_tensor_info(cursor, self.alignment)?;
            if index < CHUNK
                && seen.insert(info.name)
                && occurs_twice(info.name, self.raw_names().take(index + 1))?
            {
                return Err(Error::DuplicateTensorName {
                    tensor: name_of(info.name),
                });
            }
            if info.size > 0 {
                in_offset_order &= info.offset >= data_end;
                data_end = data_end.max(info.offset + info.size);
            }
        }
        if let Some(name) = find_duplicate(self.tensor_count, CHUNK, &|| self.raw_names())? {
            return Err(Error::DuplicateTensorName {
                tensor: name_of(name),
            });
        }
        if !in_offset_order && let Some((a, b)) = find_overlap(|| self.raw_extents())? {
            return Err(Error::OverlappingTensors {
                first: name_of(self.raw_name(a)),
                second: name_of(self.raw_name(b)),
            });
        }
        Ok(data_end)
    }

    /// The tensor-info records as read (usable before the data offset is known).
    fn raw_infos(&self) -> impl Iterator<Item = Result<RawTensorInfo<'a>>> + use<'a> {
        let mut cursor = Cursor::new(self.bytes, self.tensors_start, Section::TensorInfo);
        let alignment = self.alignment;
        (0..self.tensor_count).map(move |_| read_tensor_info(&mut cursor, alignment))
    }

    fn raw_names(&self) -> RawNames<'a> {
        RawNames::Tensors {
            cursor: Cursor::new(self.bytes, self.tensors_start, Section::TensorInfo),
            left: self.tensor_count,
            alignment: self.alignment,
        }
    }

    fn raw_extents(&self) -> impl Iterator<Item = Result<Extent>> + use<'a> {
        self.raw_infos()
            .enumerate()
            .filter_map(|(index, info)| match info {
                Ok(info) if info.size == 0 => None,
                Ok(info) => Some(Ok(Extent {
                    start: info.offset,
                    end: info.offset + info.size,
                    index,
                })),
                Err(e) => Some(Err(e)),
            })
    }

    fn raw_name(&self, index: usize) -> &'a str {
        self.raw_names()
            .nth(index)
            .and_then(|name| name.ok())
            .unwrap_or("")
    }

    /// The error for the first tensor whose bytes run past the end of the file.
    fn first_out_of_bounds(&self) -> Error {
        let room = (self.bytes.len() - self.data_offset) as u64;
        for info in self.raw_infos().flatten() {
            if info.offset + info.size > room {
                return Error::TensorOutOfBounds {
                    tensor: name_of(info.name),
                    offset: info.offset,
                    size: info.size,
                };
            }
        }
        Error::Truncated {
            section: Section::Data,
            offset: self.bytes.len(),
        }
    }

    /// The bytes the file was parsed from.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The GGUF version (2 or 3; they are laid out identically).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset where the tensor data section starts.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Number of metadata pairs.
    pub fn metadata_count(&self) -> usize {
        self.metadata_count
    }

    /// The metadata pairs in file order.
    pub fn metadata(&self) -> MetadataIter<'a> {
        let cursor = Cursor::new(self.bytes, self.metadata_start, Section::Metadata);
        MetadataIter::raw(cursor, self.metadata_count, self.long_arrays)
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.metadata().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// `general.architecture`, the prefix of the model's own keys (`llama`, `qwen2moe`, …).
    pub fn architecture(&self) -> Option<&'a str> {
        self.get(ARCHITECTURE_KEY)?.as_str()
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.tensor_count
    }

    /// The tensors in file order.
    pub fn tensors(&self) -> TensorIter<'a> {
        TensorIter {
            file: *self,
            cursor: Cursor::new(self.bytes, self.tensors_start, Section::TensorInfo),
            left: self.tensor_count,
        }
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<TensorInfo<'a>> {
        self.tensors().find(|t| t.name == name)
    }
}

/// Reads and validates one tensor-info record.
fn read_tensor_info<'a>(cursor: &mut Cursor<'a>, alignment: u64) -> Result<RawTensorInfo<'a>> {
    let name = cursor.string()?;
    let n_dims = cursor.u32()?;
    if n_dims as usize > MAX_DIMS {
        return Err(Error::TooManyDims {
            tensor: name_of(name),
            n_dims,
        });
    }
    let n_dims = n_dims as usize;
    let mut dims = [1u64; MAX_DIMS];
    for dim in &mut dims[..n_dims] {
        *dim = cursor.u64()?;
    }
    let ty = TensorType::from_id(cursor.u32()?)?;
    let offset = cursor.u64()?;
    let size = tensor_bytes(ty, &dims[..n_dims], name)?;
    // A power of two (checked when read), so this is `offset % alignment`.
    if offset & (alignment - 1) != 0 {
        return Err(Error::MisalignedOffset {
            tensor: name_of(name),
            offset,
            alignment,
        });
    }
    if offset.checked_add(size).is_none() {
        return Err(Error::TensorTooLarge {
            tensor: name_of(name),
        });
    }
    Ok(RawTensorInfo {
        name,
        ty,
        dims,
        n_dims,
        offset,
        size,
    })
}

/// Iterator over metadata pairs `(key, value)`.
#[derive(Clone)]
pub struct MetadataIter<'a> {
    cursor: Cursor<'a>,
    left: usize,
    long_arrays: LongArrays,
}

impl<'a> MetadataIter<'a> {
    fn raw(cursor: Cursor<'a>, count: usize, long_arrays: LongArrays) -> Self {
        MetadataIter {
            cursor,
            left: count,
            long_arrays,
        }
    }

    fn next_pair(&mut self) -> Result<(&'a str, Value<'a>)> {
        let key = self.cursor.string()?;
        let ty = read_value_type(&mut self.cursor)?;
        let value = read_metadata_value(&mut self.cursor, ty, &self.long_arrays)?;
        Ok((key, value))
    }
}

impl<'a> Iterator for MetadataIter<'a> {
    type Item = (&'a str, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.raw_next().and_then(|pair| pair.ok())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

impl<'a> MetadataIter<'a> {
    /// Like `next`, but passing errors through (used while validating).
    fn raw_next(&mut self) -> Option<Result<(&'a str, Value<'a>)>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let pair = self.next_pair();
        if pair.is_err() {
            self.left = 0;
        }
        Some(pair)
    }
}

/// The metadata keys or the tensor names of a file as read, errors passed through (used
/// while validating): one type for both, so the duplicate checks are compiled once.
enum RawNames<'a> {
    Keys(MetadataIter<'a>),
    Tensors {
        cursor: Cursor<'a>,
        left: usize,
        alignment: u64,
    },
}

impl<'a> Iterator for RawNames<'a> {
    type Item = Result<&'a str>;

    fn next(&mut self) -> Option<Result<&'a str>> {
        match self {
            RawNames::Keys(pairs) => pairs.raw_next().map(|pair| pair.map(|(key, _)| key)),
            RawNames::Tensors {
                cursor,
                left,
                alignment,
            } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                Some(read_tensor_info(cursor, *alignment).map(|info| info.name))
            }
        }
    }
}

/// Iterator over a file's tensors.
#[derive(Clone)]
pub struct TensorIter<'a> {
    file: File<'a>,
    cursor: Cursor<'a>,
    left: usize,
}

impl<'a> Iterator for TensorIter<'a> {
    type Item = TensorInfo<'a>;

    fn next(&mut self) -> Option<TensorInfo<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Every record was validated by `File::parse`; a failure here is impossible, and
        // ending the iteration is the safe answer if it happened anyway.
        let info = read_tensor_info(&mut self.cursor, self.file.alignment).ok()?;
        let start = self
            .file
            .data_offset
            .checked_add(usize::try_from(info.offset).ok()?)?;
        let data = self
            .file
            .bytes
            .get(start..start.checked_add(usize::try_from(info.size).ok()?)?)?;
        let view = TensorView::new(info.ty, &info.dims[..info.n_dims], data).ok()?;
        Some(TensorInfo {
            name: info.name,
            offset: info.offset,
            view,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for TensorIter<'_> {}

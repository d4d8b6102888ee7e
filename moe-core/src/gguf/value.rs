//! Metadata values: the thirteen GGUF value types, borrowed from the file's bytes.
//!
//! Arrays are not materialised: an [`Array`] remembers where its elements are and decodes
//! them one at a time, so a 150k-entry vocabulary costs nothing until someone reads it.

use super::cursor::Cursor;
use crate::error::{Error, Result, Section};

/// Deepest nesting of arrays inside arrays that the reader accepts. The GGUF spec allows
/// nesting; llama.cpp rejects it; we parse it, with a bound so hostile input cannot
/// exhaust the stack.
pub const MAX_ARRAY_NESTING: usize = 8;

/// The type tag of a metadata value, with GGUF's numeric ids.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    /// The type with GGUF id `id`, if there is one.
    pub const fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// GGUF's numeric id.
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The name gguf-py uses (`GGUFValueType`): `"UINT8"`, `"FLOAT32"`, `"STRING"`, ….
    pub const fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }

    /// Encoded size of one value, or `None` for strings and arrays (variable length).
    pub const fn fixed_size(self) -> Option<usize> {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The fewest bytes one encoded value can take: a string is at least its length
    /// field, an array at least its element type and count.
    const fn min_size(self) -> usize {
        match self {
            ValueType::String => 8,
            ValueType::Array => 12,
            _ => match self.fixed_size() {
                Some(n) => n,
                None => 1,
            },
        }
    }
}

/// One metadata value, borrowing strings and array elements from the file.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(&'a str),
    Array(Array<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    /// The value's type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value as `i128`, so every width compares and converts losslessly.
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Any non-negative integer value, whatever its width (converters write counts as u32,
    /// the spec recommends u64: readers accept both).
    pub fn as_u64(&self) -> Option<u64> {
        self.as_integer().and_then(|v| u64::try_from(v).ok())
    }

    /// Any integer value that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_integer().and_then(|v| i64::try_from(v).ok())
    }

    /// A float value, or an integer converted to `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_integer().map(|v| v as f64),
        }
    }

    /// A float value rounded to `f32`, or an integer converted to `f32` (rounded once): what
    /// an `f32` model parameter reads, without the `f64` arithmetic of [`as_f64`]
    /// (software on a single-precision FPU).
    ///
    /// [`as_f64`]: Self::as_f64
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => match self.as_i64() {
                Some(v) => Some(v as f32),
                None => self.as_u64().map(|v| v as f32),
            },
        }
    }

    /// The value if it is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::String(v) => Some(v),
            _ => None,
        }
    }

    /// The value if it is an array.
    pub fn as_array(&self) -> Option<Array<'a>> {
        match *self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// An array value: element type, element count and the (already validated) bytes of the
/// elements, decoded lazily.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Array<'a> {
    elem_type: ValueType,
    len: usize,
    elems: &'a [u8],
}

impl<'a> Array<'a> {
    /// The type of every element.
    pub fn elem_type(&self) -> ValueType {
        self.elem_type
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The encoded bytes of the elements (for fixed-size types, `len` values back to
    /// back in little-endian order).
    pub fn raw_bytes(&self) -> &'a [u8] {
        self.elems
    }

    /// The elements in order.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            cursor: Cursor::new(self.elems, 0, Section::Metadata),
            elem_type: self.elem_type,
            left: self.len,
        }
    }

    /// Element `index`: O(1) for fixed-size types, O(index) for strings and arrays.
    pub fn get(&self, index: usize) -> Option<Value<'a>> {
        if index >= self.len {
            return None;
        }
        match self.elem_type.fixed_size() {
            Some(size) => {
                let mut cursor =
                    Cursor::new(self.elems, index.checked_mul(size)?, Section::Metadata);
                read_value(&mut cursor, self.elem_type, 0).ok()
            }
            None => self.iter().nth(index),
        }
    }
}

impl<'a> IntoIterator for Array<'a> {
    type Item = Value<'a>;
    type IntoIter = ArrayIter<'a>;
    fn into_iter(self) -> ArrayIter<'a> {
        self.iter()
    }
}

/// Iterator over an [`Array`]'s elements.
#[derive(Clone)]
pub struct ArrayIter<'a> {
    cursor: Cursor<'a>,
    elem_type: ValueType,
    left: usize,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The elements were validated when the file was opened, so this cannot fail; if it
        // somehow did, ending the iteration is the safe answer.
        match read_value(&mut self.cursor, self.elem_type, 1) {
            Ok(value) => Some(value),
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for ArrayIter<'_> {}

/// Reads a value type tag.
pub(crate) fn read_value_type(cursor: &mut Cursor<'_>) -> Result<ValueType> {
    let offset = cursor.pos();
    let type_id = cursor.u32()?;
    ValueType::from_id(type_id).ok_or(Error::UnknownValueType { type_id, offset })
}

/// Reads (and fully validates) one value of type `ty`. `depth` is the number of arrays
/// this value is nested in.
pub(crate) fn read_value<'a>(
    cursor: &mut Cursor<'a>,
    ty: ValueType,
    depth: usize,
) -> Result<Value<'a>> {
    Ok(match ty {
        ValueType::U8 => Value::U8(cursor.u8()?),
        ValueType::I8 => Value::I8(cursor.u8()? as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(cursor.bytes_array()?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(cursor.bytes_array()?)),
        ValueType::U32 => Value::U32(cursor.u32()?),
        ValueType::I32 => Value::I32(cursor.u32()? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(cursor.u32()?)),
        // The spec says 0 or 1; ggml treats any non-zero byte as true, and so do we.
        ValueType::Bool => Value::Bool(cursor.u8()? != 0),
        ValueType::String => Value::String(cursor.string()?),
        ValueType::Array => Value::Array(read_array(cursor, depth)?),
        ValueType::U64 => Value::U64(cursor.u64()?),
        ValueType::I64 => Value::I64(cursor.u64()? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(cursor.u64()?)),
    })
}

/// Reads an array header and walks its elements once to validate them and find its end.
fn read_array<'a>(cursor: &mut Cursor<'a>, depth: usize) -> Result<Array<'a>> {
    let header = cursor.pos();
    if depth >= MAX_ARRAY_NESTING {
        return Err(Error::NestingTooDeep { offset: header });
    }
    let elem_type = read_value_type(cursor)?;
    let len = cursor.count(elem_type.min_size())?;
    // `count` checked that the elements could fit in the input, so this cannot overflow.
    let len = len as usize;
    let start = cursor.pos();
    match elem_type.fixed_size() {
        Some(size) => {
            cursor.take(len * size)?;
        }
        None => {
            for _ in 0..len {
                read_value(cursor, elem_type, depth + 1)?;
            }
        }
    }
    Ok(Array {
        elem_type,
        len,
        elems: cursor.passed_since(start),
    })
}

/// The extents of the few long arrays with variable-size elements (vocabularies, merges),
/// noted while the file is validated so that later metadata walks jump over them instead
/// of decoding a few hundred thousand strings on every look-up.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LongArrays {
    /// `(position of the array value, position just past it)`.
    extents: [(usize, usize); 4],
    len: usize,
}

impl LongArrays {
    /// Arrays shorter than this are cheap to walk.
    const MIN_LEN: usize = 1024;

    /// Remembers `array`, read from `value_at` up to `end`, if it is worth it.
    pub(crate) fn note(&mut self, value_at: usize, end: usize, value: &Value<'_>) {
        if let Value::Array(array) = value
            && array.len >= Self::MIN_LEN
            && array.elem_type.fixed_size().is_none()
            && self.len < self.extents.len()
        {
            self.extents[self.len] = (value_at, end);
            self.len += 1;
        }
    }

    fn end_of(&self, value_at: usize) -> Option<usize> {
        self.extents[..self.len]
            .iter()
            .find(|(at, _)| *at == value_at)
            .map(|(_, end)| *end)
    }
}

/// Reads a top-level metadata value, jumping over a long array noted in `long`.
pub(crate) fn read_metadata_value<'a>(
    cursor: &mut Cursor<'a>,
    ty: ValueType,
    long: &LongArrays,
) -> Result<Value<'a>> {
    match long.end_of(cursor.pos()) {
        Some(end) if ty == ValueType::Array => {
            let elem_type = read_value_type(cursor)?;
            let len = cursor.u64()? as usize;
            let start = cursor.pos();
            cursor.take(end.saturating_sub(start))?;
            Ok(Value::Array(Array {
                elem_type,
                len,
                elems: cursor.passed_since(start),
            }))
        }
        _ => read_value(cursor, ty, 0),
    }
}

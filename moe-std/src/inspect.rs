//! What `moe inspect` reports: header, metadata, tensor table, totals per type, and the
//! mixture-of-experts shape of the model.
//!
//! Two renderings of the same facts: [`to_json`] (the schema of the fixtures'
//! `*.inspect.json`, which gguf-py's reader wrote, plus a few extra fields) and
//! [`write_text`] for people.

use std::collections::BTreeMap;
use std::io::{self, Write};

use moe_core::TensorType;
use moe_core::gguf::{Array, File, TensorInfo, Value, ValueType};
use serde_json::{Map, Value as Json, json};

use crate::GgufFile;

/// In `--json`, arrays longer than this are summarised (length and first elements) unless
/// `--full` is given.
pub const JSON_ARRAY_LIMIT: usize = 64;
/// Elements shown of a summarised array, in JSON and in text.
pub const SUMMARY_ELEMENTS: usize = 8;
/// In text, longer strings (chat templates) are cut to this many characters.
pub const TEXT_STRING_LIMIT: usize = 80;
/// `data_bits` is listed for F32/F16/I32 tensors with at most this many elements (as in
/// the fixtures' JSON).
pub const DATA_BITS_LIMIT: u64 = 64;

/// Tensors, elements and bytes of one tensor type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeTotal {
    /// The type.
    pub ty: TensorType,
    /// How many tensors have it.
    pub tensors: usize,
    /// Their elements, all together.
    pub elements: u64,
    /// Their bytes, all together.
    pub bytes: u64,
}

/// Totals per tensor type, in type-id order.
pub fn type_totals(file: &File<'_>) -> Vec<TypeTotal> {
    let mut by_id: BTreeMap<u32, TypeTotal> = BTreeMap::new();
    for t in file.tensors() {
        let ty = t.view.ty();
        let total = by_id.entry(ty.id()).or_insert(TypeTotal {
            ty,
            tensors: 0,
            elements: 0,
            bytes: 0,
        });
        total.tensors += 1;
        total.elements = total.elements.saturating_add(t.view.n_elements());
        total.bytes = total.bytes.saturating_add(t.view.data().len() as u64);
    }
    by_id.into_values().collect()
}

/// The mixture-of-experts shape of a model, from `{arch}.expert_*` keys and the stacked
/// expert tensors (`blk.N.ffn_{gate,up,down}_exps.weight`, whose last dimension is the
/// expert).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoeInfo {
    /// `{arch}.expert_count`: routed experts per MoE layer.
    pub expert_count: Option<u64>,
    /// `{arch}.expert_used_count`: experts each token is routed to.
    pub expert_used_count: Option<u64>,
    /// `{arch}.expert_shared_count`: always-on shared experts.
    pub expert_shared_count: Option<u64>,
    /// Number of `*_exps` tensors.
    pub expert_tensors: usize,
    /// Number of blocks (`blk.N`) that have `*_exps` tensors.
    pub moe_layers: usize,
    /// Bytes of one routed expert in one MoE layer (all its `*_exps` slices), smallest and
    /// largest over the layers (equal for uniform models).
    pub bytes_per_expert_per_layer: Option<(u64, u64)>,
    /// Bytes of one routed expert summed over all MoE layers.
    pub bytes_per_expert: u64,
}

/// Whether `name` is a stacked expert tensor (`…_exps.weight`, `…_exps.bias`, …).
fn is_expert_tensor(name: &str) -> bool {
    name.split('.').any(|part| part.ends_with("_exps"))
}

/// The block index `N` of `blk.N.…`, if any.
fn block_of(name: &str) -> Option<u64> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The MoE shape, or `None` for a model with neither expert keys nor expert tensors.
pub fn moe_info(file: &File<'_>) -> Option<MoeInfo> {
    let key = |suffix: &str| {
        let arch = file.architecture()?;
        file.get(&format!("{arch}.{suffix}"))?.as_u64()
    };
    let mut info = MoeInfo {
        expert_count: key("expert_count"),
        expert_used_count: key("expert_used_count"),
        expert_shared_count: key("expert_shared_count"),
        ..MoeInfo::default()
    };
    // Bytes per expert per block. The expert axis is the outermost (last) dimension, so
    // each expert owns exactly `bytes / n_experts` contiguous bytes of the tensor.
    let mut per_block: BTreeMap<Option<u64>, u64> = BTreeMap::new();
    for t in file.tensors().filter(|t| is_expert_tensor(t.name)) {
        info.expert_tensors += 1;
        let n_experts = t.view.dims().last().copied().unwrap_or(1).max(1);
        let bytes = t.view.data().len() as u64 / n_experts;
        *per_block.entry(block_of(t.name)).or_default() += bytes;
        info.bytes_per_expert += bytes;
    }
    info.moe_layers = per_block.len();
    info.bytes_per_expert_per_layer =
        per_block
            .values()
            .fold(None, |acc: Option<(u64, u64)>, &b| match acc {
                None => Some((b, b)),
                Some((lo, hi)) => Some((lo.min(b), hi.max(b))),
            });
    let has_keys = info.expert_count.is_some() || info.expert_used_count.is_some();
    (has_keys || info.expert_tensors > 0).then_some(info)
}

// ---------------------------------------------------------------------------------------
// JSON

/// The `--json` report. `full` lists every array element; otherwise arrays longer than
/// [`JSON_ARRAY_LIMIT`] are cut to their first [`SUMMARY_ELEMENTS`] elements and marked
/// `"truncated": true` (every array entry carries its `"len"`).
///
/// The fields of the fixtures' `*.inspect.json` (written from gguf-py's reader) are all
/// here with the same meaning: `version`, `byte_order`, `tensor_count`, `kv_count`,
/// `alignment`, `data_offset` (absolute), `file_size`, `metadata` (`key`, `type`,
/// `elem_type`, `value`, `bits`) and `tensors` (`name`, `type`, `shape` in GGUF order,
/// `offset` relative to the data section, `n_bytes`, `data_bits`). Extra fields:
/// `architecture`, `totals` and `moe`.
pub fn to_json(gguf: &GgufFile, full: bool) -> Json {
    let file = gguf.file();
    let limit = if full { None } else { Some(JSON_ARRAY_LIMIT) };
    let metadata: Vec<Json> = file
        .metadata()
        .map(|(key, value)| metadata_entry(key, &value, limit))
        .collect();
    let tensors: Vec<Json> = file.tensors().map(|t| tensor_entry(&t)).collect();
    let totals: Vec<Json> = type_totals(file)
        .iter()
        .map(|t| {
            json!({
                "type": t.ty.name(),
                "tensors": t.tensors,
                "elements": t.elements,
                "bytes": t.bytes,
            })
        })
        .collect();
    let mut out = Map::new();
    out.insert("version".into(), file.version().into());
    // Big-endian files are refused at open.
    out.insert("byte_order".into(), "little".into());
    out.insert("tensor_count".into(), file.tensor_count().into());
    out.insert("kv_count".into(), file.metadata_count().into());
    out.insert("alignment".into(), file.alignment().into());
    out.insert("data_offset".into(), file.data_offset().into());
    out.insert("file_size".into(), gguf.bytes().len().into());
    out.insert("architecture".into(), file.architecture().into());
    out.insert("metadata".into(), metadata.into());
    out.insert("tensors".into(), tensors.into());
    out.insert("totals".into(), totals.into());
    if let Some(moe) = moe_info(file) {
        let per_layer = match moe.bytes_per_expert_per_layer {
            Some((lo, hi)) if lo == hi => json!(lo),
            Some((lo, hi)) => json!([lo, hi]),
            None => Json::Null,
        };
        out.insert(
            "moe".into(),
            json!({
                "expert_count": moe.expert_count,
                "expert_used_count": moe.expert_used_count,
                "expert_shared_count": moe.expert_shared_count,
                "expert_tensors": moe.expert_tensors,
                "moe_layers": moe.moe_layers,
                "bytes_per_expert_per_layer": per_layer,
                "bytes_per_expert": moe.bytes_per_expert,
            }),
        );
    }
    Json::Object(out)
}

fn metadata_entry(key: &str, value: &Value<'_>, limit: Option<usize>) -> Json {
    let mut entry = Map::new();
    entry.insert("key".into(), key.into());
    entry.insert("type".into(), value.value_type().name().into());
    if let Value::Array(array) = value {
        entry.insert("elem_type".into(), elem_type_json(array, limit));
        entry.insert("len".into(), array.len().into());
    }
    entry.insert("value".into(), value_json(value, limit));
    if let Some(bits) = bits_json(value, limit) {
        entry.insert("bits".into(), bits);
    }
    if let Value::Array(array) = value
        && limit.is_some_and(|l| array.len() > l)
    {
        entry.insert("truncated".into(), true.into());
    }
    Json::Object(entry)
}

/// The elements of `array` that are shown: all, or the first few of a long one.
fn shown<'a>(array: &Array<'a>, limit: Option<usize>) -> impl Iterator<Item = Value<'a>> {
    let n = match limit {
        Some(l) if array.len() > l => SUMMARY_ELEMENTS,
        _ => array.len(),
    };
    array.iter().take(n)
}

/// A value as JSON: integers exact, floats as the f64 they widen to (NaN and ±inf as
/// `null`), arrays as (nested) lists.
fn value_json(value: &Value<'_>, limit: Option<usize>) -> Json {
    match *value {
        Value::U8(v) => v.into(),
        Value::I8(v) => v.into(),
        Value::U16(v) => v.into(),
        Value::I16(v) => v.into(),
        Value::U32(v) => v.into(),
        Value::I32(v) => v.into(),
        Value::U64(v) => v.into(),
        Value::I64(v) => v.into(),
        // `From<f64>` gives `null` for NaN and infinities.
        Value::F32(v) => f64::from(v).into(),
        Value::F64(v) => v.into(),
        Value::Bool(v) => v.into(),
        Value::String(s) => s.into(),
        Value::Array(a) => Json::Array(shown(&a, limit).map(|v| value_json(&v, limit)).collect()),
    }
}

/// `elem_type`: the element type's name, or for an array of arrays the list of each inner
/// array's own `elem_type`.
fn elem_type_json(array: &Array<'_>, limit: Option<usize>) -> Json {
    if array.elem_type() != ValueType::Array {
        return array.elem_type().name().into();
    }
    Json::Array(
        shown(array, limit)
            .map(|v| match v {
                Value::Array(inner) => elem_type_json(&inner, limit),
                _ => Json::Null, // cannot happen: elements have the array's type
            })
            .collect(),
    )
}

/// `bits`: raw IEEE patterns of float values (so NaN and -0 compare exactly). For arrays
/// of arrays, present when some inner array holds floats, with `null` for the others.
fn bits_json(value: &Value<'_>, limit: Option<usize>) -> Option<Json> {
    match *value {
        Value::F32(v) => Some(v.to_bits().into()),
        Value::F64(v) => Some(v.to_bits().into()),
        Value::Array(a) => match a.elem_type() {
            ValueType::F32 | ValueType::F64 | ValueType::Array => {
                let inner: Vec<Option<Json>> =
                    shown(&a, limit).map(|v| bits_json(&v, limit)).collect();
                let any = a.elem_type() != ValueType::Array || inner.iter().any(Option::is_some);
                any.then(|| {
                    Json::Array(inner.into_iter().map(|b| b.unwrap_or(Json::Null)).collect())
                })
            }
            _ => None,
        },
        _ => None,
    }
}

fn tensor_entry(t: &TensorInfo<'_>) -> Json {
    let view = &t.view;
    let mut entry = Map::new();
    entry.insert("name".into(), t.name.into());
    entry.insert("type".into(), view.ty().name().into());
    entry.insert("shape".into(), view.dims().into());
    entry.insert("offset".into(), t.offset.into());
    entry.insert("n_bytes".into(), view.data().len().into());
    if let Some(bits) = data_bits(t) {
        entry.insert("data_bits".into(), bits.into());
    }
    Json::Object(entry)
}

/// The element bit patterns of a small F32/F16/I32 tensor (little-endian in the file).
fn data_bits(t: &TensorInfo<'_>) -> Option<Vec<u64>> {
    let width = match t.view.ty() {
        TensorType::F32 | TensorType::I32 => 4,
        TensorType::F16 => 2,
        _ => return None,
    };
    if t.view.n_elements() > DATA_BITS_LIMIT {
        return None;
    }
    Some(
        t.view
            .data()
            .chunks_exact(width)
            .map(|c| {
                c.iter()
                    .rev()
                    .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte))
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------
// Text

/// The report for people: summary, MoE shape, metadata (long arrays summarised), the
/// tensor table and totals per type.
pub fn write_text(gguf: &GgufFile, out: &mut dyn Write) -> io::Result<()> {
    let file = gguf.file();
    writeln!(
        out,
        "{}: GGUF v{}, {} bytes",
        gguf.path().display(),
        file.version(),
        gguf.bytes().len()
    )?;
    writeln!(
        out,
        "architecture   {}",
        file.architecture().unwrap_or("(none)")
    )?;
    writeln!(out, "alignment      {}", file.alignment())?;
    writeln!(out, "data offset    {}", file.data_offset())?;
    writeln!(out, "metadata       {} keys", file.metadata_count())?;
    writeln!(out, "tensors        {}", file.tensor_count())?;

    if let Some(moe) = moe_info(file) {
        let arch = file.architecture().unwrap_or("{arch}");
        let count = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        writeln!(out, "\nmixture of experts")?;
        writeln!(
            out,
            "  experts            {:<8} {arch}.expert_count",
            count(moe.expert_count)
        )?;
        writeln!(
            out,
            "  used per token     {:<8} {arch}.expert_used_count",
            count(moe.expert_used_count)
        )?;
        writeln!(
            out,
            "  shared experts     {:<8} {arch}.expert_shared_count",
            count(moe.expert_shared_count)
        )?;
        match moe.bytes_per_expert_per_layer {
            Some((lo, hi)) => {
                let per_layer = if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}..{hi}")
                };
                writeln!(
                    out,
                    "  bytes per expert   {per_layer} per layer, {} over {} MoE layers ({} *_exps tensors)",
                    moe.bytes_per_expert, moe.moe_layers, moe.expert_tensors
                )?;
            }
            None => writeln!(out, "  bytes per expert   - (no *_exps tensors)")?,
        }
    }

    writeln!(out, "\nmetadata")?;
    let key_width = file.metadata().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in file.metadata() {
        writeln!(out, "  {key:<key_width$}  {}", value_text(&value))?;
    }

    writeln!(out, "\ntensors")?;
    let shape = |t: &TensorInfo<'_>| format!("{:?}", t.view.dims());
    let name_width = file
        .tensors()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let shape_width = file
        .tensors()
        .map(|t| shape(&t).len())
        .max()
        .unwrap_or(0)
        .max(5);
    writeln!(
        out,
        "  {:<name_width$}  {:<7}  {:<shape_width$}  {:>12}  {:>12}",
        "name", "type", "shape", "offset", "bytes"
    )?;
    for t in file.tensors() {
        writeln!(
            out,
            "  {:<name_width$}  {:<7}  {:<shape_width$}  {:>12}  {:>12}",
            t.name,
            t.view.ty().name(),
            shape(&t),
            t.offset,
            t.view.data().len()
        )?;
    }

    writeln!(out, "\ntotals by type")?;
    let (mut tensors, mut elements, mut bytes) = (0, 0u64, 0u64);
    for t in type_totals(file) {
        writeln!(
            out,
            "  {:<7}  {:>5} tensors  {:>14} elements  {:>14} bytes",
            t.ty.name(),
            t.tensors,
            t.elements,
            t.bytes
        )?;
        tensors += t.tensors;
        elements = elements.saturating_add(t.elements);
        bytes = bytes.saturating_add(t.bytes);
    }
    writeln!(
        out,
        "  {:<7}  {tensors:>5} tensors  {elements:>14} elements  {bytes:>14} bytes",
        "all"
    )?;
    Ok(())
}

/// One metadata value on one line: `TYPE value`, arrays as `[ELEM; len] first values…`.
fn value_text(value: &Value<'_>) -> String {
    match value {
        Value::Array(a) => {
            let mut s = format!("[{}; {}]", a.elem_type().name(), a.len());
            let items: Vec<String> = a
                .iter()
                .take(SUMMARY_ELEMENTS)
                .map(|v| scalar_text(&v))
                .collect();
            s.push_str(" [");
            s.push_str(&items.join(", "));
            if a.len() > SUMMARY_ELEMENTS {
                s.push_str(", …");
            }
            s.push(']');
            s
        }
        other => format!("{:<8} {}", other.value_type().name(), scalar_text(other)),
    }
}

fn scalar_text(value: &Value<'_>) -> String {
    match *value {
        Value::U8(v) => v.to_string(),
        Value::I8(v) => v.to_string(),
        Value::U16(v) => v.to_string(),
        Value::I16(v) => v.to_string(),
        Value::U32(v) => v.to_string(),
        Value::I32(v) => v.to_string(),
        Value::U64(v) => v.to_string(),
        Value::I64(v) => v.to_string(),
        Value::F32(v) => format!("{v:?}"),
        Value::F64(v) => format!("{v:?}"),
        Value::Bool(v) => v.to_string(),
        Value::String(s) if s.chars().count() > TEXT_STRING_LIMIT => {
            let head: String = s.chars().take(TEXT_STRING_LIMIT).collect();
            format!("{head:?}… ({} bytes)", s.len())
        }
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("[{}; {}]", a.elem_type().name(), a.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_tensor_names() {
        assert!(is_expert_tensor("blk.0.ffn_gate_exps.weight"));
        assert!(is_expert_tensor("blk.12.ffn_down_exps.bias"));
        assert!(!is_expert_tensor("blk.0.ffn_gate_inp.weight"));
        assert!(!is_expert_tensor("blk.0.ffn_gate_shexp.weight"));
        assert_eq!(block_of("blk.12.ffn_down_exps.weight"), Some(12));
        assert_eq!(block_of("token_embd.weight"), None);
    }
}

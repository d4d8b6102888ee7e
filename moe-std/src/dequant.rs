//! What `moe dequant` does: decode a whole tensor to little-endian f32 in GGUF order
//! (`ne[0]` fastest), one row at a time through `moe_core::quant::dequantize_row`.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use moe_core::gguf::TensorInfo;

use crate::{Error, GgufFile, Result};

/// The tensor `name`, checked to exist and to have a type that can be decoded, so that
/// nothing is written for a request that cannot succeed.
fn decodable<'a>(gguf: &'a GgufFile, name: &str) -> Result<TensorInfo<'a>> {
    let tensor = gguf
        .file()
        .tensor(name)
        .ok_or_else(|| Error::NoSuchTensor {
            path: gguf.path().to_path_buf(),
            tensor: name.to_string(),
        })?;
    let ty = tensor.view.ty();
    if !ty.can_dequantize() {
        return Err(Error::gguf(
            gguf.path(),
            moe_core::Error::UnsupportedType { ty },
        ));
    }
    Ok(tensor)
}

/// Writes tensor `name` as little-endian f32 to `out`; returns the number of elements.
/// I/O errors are reported against `out_path` (the output's name for messages).
pub fn write_f32(gguf: &GgufFile, name: &str, out: &mut dyn Write, out_path: &Path) -> Result<u64> {
    let tensor = decodable(gguf, name)?;
    write_rows(gguf, &tensor, out, out_path)
}

fn write_rows(
    gguf: &GgufFile,
    tensor: &TensorInfo<'_>,
    out: &mut dyn Write,
    out_path: &Path,
) -> Result<u64> {
    let view = &tensor.view;
    let n_elements = view.n_elements();
    // An empty tensor may still claim 2^60 rows of nothing: write nothing, loop never.
    if n_elements == 0 {
        return Ok(0);
    }
    let row_len = usize::try_from(view.row_len()).map_err(|_| {
        Error::gguf(
            gguf.path(),
            moe_core::Error::TensorTooLarge {
                tensor: Default::default(),
            },
        )
    })?;
    let mut row = vec![0f32; row_len];
    let mut bytes = vec![0u8; row_len * 4];
    let mut out = BufWriter::with_capacity(1 << 20, out);
    for index in 0..view.n_rows() {
        let src = view.row(index).ok_or_else(|| {
            Error::gguf(
                gguf.path(),
                moe_core::Error::TensorOutOfBounds {
                    tensor: Default::default(),
                    offset: tensor.offset,
                    size: view.data().len() as u64,
                },
            )
        })?;
        moe_core::quant::dequantize_row(view.ty(), src, &mut row)
            .map_err(|e| Error::gguf(gguf.path(), e))?;
        for (dst, value) in bytes.chunks_exact_mut(4).zip(&row) {
            dst.copy_from_slice(&value.to_le_bytes());
        }
        out.write_all(&bytes).map_err(|e| Error::io(out_path, e))?;
    }
    out.flush().map_err(|e| Error::io(out_path, e))?;
    Ok(n_elements)
}

/// Writes tensor `name` as little-endian f32 to the file `out_path`, atomically: the data
/// go to a temporary file beside it, which is renamed over `out_path` only when complete.
/// On any error the temporary file is removed and `out_path` is left as it was.
pub fn write_f32_file(gguf: &GgufFile, name: &str, out_path: &Path) -> Result<u64> {
    // Fail before creating anything if the request cannot succeed.
    let tensor = decodable(gguf, name)?;
    let tmp = temp_path_beside(out_path);
    let result = (|| {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let mut writer = &file;
        let n = write_rows(gguf, &tensor, &mut writer, out_path)?;
        file.sync_all().map_err(|e| Error::io(out_path, e))?;
        drop(file);
        fs::rename(&tmp, out_path).map_err(|e| Error::io(out_path, e))?;
        Ok(n)
    })();
    if result.is_err() {
        // Best effort: the file may never have been created.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `dir/.name.moe-tmp.PID` for `dir/name`: same folder, so the rename cannot cross file
/// systems; hidden and unique per process.
fn temp_path_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp_name = format!(".{name}.moe-tmp.{}", std::process::id());
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(tmp_name),
        _ => PathBuf::from(tmp_name),
    }
}

/// Whether an error is the reader of our stdout going away (`moe dequant … | head`).
pub fn is_broken_pipe(err: &Error) -> bool {
    matches!(err, Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::temp_path_beside;
    use std::path::Path;

    #[test]
    fn temp_file_sits_beside_the_output() {
        let pid = std::process::id();
        assert_eq!(
            temp_path_beside(Path::new("a/b/out.f32")),
            Path::new(&format!("a/b/.out.f32.moe-tmp.{pid}"))
        );
        assert_eq!(
            temp_path_beside(Path::new("out.f32")),
            Path::new(&format!(".out.f32.moe-tmp.{pid}"))
        );
    }
}

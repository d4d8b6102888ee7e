//! [`Checkpoint`]: whatever a user points the engine at — a GGUF file or a Hugging Face
//! checkpoint directory — mapped zero-copy or read into memory, with the model built
//! from it the same way.

use std::path::Path;

use moe_core::model::Model;

use crate::hf::HfCheckpoint;
use crate::tokenizer::Tokenizer;
use crate::{Error, GgufFile, Residency, Result};

/// A mapped model checkpoint.
#[derive(Debug)]
pub enum Checkpoint {
    /// A GGUF file.
    Gguf(GgufFile),
    /// A Hugging Face directory (`config.json` and safetensors).
    Hf(HfCheckpoint),
}

impl Checkpoint {
    /// Opens `path`: a directory as a Hugging Face checkpoint (so is a file of one: its
    /// `config.json`, a `*.safetensors` shard or the index), anything else as GGUF.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Checkpoint::open_with(path, Residency::Map)
    }

    /// [`Checkpoint::open`] with the bytes held as `residency` says: mapped, or read
    /// into huge-page memory for faster decoding (see [`Residency`]).
    pub fn open_with(path: impl AsRef<Path>, residency: Residency) -> Result<Self> {
        let path = path.as_ref();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let hf_file = name == "config.json"
            || name.ends_with(".safetensors")
            || name.ends_with(".safetensors.index.json");
        if path.is_dir() {
            HfCheckpoint::open_with(path, residency).map(Checkpoint::Hf)
        } else if hf_file && path.is_file() {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
            HfCheckpoint::open_with(dir.unwrap_or(Path::new(".")), residency).map(Checkpoint::Hf)
        } else {
            GgufFile::open_with(path, residency).map(Checkpoint::Gguf)
        }
    }

    /// The file or directory it was opened from.
    pub fn path(&self) -> &Path {
        match self {
            Checkpoint::Gguf(g) => g.path(),
            Checkpoint::Hf(h) => h.path(),
        }
    }

    /// Whether the weights were read into memory rather than mapped ([`Residency`]).
    pub fn is_loaded(&self) -> bool {
        match self {
            Checkpoint::Gguf(g) => g.is_loaded(),
            Checkpoint::Hf(h) => h.is_loaded(),
        }
    }

    /// The GGUF file, when it is one (its metadata holds the tokenizer).
    pub fn gguf(&self) -> Option<&GgufFile> {
        match self {
            Checkpoint::Gguf(g) => Some(g),
            Checkpoint::Hf(_) => None,
        }
    }

    /// The tokenizer: a GGUF file's (`tokenizer.ggml.*`), or a directory's
    /// `tokenizer.json` with its `tokenizer_config.json` (BOS/EOS, add-BOS) and
    /// `generation_config.json` (end-of-generation ids) when present
    /// ([`Tokenizer::apply_hf_config`]). `None` for a directory without `tokenizer.json`;
    /// an error for one that cannot be read or is not supported.
    pub fn tokenizer(&self) -> Option<Result<Tokenizer>> {
        match self {
            Checkpoint::Gguf(g) => {
                Some(Tokenizer::from_gguf(g.file()).map_err(|e| tokenizer_error(g.path(), e)))
            }
            Checkpoint::Hf(h) => {
                let path = h.path().join("tokenizer.json");
                if !path.is_file() {
                    return None;
                }
                Some(hf_tokenizer(h.path(), &path))
            }
        }
    }

    /// The chat template's source: a GGUF file's `tokenizer.chat_template`; for a
    /// directory, `tokenizer_config.json`'s `chat_template` (a string, or the one named
    /// `default` in a list of named templates), else `chat_template.jinja`. `None` when
    /// there is none.
    pub fn chat_template(&self) -> Result<Option<String>> {
        match self {
            Checkpoint::Gguf(g) => Ok(g
                .file()
                .get(crate::chat::TEMPLATE_KEY)
                .and_then(|v| v.as_str())
                .map(str::to_string)),
            Checkpoint::Hf(h) => {
                let config = h.path().join("tokenizer_config.json");
                if let Some(bytes) = read_optional(&config)? {
                    let json: serde_json::Value = serde_json::from_slice(&bytes)
                        .map_err(|e| checkpoint_error(&config, e.to_string()))?;
                    match json.get("chat_template") {
                        Some(serde_json::Value::String(t)) => return Ok(Some(t.clone())),
                        Some(serde_json::Value::Array(named)) => {
                            let default = named.iter().find(|t| {
                                t.get("name").and_then(|n| n.as_str()) == Some("default")
                            });
                            if let Some(t) = default
                                .and_then(|t| t.get("template"))
                                .and_then(|t| t.as_str())
                            {
                                return Ok(Some(t.to_string()));
                            }
                        }
                        _ => {}
                    }
                }
                let jinja = h.path().join("chat_template.jinja");
                match read_optional(&jinja)? {
                    Some(bytes) => String::from_utf8(bytes)
                        .map(Some)
                        .map_err(|_| checkpoint_error(&jinja, "not UTF-8".to_string())),
                    None => Ok(None),
                }
            }
        }
    }

    /// The model over the checkpoint's bytes (scalar kernels, serial; see
    /// [`Model::set_kernels`] and [`Model::set_parallel`]), boxed: a model holds its blocks
    /// inline and is large to keep on a stack.
    pub fn model(&self) -> Result<Box<Model<'_>>> {
        // One function per kind, so that a debug build's frames hold one model value
        // at a time (a model is a few hundred KiB; test threads have 2 MiB of stack).
        match self {
            Checkpoint::Gguf(g) => gguf_model(g),
            Checkpoint::Hf(h) => hf_model(h),
        }
    }
}

fn checkpoint_error(path: &Path, message: String) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    }
}

fn tokenizer_error(path: &Path, e: crate::tokenizer::TokenizerError) -> Error {
    checkpoint_error(path, e.to_string())
}

/// The bytes of `path`, or `None` when there is no such file.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn hf_tokenizer(dir: &Path, path: &Path) -> Result<Tokenizer> {
    let json = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut tokenizer =
        Tokenizer::from_tokenizer_json(&json).map_err(|e| tokenizer_error(path, e))?;
    let config = read_optional(&dir.join("tokenizer_config.json"))?;
    let generation = read_optional(&dir.join("generation_config.json"))?;
    tokenizer
        .apply_hf_config(config.as_deref(), generation.as_deref())
        .map_err(|e| tokenizer_error(dir, e))?;
    Ok(tokenizer)
}

#[inline(never)]
fn gguf_model(g: &GgufFile) -> Result<Box<Model<'_>>> {
    Ok(Box::new(
        Model::from_gguf(g.file()).map_err(|e| Error::gguf(g.path(), e))?,
    ))
}

#[inline(never)]
fn hf_model(h: &HfCheckpoint) -> Result<Box<Model<'_>>> {
    let config = h.config()?;
    Ok(Box::new(
        Model::from_source(config, &h.source()).map_err(|e| Error::gguf(h.path(), e))?,
    ))
}

impl From<GgufFile> for Checkpoint {
    fn from(g: GgufFile) -> Self {
        Checkpoint::Gguf(g)
    }
}

//! [`Checkpoint`]: whatever a user points the engine at — a GGUF file or a Hugging Face
//! checkpoint directory — opened zero-copy, with the model built from it the same way.

use std::path::Path;

use moe_core::model::Model;

use crate::hf::HfCheckpoint;
use crate::{Error, GgufFile, Result};

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
        let path = path.as_ref();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let hf_file = name == "config.json"
            || name.ends_with(".safetensors")
            || name.ends_with(".safetensors.index.json");
        if path.is_dir() {
            HfCheckpoint::open(path).map(Checkpoint::Hf)
        } else if hf_file && path.is_file() {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
            HfCheckpoint::open(dir.unwrap_or(Path::new("."))).map(Checkpoint::Hf)
        } else {
            GgufFile::open(path).map(Checkpoint::Gguf)
        }
    }

    /// The file or directory it was opened from.
    pub fn path(&self) -> &Path {
        match self {
            Checkpoint::Gguf(g) => g.path(),
            Checkpoint::Hf(h) => h.path(),
        }
    }

    /// The GGUF file, when it is one (its metadata holds the tokenizer).
    pub fn gguf(&self) -> Option<&GgufFile> {
        match self {
            Checkpoint::Gguf(g) => Some(g),
            Checkpoint::Hf(_) => None,
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

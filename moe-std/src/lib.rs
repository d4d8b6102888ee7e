//! `moe-std`: the engine on an operating system.
//!
//! `moe-core` never touches files; this crate hands it bytes. [`GgufFile::open`] maps a
//! GGUF checkpoint read-only (memmap2), validates it once with
//! [`moe_core::gguf::File::parse`] and keeps the parsed view next to the mapping, so weights
//! are read straight from the page cache and never copied; [`GgufFile::open_with`] can
//! instead read them into huge-page memory, which decodes faster ([`residency`]). Hugging
//! Face checkpoint directories (`config.json` and safetensors, [`hf`], read by our own
//! [`safetensors`] reader) are held the same ways, and [`checkpoint::Checkpoint`] opens
//! either kind.
//!
//! Also here: the reports behind `moe inspect` ([`inspect`]) and `moe dequant`
//! ([`dequant`]), the thread pool that runs the core's independent ranges ([`pool`]), and
//! the `moe` command-line tool itself (`src/bin/moe.rs`).
#![warn(missing_docs)]
// The hand-written `unsafe`: `Mmap::map` in `residency::hold` (every checkpoint file),
// the kernel table built after CPU-feature detection in `kernels::with_level`, and the
// pool's lifetime-erased job closure in `pool` (its `Send` impl, the erasure and the
// workers' dereference), each allowed there alone.
#![deny(unsafe_code)]

pub mod chat;
pub mod checkpoint;
pub mod dequant;
pub mod gpu;
pub mod hf;
pub mod inspect;
pub mod kernels;
pub mod pool;
pub mod residency;
pub mod safetensors;
pub mod session;
pub mod tokenizer;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use moe_core::gguf::File;

pub use residency::Residency;

/// Errors of `moe-std`: an I/O failure or a malformed file, always with the file's path.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Opening, mapping, reading or writing a file failed.
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The bytes are not a valid GGUF file (or a tensor cannot be decoded).
    Gguf {
        /// The file concerned.
        path: PathBuf,
        /// What `moe-core` found wrong (boxed: the core's error carries tensor names
        /// inline and is large).
        source: Box<moe_core::Error>,
    },
    /// A Hugging Face checkpoint whose files disagree with each other or with its
    /// `config.json` (a missing shard or tensor, a shape the config does not predict, an
    /// unsupported key value).
    Checkpoint {
        /// The file (or directory) concerned.
        path: PathBuf,
        /// What is wrong, naming the key or tensor.
        message: String,
    },
    /// A malformed safetensors file.
    Safetensors {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        source: safetensors::SafetensorsError,
    },
    /// A tensor name that the file does not contain.
    NoSuchTensor {
        /// The file searched.
        path: PathBuf,
        /// The name asked for.
        tensor: String,
    },
    /// The GPU path failed (no device, too little device memory, a driver error), on
    /// FFN block `layer` when it is known.
    Gpu {
        /// The model file.
        path: PathBuf,
        /// The block whose FFN failed.
        layer: Option<usize>,
        /// What the device path said (boxed: it carries a core error inline).
        source: Box<moe_cuda::GpuError>,
    },
}

impl Error {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Error::Io { path, .. }
            | Error::Gguf { path, .. }
            | Error::Checkpoint { path, .. }
            | Error::Safetensors { path, .. }
            | Error::NoSuchTensor { path, .. }
            | Error::Gpu { path, .. } => path,
        }
    }

    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn gpu(path: &Path, layer: Option<usize>, source: moe_cuda::GpuError) -> Self {
        Error::Gpu {
            path: path.to_path_buf(),
            layer,
            source: Box::new(source),
        }
    }

    pub(crate) fn gguf(path: &Path, source: moe_core::Error) -> Self {
        Error::Gguf {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Gguf { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Checkpoint { path, message } => write!(f, "{}: {message}", path.display()),
            Error::Safetensors { path, source } => write!(f, "{}: {source}", path.display()),
            Error::NoSuchTensor { path, tensor } => {
                write!(f, "{}: no tensor named '{tensor}'", path.display())
            }
            Error::Gpu {
                path,
                layer: Some(l),
                source,
            } => write!(
                f,
                "{}: block {l}'s FFN on the GPU: {source}",
                path.display()
            ),
            Error::Gpu {
                path,
                layer: None,
                source,
            } => write!(f, "{}: GPU: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Gguf { source, .. } => Some(&**source),
            Error::Safetensors { source, .. } => Some(source),
            Error::Gpu { source, .. } => Some(&**source),
            Error::Checkpoint { .. } | Error::NoSuchTensor { .. } => None,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

self_cell::self_cell!(
    /// The mapping and the file parsed from it. The parsed [`File`] borrows the mapped
    /// bytes; `self_cell` keeps the two together without `unsafe` on our side (the
    /// mapping's address does not change when the `Mmap` value moves).
    struct Mapped {
        owner: Mmap,
        #[covariant]
        dependent: File,
    }
);

/// A GGUF file mapped read-only and validated at open.
///
/// Validation is [`File::parse`]'s: header, every metadata value, the tensor table,
/// alignment, and that every tensor lies inside the file, so a file shorter than its
/// tensor table claims is refused here, not at first use. Opening costs O(metadata):
/// tensor data pages are not touched until read.
pub struct GgufFile {
    path: PathBuf,
    loaded: bool,
    mapped: Mapped,
}

impl GgufFile {
    /// Maps `path` read-only and parses it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        GgufFile::open_with(path, Residency::Map)
    }

    /// Opens `path` with its bytes held as `residency` says (mapped, or read into
    /// memory for faster decoding; see [`residency`]) and parses it.
    pub fn open_with(path: impl AsRef<Path>, residency: Residency) -> Result<Self> {
        let path = path.as_ref();
        let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let loaded = residency.loads(len);
        let bytes = residency::hold(&file, path, loaded)?;
        let mapped =
            Mapped::try_new(bytes, |bytes| File::parse(bytes)).map_err(|e| Error::gguf(path, e))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            loaded,
            mapped,
        })
    }

    /// Whether the file was read into memory ([`Residency`]) rather than mapped.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// The parsed file; its metadata, tensor infos and tensor bytes borrow the mapping.
    pub fn file(&self) -> &File<'_> {
        self.mapped.borrow_dependent()
    }

    /// All bytes of the file.
    pub fn bytes(&self) -> &[u8] {
        self.mapped.borrow_owner()
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

// A checkpoint is opened once and shared by every worker thread.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<GgufFile>();
};

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("len", &self.bytes().len())
            .field("tensors", &self.file().tensor_count())
            .finish()
    }
}

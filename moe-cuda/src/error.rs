//! The one error type of the crate.

use std::fmt;

use moe_core::TensorType;

/// Why a GPU operation could not run. Every failure of the device path is one of these;
/// none panics.
#[derive(Clone, Debug, PartialEq)]
pub enum GpuError {
    /// The CUDA driver library (`libcuda.so.1`) cannot be loaded.
    NoDriver,
    /// The NVRTC library (`libnvrtc.so*`) cannot be loaded, so the kernels cannot be
    /// compiled (see the crate docs for where it is looked for).
    NoNvrtc,
    /// No device with this ordinal.
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
    },
    /// A CUDA driver call failed.
    Driver(String),
    /// NVRTC rejected the kernel sources (the log says why).
    Compile {
        /// The target architecture, for example `sm_90`.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A weight type the GPU kernels do not read.
    UnsupportedType {
        /// The tensor's role (`ffn_up_exps`, …).
        role: &'static str,
        /// Its type.
        ty: TensorType,
    },
    /// A layer feature the GPU path does not implement yet (the CPU path does).
    Unsupported {
        /// What is missing.
        reason: &'static str,
    },
    /// The layer does not fit: `needed` bytes of device memory, `available` free (or
    /// within the budget given).
    OutOfMemory {
        /// Bytes the upload and scratch need.
        needed: u64,
        /// Bytes free on the device (or the budget).
        available: u64,
    },
    /// Input of the wrong size.
    LengthMismatch {
        /// Expected length.
        expected: usize,
        /// Given length.
        actual: usize,
    },
    /// An error of the CPU core (shapes, quant formats) while preparing the upload.
    Core(moe_core::Error),
    /// cudarc panicked inside a call (a symbol missing from an old driver or NVRTC); the
    /// panic was caught and this is what is left of it.
    Panicked(String),
}

impl fmt::Display for GpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuError::NoDriver => write!(f, "no CUDA driver library (libcuda) on this machine"),
            GpuError::NoNvrtc => write!(
                f,
                "no NVRTC library (libnvrtc.so*) found and no prebuilt kernels for this GPU in the \
                 kernel cache: add NVRTC's folder to LD_LIBRARY_PATH, or put the cubins of \
                 `moe-cuda-kernels DIR` in $MOE_CUDA_CACHE"
            ),
            GpuError::NoDevice { ordinal } => write!(f, "no CUDA device {ordinal}"),
            GpuError::Driver(e) => write!(f, "CUDA driver error: {e}"),
            GpuError::Compile { arch, log } => {
                write!(f, "NVRTC could not compile the kernels for {arch}:\n{log}")
            }
            GpuError::UnsupportedType { role, ty } => {
                write!(f, "{role}: the GPU kernels do not read {ty} weights")
            }
            GpuError::Unsupported { reason } => write!(f, "not supported on the GPU: {reason}"),
            GpuError::OutOfMemory { needed, available } => write!(
                f,
                "too little GPU memory: the layer needs {needed} bytes, {available} are available"
            ),
            GpuError::LengthMismatch { expected, actual } => {
                write!(f, "length mismatch: expected {expected}, got {actual}")
            }
            GpuError::Core(e) => write!(f, "{e:?}"),
            GpuError::Panicked(m) => write!(f, "the CUDA bindings panicked: {m}"),
        }
    }
}

impl std::error::Error for GpuError {}

impl From<moe_core::Error> for GpuError {
    fn from(e: moe_core::Error) -> Self {
        GpuError::Core(e)
    }
}

impl From<cudarc::driver::DriverError> for GpuError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        GpuError::Driver(format!("{e:?}"))
    }
}

/// Runs `f`, turning a panic inside cudarc into [`GpuError::Panicked`].
pub(crate) fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(GpuError::Panicked(msg))
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, GpuError>;

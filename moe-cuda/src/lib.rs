//! `moe-cuda`: optional NVIDIA GPU support for the engine.
//!
//! - [`devices`]: which CUDA devices there are (never panics without a driver).
//! - [`kernels`]: the CUDA C sources embedded in the crate (`kernels/*.cu`), compiled at
//!   run time by NVRTC for the device's architecture and cached on disk.
//! - [`GpuMoeLayer`]: one MoE layer's routed experts and shared expert (DeepSeek's
//!   always-on or Qwen2-MoE's sigmoid-gated one) uploaded unchanged (their GGUF blocks:
//!   Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, F32, F16, BF16) with its router, run on the
//!   device for decode and prefill. Other types (Q4_1, Q5_1, Q2_K, Q3_K, IQ4_NL, IQ4_XS)
//!   are a [`GpuError::UnsupportedType`].
//! - [`GpuModel`]: a whole `moe_core::model::Model` on the device (standard attention:
//!   Llama/Mistral, Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GraniteMoE; DeepSeek's latent
//!   attention is a [`GpuError::Unsupported`]): embedding, attention with an f32 KV
//!   cache, every FFN a [`GpuMoeLayer`], the head, with `Model::forward`'s contract.
//! - [`placement`]: which experts to keep on the device under a byte budget (pure host
//!   code); [`GpuMoeLayer::with_placement`] uploads only those, and
//!   [`GpuMoeLayer::hybrid_forward`] runs the rest on the CPU layer with the device's
//!   routing, overlapped with the device's FFN kernels (only the routing waits). The
//!   shared expert always runs on the device: every token uses it.
//!
//! **Status:** every device path here is unverified on hardware until a session with a
//! GPU runs `cargo xtask cuda-check`'s command. What is checked without one: the kernels
//! compile with NVRTC 12.8 for sm_80 and sm_90 without a warning, and their arithmetic,
//! routing, tiling and align logic, compiled as C++ and run on the CPU
//! (`tests/host_check`), matches the CPU layer within 1e-3 for every supported type.
//!
//! ## Tests
//!
//! - `tests/nvrtc_compile.rs` needs libnvrtc on the loader path, for example from the pip
//!   wheel: `python3 -m venv /work/.nvrtcvenv && /work/.nvrtcvenv/bin/pip install
//!   "nvidia-cuda-nvrtc-cu12==12.8.*"`, then
//!   `LD_LIBRARY_PATH=/work/.nvrtcvenv/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib`.
//!   Without it: `skipped: no NVRTC library` (`MOE_REQUIRE_NVRTC=1` makes that a failure).
//! - `tests/device.rs`: GPU against CPU; `skipped: no CUDA device` without one
//!   (`MOE_REQUIRE_GPU=1` makes that a failure).
//! - `tests/host_check.rs`: the kernel sources under g++ (C++20, `_Float16`) against the
//!   CPU layer; `skipped: no g++` without one.
//! - `tests/model.rs`: [`GpuModel`] against `Model::forward` on the fixture models
//!   (`skipped: no CUDA device` without one); its `check` on them runs everywhere.
//! - `tests/model_check.rs`: `kernels/model.cu` under g++ with one host thread per CUDA
//!   thread against moe-core's functions; `skipped: no g++` without one.
//! - `src/param_layout.rs` (unit tests): the params structs passed to kernels by value
//!   (`FfnParams`, `RouteParams`, `RopeParams`, `AttnParams`) against their C twins in
//!   the `.cu` sources — fields, offsets, sizes and kinds as g++ lays them out;
//!   `skipped: no g++` (field names only) without one; and the block sizes the host
//!   launches with against the kernels' `#define`s.
//! - `cargo xtask cuda-check` prepares all of it, with the `moe-cuda-bench` binary, for a
//!   GPU machine without a Rust toolchain.
//!
//! It builds on every machine: cudarc is used with `dynamic-loading` and a pinned CUDA
//! version feature (`cuda-12080`), so neither a CUDA toolkit nor a driver is needed to
//! build or test. At run time the driver library (`libcuda.so` / `nvcuda.dll`) is probed
//! before any driver call, and every failure turns into "no devices" rather than a panic.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};

mod error;
pub mod kernels;
mod layer;
pub mod model;
#[cfg(test)]
mod param_layout;
pub mod placement;
pub mod synthetic;

pub use error::{GpuError, Result};
#[doc(hidden)]
pub use layer::route_params_bytes;
pub use layer::{DECODE_MAX_PAIRS, GpuDevice, GpuMoeLayer, PREFILL_TILE, RouterTensors, cpu_share};
pub use model::GpuModel;

use cudarc::driver::{result, sys};

/// One CUDA device as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device's index for the driver (`cuDeviceGet`), 0-based.
    pub ordinal: usize,
    /// The marketing name, for example `"NVIDIA H100 80GB HBM3"`.
    pub name: String,
    /// Total device memory in bytes.
    pub total_memory: u64,
    /// Compute capability, major part (9 for Hopper).
    pub compute_major: u32,
    /// Compute capability, minor part.
    pub compute_minor: u32,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cuda:{} {} ({:.1} GiB, compute capability {}.{})",
            self.ordinal,
            self.name,
            self.total_memory as f64 / (1u64 << 30) as f64,
            self.compute_major,
            self.compute_minor
        )
    }
}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: `is_culib_present` only tries `libloading::Library::new` on the driver's
    // usual file names and drops the handle; loading libcuda runs its initialisers, which
    // is what any CUDA program does. It calls no driver function.
    unsafe { sys::is_culib_present() }
}

/// The CUDA devices of this machine, in driver order.
///
/// Returns an empty list — never panics — when the driver library is missing, when
/// `cuInit` fails (no device, driver too old, `CUDA_VISIBLE_DEVICES` empty), or when any
/// query fails. A device whose properties cannot be read is left out.
pub fn devices() -> Vec<DeviceInfo> {
    if !driver_present() {
        return Vec::new();
    }
    // cudarc panics when a symbol is missing from the loaded library (a driver older than
    // the bindings); catch that too, so callers only ever see an empty list.
    panic::catch_unwind(AssertUnwindSafe(query_devices))
        .ok()
        .and_then(std::result::Result::ok)
        .unwrap_or_default()
}

fn query_devices() -> std::result::Result<Vec<DeviceInfo>, result::DriverError> {
    result::init()?;
    let count = result::device::get_count()?;
    let mut out = Vec::new();
    for ordinal in 0..count.max(0) {
        if let Ok(info) = query_device(ordinal) {
            out.push(info);
        }
    }
    Ok(out)
}

fn query_device(ordinal: i32) -> std::result::Result<DeviceInfo, result::DriverError> {
    use sys::CUdevice_attribute::{
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
    };
    let dev = result::device::get(ordinal)?;
    let name = result::device::get_name(dev)?;
    // SAFETY: `dev` was just returned by `cuDeviceGet` for an ordinal below the device
    // count, after a successful `cuInit`; these are plain property queries.
    let (total_memory, major, minor) = unsafe {
        (
            result::device::total_mem(dev)?,
            result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        )
    };
    Ok(DeviceInfo {
        ordinal: ordinal as usize,
        name,
        total_memory: total_memory as u64,
        compute_major: major.max(0) as u32,
        compute_minor: minor.max(0) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_never_panics() {
        let devices = devices();
        if devices.is_empty() {
            println!("skipped: no CUDA device");
            return;
        }
        for d in &devices {
            println!("{d}");
            assert!(!d.name.is_empty());
            assert!(d.total_memory > 0);
            assert!(
                d.compute_major >= 3,
                "no CUDA 12 device is older than sm_35"
            );
        }
        assert!(
            devices.windows(2).all(|w| w[0].ordinal < w[1].ordinal),
            "devices are listed in driver order"
        );
    }

    #[test]
    fn no_driver_means_no_devices() {
        if !driver_present() {
            assert!(devices().is_empty());
        } else {
            println!("skipped: a CUDA driver is present");
        }
    }
}

//! The CUDA C kernel sources embedded in the crate, their run-time compilation by NVRTC
//! for one architecture, and the on-disk cache of the compiled binaries.
//!
//! NVRTC is loaded by cudarc's dynamic loading, which tries `libnvrtc.so`,
//! `libnvrtc.so.12`, `libnvrtc.so.11`, … through the system loader, so the folder that
//! holds it must be on `LD_LIBRARY_PATH` when it is not in a system folder. A CUDA 13
//! toolkit ships `libnvrtc.so.13` (and the `libnvrtc.so` link); a pip wheel
//! (`nvidia-cuda-nvrtc-cu12`) ships `libnvrtc.so.12`.
//!
//! The compiled binary (a cubin for `sm_XY`) is cached under `$MOE_CUDA_CACHE`, else
//! `$XDG_CACHE_HOME/moe/cuda`, else `~/.cache/moe/cuda`, in a file named by a hash of
//! the sources, the options, the architecture and the NVRTC version. A cache that cannot
//! be read or written is skipped silently: it only saves compile time.
//!
//! A machine without NVRTC (a driver-only install) can still run the kernels from
//! **prebuilt** cubins: [`write_prebuilt`] (the `moe-cuda-kernels` binary) compiles them
//! ahead of time, named by the sources, the options and the architecture only
//! ([`prebuilt_name`]); [`program_for`] loads one from the cache folder when NVRTC is
//! missing — the exact architecture, else the same major's `sm_X0` (cubins run on later
//! minor versions of their major).

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result, sys};

use crate::error::{GpuError, Result, catch};

/// Device helpers every kernel file uses (types, f16 conversions, block dot products).
pub const COMMON: &str = include_str!("../kernels/common.cu");
/// Activation quantization (Q8_0, Q8_K).
pub const QUANTIZE: &str = include_str!("../kernels/quantize.cu");
/// Router logits and selection.
pub const ROUTE: &str = include_str!("../kernels/route.cu");
/// Expert FFN (gate/up, down), combine and align.
pub const MOE: &str = include_str!("../kernels/moe.cu");
/// The rest of a decoder block (embedding rows, norms, projections, RoPE, attention).
pub const MODEL: &str = include_str!("../kernels/model.cu");

/// The kernel files compiled after [`COMMON`], by name.
pub const SOURCES: [(&str, &str); 4] = [
    ("quantize.cu", QUANTIZE),
    ("route.cu", ROUTE),
    ("moe.cu", MOE),
    ("model.cu", MODEL),
];

/// NVRTC options besides the architecture.
pub const OPTIONS: [&str; 2] = ["--std=c++17", "--device-as-default-execution-space"];

/// The whole program: [`COMMON`] followed by every file of [`SOURCES`].
pub fn program_source() -> String {
    let mut src = String::from(COMMON);
    for (name, text) in SOURCES {
        src.push_str(&format!("\n// ---- {name} ----\n"));
        src.push_str(text);
    }
    src
}

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: `is_culib_present` only tries to open NVRTC's usual file names with the
    // system loader and drops the handle; it calls no NVRTC function.
    unsafe { sys::is_culib_present() }
}

/// The version of the NVRTC library that was loaded, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(GpuError::NoNvrtc);
    }
    catch(|| {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: both pointers are to live locals; nvrtcVersion writes two ints.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| GpuError::Compile {
                arch: String::new(),
                log: format!("nvrtcVersion: {e:?}"),
            })?;
        Ok((major, minor))
    })
}

/// A compiled program.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The architecture, `sm_XY`.
    pub arch: String,
    /// The cubin bytes.
    pub cubin: Vec<u8>,
    /// NVRTC's log: empty when the sources compiled without a warning.
    pub log: String,
    /// Whether the cubin came from the cache.
    pub cached: bool,
}

/// Compiles `source` for `sm_{major}{minor}` to a cubin, with NVRTC's log.
pub fn compile(source: &str, major: u32, minor: u32) -> Result<Compiled> {
    if !nvrtc_present() {
        return Err(GpuError::NoNvrtc);
    }
    let arch = format!("sm_{major}{minor}");
    let src = CString::new(source).map_err(|_| GpuError::Compile {
        arch: arch.clone(),
        log: "the source contains a NUL byte".into(),
    })?;
    let mut options: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    options.push(format!("--gpu-architecture={arch}"));
    catch(|| {
        let err = |what: &str, e: result::NvrtcError| GpuError::Compile {
            arch: arch.clone(),
            log: format!("{what}: {e:?}"),
        };
        let prog = result::create_program(&src, Some(c"moe-cuda.cu"))
            .map_err(|e| err("nvrtcCreateProgram", e))?;
        let compiled = compile_program(prog, &options, &arch);
        // SAFETY: `prog` came from `create_program` and is destroyed exactly once, here.
        let _ = unsafe { result::destroy_program(prog) };
        compiled
    })
}

fn compile_program(prog: sys::nvrtcProgram, options: &[String], arch: &str) -> Result<Compiled> {
    // SAFETY: `prog` is a live program from `create_program` (destroyed by the caller
    // after this returns).
    let status = unsafe { result::compile_program(prog, options) };
    // SAFETY: as above; the log is a NUL-terminated buffer NVRTC fills.
    let log = unsafe { result::get_program_log(prog) }
        .map(|raw| {
            // SAFETY: `get_program_log` returns the NUL-terminated log NVRTC wrote.
            unsafe { CStr::from_ptr(raw.as_ptr()) }
                .to_string_lossy()
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    if let Err(e) = status {
        return Err(GpuError::Compile {
            arch: arch.to_string(),
            log: format!("{e:?}\n{log}"),
        });
    }
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; `size` is a live local.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| GpuError::Compile {
            arch: arch.to_string(),
            log: format!("nvrtcGetCUBINSize: {e:?}"),
        })?;
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has exactly the size NVRTC reported for this program's cubin.
    unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| GpuError::Compile {
            arch: arch.to_string(),
            log: format!("nvrtcGetCUBIN: {e:?}"),
        })?;
    Ok(Compiled {
        arch: arch.to_string(),
        cubin,
        log,
        cached: false,
    })
}

/// FNV-1a, 64-bit: a stable hash for cache file names.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The cache folder (see the module docs), if one can be named.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = env("MOE_CUDA_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = env("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("moe").join("cuda"));
    }
    env("HOME").map(|h| PathBuf::from(h).join(".cache").join("moe").join("cuda"))
}

/// The cache file name of the whole program for `sm_{major}{minor}` and this NVRTC
/// version.
pub fn cache_name(major: u32, minor: u32, nvrtc: (i32, i32)) -> String {
    let source = program_source();
    let version = format!("{}.{}", nvrtc.0, nvrtc.1);
    let hash = fnv1a(&[
        source.as_bytes(),
        OPTIONS.join(" ").as_bytes(),
        version.as_bytes(),
    ]);
    format!("kernels-{hash:016x}-sm_{major}{minor}.cubin")
}

/// The whole program compiled for `sm_{major}{minor}`, from the cache when it holds it;
/// a fresh compile is written back to the cache (failures to cache are ignored).
pub fn program_for(major: u32, minor: u32) -> Result<Compiled> {
    program_in(cache_dir().as_deref(), major, minor)
}

/// [`program_for`] with the cache in `dir` (`None`: no cache).
pub fn program_in(dir: Option<&Path>, major: u32, minor: u32) -> Result<Compiled> {
    if !nvrtc_present() {
        return dir
            .and_then(|d| prebuilt_in(d, major, minor))
            .ok_or(GpuError::NoNvrtc);
    }
    let arch = format!("sm_{major}{minor}");
    let version = nvrtc_version()?;
    let file = dir.map(|d| d.join(cache_name(major, minor, version)));
    if let Some(bytes) = file.as_ref().and_then(|f| std::fs::read(f).ok())
        && !bytes.is_empty()
    {
        return Ok(Compiled {
            arch,
            cubin: bytes,
            log: String::new(),
            cached: true,
        });
    }
    let compiled = compile(&program_source(), major, minor)?;
    if let Some(file) = file {
        let _ = write_atomically(&file, &compiled.cubin);
    }
    Ok(compiled)
}

/// The file name of the prebuilt cubin of the whole program for `sm_{major}{minor}`
/// (independent of the NVRTC version that compiled it).
pub fn prebuilt_name(major: u32, minor: u32) -> String {
    let source = program_source();
    let hash = fnv1a(&[source.as_bytes(), OPTIONS.join(" ").as_bytes()]);
    format!("prebuilt-{hash:016x}-sm_{major}{minor}.cubin")
}

/// Compiles the program for `sm_{major}{minor}` and writes it to `dir` under
/// [`prebuilt_name`], for machines without NVRTC; returns the file.
pub fn write_prebuilt(dir: &Path, major: u32, minor: u32) -> Result<PathBuf> {
    let compiled = compile(&program_source(), major, minor)?;
    if !compiled.log.is_empty() {
        return Err(GpuError::Compile {
            arch: compiled.arch,
            log: format!(
                "warnings (a prebuilt program must compile cleanly):\n{}",
                compiled.log
            ),
        });
    }
    let file = dir.join(prebuilt_name(major, minor));
    write_atomically(&file, &compiled.cubin)
        .map_err(|e| GpuError::Driver(format!("{}: {e}", file.display())))?;
    Ok(file)
}

/// The prebuilt cubin in `dir` for `sm_{major}{minor}`, else for `sm_{major}0`.
fn prebuilt_in(dir: &Path, major: u32, minor: u32) -> Option<Compiled> {
    [minor, 0].into_iter().find_map(|m| {
        let bytes = std::fs::read(dir.join(prebuilt_name(major, m))).ok()?;
        (!bytes.is_empty()).then(|| Compiled {
            arch: format!("sm_{major}{m}"),
            cubin: bytes,
            log: String::new(),
            cached: true,
        })
    })
}

/// Writes `bytes` to a temporary file next to `file` and renames it into place, so a
/// reader never sees half a cubin.
fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = file.parent().ok_or(std::io::ErrorKind::NotFound)?;
    std::fs::create_dir_all(dir)?;
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_contains_every_source_once() {
        let src = program_source();
        for (name, text) in SOURCES {
            assert_eq!(src.matches(text).count(), 1, "{name}");
        }
        assert!(src.starts_with(COMMON));
    }

    #[test]
    fn cache_names_depend_on_arch_and_version() {
        let a = cache_name(9, 0, (12, 8));
        let b = cache_name(8, 0, (12, 8));
        let c = cache_name(9, 0, (13, 0));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(a.ends_with("-sm_90.cubin"), "{a}");
    }

    #[test]
    fn prebuilt_cubins_are_found_by_arch_or_their_majors_x0() {
        let dir = std::env::temp_dir().join(format!("moe-prebuilt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(prebuilt_in(&dir, 9, 0).is_none());
        std::fs::write(dir.join(prebuilt_name(8, 0)), b"cubin80").unwrap();
        std::fs::write(dir.join(prebuilt_name(9, 0)), b"").unwrap();
        let found = prebuilt_in(&dir, 8, 6).unwrap();
        assert_eq!(
            (found.arch.as_str(), &found.cubin[..]),
            ("sm_80", &b"cubin80"[..])
        );
        assert!(found.cached);
        // An empty file is no cubin; another major never matches.
        assert!(prebuilt_in(&dir, 9, 0).is_none());
        assert!(prebuilt_in(&dir, 7, 5).is_none());
        assert_ne!(prebuilt_name(8, 0), prebuilt_name(9, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fnv1a_separates_parts() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}

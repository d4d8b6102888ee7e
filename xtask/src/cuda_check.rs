//! `cargo xtask cuda-check`: builds moe-cuda's test binaries and its bench, the
//! whole-model GPU test of moe-std with the `moe` binary it runs, and the random-model
//! writer `moe-synth-model`, in release, copies them
//! with a run script to `target/cuda-check/`, and prints the one command
//! that runs them on a GPU machine with no Rust toolchain (the folder travels as an
//! ignored path; the command runs in the repository root there).
//!
//! The kernels are also compiled ahead of time for sm_80 and sm_90 (`moe-cuda-kernels`)
//! into `target/cuda-check/kernels/` — with the NVRTC on `LD_LIBRARY_PATH`, else the pip
//! wheel CI uses (installed into `~/.cache/moe-ci/nvrtc-venv` when missing) — and the
//! script seeds the kernel cache with them, so a GPU machine with only the driver runs
//! everything but the NVRTC tests.
//!
//! The script finds libnvrtc (CUDA toolkit folders, or `$MOE_NVRTC_LIB`), links it as
//! `libnvrtc.so` in a private folder put on `LD_LIBRARY_PATH` (cudarc's dynamic loading
//! tries `libnvrtc.so` first, then `.so.12`, `.so.11`, …, never `.so.13`), sets
//! `MOE_REQUIRE_GPU=1` and `MOE_REQUIRE_NVRTC=1` so a skip is a failure, then runs the
//! unit tests, the GPU-vs-CPU tests and the bench, each under `timeout`, then writes the
//! whole-model benchmark file (the perf model's shape, Q4_0 and Q8_0) and runs `moe
//! bench` on it on the CPU, with the whole model on the GPU, with its FFN blocks on the
//! GPU, and hybrid (half the routed experts' bytes on the GPU), logging to `$OUT/cuda-check.log` when `$OUT` is set.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{Result, cargo_cmd, root, show, step};

/// Where the binaries and the script go, relative to the repository root.
const DIR: &str = "target/cuda-check";

/// The binaries the run script runs.
const NEEDED: [&str; 9] = [
    "moe_cuda",
    "device",
    "model",
    "nvrtc_compile",
    "moe-cuda-bench",
    "moe-cuda-kernels",
    "gpu_model",
    "moe",
    "moe-synth-model",
];

/// What to build: cargo's arguments after `--release`.
const BUILDS: [&[&str]; 5] = [
    &["test", "--no-run", "-p", "moe-cuda"],
    &[
        "build",
        "-p",
        "moe-cuda",
        "--bin",
        "moe-cuda-bench",
        "--bin",
        "moe-cuda-kernels",
    ],
    &["test", "--no-run", "-p", "moe-std", "--test", "gpu_model"],
    &["build", "-p", "moe-std", "--bin", "moe"],
    &["build", "-p", "moe-benches", "--bin", "moe-synth-model"],
];

/// The run script (POSIX sh).
const SCRIPT: &str = r#"#!/bin/sh
# moe-cuda device checks, prepared by `cargo xtask cuda-check`. No Rust toolchain needed.
# Run from the repository root: sh target/cuda-check/run.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
log=${OUT:-/tmp}/cuda-check.log
: > "$log"
say() { echo "$@" | tee -a "$log"; }

# NVRTC: $MOE_NVRTC_LIB, else the toolkit folders, else whatever ldconfig knows.
lib=${MOE_NVRTC_LIB:-}
if [ -z "$lib" ]; then
  for d in ${CUDA_HOME:-/nonexistent} /usr/local/cuda /usr/local/cuda-* /usr/lib/x86_64-linux-gnu /usr/lib64 /opt/cuda; do
    for f in "$d"/lib64/libnvrtc.so* "$d"/lib/libnvrtc.so* "$d"/targets/x86_64-linux/lib/libnvrtc.so* "$d"/libnvrtc.so*; do
      case "$f" in *builtins*|*alt*|*'*'*) continue ;; esac
      [ -f "$f" ] && lib=$f && break 2
    done
  done
fi
if [ -z "$lib" ]; then
  lib=$(ldconfig -p 2>/dev/null | grep -o '/[^ ]*libnvrtc\.so[.0-9]*$' | head -n 1)
fi
nvdir=${TMPDIR:-/tmp}/moe-nvrtc
mkdir -p "$nvdir"
if [ -n "$lib" ]; then
  ln -sf "$lib" "$nvdir/libnvrtc.so"
  # NVRTC loads its builtins library from its own folder or the loader path.
  export LD_LIBRARY_PATH="$nvdir:$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
say "nvrtc: ${lib:-not found}"
export MOE_CUDA_CACHE=${TMPDIR:-/tmp}/moe-cuda-cache
mkdir -p "$MOE_CUDA_CACHE"
# Kernels compiled where the binaries were built: enough without NVRTC here.
cp "$here"/kernels/*.cubin "$MOE_CUDA_CACHE"/ 2>/dev/null && say "prebuilt kernels: $(ls "$here"/kernels)"
say "$(ldd --version 2>&1 | head -n 1) (the binaries need glibc >= 2.34)"
nvidia-smi -L 2>&1 | tee -a "$log"
export MOE_REQUIRE_GPU=1 RUST_BACKTRACE=1
[ -n "$lib" ] && export MOE_REQUIRE_NVRTC=1

status=0
rcfile=$(mktemp)
run() {
  limit=$1; shift
  say "==> $*"
  { timeout "$limit" "$@" 2>&1; echo $? > "$rcfile"; } | tee -a "$log"
  rc=$(cat "$rcfile")
  say "<== exit $rc: $*"
  [ "$rc" = 0 ] || status=1
}
run 60 "$here/moe_cuda" --test-threads=1
run 150 "$here/device" --nocapture --test-threads=1
# Whole fixture models on the GPU (attention too: GpuModel) against the CPU path.
run 120 "$here/model" --nocapture --test-threads=1
run 150 "$here/moe-cuda-bench"
# Whole fixture models with their FFN blocks on the GPU against the CPU path (fixtures
# from this checkout's moe-core/tests/fixtures/models; the CLI part runs $here/moe).
MOE_BIN="$here/moe" run 120 "$here/gpu_model" --nocapture --test-threads=1
# The whole random Mixtral-shaped model (n_embd 2048, 8 blocks, 8 experts top-2, width
# 5632): written here (a few seconds), then prefill 128 tokens and 64 decode steps on the
# CPU, the whole model on the GPU, its FFN blocks on the GPU (attention on the CPU), and
# hybrid with half the routed experts' bytes on the GPU.
models=${TMPDIR:-/tmp}/moe-cuda-check-models
mkdir -p "$models"
for type in q4_0 q8_0; do
  model="$models/perf-$type.gguf"
  run 60 "$here/moe-synth-model" "$model" --type "$type"
  # Its JSON line (in the log) gives the bytes of all routed experts.
  routed=$(sed -n 's/.*"routed_expert_bytes":\([0-9]*\).*/\1/p' "$log" | tail -n 1)
  run 120 "$here/moe" bench "$model" --prompt 128 --gen 64 --reps 2 --json
  run 120 "$here/moe" bench "$model" --prompt 128 --gen 64 --reps 2 --json --gpu
  run 120 "$here/moe" bench "$model" --prompt 128 --gen 64 --reps 2 --json --gpu-ffn-only
  [ -n "$routed" ] && run 120 "$here/moe" bench "$model" --prompt 128 --gen 64 --reps 2 --json --gpu-budget $((routed / 2))
  rm -f "$model"
done
# The compile matrix (sm_80 and sm_90, every file) takes minutes of NVRTC time and is
# checked where the binaries were built; the device tests above compiled the whole
# program with this machine's NVRTC (and the bench loaded it from the cache). Here only
# the cheap checks of that binary.
[ -n "$lib" ] && run 60 "$here/nvrtc_compile" --nocapture --test-threads=1 --skip every_source_compiles --skip the_cache_round_trips
say "cuda-check: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
"#;

/// `cargo xtask cuda-check`.
pub fn run(args: &[String]) -> Result {
    crate::no_extra_args(args)?;
    let out = root().join(DIR);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;

    step("build moe-cuda's tests and bench, moe-std's GPU model test and moe (release)");
    let mut artifacts = Vec::new();
    for args in BUILDS {
        let mut cmd = cargo_cmd();
        cmd.args(&args[..1])
            .args(["--release", "--message-format=json"])
            .args(&args[1..])
            // Fast release builds that carry well under the device tool's 64 MiB.
            .env("CARGO_PROFILE_RELEASE_LTO", "false")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16")
            .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
        let shown = show(&cmd);
        eprintln!("$ {shown}");
        let output = cmd
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("could not start `{shown}`: {e}"))?;
        if !output.status.success() {
            return Err(format!("`{shown}` failed ({})", output.status));
        }
        artifacts.extend(executables(&String::from_utf8_lossy(&output.stdout)));
    }

    step(&format!("copy to {DIR}"));
    // The host check stays behind: it compiles a C++ file from this checkout.
    let mut seen = std::collections::HashSet::new();
    artifacts.retain(|(name, _)| NEEDED.contains(&name.as_str()) && seen.insert(name.clone()));
    let mut total = 0u64;
    for (name, path) in &artifacts {
        let dst = out.join(name);
        fs::copy(path, &dst).map_err(|e| format!("{} → {}: {e}", path.display(), dst.display()))?;
        let size = fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
        total += size;
        eprintln!(
            "{DIR}/{name} ({:.1} MiB)",
            size as f64 / (1u64 << 20) as f64
        );
    }
    for needed in NEEDED {
        if !artifacts.iter().any(|(n, _)| n == needed) {
            return Err(format!("cargo built no `{needed}` binary"));
        }
    }
    step("compile the kernels ahead of time for sm_80 and sm_90 (needs NVRTC here)");
    let prebuilt = out.join("kernels");
    let tool = out.join("moe-cuda-kernels");
    let prebuild = |library_path: Option<&Path>| {
        let mut cmd = std::process::Command::new(&tool);
        cmd.arg(&prebuilt);
        if let Some(dir) = library_path {
            let old = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
            let mut paths = vec![dir.to_path_buf()];
            paths.extend(std::env::split_paths(&old));
            cmd.env(
                "LD_LIBRARY_PATH",
                std::env::join_paths(paths).unwrap_or_default(),
            );
        }
        cmd.status().is_ok_and(|s| s.success())
    };
    if !prebuild(None) && !nvrtc_wheel().is_some_and(|dir| prebuild(Some(&dir))) {
        eprintln!("warning: no prebuilt kernels (no NVRTC here): the GPU machine will need NVRTC");
    }
    let script = out.join("run.sh");
    fs::write(&script, SCRIPT).map_err(|e| format!("{}: {e}", script.display()))?;
    eprintln!(
        "{DIR}: {:.1} MiB in all (the device tool carries at most 64 MiB)",
        total as f64 / (1u64 << 20) as f64
    );

    step("run on the GPU machine (repository root, no Rust toolchain needed)");
    println!("carry: [\"{DIR}\"]");
    println!("command: sh {DIR}/run.sh");
    println!("(log: $OUT/cuda-check.log; expected wall time 2-4 minutes, give it timeout_s 480;");
    println!(" the binaries are dynamically linked against glibc >= 2.34 and load libcuda and");
    println!(
        " libnvrtc at run time: set MOE_NVRTC_LIB=/path/to/libnvrtc.so.N if run.sh finds none)"
    );
    Ok(())
}

/// The library folder of NVIDIA's NVRTC pip wheel in the virtual environment CI uses
/// (`$MOE_NVRTC_VENV`, else `~/.cache/moe-ci/nvrtc-venv`), installing it there first
/// when missing (as `.ci/run` does); `None` when that fails.
fn nvrtc_wheel() -> Option<PathBuf> {
    let venv = std::env::var_os("MOE_NVRTC_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/moe-ci/nvrtc-venv"))
        })?;
    let find = || {
        fs::read_dir(venv.join("lib"))
            .ok()?
            .flatten()
            .map(|python| python.path().join("site-packages/nvidia/cuda_nvrtc/lib"))
            .find(|lib| lib.is_dir())
    };
    if let Some(lib) = find() {
        return Some(lib);
    }
    eprintln!(
        "installing NVRTC (pip wheel nvidia-cuda-nvrtc-cu12 12.8) into {}",
        venv.display()
    );
    let ok = |cmd: &mut std::process::Command| cmd.status().is_ok_and(|s| s.success());
    let created = venv.join("bin/pip").exists()
        || ok(std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv));
    if !created
        || !ok(std::process::Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            "nvidia-cuda-nvrtc-cu12==12.8.*",
        ]))
    {
        return None;
    }
    find()
}

/// `(name, path)` of every executable of moe-cuda, moe-std and moe-benches in cargo's
/// JSON messages:
/// test binaries by target name (`moe_cuda` for the library's unit tests), binaries by
/// name.
fn executables(json: &str) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for line in json.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        if msg["package_id"].as_str().is_some_and(|id| {
            ["moe-cuda", "moe-std", "moe-benches"]
                .iter()
                .any(|p| id.contains(p))
        }) {
            let name = if msg["target"]["kind"][0] == "bin" {
                name.to_string()
            } else {
                name.replace('-', "_")
            };
            if !found.iter().any(|(n, _)| *n == name) {
                found.push((name, Path::new(exe).to_path_buf()));
            }
        }
    }
    found
}

//! Project automation, run as `cargo xtask <task>` (the alias lives in `.cargo/config.toml`).
//!
//! Every task only starts other programs (cargo, rustup, libFuzzer) with
//! [`std::process::Command`]; no product logic lives here. Tasks fail fast: the first step
//! that fails stops the task with a non-zero exit status and says which command failed.

mod aarch64;
mod bench;
mod cuda_check;
mod firmware;
mod fuzz;
mod nostd;

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  ci [--fuzz-seconds N]      fmt --check, clippy -D warnings, cargo test --workspace,
                             nostd, firmware, aarch64-test, then fuzz smokes of
                             gguf_parse, layer_from_gguf, tokenizer_from_gguf,
                             safetensors_parse and tokenizer_from_json (N seconds
                             each, default 45, or $MOE_FUZZ_SECONDS)
  nostd                      build moe-core for bare-metal targets and prove that neither
                             std nor alloc is linked
  fuzz <target> [--seconds N]
                             run a cargo-fuzz target on stable (-s none) for N seconds
                             (default 60), seeded with moe-core/tests/fixtures/*.gguf
  firmware                   build the Cortex-M4F example firmware (opt-level s and 3),
                             run it under QEMU (mps2-an386), compare it with the host,
                             print its size table and fail if the engine's code at
                             opt-level s is over its 48 KiB budget
  aarch64-test               run moe-core's tests for aarch64-unknown-linux-gnu under
                             qemu-aarch64 on a CPU with dotprod (max) and one without
                             (cortex-a53), requiring the neon and dotprod kernel levels
  bench [--quick] [--llamacpp PYTHON] [FILTER]
                             run the roofline (bandwidth probe, matrix x vector streamed
                             from DRAM) and kernels benches, print GB/s, GFLOP/s and the
                             ratio to the probe; save target/moe-bench/*.{json,md};
                             --llamacpp adds llama.cpp's kernels (needs llama-cpp-python)
  bench --target aarch64-unknown-linux-gnu (--runner qemu | --remote USER@HOST [--dry-run])
                             cross-build; smoke-run under qemu-aarch64 (timings mean
                             nothing), or copy to HOST with scp and run over ssh
  cuda-check                 build moe-cuda's test binaries and GPU bench (release) into
                             target/cuda-check/ with a run script, and print the one
                             command that runs them on a GPU machine (no Rust there)
";

/// Seconds each fuzz smoke of `cargo xtask ci` runs when nothing else is asked for.
const DEFAULT_FUZZ_SECONDS: u64 = 45;

/// The fuzz targets `cargo xtask ci` smoke-tests: the GGUF reader, the layers built from
/// GGUF metadata (`from_gguf` of MoE and PEER layers, then one forward pass), the
/// tokenizer built from GGUF metadata (then encoding and decoding through it), the
/// safetensors reader of Hugging Face checkpoints, and the tokenizer built from a
/// Hugging Face `tokenizer.json`.
const FUZZ_TARGETS: [&str; 5] = [
    "gguf_parse",
    "layer_from_gguf",
    "tokenizer_from_gguf",
    "safetensors_parse",
    "tokenizer_from_json",
];

/// What a task returns: `Err` carries the message printed before exiting with status 1.
type Result<T = (), E = String> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result {
    let Some((task, rest)) = args.split_first() else {
        eprint!("{USAGE}");
        return Err("no task given".into());
    };
    match task.as_str() {
        "ci" => ci(rest),
        "nostd" => {
            no_extra_args(rest)?;
            nostd::run()
        }
        "fuzz" => {
            let (target, rest) = rest
                .split_first()
                .ok_or("usage: cargo xtask fuzz <target> [--seconds N]")?;
            let seconds = seconds_flag(rest, "--seconds")?.unwrap_or(DEFAULT_FUZZ_SECONDS);
            fuzz::run(target, seconds).map(|_| ())
        }
        "firmware" => {
            no_extra_args(rest)?;
            firmware::run()
        }
        "aarch64-test" => {
            no_extra_args(rest)?;
            aarch64::run()
        }
        "bench" => bench::run(rest),
        "cuda-check" => cuda_check::run(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            Err(format!("unknown task '{other}'"))
        }
    }
}

/// `cargo xtask ci`: everything `.ci/run` checks, in the order a failure is cheapest.
fn ci(args: &[String]) -> Result {
    let fuzz_seconds = match seconds_flag(args, "--fuzz-seconds")? {
        Some(n) => n,
        None => match env::var("MOE_FUZZ_SECONDS") {
            Ok(s) => s
                .parse()
                .map_err(|_| format!("MOE_FUZZ_SECONDS={s} is not a number of seconds"))?,
            Err(_) => DEFAULT_FUZZ_SECONDS,
        },
    };

    step("rustfmt");
    cargo(["fmt", "--all", "--", "--check"])?;
    // The fuzz and firmware crates are their own workspaces, so `--all` does not reach them.
    for manifest in [
        "fuzz/Cargo.toml",
        "moe-core/examples/firmware-cortex-m/Cargo.toml",
    ] {
        cargo(["fmt", "--manifest-path", manifest, "--all", "--", "--check"])?;
    }

    step("clippy");
    cargo([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;

    // The README's test command, exactly.
    step("cargo test --workspace");
    cargo(["test", "--workspace"])?;

    step("no_std proof");
    nostd::run()?;

    step("firmware under emulation");
    firmware::run()?;

    step("aarch64 kernels under emulation");
    aarch64::run()?;

    for target in FUZZ_TARGETS {
        step(&format!("fuzz smoke: {target} for {fuzz_seconds} s"));
        fuzz::run(target, fuzz_seconds)?;
    }

    step("ci passed");
    Ok(())
}

/// Rejects anything after a task that takes no arguments.
fn no_extra_args(args: &[String]) -> Result {
    match args.first() {
        None => Ok(()),
        Some(arg) => Err(format!("unexpected argument '{arg}'")),
    }
}

/// Parses `[NAME N]` (or `NAME=N`) as the only option in `args`.
fn seconds_flag(args: &[String], name: &str) -> Result<Option<u64>> {
    let mut value = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let text = if arg == name {
            args.next()
                .ok_or_else(|| format!("{name} needs a number of seconds"))?
                .as_str()
        } else if let Some(text) = arg.strip_prefix(name).and_then(|s| s.strip_prefix('=')) {
            text
        } else {
            return Err(format!("unexpected argument '{arg}'"));
        };
        value = Some(
            text.parse()
                .map_err(|_| format!("{name}: '{text}' is not a number of seconds"))?,
        );
    }
    Ok(value)
}

/// Prints a banner between the steps of a task, so a CI log is easy to scan.
fn step(title: &str) {
    eprintln!("\n==> {title}");
}

/// The repository root (the parent of this crate's folder).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the root")
        .to_path_buf()
}

/// The cargo that started us (`$CARGO`), so the same toolchain builds everything.
fn cargo_cmd() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs `cargo ARGS...` in the repository root and fails if it fails.
fn cargo<I, S>(args: I) -> Result
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = cargo_cmd();
    cmd.args(args);
    status(&mut cmd)
}

/// Runs `cmd`, echoing it first, and turns a non-zero exit into an error naming it.
fn status(cmd: &mut Command) -> Result {
    let shown = show(cmd);
    eprintln!("$ {shown}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not start `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status})"))
    }
}

/// Runs `cmd` quietly and returns its stdout, or `None` if it could not run or failed.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs Debian `packages` with apt-get (nothing when the list is empty), through
/// `sudo` unless we are root.
fn apt_install(packages: &[&str]) -> Result {
    if packages.is_empty() {
        return Ok(());
    }
    let is_root = output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0");
    let apt_get = || {
        let mut cmd = Command::new(if is_root { "apt-get" } else { "sudo" });
        if !is_root {
            cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    status(apt_get().args(["update", "-q"]))?;
    status(
        apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages),
    )
}

/// A command as a shell line, for logs.
fn show(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

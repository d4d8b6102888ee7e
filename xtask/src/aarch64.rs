//! `cargo xtask aarch64-test`: runs moe-core's tests for `aarch64-unknown-linux-gnu`
//! under QEMU's user-mode emulator, on two emulated CPUs, so that both AArch64 kernel
//! levels are held to the scalar specification on an x86-64 machine:
//!
//! 1. `QEMU_CPU=max` (the newest architecture QEMU knows, with the dot-product
//!    extension): `MOE_REQUIRE_LEVELS=neon,dotprod`, so neither level can be skipped.
//! 2. `QEMU_CPU=cortex-a53` (Armv8.0, no dot product): `MOE_REQUIRE_LEVELS=neon` and
//!    `MOE_ABSENT_LEVELS=dotprod`, so run-time detection must report NEON but not
//!    `sdot` (see `moe-core/tests/kernel_levels/mod.rs`).
//!
//! Installs what a Debian machine lacks: the Rust target (rustup), the cross linker and
//! C library (`gcc-aarch64-linux-gnu`, `libc6-dev-arm64-cross`) and `qemu-user`
//! (apt-get). The tests are built optimised and emulated runs set `PROPTEST_CASES` low;
//! the timings mean nothing.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::nostd::ensure_targets;
use crate::{Result, apt_install, cargo_cmd, output, status, step};

const TARGET: &str = "aarch64-unknown-linux-gnu";
/// The cross C compiler, which cargo uses as the linker.
const LINKER: &str = "aarch64-linux-gnu-gcc";
/// QEMU's user-mode emulator.
const QEMU: &str = "qemu-aarch64";
/// Where `libc6-dev-arm64-cross` puts the AArch64 C library, which QEMU loads the tests
/// with (`-L`).
const SYSROOT: &str = "/usr/aarch64-linux-gnu";
/// Property-test cases under emulation for the suites that keep proptest's default of 256
/// (those that set their own count keep it).
const PROPTEST_CASES: &str = "32";

/// One emulated CPU and the kernel levels it must and must not offer.
struct Cpu {
    qemu_cpu: &'static str,
    require_levels: &'static str,
    absent_levels: &'static str,
}

const CPUS: [Cpu; 2] = [
    Cpu {
        qemu_cpu: "max",
        require_levels: "neon,dotprod",
        absent_levels: "",
    },
    Cpu {
        qemu_cpu: "cortex-a53",
        require_levels: "neon",
        absent_levels: "dotprod",
    },
];

pub fn run() -> Result {
    ensure_targets(&[TARGET])?;
    ensure_tools()?;
    step(&format!("aarch64: build moe-core's tests for {TARGET}"));
    status(test_command().arg("--no-run"))?;
    for cpu in &CPUS {
        step(&format!(
            "aarch64: moe-core's tests on QEMU_CPU={} (MOE_REQUIRE_LEVELS={}, MOE_ABSENT_LEVELS={})",
            cpu.qemu_cpu, cpu.require_levels, cpu.absent_levels
        ));
        let start = Instant::now();
        status(
            test_command()
                .env("QEMU_CPU", cpu.qemu_cpu)
                .env("MOE_REQUIRE_LEVELS", cpu.require_levels)
                .env("MOE_ABSENT_LEVELS", cpu.absent_levels)
                .env("PROPTEST_CASES", PROPTEST_CASES),
        )?;
        eprintln!(
            "ok: moe-core's tests pass on an emulated {} ({:.0} s)",
            cpu.qemu_cpu,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `cargo test -p moe-core` for the target, linked by the cross compiler and run by QEMU.
///
/// Optimised (`opt-level` 2, no debug info; overflow checks and debug assertions stay
/// on): unoptimised NEON intrinsics are calls, and under emulation the kernel suites
/// then take many minutes instead of seconds.
fn test_command() -> Command {
    let mut cmd = cargo_cmd();
    cmd.args(["test", "-p", "moe-core", "--target", TARGET])
        .env("CARGO_PROFILE_TEST_OPT_LEVEL", "2")
        .env("CARGO_PROFILE_TEST_DEBUG", "0")
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", LINKER)
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER",
            format!("{QEMU} -L {SYSROOT}"),
        );
    cmd
}

/// Installs the cross linker, its C library and QEMU's user-mode emulator when missing
/// (Debian package names).
fn ensure_tools() -> Result {
    let have = |tool: &str| output(Command::new(tool).arg("--version")).is_some();
    let mut missing = Vec::new();
    if !have(LINKER) {
        missing.push("gcc-aarch64-linux-gnu");
    }
    // The linker's recommended C library, which `--no-install-recommends` skips.
    if !Path::new(SYSROOT).join("lib/crt1.o").exists() {
        missing.push("libc6-dev-arm64-cross");
    }
    if !have(QEMU) {
        missing.push("qemu-user");
    }
    apt_install(&missing)
}

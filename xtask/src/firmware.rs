//! `cargo xtask firmware`: builds the Cortex-M4F example firmware, runs it on an emulated
//! board, checks it against the same computation on the host, and prints its size table.
//!
//! 1. Builds `moe-core/examples/firmware-cortex-m` at opt-level "s" and "3" (LTO), plus a
//!    `baseline` build that skips the engine, so the engine's share of `.text` is the
//!    difference.
//! 2. Runs each build on QEMU's mps2-an386 (a Cortex-M4) with semihosting, under a
//!    time limit; the firmware prints a report and exits 0 only if everything it checked
//!    on the device (workspace size, forward pass) succeeded.
//! 3. Runs `moe-std`'s `firmware_host` example, which includes the very same `demo.rs`
//!    and runs it on the mmapped model file, and compares: identical model and workspace
//!    sizes, identical selected experts, outputs within 1e-5.
//! 4. Prints `.text`, `.rodata` (of which model), `.data` + `.bss` (of which workspace)
//!    and the stack high-water mark the firmware measured by stack painting, and fails
//!    when the engine's share of `.text` at opt-level "s" (the firmware minus the
//!    baseline) exceeds [`ENGINE_TEXT_BUDGET`]: a size budget, not a timing.
//! 5. Runs `moe-core/tests/formats.rs` with only the firmware's block formats
//!    ([`FIRMWARE_FEATURES`]): the formats it leaves out are `UnsupportedType` errors at
//!    load, never panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use std::{fs, thread};

use crate::nostd::ensure_targets;
use crate::{Result, cargo_cmd, output, root, status, step};

const TARGET: &str = "thumbv7em-none-eabihf";
const CRATE: &str = "moe-core/examples/firmware-cortex-m";
const BIN: &str = "moe-firmware-cortex-m";
/// Emulated runs take well under a second; anything near this is a hang.
const QEMU_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest allowed difference between a firmware and a host output value.
const TOLERANCE: f32 = 1e-5;
/// The most `.text` the engine may add to a firmware for one MoE layer forward with Q8_0
/// weights at opt-level "s" (model bytes are `.rodata`, not counted): issue 8's target.
const ENGINE_TEXT_BUDGET: u64 = 48 * 1024;
/// The moe-core features the firmware builds with (its Cargo.toml:
/// `default-features = false, features = ["q8_0"]`).
const FIRMWARE_FEATURES: &str = "q8_0";

/// One build of the firmware: cargo profile, optional feature, and what to call it.
struct Build {
    label: &'static str,
    profile: &'static str,
    features: &'static str,
}

const BUILDS: [Build; 3] = [
    Build {
        label: "opt-level s",
        profile: "release",
        features: "",
    },
    Build {
        label: "opt-level 3",
        profile: "release-o3",
        features: "",
    },
    Build {
        label: "baseline (no engine), s",
        profile: "release",
        features: "baseline",
    },
];

pub fn run() -> Result {
    ensure_targets(&[TARGET])?;
    ensure_tools()?;
    let dir = root().join(CRATE);
    let model = dir.join("model.gguf");

    step("firmware: host reference (moe-std, mmapped model)");
    let mut host = cargo_cmd();
    host.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "moe-std",
        "--example",
        "firmware_host",
        "--",
    ])
    .arg(&model);
    let host_report = output(&mut host).ok_or("the firmware_host example failed")?;
    let host_report = Report::parse(&host_report)?;

    let mut rows = Vec::new();
    for build in &BUILDS {
        step(&format!("firmware: build {}", build.label));
        let elf = build_firmware(&dir, build)?;
        step(&format!("firmware: run {} on mps2-an386", build.label));
        let printed = run_qemu(&elf)?;
        print!("{printed}");
        let sizes = Sizes::read(&elf)?;
        let report = Report::parse(&printed)?;
        if build.features.is_empty() {
            report.matches(&host_report)?;
            eprintln!("ok: {} agrees with the host", build.label);
        }
        rows.push((build.label, sizes, report.stack));
    }

    step("firmware: sizes (bytes)");
    println!("| build | .text | .rodata (model) | .data + .bss (workspace) | stack high-water |");
    println!("|---|---:|---:|---:|---:|");
    for (label, s, stack) in &rows {
        println!(
            "| {label} | {} | {} ({}) | {} ({}) | {} |",
            s.text,
            s.rodata,
            s.model,
            s.data + s.bss,
            s.workspace,
            stack.map_or("-".into(), |v| v.to_string())
        );
    }
    let engine_text = rows[0].1.text.saturating_sub(rows[2].1.text);
    println!(
        "engine code for one MoE layer forward (.text at opt-level s minus baseline): {engine_text} bytes ({:.1} KiB; budget {} KiB)",
        engine_text as f64 / 1024.0,
        ENGINE_TEXT_BUDGET / 1024
    );
    if engine_text > ENGINE_TEXT_BUDGET {
        return Err(format!(
            "the engine's code is {engine_text} bytes at opt-level s, over the budget of \
             {ENGINE_TEXT_BUDGET} bytes (see `arm-none-eabi-nm -S --size-sort -C` of {})",
            root()
                .join("target/firmware")
                .join(TARGET)
                .join("release")
                .join(format!("{BIN}-opt-level_s"))
                .display()
        ));
    }

    step(&format!(
        "firmware: moe-core with only the firmware's formats ({FIRMWARE_FEATURES}): the others are typed errors"
    ));
    let mut formats = cargo_cmd();
    formats.args([
        "test",
        "--quiet",
        "-p",
        "moe-core",
        "--no-default-features",
        "--features",
        FIRMWARE_FEATURES,
        "--test",
        "formats",
    ]);
    status(&mut formats)
}

/// Installs QEMU and the ARM binutils when missing (Debian package names).
fn ensure_tools() -> Result {
    let have = |tool: &str| output(Command::new(tool).arg("--version")).is_some();
    let mut missing = Vec::new();
    if !have("qemu-system-arm") {
        missing.push("qemu-system-arm");
    }
    if !have("arm-none-eabi-size") {
        missing.push("binutils-arm-none-eabi");
    }
    crate::apt_install(&missing)
}

fn build_firmware(dir: &Path, build: &Build) -> Result<PathBuf> {
    let target_dir = root().join("target/firmware");
    let mut cmd = cargo_cmd();
    // The firmware's own .cargo/config.toml (target, linker script) applies from its folder.
    cmd.current_dir(dir)
        .args(["build", "--profile", build.profile, "--target-dir"])
        .arg(&target_dir);
    if !build.features.is_empty() {
        cmd.args(["--features", build.features]);
    }
    status(&mut cmd)?;
    let elf = target_dir.join(TARGET).join(build.profile).join(BIN);
    // Each build overwrites the same path; keep a copy per build for the size table.
    let kept = elf.with_file_name(format!(
        "{BIN}-{}",
        build.label.replace([' ', ',', '(', ')'], "_")
    ));
    fs::copy(&elf, &kept).map_err(|e| format!("copying {}: {e}", elf.display()))?;
    Ok(kept)
}

/// Runs the firmware in QEMU and returns what it printed; fails on a non-zero exit or a
/// hang.
fn run_qemu(elf: &Path) -> Result<String> {
    let mut child = Command::new("qemu-system-arm")
        .args([
            "-machine",
            "mps2-an386",
            "-cpu",
            "cortex-m4",
            "-nographic",
            "-monitor",
            "none",
        ])
        .args([
            "-serial",
            "none",
            "-semihosting-config",
            "enable=on,target=native",
            "-kernel",
        ])
        .arg(elf)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("could not start qemu-system-arm: {e}"))?;
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().map_err(|e| e.to_string())? {
            break exit;
        }
        if started.elapsed() > QEMU_TIMEOUT {
            let _ = child.kill();
            return Err(format!("the firmware did not exit within {QEMU_TIMEOUT:?}"));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut printed = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        stdout
            .read_to_string(&mut printed)
            .map_err(|e| e.to_string())?;
    }
    if !exit.success() {
        return Err(format!(
            "the firmware failed ({exit}); it printed:\n{printed}"
        ));
    }
    Ok(printed)
}

/// What the firmware (and the host twin) print, line by line (see the example's
/// `demo.rs`): `model N`, `workspace S R B`, `token T experts E...`, `out T HEX...`,
/// `checksum HEX`, and from the firmware only `stack N`.
#[derive(Default)]
struct Report {
    model: Option<u64>,
    workspace: Option<String>,
    experts: Vec<String>,
    outputs: Vec<Vec<f32>>,
    checksum: Option<String>,
    stack: Option<u64>,
}

impl Report {
    fn parse(text: &str) -> Result<Report> {
        let mut report = Report::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let number = |w: Option<&str>| w.and_then(|w| w.parse::<u64>().ok());
            match words.next() {
                Some("model") => report.model = number(words.next()),
                Some("workspace") => report.workspace = Some(line.to_string()),
                Some("checksum") => report.checksum = words.next().map(str::to_string),
                Some("stack") => report.stack = number(words.next()),
                Some("token") => report.experts.push(line.to_string()),
                Some("out") => {
                    words.next();
                    let values = words
                        .map(|w| u32::from_str_radix(w, 16).map(f32::from_bits))
                        .collect::<Result<Vec<f32>, _>>()
                        .map_err(|e| format!("bad output line '{line}': {e}"))?;
                    report.outputs.push(values);
                }
                _ => {}
            }
        }
        Ok(report)
    }

    /// Same sizes and experts; every output within [`TOLERANCE`].
    fn matches(&self, host: &Report) -> Result {
        if self.experts.is_empty() || self.outputs.is_empty() {
            return Err("the firmware printed no routing report".into());
        }
        if (self.model, &self.workspace) != (host.model, &host.workspace) {
            return Err("model or workspace size differs between firmware and host".into());
        }
        if self.experts != host.experts {
            return Err(format!(
                "selected experts differ:\nfirmware: {:?}\nhost:     {:?}",
                self.experts, host.experts
            ));
        }
        let ours: Vec<f32> = self.outputs.iter().flatten().copied().collect();
        let theirs: Vec<f32> = host.outputs.iter().flatten().copied().collect();
        if ours.len() != theirs.len() {
            return Err("the firmware and the host printed different numbers of outputs".into());
        }
        let mut worst = 0f32;
        for (a, b) in ours.iter().zip(&theirs) {
            if a.to_bits() == b.to_bits() {
                continue;
            }
            let diff = (a - b).abs();
            if diff.is_nan() || diff > TOLERANCE {
                return Err(format!(
                    "output {a} vs host {b}: more than {TOLERANCE} apart"
                ));
            }
            worst = worst.max(diff);
        }
        let exact = self.checksum.is_some() && self.checksum == host.checksum;
        eprintln!(
            "largest output difference firmware vs host: {worst:e}{}",
            if exact {
                " (bit-exact: checksums agree)"
            } else {
                ""
            }
        );
        Ok(())
    }
}

/// Section and symbol sizes of an ELF, from `arm-none-eabi-size -A` and `-nm -S`.
struct Sizes {
    text: u64,
    rodata: u64,
    data: u64,
    bss: u64,
    model: u64,
    workspace: u64,
}

impl Sizes {
    fn read(elf: &Path) -> Result<Sizes> {
        let sections = output(Command::new("arm-none-eabi-size").arg("-A").arg(elf))
            .ok_or("arm-none-eabi-size failed")?;
        let section = |name: &str| {
            sections
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some(name)).then(|| w.next()?.parse::<u64>().ok())?
                })
                .sum::<u64>()
        };
        let symbols = output(
            Command::new("arm-none-eabi-nm")
                .args(["-S", "--size-sort"])
                .arg(elf),
        )
        .ok_or("arm-none-eabi-nm failed")?;
        let symbol = |needle: &str| {
            symbols
                .lines()
                .filter(|l| l.contains(needle))
                .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
                .sum::<u64>()
        };
        Ok(Sizes {
            text: section(".text") + section(".vector_table"),
            rodata: section(".rodata"),
            data: section(".data"),
            bss: section(".bss") + section(".uninit"),
            model: symbol("MODEL"),
            workspace: symbol("WORKSPACE"),
        })
    }
}

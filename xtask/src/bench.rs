//! `cargo xtask bench`: the kernel benchmarks as a roofline table.
//!
//! Runs the `roofline` bench (bandwidth probe + matrix × vector streamed from DRAM), the
//! `kernels` bench (the same matrix every iteration) and the `batch` bench (32 rows through
//! `Kernels::matmul` against 32 `matvec`s), reads criterion's estimates and
//! prints GB/s of weight bytes, GFLOP/s and the ratio to the read probe of the same run;
//! saves the table as JSON and Markdown under `<target dir>/moe-bench/`.
//!
//! - Local: `cargo bench`, then the criterion folder of the target dir.
//! - `--target aarch64-unknown-linux-gnu --runner qemu`: cross-builds the bench, runs it
//!   under `qemu-aarch64` at smoke-test sizes (`MOE_BENCH_SMOKE=1`); the timings mean
//!   nothing, the run proves the benches build and run on the target.
//! - `--target aarch64-unknown-linux-gnu --remote USER@HOST`: cross-builds, copies the
//!   bench binaries to `HOST:/tmp/moe-bench` with `scp`, runs them over `ssh` with
//!   `CRITERION_HOME` in that folder and copies the criterion folder back.
//!
//! All three end in the same [`report`] code, which reads a criterion folder and the
//! bench's `machine.json`. `--llamacpp PYTHON` adds llama.cpp's CPU kernels on the same
//! shapes and types (`benches/llamacpp/ggml_matmul.py`, run locally).

mod report;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use report::{Llama, Machine, Report, read_criterion};

use crate::{Result, cargo_cmd, output, root, show, status, step};

/// Where the bench binaries go on a remote board.
const REMOTE_DIR: &str = "/tmp/moe-bench";

/// The benches the table is made of, in the order they run (those that
/// `benches/Cargo.toml` declares; see [`benches`]).
const BENCHES: [&str; 3] = ["roofline", "kernels", "batch"];

/// The [`BENCHES`] this checkout has, so the task works while one is still being written.
fn benches() -> Vec<&'static str> {
    let manifest = fs::read_to_string(root().join("benches/Cargo.toml")).unwrap_or_default();
    BENCHES
        .into_iter()
        .filter(|b| manifest.contains(&format!("name = \"{b}\"")))
        .collect()
}

/// The `kernels` bench's rows in the table unless a filter is given: the four types of the
/// roofline, every level, the same matrix each iteration (not its own probe, nor the other
/// types it covers).
const KERNELS_FILTER: &str = "^matvec/(Q4_0|Q8_0|Q4_K|Q6_K)/";

/// `cargo xtask bench`'s options; anything else goes to criterion (a filter).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options {
    pub quick: bool,
    pub llamacpp: Option<String>,
    pub target: Option<String>,
    pub runner: Option<String>,
    pub remote: Option<String>,
    pub dry_run: bool,
    pub criterion_args: Vec<String>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match arg.as_str() {
                "--quick" => o.quick = true,
                "--dry-run" => o.dry_run = true,
                "--llamacpp" => o.llamacpp = Some(value("--llamacpp PYTHON")?),
                "--target" => o.target = Some(value("--target TRIPLE")?),
                "--runner" => o.runner = Some(value("--runner qemu")?),
                "--remote" => o.remote = Some(value("--remote USER@HOST")?),
                _ => o.criterion_args.push(arg.clone()),
            }
        }
        match (&o.target, &o.runner, &o.remote) {
            (None, None, None) => {}
            (Some(_), Some(r), None) if r == "qemu" => {}
            (Some(_), None, Some(_)) => {}
            (_, Some(r), _) if r != "qemu" => return Err(format!("unknown runner '{r}'")),
            _ => {
                return Err(
                    "--target needs exactly one of --runner qemu and --remote USER@HOST".into(),
                );
            }
        }
        if let Some(t) = &o.target {
            CrossTools::for_target(t)?;
            if o.llamacpp.is_some() {
                return Err("--llamacpp compares on this machine only (no --target)".into());
            }
        }
        Ok(o)
    }
}

pub fn run(args: &[String]) -> Result {
    let o = Options::parse(args)?;
    let out = target_dir().join("moe-bench");
    let (report, name) = match (&o.target, &o.remote) {
        (None, _) => local(&o, &out)?,
        (Some(target), None) => qemu(&o, target, &out)?,
        (Some(target), Some(host)) => match remote(&o, target, host, &out)? {
            Some(r) => r,
            None => return Ok(()),
        },
    };
    // A cross run keeps its own "latest", so a smoke test never hides the last real table.
    let latest = match o.target {
        None => "latest".to_string(),
        Some(_) => format!("{name}-latest"),
    };
    save(&report, &name, &latest, &out)
}

/// The cargo target dir: `$CARGO_TARGET_DIR` (relative to the root, where cargo runs),
/// else `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Criterion's settings for `--quick`: short warm-up and measurement, but still its ten
/// samples (criterion's own `--quick` may stop after two, too few to take the fastest).
const QUICK_ARGS: [&str; 4] = ["--warm-up-time", "0.1", "--measurement-time", "0.5"];

/// Criterion arguments of one bench binary: [`QUICK_ARGS`] when asked, then whatever the
/// user passed, or [`KERNELS_FILTER`] for the kernels bench when nothing was.
fn bench_args(o: &Options, bench: &str) -> Vec<String> {
    let mut args = Vec::new();
    if o.quick {
        args.extend(QUICK_ARGS.map(String::from));
    }
    args.extend(o.criterion_args.iter().cloned());
    if bench == "kernels" && o.criterion_args.is_empty() {
        args.push(KERNELS_FILTER.to_string());
    }
    args
}

fn local(o: &Options, out: &Path) -> Result<(Report, String)> {
    let run_dir = out.join("run");
    let _ = fs::remove_dir_all(&run_dir);
    // Criterion rewrites `new/estimates.json` of every benchmark it runs; anything older
    // than this is from an earlier run (file times can lag a little behind the clock).
    let start = SystemTime::now() - Duration::from_secs(2);
    let load_before = load_average();
    for bench in benches() {
        step(&format!("criterion: {bench} bench"));
        let mut cmd = cargo_cmd();
        cmd.args(["bench", "-p", "moe-benches", "--bench", bench, "--"]);
        cmd.args(bench_args(o, bench));
        cmd.env("MOE_BENCH_OUT", &run_dir);
        status(&mut cmd)?;
    }

    let criterion = match std::env::var_os("CRITERION_HOME") {
        Some(home) => root().join(home),
        None => target_dir().join("criterion"),
    };
    let machine = read_machine(&run_dir)?;
    let host = hostname();
    let mut report = Report::new(
        format!("{host} ({}), {}", machine.arch, utc_now()),
        machine,
        &read_criterion(&criterion, Some(start)),
    );
    report.notes.push(format!(
        "Each figure is criterion's fastest sample (other processes only ever slow a run \
         down; medians are in the JSON). 1-minute load average {} before the run, {} after, \
         on {} CPUs.",
        load_before,
        load_average(),
        report.machine.cpus
    ));
    if let Some(python) = &o.llamacpp {
        step("llama.cpp: ggml_mul_mat through ctypes");
        let (llama, info) = llamacpp(python, o.quick, report.machine.stream_bytes)?;
        report.llama = llama;
        report.notes.push(format!(
            "llama.cpp (ggml {info}): ggml_graph_compute of one GGML_OP_MUL_MAT on a persistent \
             ggml thread pool (f32 activations, quantized inside the op); fastest of repeated \
             calls. ÷ llama.cpp above 1: ours is faster."
        ));
    }
    Ok((report, host))
}

fn read_machine(run_dir: &Path) -> Result<Machine> {
    let path = run_dir.join("machine.json");
    let text = fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e} (the roofline bench writes it; did a filter skip its bandwidth probe?)",
            path.display()
        )
    })?;
    Machine::parse(&text)
}

/// Runs the llama.cpp script and returns its timings and its `info` line (ggml version,
/// commit, CPU features) as compact JSON.
fn llamacpp(python: &str, quick: bool, stream_bytes: u64) -> Result<(Vec<Llama>, String)> {
    let mut cmd = Command::new(python);
    cmd.current_dir(root())
        .arg("benches/llamacpp/ggml_matmul.py")
        .args(["--threads", "1,2", "--stream-bytes"])
        .arg(stream_bytes.to_string());
    if quick {
        cmd.arg("--quick");
    }
    eprintln!("$ {}", show(&cmd));
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not start `{}`: {e}", show(&cmd)))?;
    if !out.status.success() {
        return Err(format!("`{}` failed ({})", show(&cmd), out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let info = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("info").map(|i| i.to_string()))
        .unwrap_or_else(|| "?".into());
    Ok((Llama::parse_lines(&stdout), info))
}

/// The cross linker, emulator and Debian packages for a target.
#[derive(Debug, PartialEq)]
struct CrossTools {
    linker: &'static str,
    qemu: &'static str,
    sysroot: &'static str,
    linker_package: &'static str,
    libc_package: &'static str,
}

impl CrossTools {
    fn for_target(target: &str) -> Result<CrossTools> {
        match target {
            "aarch64-unknown-linux-gnu" => Ok(CrossTools {
                linker: "aarch64-linux-gnu-gcc",
                qemu: "qemu-aarch64",
                sysroot: "/usr/aarch64-linux-gnu",
                linker_package: "gcc-aarch64-linux-gnu",
                libc_package: "libc6-dev-arm64-cross",
            }),
            other => Err(format!(
                "cross benches support aarch64-unknown-linux-gnu, not '{other}'"
            )),
        }
    }

    /// Installs the linker (and QEMU's user-mode emulator when asked) if missing.
    fn ensure(&self, target: &str, qemu: bool) -> Result {
        crate::nostd::ensure_targets(&[target])?;
        let mut missing = Vec::new();
        if output(Command::new(self.linker).arg("--version")).is_none() {
            missing.push(self.linker_package);
        }
        // The C library to link against (not pulled in without recommends).
        if !Path::new(self.sysroot).join("lib/crt1.o").exists() {
            missing.push(self.libc_package);
        }
        if qemu && output(Command::new(self.qemu).arg("--version")).is_none() {
            missing.push("qemu-user");
        }
        crate::apt_install(&missing)
    }
}

/// `cargo bench --no-run` for `target`; returns `(bench name, executable)` pairs.
fn build_cross(
    target: &str,
    tools: &CrossTools,
    benches: &[&str],
) -> Result<Vec<(String, PathBuf)>> {
    step(&format!("cross-building benches for {target}"));
    let mut cmd = cargo_cmd();
    cmd.args(["bench", "--no-run", "-p", "moe-benches", "--target", target]);
    for b in benches {
        cmd.args(["--bench", b]);
    }
    cmd.arg("--message-format=json-render-diagnostics");
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace('-', "_")
    );
    cmd.env(linker_var, tools.linker);
    eprintln!("$ {}", show(&cmd));
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("`{}` failed ({})", show(&cmd), out.status));
    }
    let bins = bench_executables(&String::from_utf8_lossy(&out.stdout));
    if bins.len() != benches.len() {
        return Err(format!(
            "expected bench binaries {benches:?}, cargo reported {bins:?}"
        ));
    }
    Ok(bins)
}

/// The bench executables in cargo's `--message-format=json` output.
fn bench_executables(messages: &str) -> Vec<(String, PathBuf)> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .filter(|v| {
            v["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bench"))
        })
        .filter_map(|v| {
            let name = v["target"]["name"].as_str()?.to_string();
            Some((name, PathBuf::from(v["executable"].as_str()?)))
        })
        .collect()
}

fn qemu(o: &Options, target: &str, out: &Path) -> Result<(Report, String)> {
    let tools = CrossTools::for_target(target)?;
    tools.ensure(target, true)?;
    // Only the roofline bench, at smoke sizes: the full kernels bench would take hours
    // under emulation.
    let bins = build_cross(target, &tools, &["roofline"])?;
    let run_dir = out.join(format!("{target}-qemu"));
    let _ = fs::remove_dir_all(&run_dir);
    for (name, exe) in &bins {
        step(&format!("{name} under {} (smoke sizes)", tools.qemu));
        let mut cmd = Command::new(tools.qemu);
        cmd.args([OsString::from("-L"), tools.sysroot.into(), exe.into()])
            .arg("--bench")
            .args(QUICK_ARGS)
            .args(&o.criterion_args)
            .env("MOE_BENCH_SMOKE", "1")
            .env("MOE_BENCH_OUT", &run_dir)
            .env("CRITERION_HOME", run_dir.join("criterion"));
        status(&mut cmd)?;
    }
    let machine = read_machine(&run_dir)?;
    let mut report = Report::new(
        format!("{target} under QEMU, {}", utc_now()),
        machine,
        &read_criterion(&run_dir.join("criterion"), None),
    );
    report.notes.push(
        "QEMU SMOKE TEST: emulated, at small sizes; these timings mean nothing about any \
         real ARM CPU. It only shows that the benches build and run for the target."
            .into(),
    );
    Ok((report, format!("{target}-qemu")))
}

/// The commands of a remote run, in order: prepare the folder, copy each binary, run
/// each, copy the results back into `local_dir`.
fn remote_commands(
    host: &str,
    bins: &[(String, PathBuf)],
    bench_args: &dyn Fn(&str) -> Vec<String>,
    local_dir: &Path,
) -> Vec<Command> {
    let mut cmds = Vec::new();
    let ssh = |line: String| {
        let mut c = Command::new("ssh");
        c.arg(host).arg(line);
        c
    };
    cmds.push(ssh(format!("rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR}")));
    for (name, exe) in bins {
        let mut c = Command::new("scp");
        c.arg("-q")
            .arg(exe)
            .arg(format!("{host}:{REMOTE_DIR}/{name}"));
        cmds.push(c);
    }
    for (name, _) in bins {
        let args: String = bench_args(name)
            .iter()
            .map(|a| format!(" {}", shell_quote(a)))
            .collect();
        cmds.push(ssh(format!(
            "cd {REMOTE_DIR} && MOE_BENCH_OUT={REMOTE_DIR}/out \
             CRITERION_HOME={REMOTE_DIR}/out/criterion ./{name} --bench{args}"
        )));
    }
    let mut back = Command::new("scp");
    back.arg("-rq")
        .arg(format!("{host}:{REMOTE_DIR}/out"))
        .arg(local_dir);
    cmds.push(back);
    cmds
}

/// `text` in single quotes for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn remote(o: &Options, target: &str, host: &str, out: &Path) -> Result<Option<(Report, String)>> {
    let tools = CrossTools::for_target(target)?;
    let name = format!("{}-{target}", host.rsplit('@').next().unwrap_or(host));
    let run_dir = out.join(&name).join("run");
    if o.dry_run {
        let bins: Vec<(String, PathBuf)> = benches()
            .iter()
            .map(|b| (b.to_string(), PathBuf::from(format!("<{b} binary>"))))
            .collect();
        for cmd in remote_commands(host, &bins, &|b| bench_args(o, b), &run_dir) {
            println!("{}", show(&cmd));
        }
        return Ok(None);
    }
    tools.ensure(target, false)?;
    let bins = build_cross(target, &tools, &benches())?;
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(run_dir.parent().unwrap_or(out))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    step(&format!("running on {host}"));
    for mut cmd in remote_commands(host, &bins, &|b| bench_args(o, b), &run_dir) {
        status(&mut cmd)?;
    }
    let machine = read_machine(&run_dir)?;
    let report = Report::new(
        format!("{host} ({}), {}", machine.arch, utc_now()),
        machine,
        &read_criterion(&run_dir.join("criterion"), None),
    );
    Ok(Some((report, name)))
}

/// Prints the table and writes `<name>-<time>.{json,md}` and `<latest>.{json,md}`.
fn save(report: &Report, name: &str, latest: &str, out: &Path) -> Result {
    let md = report.markdown();
    println!("\n{md}");
    let time = utc_now();
    let json = report.json(name, &time);
    let json = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())? + "\n";
    let stamp: String = time.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for base in [format!("{name}-{stamp}"), latest.to_string()] {
        for (ext, text) in [("json", &json), ("md", &md)] {
            let path = out.join(format!("{base}.{ext}"));
            fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    eprintln!(
        "saved {}/{name}-{stamp}.{{json,md}} and {latest}.{{json,md}}",
        out.display()
    );
    Ok(())
}

/// The 1-minute load average (`/proc/loadavg`), `?` where there is none.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (the civil-from-days algorithm of
/// Howard Hinnant, so xtask needs no date crate).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_parse_and_reject_bad_combinations() {
        let o = Options::parse(&args("--quick Q4_0 --llamacpp py")).unwrap();
        assert!(o.quick);
        assert_eq!(o.llamacpp.as_deref(), Some("py"));
        assert_eq!(o.criterion_args, ["Q4_0"]);
        let q = Options::parse(&args("--target aarch64-unknown-linux-gnu --runner qemu")).unwrap();
        assert_eq!(q.runner.as_deref(), Some("qemu"));
        assert!(Options::parse(&args("--target aarch64-unknown-linux-gnu")).is_err());
        assert!(Options::parse(&args("--runner qemu")).is_err());
        assert!(Options::parse(&args("--target x86_64-pc-windows-msvc --runner qemu")).is_err());
        assert!(Options::parse(&args("--target aarch64-unknown-linux-gnu --runner wine")).is_err());
        assert!(Options::parse(&args("--llamacpp")).is_err());
        assert!(
            Options::parse(&args(
                "--target aarch64-unknown-linux-gnu --remote pi@board --llamacpp py"
            ))
            .is_err()
        );
    }

    #[test]
    fn remote_commands_copy_run_and_fetch() {
        let bins = vec![
            ("roofline".to_string(), PathBuf::from("/t/roofline-abc")),
            ("kernels".to_string(), PathBuf::from("/t/kernels-def")),
        ];
        let cmds: Vec<String> = remote_commands(
            "pi@board",
            &bins,
            &|b| vec!["-q".into(), format!("{b}'s")],
            Path::new("/out/run"),
        )
        .iter()
        .map(show)
        .collect();
        assert_eq!(
            cmds,
            [
                "ssh pi@board rm -rf /tmp/moe-bench && mkdir -p /tmp/moe-bench",
                "scp -q /t/roofline-abc pi@board:/tmp/moe-bench/roofline",
                "scp -q /t/kernels-def pi@board:/tmp/moe-bench/kernels",
                "ssh pi@board cd /tmp/moe-bench && MOE_BENCH_OUT=/tmp/moe-bench/out \
                 CRITERION_HOME=/tmp/moe-bench/out/criterion ./roofline --bench '-q' 'roofline'\\''s'",
                "ssh pi@board cd /tmp/moe-bench && MOE_BENCH_OUT=/tmp/moe-bench/out \
                 CRITERION_HOME=/tmp/moe-bench/out/criterion ./kernels --bench '-q' 'kernels'\\''s'",
                "scp -rq pi@board:/tmp/moe-bench/out /out/run",
            ]
        );
    }

    #[test]
    fn cargo_messages_name_the_bench_executables() {
        let messages = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"moe_core"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["bench"],"name":"roofline"},"executable":"/t/aarch64-unknown-linux-gnu/release/deps/roofline-1234"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            bench_executables(messages),
            [(
                "roofline".to_string(),
                PathBuf::from("/t/aarch64-unknown-linux-gnu/release/deps/roofline-1234")
            )]
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}

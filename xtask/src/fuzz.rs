//! `cargo xtask fuzz <target> --seconds N`: runs a cargo-fuzz target on stable Rust.
//!
//! cargo-fuzz's default sanitizer (address) needs nightly (`-Zsanitizer`); with `-s none`
//! the instrumentation is plain `-C` flags and works on stable. Debug assertions are on
//! (`-a`), so an arithmetic overflow the core forgot to check counts as a finding.
//!
//! libFuzzer reads two corpus folders: `fuzz/corpus/<target>` (where it writes the new
//! inputs it finds; ignored by git) and `fuzz/seeds/<target>` (refreshed here from the
//! committed fixtures `moe-core/tests/fixtures/**/*.gguf`, for `safetensors_parse`
//! `moe-std/tests/fixtures/hf/**/*.safetensors`, for `tokenizer_from_json` the tiny
//! checkpoint tokenizer's `*.json`; also ignored by git, so the fixtures stay the one copy
//! in the repository).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Result, cargo_cmd, output, root, show, status, step};

/// The cargo-fuzz release line this project is tested with.
const CARGO_FUZZ_VERSION: &str = "0.13";

/// What libFuzzer reported at the end of a run.
#[derive(Debug)]
pub struct Report {
    /// Inputs executed (`Done N runs in S second(s)`).
    pub runs: u64,
    /// Seconds libFuzzer says it ran.
    pub seconds: u64,
}

pub fn run(target: &str, seconds: u64) -> Result<Report> {
    let fuzz_dir = root().join("fuzz");
    if !fuzz_dir
        .join("fuzz_targets")
        .join(format!("{target}.rs"))
        .is_file()
    {
        return Err(format!(
            "no fuzz target '{target}' (expected fuzz/fuzz_targets/{target}.rs)"
        ));
    }
    ensure_cargo_fuzz()?;

    let corpus = fuzz_dir.join("corpus").join(target);
    let seeds = fuzz_dir.join("seeds").join(target);
    fs::create_dir_all(&corpus).map_err(|e| format!("creating {}: {e}", corpus.display()))?;
    let n_seeds = refresh_seeds(&seeds, target)?;
    eprintln!(
        "fuzz: {n_seeds} seed files from the test fixtures in {}",
        seeds.display()
    );

    let mut cmd = cargo_cmd();
    cmd.args(["fuzz", "run", "-s", "none", "-a", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // Also print libFuzzer's final counters (stat::number_of_executed_units, …).
        .arg("-print_final_stats=1");
    let report = run_libfuzzer(&mut cmd)?;
    eprintln!(
        "fuzz: {target}: {} executions in {} s without a finding",
        report.runs, report.seconds
    );
    Ok(report)
}

/// Installs cargo-fuzz with `cargo install --locked` when `cargo fuzz` is missing.
fn ensure_cargo_fuzz() -> Result {
    let mut probe = cargo_cmd();
    probe.args(["fuzz", "--version"]);
    if let Some(version) = output(&mut probe) {
        eprintln!("fuzz: using {}", version.trim());
        return Ok(());
    }
    step(&format!("installing cargo-fuzz {CARGO_FUZZ_VERSION}"));
    let mut install = cargo_cmd();
    install.args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        &format!("~{CARGO_FUZZ_VERSION}"),
    ]);
    status(&mut install)
}

/// Replaces the contents of `seeds` with the `.gguf` fixtures; returns how many.
fn refresh_seeds(seeds: &Path, target: &str) -> Result<usize> {
    let io = |e: std::io::Error| format!("preparing seeds in {}: {e}", seeds.display());
    if seeds.exists() {
        fs::remove_dir_all(seeds).map_err(io)?;
    }
    fs::create_dir_all(seeds).map_err(io)?;
    // The safetensors reader starts from the Hugging Face fixtures, the rest from GGUF.
    let (fixtures, extension) = match target {
        "safetensors_parse" => (root().join("moe-std/tests/fixtures/hf"), "safetensors"),
        // The tiny checkpoint's tokenizer files (the committed full-size tokenizer.json
        // files would make every execution parse a megabyte).
        "tokenizer_from_json" => (
            root().join("moe-std/tests/fixtures/hf-tokenizer/tiny-mixtral"),
            "json",
        ),
        _ => (root().join("moe-core/tests/fixtures"), "gguf"),
    };
    let mut files = Vec::new();
    collect_files(&fixtures, extension, &mut files);
    for file in &files {
        // Flatten `types/x.gguf` to `types_x.gguf`.
        let rel = file.strip_prefix(&fixtures).unwrap_or(file);
        let name = rel.to_string_lossy().replace(['/', '\\'], "_");
        fs::copy(file, seeds.join(name)).map_err(io)?;
    }
    Ok(files.len())
}

fn collect_files(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, extension, out);
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
}

/// Runs `cmd`, passing its output through, and picks libFuzzer's final `Done` line out of
/// stderr (where libFuzzer prints everything).
fn run_libfuzzer(cmd: &mut Command) -> Result<Report> {
    let shown = show(cmd);
    eprintln!("$ {shown}");
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start `{shown}`: {e}"))?;
    let mut report = None;
    let mut quiet = 0u64;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            // libFuzzer prints a line per new or reduced input (thousands in a minute);
            // count those and pass the rest (pulses, crashes, the final stats) through.
            if is_progress_line(&line) {
                quiet += 1;
            } else {
                eprintln!("{line}");
            }
            if let Some(r) = parse_done_line(&line) {
                report = Some(r);
            }
        }
    }
    eprintln!("fuzz: {quiet} NEW/REDUCE progress lines not shown");
    let status = child
        .wait()
        .map_err(|e| format!("waiting for `{shown}`: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`{shown}` failed ({status}); a crashing input is saved under fuzz/artifacts/"
        ));
    }
    report.ok_or_else(|| format!("`{shown}` printed no 'Done N runs' line"))
}

/// libFuzzer's `#1234\tNEW    cov: …` / `REDUCE` lines.
fn is_progress_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('#') else {
        return false;
    };
    let mut words = rest.split_whitespace();
    words.next().is_some_and(|n| n.parse::<u64>().is_ok())
        && matches!(words.next(), Some("NEW" | "REDUCE"))
}

/// Parses libFuzzer's `Done 123456 runs in 61 second(s)`.
fn parse_done_line(line: &str) -> Option<Report> {
    let rest = line.trim().strip_prefix("Done ")?;
    let mut words = rest.split_whitespace();
    let runs = words.next()?.parse().ok()?;
    (words.next()? == "runs" && words.next()? == "in").then_some(())?;
    let seconds = words.next()?.parse().ok()?;
    Some(Report { runs, seconds })
}

#[cfg(test)]
mod tests {
    use super::parse_done_line;

    #[test]
    fn reads_libfuzzer_done_line() {
        let r = parse_done_line("Done 1234567 runs in 61 second(s)").unwrap();
        assert_eq!((r.runs, r.seconds), (1_234_567, 61));
        assert!(parse_done_line("#1234 DONE cov: 10 ft: 20").is_none());
        assert!(parse_done_line("Done testing").is_none());
    }

    #[test]
    fn hides_only_new_and_reduce_lines() {
        use super::is_progress_line;
        assert!(is_progress_line(
            "#2048\tNEW    cov: 512 ft: 900 corp: 40/1Mb"
        ));
        assert!(is_progress_line(
            "#4096\tREDUCE cov: 512 ft: 901 corp: 40/1Mb"
        ));
        assert!(!is_progress_line("#65536\tpulse  cov: 512 ft: 901"));
        assert!(!is_progress_line("#1234567\tDONE   cov: 512"));
        assert!(!is_progress_line("==1== ERROR: libFuzzer: deadly signal"));
    }
}

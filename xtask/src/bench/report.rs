//! The table `cargo xtask bench` prints: criterion's estimates (and llama.cpp's timings)
//! turned into GB/s, GFLOP/s and ratios to the bandwidth probe of the same run.
//!
//! The same code reads a local run, a run under QEMU and one copied back from an ARM board:
//! each leaves a criterion folder (`**/new/benchmark.json` + `estimates.json`) and the
//! bench's `machine.json`. Benchmarks are recognised by their ids (see
//! `benches/benches/roofline.rs` and `kernels.rs`); others are ignored.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::SystemTime;

use serde_json::{Value, json};

/// What the bench recorded about the machine it ran on (`machine.json`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Machine {
    pub arch: String,
    pub cpus: u64,
    pub llc_level: u64,
    pub llc_bytes: u64,
    pub dram_buffer: u64,
    pub cache_buffer: u64,
    pub stream_bytes: u64,
    pub smoke: bool,
}

impl Machine {
    pub fn parse(text: &str) -> Result<Machine, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("machine.json: {e}"))?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(Machine {
            arch: v["arch"].as_str().unwrap_or("?").to_string(),
            cpus: n("cpus"),
            llc_level: n("llc_level"),
            llc_bytes: n("llc_bytes"),
            dram_buffer: n("dram_buffer"),
            cache_buffer: n("cache_buffer"),
            stream_bytes: n("stream_bytes"),
            smoke: v["smoke"].as_bool().unwrap_or(false),
        })
    }
}

/// One criterion benchmark: its id, bytes per iteration and time per iteration.
///
/// `seconds` is the fastest sample's (`sample.json`), else the median: on a shared machine
/// other processes only ever add time, so the fastest sample is the most repeatable
/// figure, and the probe and the kernels, measured minutes apart, are compared fairly.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub id: String,
    pub bytes: Option<u64>,
    pub seconds: f64,
    /// criterion's median estimate.
    pub median_seconds: f64,
}

/// Reads every `new/` result under `criterion_dir` whose estimates were written at or after
/// `since` (so results of earlier runs with other filters stay out of the table).
pub fn read_criterion(criterion_dir: &Path, since: Option<SystemTime>) -> Vec<Measurement> {
    let mut found = Vec::new();
    walk(criterion_dir, &mut |dir| {
        if dir.file_name().is_none_or(|n| n != "new") {
            return;
        }
        let estimates = dir.join("estimates.json");
        if let Some(since) = since {
            let fresh = fs::metadata(&estimates)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            if !fresh {
                return;
            }
        }
        let (Ok(b), Ok(e)) = (
            fs::read_to_string(dir.join("benchmark.json")),
            fs::read_to_string(&estimates),
        ) else {
            return;
        };
        if let Some(mut m) = parse_measurement(&b, &e) {
            let sample = fs::read_to_string(dir.join("sample.json")).unwrap_or_default();
            if let Some(best) = fastest_sample(&sample) {
                m.seconds = best;
            }
            found.push(m);
        }
    });
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            visit(&path);
            walk(&path, visit);
        }
    }
}

/// A measurement from criterion's `benchmark.json` (id, throughput) and `estimates.json`
/// (the median, in nanoseconds), timed by the median until a sample says better.
pub fn parse_measurement(benchmark: &str, estimates: &str) -> Option<Measurement> {
    let b: Value = serde_json::from_str(benchmark).ok()?;
    let e: Value = serde_json::from_str(estimates).ok()?;
    let ns = e["median"]["point_estimate"].as_f64()?;
    Some(Measurement {
        id: b["full_id"].as_str()?.to_string(),
        bytes: b["throughput"]["Bytes"].as_u64(),
        seconds: ns * 1e-9,
        median_seconds: ns * 1e-9,
    })
}

/// The fastest per-iteration time in criterion's `sample.json` (`times[i]` nanoseconds
/// for `iters[i]` iterations), in seconds.
pub fn fastest_sample(sample: &str) -> Option<f64> {
    let v: Value = serde_json::from_str(sample).ok()?;
    let iters = v["iters"].as_array()?;
    let times = v["times"].as_array()?;
    iters
        .iter()
        .zip(times)
        .filter_map(|(n, t)| Some(t.as_f64()? / n.as_f64().filter(|n| *n > 0.0)?))
        .min_by(f64::total_cmp)
        .map(|ns| ns * 1e-9)
}

/// Where a matrix × vector's weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// Rotating copies larger than 2 × the LLC (`stream_matvec`): DRAM.
    Dram,
    /// The same matrix every iteration (`kernels`, `pool`): in cache when it fits.
    SameMatrix,
}

/// A bandwidth probe figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    /// `dram` or `cache`.
    pub place: String,
    /// `read`, `copy` or `triad`.
    pub pattern: String,
    pub threads: u64,
    pub gbps: f64,
}

/// A matrix × vector figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Matvec {
    pub ty: String,
    pub rows: u64,
    pub cols: u64,
    pub level: String,
    pub threads: u64,
    pub source: Source,
    pub bytes: u64,
    pub seconds: f64,
    pub median_seconds: f64,
}

impl Matvec {
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / self.seconds * 1e-9
    }

    /// Two flops (multiply, add) per weight.
    pub fn gflops(&self) -> f64 {
        2.0 * self.rows as f64 * self.cols as f64 / self.seconds * 1e-9
    }

    fn shape(&self) -> String {
        format!("{}x{}", self.rows, self.cols)
    }
}

/// A batch figure: `batch` activation rows through one matrix, either by the batch kernel
/// (`matmul`) or by as many separate matrix × vectors (`matvec`).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub ty: String,
    pub rows: u64,
    pub cols: u64,
    pub level: String,
    pub batch: u64,
    /// `matmul` or `matvec`.
    pub kind: String,
    pub seconds: f64,
}

/// One llama.cpp timing (a JSON line of `benches/llamacpp/ggml_matmul.py`).
#[derive(Clone, Debug, PartialEq)]
pub struct Llama {
    pub ty: String,
    pub rows: u64,
    pub cols: u64,
    pub threads: u64,
    /// `dram` (rotated copies) or `cache` (the same tensor).
    pub mode: String,
    pub bytes: u64,
    pub seconds: f64,
}

impl Llama {
    pub fn parse_lines(text: &str) -> Vec<Llama> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .filter_map(|v| {
                Some(Llama {
                    ty: v["type"].as_str()?.to_string(),
                    rows: v["rows"].as_u64()?,
                    cols: v["cols"].as_u64()?,
                    threads: v["threads"].as_u64()?,
                    mode: v["mode"].as_str()?.to_string(),
                    bytes: v["bytes"].as_u64()?,
                    seconds: v["seconds"].as_f64()?,
                })
            })
            .collect()
    }

    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / self.seconds * 1e-9
    }
}

/// Bytes in MiB, or KiB below one MiB.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Parses `"2t"` (roofline ids) or `"2"` (pool ids).
fn threads(text: &str) -> Option<u64> {
    text.strip_suffix('t').unwrap_or(text).parse().ok()
}

fn shape(text: &str) -> Option<(u64, u64)> {
    let (r, c) = text.split_once('x')?;
    Some((r.parse().ok()?, c.parse().ok()?))
}

/// Everything one run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub title: String,
    pub machine: Machine,
    pub probes: Vec<Probe>,
    pub matvecs: Vec<Matvec>,
    pub llama: Vec<Llama>,
    pub batches: Vec<Batch>,
    /// Lines printed above the tables (the QEMU warning, noise notes).
    pub notes: Vec<String>,
}

impl Report {
    /// Sorts criterion measurements into probes and matrix × vectors by their ids.
    pub fn new(title: String, machine: Machine, measurements: &[Measurement]) -> Report {
        let mut report = Report {
            title,
            machine,
            ..Report::default()
        };
        for m in measurements {
            let Some(bytes) = m.bytes.filter(|_| m.seconds > 0.0) else {
                continue;
            };
            let parts: Vec<&str> = m.id.split('/').collect();
            let matvec = |ty: &str, dims: &str, level: &str, threads: u64, source| {
                let (rows, cols) = shape(dims)?;
                Some(Matvec {
                    ty: ty.to_string(),
                    rows,
                    cols,
                    level: level.to_string(),
                    threads,
                    source,
                    bytes,
                    seconds: m.seconds,
                    median_seconds: m.median_seconds,
                })
            };
            match parts.as_slice() {
                ["bandwidth", place, pattern, t] => {
                    if let Some(threads) = threads(t) {
                        report.probes.push(Probe {
                            place: place.to_string(),
                            pattern: pattern.to_string(),
                            threads,
                            gbps: bytes as f64 / m.seconds * 1e-9,
                        });
                    }
                }
                ["stream_matvec", ty, dims, level, t] => {
                    let mv = threads(t).and_then(|t| matvec(ty, dims, level, t, Source::Dram));
                    report.matvecs.extend(mv);
                }
                ["matvec", ty, dims, level] => {
                    report
                        .matvecs
                        .extend(matvec(ty, dims, level, 1, Source::SameMatrix));
                }
                ["pool_matvec", ty, dims, level, "threads", t] => {
                    let mv =
                        threads(t).and_then(|t| matvec(ty, dims, level, t, Source::SameMatrix));
                    report.matvecs.extend(mv);
                }
                ["batch", ty, dims, level, kind] => {
                    // `matmul32` / `matvec_x32` (benches/benches/batch.rs).
                    let n = kind.trim_start_matches(|c: char| c.is_ascii_alphabetic() || c == '_');
                    let kind = kind[..kind.len() - n.len()].trim_end_matches("_x");
                    if let (Some((rows, cols)), Ok(batch)) = (shape(dims), n.parse()) {
                        report.batches.push(Batch {
                            ty: ty.to_string(),
                            rows,
                            cols,
                            level: level.to_string(),
                            batch,
                            kind: kind.to_string(),
                            seconds: m.seconds,
                        });
                    }
                }
                _ => {}
            }
        }
        report.matvecs.sort_by(|a, b| {
            (&a.ty, a.source, a.rows, &a.level, a.threads)
                .cmp(&(&b.ty, b.source, b.rows, &b.level, b.threads))
        });
        report
    }

    /// The probe a matrix × vector is held against: the read probe with as many threads,
    /// over DRAM for streamed weights or a matrix larger than the LLC, in cache otherwise.
    pub fn roof(&self, mv: &Matvec) -> Option<&Probe> {
        let place = match mv.source {
            Source::Dram => "dram",
            Source::SameMatrix if mv.bytes > self.machine.llc_bytes => "dram",
            Source::SameMatrix => "cache",
        };
        self.probes
            .iter()
            .find(|p| p.place == place && p.pattern == "read" && p.threads == mv.threads)
    }

    /// llama.cpp's figure for the same type, shape, threads and weight source.
    pub fn llama_for(&self, mv: &Matvec) -> Option<&Llama> {
        let mode = match mv.source {
            Source::Dram => "dram",
            Source::SameMatrix => "cache",
        };
        self.llama.iter().find(|l| {
            l.ty == mv.ty
                && l.rows == mv.rows
                && l.cols == mv.cols
                && l.threads == mv.threads
                && l.mode == mode
        })
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "## {}\n", self.title);
        for note in &self.notes {
            let _ = writeln!(s, "> {note}\n");
        }
        let cache = match (m.smoke, m.llc_level) {
            (true, _) => "smoke-test sizes as if the last-level cache were".to_string(),
            (false, 0) => "last-level cache unknown, assumed".to_string(),
            (false, level) => format!("last-level cache (L{level})"),
        };
        let _ = writeln!(
            s,
            "{}, {} CPUs, {cache} {}; probe buffers {} (DRAM) and {} (cache); streamed \
             matrices rotate through {} of copies.\n",
            m.arch,
            m.cpus,
            size(m.llc_bytes),
            size(m.dram_buffer),
            size(m.cache_buffer),
            size(m.stream_bytes),
        );
        if !self.probes.is_empty() {
            let mut threads: Vec<u64> = self.probes.iter().map(|p| p.threads).collect();
            threads.sort_unstable();
            threads.dedup();
            let _ = write!(s, "| bandwidth probe (GB/s) |");
            for t in &threads {
                let _ = write!(s, " {t} thread{} |", if *t == 1 { "" } else { "s" });
            }
            let _ = write!(s, "\n|---|");
            for _ in &threads {
                let _ = write!(s, "---:|");
            }
            s.push('\n');
            let mut rows: BTreeMap<(bool, usize), Vec<&Probe>> = BTreeMap::new();
            for p in &self.probes {
                let order = ["read", "copy", "triad"]
                    .iter()
                    .position(|n| *n == p.pattern);
                rows.entry((p.place != "dram", order.unwrap_or(9)))
                    .or_default()
                    .push(p);
            }
            for probes in rows.values() {
                let name = format!("{} {}", probes[0].place, probes[0].pattern);
                let _ = write!(s, "| {} |", name.replace("dram", "DRAM"));
                for t in &threads {
                    match probes.iter().find(|p| p.threads == *t) {
                        Some(p) => {
                            let _ = write!(s, " {:.2} |", p.gbps);
                        }
                        None => s.push_str(" – |"),
                    }
                }
                s.push('\n');
            }
            s.push('\n');
        }
        if !self.matvecs.is_empty() {
            let llama = !self.llama.is_empty();
            s.push_str(
                "| kernel | shape | level | threads | weights | GB/s | GFLOP/s | roof (read probe) | ÷ roof |",
            );
            if llama {
                s.push_str(" llama.cpp GB/s | ÷ llama.cpp |");
            }
            s.push_str("\n|---|---|---|---:|---|---:|---:|---|---:|");
            if llama {
                s.push_str("---:|---:|");
            }
            s.push('\n');
            for mv in &self.matvecs {
                let source = match mv.source {
                    Source::Dram => "DRAM (rotated)",
                    Source::SameMatrix => "same matrix",
                };
                let (roof, ratio) = match self.roof(mv) {
                    Some(p) => (
                        format!("{} {:.2}", p.place.replace("dram", "DRAM"), p.gbps),
                        format!("{:.0} %", 100.0 * mv.gbps() / p.gbps),
                    ),
                    None => ("–".into(), "–".into()),
                };
                let _ = write!(
                    s,
                    "| {} | {} | {} | {} | {} | {:.2} | {:.1} | {} | {} |",
                    mv.ty,
                    mv.shape(),
                    mv.level,
                    mv.threads,
                    source,
                    mv.gbps(),
                    mv.gflops(),
                    roof,
                    ratio
                );
                if llama {
                    match self.llama_for(mv) {
                        Some(l) => {
                            let _ = write!(s, " {:.2} | {:.2} |", l.gbps(), mv.gbps() / l.gbps());
                        }
                        None => s.push_str(" – | – |"),
                    }
                }
                s.push('\n');
            }
        }
        let pairs = self.batch_pairs();
        if !pairs.is_empty() {
            s.push_str(
                "\n| batch | shape | level | rows | separate matvecs (ms) | one matmul (ms) | matmul ÷ matvecs throughput |\n\
                 |---|---|---|---:|---:|---:|---:|\n",
            );
            for (mm, mv) in pairs {
                let _ = writeln!(
                    s,
                    "| {} | {}x{} | {} | {} | {:.2} | {:.2} | {:.2}× |",
                    mm.ty,
                    mm.rows,
                    mm.cols,
                    mm.level,
                    mm.batch,
                    mv.seconds * 1e3,
                    mm.seconds * 1e3,
                    mv.seconds / mm.seconds
                );
            }
        }
        s
    }

    /// Each batch-kernel figure with its separate-matvec twin (same type, shape, level
    /// and batch).
    pub fn batch_pairs(&self) -> Vec<(&Batch, &Batch)> {
        self.batches
            .iter()
            .filter(|b| b.kind == "matmul")
            .filter_map(|mm| {
                let twin = self.batches.iter().find(|b| {
                    b.kind == "matvec"
                        && (&b.ty, b.rows, b.cols, &b.level, b.batch)
                            == (&mm.ty, mm.rows, mm.cols, &mm.level, mm.batch)
                })?;
                Some((mm, twin))
            })
            .collect()
    }

    pub fn json(&self, host: &str, time: &str) -> Value {
        let m = &self.machine;
        json!({
            "title": self.title,
            "host": host,
            "time": time,
            "notes": self.notes,
            "machine": {
                "arch": m.arch, "cpus": m.cpus, "llc_level": m.llc_level,
                "llc_bytes": m.llc_bytes, "dram_buffer": m.dram_buffer,
                "cache_buffer": m.cache_buffer, "stream_bytes": m.stream_bytes,
                "smoke": m.smoke,
            },
            "probes": self.probes.iter().map(|p| json!({
                "place": p.place, "pattern": p.pattern, "threads": p.threads, "gbps": p.gbps,
            })).collect::<Vec<_>>(),
            "matvec": self.matvecs.iter().map(|mv| {
                let roof = self.roof(mv);
                let llama = self.llama_for(mv);
                json!({
                    "type": mv.ty, "rows": mv.rows, "cols": mv.cols, "level": mv.level,
                    "threads": mv.threads,
                    "source": match mv.source { Source::Dram => "dram", Source::SameMatrix => "same" },
                    "bytes": mv.bytes, "seconds": mv.seconds,
                    "median_seconds": mv.median_seconds,
                    "gbps": mv.gbps(), "gflops": mv.gflops(),
                    "roof": roof.map(|p| format!("{} read {}t", p.place, p.threads)),
                    "roof_gbps": roof.map(|p| p.gbps),
                    "ratio_to_roof": roof.map(|p| mv.gbps() / p.gbps),
                    "llamacpp_gbps": llama.map(Llama::gbps),
                    "ratio_to_llamacpp": llama.map(|l| mv.gbps() / l.gbps()),
                })
            }).collect::<Vec<_>>(),
            "batch": self.batch_pairs().iter().map(|(mm, mv)| json!({
                "type": mm.ty, "rows": mm.rows, "cols": mm.cols, "level": mm.level,
                "batch": mm.batch, "matvecs_seconds": mv.seconds, "matmul_seconds": mm.seconds,
                "speedup": mv.seconds / mm.seconds,
            })).collect::<Vec<_>>(),
            "llamacpp": self.llama.iter().map(|l| json!({
                "type": l.ty, "rows": l.rows, "cols": l.cols, "threads": l.threads,
                "mode": l.mode, "bytes": l.bytes, "seconds": l.seconds, "gbps": l.gbps(),
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(id: &str, bytes: u64, ms: f64) -> Measurement {
        Measurement {
            id: id.into(),
            bytes: Some(bytes),
            seconds: ms * 1e-3,
            median_seconds: ms * 1e-3,
        }
    }

    #[test]
    fn fastest_sample_is_per_iteration() {
        let s = r#"{"sampling_mode":"Linear","iters":[1.0,2.0,3.0],"times":[30.0,40.0,90.0]}"#;
        assert_eq!(fastest_sample(s), Some(20.0e-9));
        assert_eq!(fastest_sample(r#"{"iters":[0.0],"times":[1.0]}"#), None);
        assert_eq!(fastest_sample(""), None);
    }

    #[test]
    fn criterion_files_parse() {
        let b = r#"{"group_id":"stream_matvec/Q4_0/14336x4096","function_id":"avx2","value_str":"2t","throughput":{"Bytes":33030144},"full_id":"stream_matvec/Q4_0/14336x4096/avx2/2t","directory_name":"x","title":"x"}"#;
        let e = r#"{"mean":{"point_estimate":5.0e6},"median":{"point_estimate":4.0e6}}"#;
        let m = parse_measurement(b, e).unwrap();
        assert_eq!(m.id, "stream_matvec/Q4_0/14336x4096/avx2/2t");
        assert_eq!(m.bytes, Some(33030144));
        assert!((m.seconds - 4e-3).abs() < 1e-12);
        assert_eq!(parse_measurement("{}", e), None);
    }

    #[test]
    fn criterion_folders_are_read_and_old_results_skipped() {
        let dir = std::env::temp_dir().join(format!("moe-xtask-crit-{}", std::process::id()));
        let new = dir.join("bandwidth_dram/read/1t/new");
        fs::create_dir_all(&new).unwrap();
        fs::write(
            new.join("benchmark.json"),
            r#"{"full_id":"bandwidth/dram/read/1t","throughput":{"Bytes":1000}}"#,
        )
        .unwrap();
        fs::write(
            new.join("estimates.json"),
            r#"{"median":{"point_estimate":100.0}}"#,
        )
        .unwrap();
        fs::write(
            new.join("sample.json"),
            r#"{"iters":[2.0],"times":[160.0]}"#,
        )
        .unwrap();
        let found = read_criterion(&dir, None);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, "bandwidth/dram/read/1t");
        assert!((found[0].seconds - 80e-9).abs() < 1e-15);
        assert!((found[0].median_seconds - 100e-9).abs() < 1e-15);
        let later = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert!(read_criterion(&dir, Some(later)).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ids_become_rows_with_their_roof() {
        let machine = Machine {
            llc_bytes: 100 << 20,
            ..Machine::default()
        };
        let report = Report::new(
            "t".into(),
            machine,
            &[
                measurement("bandwidth/dram/read/1t", 1_000_000_000, 100.0), // 10 GB/s
                measurement("bandwidth/cache/read/1t", 100_000_000, 5.0),    // 20 GB/s
                measurement("stream_matvec/Q8_0/4096x14336/avx2/1t", 62_390_272, 8.0),
                measurement("matvec/Q8_0/4096x14336/avx2", 62_390_272, 4.0),
                measurement("matvec/Q8_0/4096x14336x/avx2", 1, 1.0), // bad shape: skipped
                measurement(
                    "pool_matvec/Q8_0/4096x14336/avx2/threads/2",
                    62_390_272,
                    4.0,
                ),
                measurement("routing/select/softmax", 8, 1.0), // not ours: skipped
            ],
        );
        assert_eq!(report.probes.len(), 2);
        assert_eq!(report.matvecs.len(), 3);
        let dram = &report.matvecs[0];
        assert_eq!((dram.source, dram.threads), (Source::Dram, 1));
        assert!((dram.gbps() - 7.798784).abs() < 1e-6);
        assert!((dram.gflops() - 2.0 * 4096.0 * 14336.0 / 8e-3 * 1e-9).abs() < 1e-9);
        assert_eq!(report.roof(dram).unwrap().place, "dram");
        // A 62 MB matrix fits a 100 MiB cache: held against the in-cache probe.
        let same = &report.matvecs[1];
        assert_eq!(report.roof(same).unwrap().place, "cache");
        // No 2-thread probe: no roof, shown as a dash.
        assert!(report.roof(&report.matvecs[2]).is_none());
        let md = report.markdown();
        assert!(
            md.contains("| Q8_0 | 4096x14336 | avx2 | 1 | DRAM (rotated) | 7.80 |"),
            "{md}"
        );
        assert!(md.contains("| DRAM 10.00 | 78 % |"), "{md}");
        let json = report.json("host", "now");
        assert_eq!(json["matvec"][0]["roof"], "dram read 1t");
    }

    #[test]
    fn llama_lines_match_rows() {
        let lines = "noise\n{\"type\":\"Q8_0\",\"rows\":4096,\"cols\":14336,\"threads\":1,\"mode\":\"dram\",\"bytes\":62390272,\"seconds\":0.01}\n";
        let mut report = Report::new(
            "t".into(),
            Machine::default(),
            &[measurement(
                "stream_matvec/Q8_0/4096x14336/avx2/1t",
                62_390_272,
                8.0,
            )],
        );
        report.llama = Llama::parse_lines(lines);
        assert_eq!(report.llama.len(), 1);
        assert!(report.llama_for(&report.matvecs[0]).is_some());
        assert!(report.markdown().contains("| 6.24 | 1.25 |"));
    }

    #[test]
    fn batch_rows_pair_up() {
        let report = Report::new(
            "t".into(),
            Machine::default(),
            &[
                measurement("batch/Q4_0/14336x4096/avx2/matmul32", 32, 40.0),
                measurement("batch/Q4_0/14336x4096/avx2/matvec_x32", 32, 160.0),
                measurement("batch/Q8_0/14336x4096/avx2/matmul32", 32, 40.0), // no twin
            ],
        );
        assert_eq!(report.batches.len(), 3);
        let pairs = report.batch_pairs();
        assert_eq!(pairs.len(), 1);
        assert_eq!((pairs[0].0.batch, pairs[0].1.kind.as_str()), (32, "matvec"));
        let md = report.markdown();
        assert!(
            md.contains("| Q4_0 | 14336x4096 | avx2 | 32 | 160.00 | 40.00 | 4.00× |"),
            "{md}"
        );
    }

    #[test]
    fn machine_json_parses() {
        let m = Machine::parse(
            r#"{"arch":"aarch64","cpus":4,"llc_level":2,"llc_bytes":1048576,"smoke":true}"#,
        )
        .unwrap();
        assert_eq!(
            (m.arch.as_str(), m.cpus, m.llc_bytes, m.smoke),
            ("aarch64", 4, 1 << 20, true)
        );
        assert!(Machine::parse("not json").is_err());
    }
}

//! Building a C++ test harness of this crate's kernel sources with g++, once per test
//! binary, or learning that this machine cannot (shared by `host_check` and
//! `model_check`).

use std::path::PathBuf;
use std::process::Command;

/// Builds `tests/<source>` into the test binary's temporary folder as `name` with
/// `-std=c++20 -O2 -ffp-contract=off -Wall` and `flags`, after checking that g++
/// compiles `probe` with the same flags; `None` when it does not (no g++, or one without
/// C++20 or `_Float16`). A harness that then fails to build, or warns, fails the test.
pub fn build(source: &str, name: &str, probe: &str, flags: &[&str]) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let probe_src = dir.join(format!("{name}_probe.cpp"));
    std::fs::write(&probe_src, probe).ok()?;
    let probe_ok = Command::new("g++")
        .arg("-std=c++20")
        .args(flags)
        .arg("-o")
        .arg(dir.join(format!("{name}_probe")))
        .arg(&probe_src)
        .output()
        .is_ok_and(|o| o.status.success());
    if !probe_ok {
        return None;
    }
    let bin = dir.join(name);
    let out = Command::new("g++")
        .args([
            "-std=c++20",
            "-O2",
            "-ffp-contract=off",
            "-Wall",
            "-Wno-unknown-pragmas",
            "-Wno-unused-function",
        ])
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(source),
        )
        .output()
        .expect("g++ ran for the probe");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "g++ could not build {source}:\n{warnings}"
    );
    assert!(
        warnings.trim().is_empty(),
        "g++ warned on {source}:\n{warnings}"
    );
    Some(bin)
}

//! Running the `moe` binary from a test: shared by the CLI test files.

use std::process::{Command, Output};

/// The binary cargo built for this test run.
pub const MOE: &str = env!("CARGO_BIN_EXE_moe");

/// `moe args…`, its status and output captured. `MOE_BIN` names another binary (a
/// test binary carried to a machine without this build tree: `cargo xtask cuda-check`).
pub fn moe(args: &[&str]) -> Output {
    let bin = std::env::var_os("MOE_BIN").unwrap_or_else(|| MOE.into());
    Command::new(bin).args(args).output().expect("run moe")
}

/// `moe args…`, which must succeed (the failure message shows its stderr).
pub fn ok(args: &[&str]) -> Output {
    let out = moe(args);
    assert!(
        out.status.success(),
        "moe {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

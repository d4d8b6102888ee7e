//! Run-time choice of the kernel table: CPU-feature detection and the `MOE_KERNELS`
//! override.
//!
//! [`detect`] is what a program on an operating system calls once at start-up; the table
//! it returns goes to every layer (`MoeLayer::with_kernels`), which then never checks CPU
//! features again.

use moe_core::kernels::{Kernels, Level};

/// The environment variable that names the level to use: `scalar`, `avx2` or `avx512`
/// on x86-64, `scalar`, `neon` or `dotprod` on AArch64 (the best level this CPU supports
/// at or below it, within its architecture, is used; another architecture's level means
/// scalar).
pub const ENV_VAR: &str = "MOE_KERNELS";

/// Whether this CPU has every feature of `level` (checked at run time).
pub fn cpu_has(level: Level) -> bool {
    match level {
        Level::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => {
            cpu_has(Level::Avx2)
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(target_arch = "aarch64")]
        Level::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        #[cfg(target_arch = "aarch64")]
        Level::Dotprod => {
            cpu_has(Level::Neon) && std::arch::is_aarch64_feature_detected!("dotprod")
        }
        _ => false,
    }
}

/// The levels [`detect`] picks by default, best first: AVX-512 VNNI where the CPU has it
/// (its `vpdpbusd` eight-row kernels measured 1.8–2.9× AVX2's on Q4_0/Q8_0 matrix ×
/// vector, `cargo bench -p moe-benches --bench batch`; other types run AVX2 code at that
/// level), then AVX2, then the specification.
#[cfg(not(target_arch = "aarch64"))]
pub const PREFERRED: [Level; 3] = [Level::Avx512, Level::Avx2, Level::Scalar];

/// The levels [`detect`] picks by default, best first: `sdot` where the CPU has it
/// (Armv8.2+), else NEON (every AArch64 CPU), else the specification (a build without
/// NEON).
#[cfg(target_arch = "aarch64")]
pub const PREFERRED: [Level; 3] = [Level::Dotprod, Level::Neon, Level::Scalar];

/// The best preferred level this build has kernels for and this CPU supports.
pub fn best_level() -> Level {
    PREFERRED
        .into_iter()
        .find(|&l| l.is_built() && cpu_has(l))
        .unwrap_or(Level::Scalar)
}

/// The highest level `cap` [includes](Level::includes) (`cap` or a lower level of its
/// architecture) that this build has and this CPU supports, else scalar.
pub fn best_at_most(cap: Level) -> Level {
    Level::ALL
        .into_iter()
        .rev()
        .find(|&l| cap.includes(l) && l.is_built() && cpu_has(l))
        .unwrap_or(Level::Scalar)
}

/// The table for `level` if this CPU supports it (and this build has it), else `None`.
pub fn with_level(level: Level) -> Option<Kernels> {
    if level.is_built() && cpu_has(level) {
        // SAFETY: `cpu_has` just checked every feature of `level` on this CPU.
        #[allow(unsafe_code)]
        Some(unsafe { Kernels::with_level_unchecked(level) })
    } else {
        None
    }
}

/// The table for this CPU: the level `MOE_KERNELS` names (or the best supported one
/// below it), else the best [`PREFERRED`] level. An unknown name is ignored.
pub fn detect() -> Kernels {
    let asked = std::env::var(ENV_VAR)
        .ok()
        .and_then(|v| Level::from_name(v.trim()));
    detect_at_most(asked)
}

/// What [`detect`] does with the environment variable's value: the best supported level
/// at or below `asked` if given, else the best preferred level.
pub fn detect_at_most(asked: Option<Level>) -> Kernels {
    let level = asked.map_or_else(best_level, best_at_most);
    with_level(level).unwrap_or_else(Kernels::scalar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detected_levels_and_caps() {
        let best = best_level();
        assert!(cpu_has(best) && best.is_built() && PREFERRED.contains(&best));
        assert_eq!(detect_at_most(None).level(), best);
        for cap in Level::ALL {
            let got = detect_at_most(Some(cap)).level();
            assert!(cap.includes(got) && cpu_has(got), "{cap}: {got}");
            assert_eq!(got, best_at_most(cap));
            assert_eq!(with_level(cap).is_some(), cap.is_built() && cpu_has(cap));
            if with_level(cap).is_some() {
                assert_eq!(got, cap);
            }
        }
        // With or without MOE_KERNELS set, detection gives a level this CPU supports.
        assert!(cpu_has(detect().level()));
    }

    /// Run as a child by `moe_kernels_env_var_is_read`: checks `detect()` against
    /// `MOE_KERNELS_EXPECT` (a level name); does nothing when that is unset.
    #[test]
    fn child_detect_reads_env() {
        if let Ok(expect) = std::env::var("MOE_KERNELS_EXPECT") {
            assert_eq!(detect().level().name(), expect);
        }
    }

    #[test]
    fn moe_kernels_env_var_is_read() {
        let exe = std::env::current_exe().unwrap();
        let mut cases = vec![("scalar", Level::Scalar), ("nonsense", best_level())];
        for level in Level::ALL.into_iter().filter(|&l| l != Level::Scalar) {
            cases.push((level.name(), best_at_most(level)));
        }
        for (value, expect) in cases {
            let status = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "kernels::tests::child_detect_reads_env",
                    "--quiet",
                ])
                .env(ENV_VAR, value)
                .env("MOE_KERNELS_EXPECT", expect.name())
                .status()
                .unwrap();
            assert!(status.success(), "{ENV_VAR}={value} should give {expect}");
        }
    }
}

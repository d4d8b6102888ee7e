//! The kernel levels this CPU runs, shared by the kernel test suites: run-time feature
//! detection, and two environment variables that turn a silently skipped (or silently
//! present) level into a failure, so that a run on an emulated CPU proves which levels
//! it tested:
//!
//! - `MOE_REQUIRE_LEVELS=neon,dotprod`: every named level must be built and supported.
//! - `MOE_ABSENT_LEVELS=dotprod`: no named level may be supported (the emulated CPU
//!   really lacks it, so the levels below it are what ran).
//!
//! Both take comma-separated [`Level::name`]s; an unknown name is a failure too.

use moe_core::kernels::Level;

/// Names the levels that must be built and supported by this CPU.
pub const REQUIRE_VAR: &str = "MOE_REQUIRE_LEVELS";
/// Names the levels this CPU must not support.
pub const ABSENT_VAR: &str = "MOE_ABSENT_LEVELS";

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

/// Every level this build has and this CPU supports, lowest first. The others are
/// reported on stderr as skipped; `MOE_REQUIRE_LEVELS` and `MOE_ABSENT_LEVELS` are
/// checked here, so every suite that asks for the levels enforces them.
pub fn supported_levels() -> Vec<Level> {
    let (required, absent) = (named_levels(REQUIRE_VAR), named_levels(ABSENT_VAR));
    let mut out = Vec::new();
    for level in Level::ALL {
        let supported = level.is_built() && cpu_has(level);
        assert!(
            supported || !required.contains(&level),
            "{REQUIRE_VAR} names {level}, which is not built for or not supported by this CPU"
        );
        assert!(
            !supported || !absent.contains(&level),
            "{ABSENT_VAR} names {level}, which this CPU supports"
        );
        if supported {
            out.push(level);
        } else {
            eprintln!("skipping kernel level {level}: not built for or not supported by this CPU");
        }
    }
    out
}

/// The levels the environment variable `var` names (none when it is unset or empty).
fn named_levels(var: &str) -> Vec<Level> {
    let value = std::env::var(var).unwrap_or_default();
    value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            Level::from_name(name).unwrap_or_else(|| panic!("{var}: unknown level '{name}'"))
        })
        .collect()
}

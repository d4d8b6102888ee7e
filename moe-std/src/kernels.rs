//! Run-time choice of the kernel table: CPU-feature detection and the `MOE_KERNELS`
//! override.
//!
//! [`detect`] is what a program on an operating system calls once at start-up; the table
//! it returns goes to every layer (`MoeLayer::with_kernels`), which then never checks CPU
//! features again.

use moe_core::kernels::{Kernels, Level};

/// The environment variable that caps the detected level: `scalar`, `avx2` or `avx512`.
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
        _ => false,
    }
}

/// The best level this build has kernels for and this CPU supports.
pub fn best_level() -> Level {
    Level::ALL
        .into_iter()
        .rev()
        .find(|&l| l.is_built() && cpu_has(l))
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

/// The best table for this CPU, capped by `MOE_KERNELS` when it names a level
/// (`scalar`, `avx2`, `avx512`; a level above the CPU's changes nothing, an unknown
/// name is ignored).
pub fn detect() -> Kernels {
    let cap = std::env::var(ENV_VAR)
        .ok()
        .and_then(|v| Level::from_name(v.trim()));
    detect_at_most(cap)
}

/// The best table for this CPU, capped at `cap` if given (what [`detect`] does with the
/// environment variable's value).
pub fn detect_at_most(cap: Option<Level>) -> Kernels {
    let best = with_level(best_level()).unwrap_or_else(Kernels::scalar);
    match cap {
        Some(cap) => best.at_most(cap),
        None => best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detected_levels_and_caps() {
        let best = best_level();
        assert!(cpu_has(best) && best.is_built());
        assert_eq!(detect_at_most(None).level(), best);
        for cap in Level::ALL {
            assert_eq!(detect_at_most(Some(cap)).level(), best.min(cap));
            assert_eq!(with_level(cap).is_some(), cap.is_built() && cpu_has(cap));
        }
        // With or without MOE_KERNELS set, detection never goes above the CPU's level.
        assert!(detect().level() <= best);
    }
}

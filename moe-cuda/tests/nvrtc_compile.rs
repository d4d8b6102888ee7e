//! Every kernel source compiles with NVRTC for sm_80 (A100) and sm_90 (H100/H200)
//! without a warning: each file on its own after `common.cu`, and the whole program.
//!
//! Runs wherever libnvrtc can be loaded (a CUDA toolkit, or the pip wheel
//! `nvidia-cuda-nvrtc-cu12` with its `lib` folder on `LD_LIBRARY_PATH`); otherwise it
//! prints `skipped: no NVRTC library` and passes. Set `MOE_REQUIRE_NVRTC=1` to make a
//! missing NVRTC a failure.

use moe_cuda::kernels::{self, COMMON, SOURCES};

const ARCHS: [(u32, u32); 2] = [(8, 0), (9, 0)];

fn nvrtc_or_skip() -> bool {
    if kernels::nvrtc_present() {
        return true;
    }
    assert!(
        std::env::var_os("MOE_REQUIRE_NVRTC").is_none(),
        "MOE_REQUIRE_NVRTC is set but no libnvrtc could be loaded"
    );
    println!("skipped: no NVRTC library");
    false
}

#[test]
fn every_source_compiles_without_warnings() {
    if !nvrtc_or_skip() {
        return;
    }
    let version = kernels::nvrtc_version().expect("NVRTC version");
    println!("NVRTC {}.{}", version.0, version.1);
    for (major, minor) in ARCHS {
        let common = kernels::compile(COMMON, major, minor).expect("common.cu");
        assert!(
            common.log.is_empty(),
            "common.cu sm_{major}{minor}:\n{}",
            common.log
        );
        for (name, text) in SOURCES {
            let src = format!("{COMMON}\n{text}");
            let c = kernels::compile(&src, major, minor)
                .unwrap_or_else(|e| panic!("{name} for sm_{major}{minor}: {e}"));
            assert!(
                c.log.is_empty(),
                "{name} sm_{major}{minor} warned:\n{}",
                c.log
            );
            assert!(!c.cubin.is_empty());
            println!("{name}: sm_{major}{minor} cubin {} bytes", c.cubin.len());
        }
        let all = kernels::compile(&kernels::program_source(), major, minor).expect("program");
        assert!(
            all.log.is_empty(),
            "program sm_{major}{minor}:\n{}",
            all.log
        );
        println!("program: sm_{major}{minor} cubin {} bytes", all.cubin.len());
        // The cubin's symbol table names every kernel the host looks up.
        for name in moe_cuda::GpuDevice::KERNEL_NAMES {
            let needle = format!("{name}\0");
            assert!(
                all.cubin
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes()),
                "the host launches {name}, which the sm_{major}{minor} cubin lacks"
            );
        }
    }
}

#[test]
fn every_kernel_the_host_launches_is_in_the_program() {
    let src = kernels::program_source();
    for name in moe_cuda::GpuDevice::KERNEL_NAMES {
        // The FFN kernels are stamped out by DEFINE_FFN_KERNELS(suffix, TY, M).
        let defined = match name
            .strip_prefix("moe_gate_up_")
            .or(name.strip_prefix("moe_down_"))
        {
            Some(rest) => {
                let (suffix, m) = rest.rsplit_once("_m").expect("_m<M> suffix");
                src.contains(&format!("DEFINE_FFN_KERNELS({suffix}, "))
                    && src.contains(&format!(", {m})"))
            }
            // The model's embedding and projection kernels by DEFINE_MODEL_KERNELS(suffix, TY).
            None => match name.strip_prefix("model_get_rows_").or(name
                .strip_prefix("model_matmul_")
                .and_then(|r| r.rsplit_once("_m").map(|(s, _)| s)))
            {
                Some(suffix) => src.contains(&format!("DEFINE_MODEL_KERNELS({suffix}, ")),
                None => src.contains(&format!("void {name}(")),
            },
        };
        assert!(defined, "the host launches {name}, which no source defines");
    }
}

#[test]
fn a_broken_source_is_an_error_with_the_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let err = kernels::compile("extern \"C\" __global__ void k() { undefined(); }", 9, 0)
        .expect_err("must not compile");
    let text = err.to_string();
    assert!(text.contains("undefined"), "{text}");
}

#[test]
fn the_cache_round_trips() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("moe-cuda-cache-test-{}", std::process::id()));
    let first = kernels::program_in(Some(&dir), 9, 0).expect("compile");
    assert!(!first.cached);
    let second = kernels::program_in(Some(&dir), 9, 0).expect("cache");
    assert!(second.cached);
    assert_eq!(first.cubin, second.cubin);
    let _ = std::fs::remove_dir_all(&dir);
}

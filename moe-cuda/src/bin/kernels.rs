//! `moe-cuda-kernels DIR [ARCH…]`: compiles the GPU kernels ahead of time into `DIR` as
//! prebuilt cubins (default architectures: 80 and 90, i.e. A100-class and H100/H200),
//! so that a machine with the CUDA driver but without NVRTC can run them: copy the files
//! into its kernel cache (`$MOE_CUDA_CACHE`, else `~/.cache/moe/cuda`). Needs NVRTC
//! here (on `LD_LIBRARY_PATH`). Prints one line per file.

use std::path::PathBuf;
use std::process::ExitCode;

use moe_cuda::kernels;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().filter(|a| !a.starts_with('-')) else {
        eprintln!("usage: moe-cuda-kernels DIR [ARCH…]   (ARCH: 80, 86, 89, 90, …; default 80 90)");
        return ExitCode::from(2);
    };
    let mut archs = Vec::new();
    for arch in args {
        match arch.parse::<u32>() {
            Ok(a) if (50..=129).contains(&a) => archs.push((a / 10, a % 10)),
            _ => {
                eprintln!("moe-cuda-kernels: '{arch}' is not an architecture such as 80 or 90");
                return ExitCode::from(2);
            }
        }
    }
    if archs.is_empty() {
        archs = vec![(8, 0), (9, 0)];
    }
    let dir = PathBuf::from(dir);
    for (major, minor) in archs {
        match kernels::write_prebuilt(&dir, major, minor) {
            Ok(file) => println!("{}", file.display()),
            Err(e) => {
                eprintln!("moe-cuda-kernels: sm_{major}{minor}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

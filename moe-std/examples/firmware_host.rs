//! The host twin of the Cortex-M firmware example: runs the very same `demo.rs` on the
//! model file mmapped with [`moe_std::GgufFile`], and prints the same report, which
//! `cargo xtask firmware` compares with what the firmware printed under QEMU.
//!
//! `cargo run -p moe-std --example firmware_host -- moe-core/examples/firmware-cortex-m/model.gguf`

use std::process::ExitCode;

use moe_core::moe::Workspace;
use moe_core::router::Selection;
use moe_std::GgufFile;

#[allow(dead_code)]
#[path = "../../moe-core/examples/firmware-cortex-m/src/demo.rs"]
mod demo;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: firmware_host MODEL.gguf");
        return ExitCode::from(2);
    };
    let file = match GgufFile::open(&path) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let model = file.file().bytes();
    let size = match demo::workspace_size(model) {
        Ok(size) => size,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut selections = vec![Selection::new(); size.selections];
    let mut router = vec![0f32; size.router];
    let mut bytes = vec![0u8; size.bytes];
    let mut workspace = Workspace {
        selections: &mut selections,
        router: &mut router,
        bytes: &mut bytes,
    };
    let mut report = String::new();
    let result = demo::run(model, &mut workspace, &mut report);
    print!("{report}");
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

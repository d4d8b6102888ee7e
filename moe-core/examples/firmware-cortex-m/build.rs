//! Puts memory.x where the linker finds it, and computes the exact workspace size of the
//! demo with the engine itself (on the host), so the firmware's `static` buffers are
//! exactly what `MoeLayer::workspace_size` asks for.

use std::path::PathBuf;
use std::{env, fs};

#[allow(dead_code)]
#[path = "src/demo.rs"]
mod demo;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    fs::copy("memory.x", out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());

    let model = fs::read("model.gguf").expect("model.gguf (run make_model.py)");
    let size = demo::workspace_size(&model).unwrap_or_else(|e| panic!("model.gguf: {e}"));
    assert_eq!(size.selections, demo::N_TOKENS, "one selection per token");
    let consts = format!(
        "const ROUTER_F32: usize = {};\nconst WORKSPACE_BYTES: usize = {};\n",
        size.router, size.bytes
    );
    fs::write(out.join("workspace_size.rs"), consts).unwrap();

    for input in ["memory.x", "model.gguf", "src/demo.rs", "build.rs"] {
        println!("cargo:rerun-if-changed={input}");
    }
}

//! One MoE layer on a Cortex-M4F: the model is a GGUF file in flash (`include_bytes!`,
//! parsed in place), all scratch memory is one `static` buffer whose size the build
//! script computed with the same engine, and the result goes out over semihosting.
//! No allocator is linked.
//!
//! `cargo xtask firmware` builds this, runs it on QEMU's mps2-an386 and compares what it
//! prints with the host twin (moe-std's `firmware_host` example, which runs `demo.rs` too).
#![no_std]
#![no_main]

use core::fmt::Write;

use cortex_m_rt::{ExceptionFrame, entry, exception};
use cortex_m_semihosting::{debug, hio};
use moe_core::moe::Workspace;
use moe_core::router::Selection;

// The build script uses `workspace_size`, the firmware only `run` (and the baseline build
// neither).
#[allow(dead_code)]
mod demo;

// `ROUTER_F32` and `WORKSPACE_BYTES`, computed by build.rs from the model with
// `demo::workspace_size`.
include!(concat!(env!("OUT_DIR"), "/workspace_size.rs"));

/// Bytes with a guaranteed alignment (`include_bytes!` data is only byte-aligned).
#[repr(C, align(32))]
struct Aligned<const N: usize>([u8; N]);

const MODEL_LEN: usize = include_bytes!("../model.gguf").len();
/// The model, in flash, read in place.
static MODEL: Aligned<MODEL_LEN> = Aligned(*include_bytes!("../model.gguf"));
/// All scratch memory of the forward pass, in `.bss`: one routing result per token, the
/// router's f32 scratch, and bytes for dispatch, quantized activations and FFN rows (any
/// alignment: the engine reads and writes them as bytes). Exactly the computed sizes.
static mut WORKSPACE_SELECTIONS: [Selection; demo::N_TOKENS] =
    [const { Selection::new() }; demo::N_TOKENS];
static mut WORKSPACE_ROUTER: [f32; ROUTER_F32] = [0.0; ROUTER_F32];
static mut WORKSPACE_BYTES_: [u8; WORKSPACE_BYTES] = [0; WORKSPACE_BYTES];

#[entry]
fn main() -> ! {
    let Ok(mut out) = hio::hstdout() else {
        exit(false)
    };
    // SAFETY: `main` runs once and is the only code that names the WORKSPACE_* statics, so
    // these are the only references to them: each `&mut` is unique.
    let mut workspace = unsafe {
        Workspace {
            selections: &mut *core::ptr::addr_of_mut!(WORKSPACE_SELECTIONS),
            router: &mut *core::ptr::addr_of_mut!(WORKSPACE_ROUTER),
            bytes: &mut *core::ptr::addr_of_mut!(WORKSPACE_BYTES_),
        }
    };
    let ok = run(&MODEL.0, &mut workspace, &mut out);
    let _ = writeln!(out, "stack {}", stack_high_water());
    exit(ok)
}

#[cfg(not(feature = "baseline"))]
fn run(model: &[u8], workspace: &mut Workspace<'_>, out: &mut impl Write) -> bool {
    match demo::run(model, workspace, out) {
        Ok(()) => true,
        Err(e) => {
            // The kind only: formatting the engine's error messages would link a few KiB
            // of `core::fmt` for a path that never runs. `firmware_host` on the same model
            // prints the whole message.
            let _ = out.write_str("error: ");
            let _ = out.write_str(e.kind());
            let _ = out.write_str("\n");
            false
        }
    }
}

/// The same firmware without the engine: its `.text` is what the engine's share is
/// measured against.
#[cfg(feature = "baseline")]
fn run(model: &[u8], workspace: &mut Workspace<'_>, out: &mut impl Write) -> bool {
    let _ = writeln!(out, "model {}", model.len());
    let (s, r, b) = (
        workspace.selections.len(),
        workspace.router.len(),
        workspace.bytes.len(),
    );
    let _ = writeln!(out, "workspace {s} {r} {b}");
    true
}

/// Deepest the stack has been: cortex-m-rt's `paint-stack` fills the stack with
/// 0xCCCCCCCC before `main`; the lowest word that changed marks the high-water line.
fn stack_high_water() -> usize {
    unsafe extern "C" {
        static _stack_start: u32;
        static _stack_end: u32;
    }
    let top = core::ptr::addr_of!(_stack_start) as usize;
    let bottom = core::ptr::addr_of!(_stack_end) as usize;
    let mut word = bottom;
    while word < top {
        // SAFETY: every word between the linker symbols _stack_end and _stack_start is
        // RAM reserved for the stack, 4-byte aligned (cortex-m-rt asserts both).
        if unsafe { core::ptr::read_volatile(word as *const u32) } != 0xCCCC_CCCC {
            break;
        }
        word += 4;
    }
    top - word
}

fn exit(ok: bool) -> ! {
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    #[allow(clippy::empty_loop)]
    loop {}
}

/// The engine never panics on input; should a bug make it, say where and exit with
/// failure. Only the location is printed: formatting the message would link more of
/// `core::fmt` than the rest of the firmware's printing.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if let Ok(mut out) = hio::hstdout() {
        let _ = out.write_str("panic");
        if let Some(at) = info.location() {
            let _ = out.write_str(" at ");
            let _ = out.write_str(at.file());
            let _ = writeln!(out, ":{}", at.line());
        }
    }
    exit(false)
}

#[exception]
unsafe fn HardFault(_frame: &ExceptionFrame) -> ! {
    let _ = hio::hstdout().map(|mut out| writeln!(out, "hard fault"));
    exit(false)
}

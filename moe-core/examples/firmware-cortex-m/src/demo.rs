//! The computation of the firmware example, shared word for word by the firmware, its
//! build script (to size the static workspace) and the host twin (moe-std's
//! `firmware_host` example): one MoE layer of `model.gguf` on `N_TOKENS` deterministic
//! tokens, reported as text lines that `cargo xtask firmware` compares.
//!
//! Report lines: `model BYTES`, `workspace SELECTIONS ROUTER_F32 BYTES`,
//! `token T experts E...`, `out T HEX...` (the f32 bits of the output row), `checksum HEX`.

use core::fmt::{self, Write};

use moe_core::gguf::File;
use moe_core::moe::{MoeLayer, Workspace, WorkspaceSize};

/// Tokens per forward pass.
pub const N_TOKENS: usize = 4;
/// Largest model width the stack-allocated input and output buffers hold.
pub const MAX_EMBD: usize = 64;
/// The MoE layer the demo runs.
const LAYER: usize = 0;

/// What can go wrong: the engine refused something, or writing the report failed.
#[derive(Debug)]
pub enum Failure {
    Engine(moe_core::Error),
    WorkspaceSize {
        expected: WorkspaceSize,
        got: WorkspaceSize,
    },
    TooWide(usize),
    Report,
}

impl From<moe_core::Error> for Failure {
    fn from(e: moe_core::Error) -> Self {
        Failure::Engine(e)
    }
}

impl From<fmt::Error> for Failure {
    fn from(_: fmt::Error) -> Self {
        Failure::Report
    }
}

impl Failure {
    /// A short name for the failure, for firmware that prints no formatted messages (the
    /// host twin runs the same demo on the same model and prints the whole message).
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Engine(_) => "engine",
            Failure::WorkspaceSize { .. } => "workspace-size",
            Failure::TooWide(_) => "too-wide",
            Failure::Report => "report",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Engine(e) => write!(f, "{e}"),
            Failure::WorkspaceSize { expected, got } => {
                write!(
                    f,
                    "workspace is {got:?}, the layer needs exactly {expected:?}"
                )
            }
            Failure::TooWide(n) => write!(f, "n_embd {n} is wider than MAX_EMBD {MAX_EMBD}"),
            Failure::Report => f.write_str("could not write the report"),
        }
    }
}

/// The exact workspace the demo needs (the build script bakes it into the firmware).
pub fn workspace_size(model: &[u8]) -> Result<WorkspaceSize, moe_core::Error> {
    let file = File::parse(model)?;
    Ok(MoeLayer::from_gguf(&file, LAYER)?.workspace_size(N_TOKENS))
}

/// Token `t`'s input: a fixed pseudo-random vector in [-1, 1) (a 32-bit LCG), the same
/// on every machine.
fn input(hidden: &mut [f32], n_embd: usize) {
    let mut state: u32 = 0x2545_f491;
    for x in hidden[..N_TOKENS * n_embd].iter_mut() {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        *x = (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0;
    }
}

/// Parses the model in place, checks the workspace is exactly the computed size, runs the
/// layer and writes the report.
pub fn run(
    model: &[u8],
    workspace: &mut Workspace<'_>,
    report: &mut impl Write,
) -> Result<(), Failure> {
    let file = File::parse(model)?;
    let layer = MoeLayer::from_gguf(&file, LAYER)?;
    let n_embd = layer.n_embd();
    if n_embd > MAX_EMBD {
        return Err(Failure::TooWide(n_embd));
    }
    let expected = layer.workspace_size(N_TOKENS);
    let got = WorkspaceSize {
        selections: workspace.selections.len(),
        router: workspace.router.len(),
        bytes: workspace.bytes.len(),
    };
    writeln!(report, "model {}", model.len())?;
    writeln!(
        report,
        "workspace {} {} {}",
        got.selections, got.router, got.bytes
    )?;
    if got != expected {
        return Err(Failure::WorkspaceSize { expected, got });
    }

    let mut hidden = [0f32; N_TOKENS * MAX_EMBD];
    let mut out = [0f32; N_TOKENS * MAX_EMBD];
    let len = N_TOKENS * n_embd;
    input(&mut hidden, n_embd);
    let token_ids: [u32; N_TOKENS] = core::array::from_fn(|t| t as u32);
    layer.forward(&hidden[..len], &token_ids, &mut out[..len], workspace)?;

    let mut checksum: u32 = 0x811c_9dc5;
    for (t, selection) in workspace.selections[..N_TOKENS].iter().enumerate() {
        write!(report, "token {t} experts")?;
        for choice in selection {
            write!(report, " {}", choice.expert)?;
        }
        write!(report, "\nout {t}")?;
        for value in &out[t * n_embd..(t + 1) * n_embd] {
            write!(report, " {:08x}", value.to_bits())?;
            checksum = (checksum ^ value.to_bits()).wrapping_mul(0x0100_0193);
        }
        writeln!(report)?;
    }
    writeln!(report, "checksum {checksum:08x}")?;
    Ok(())
}

//! The Mixture-of-Experts layer: dispatch (group tokens by expert, capacity and drops),
//! expert FFNs over quantized stacks, shared experts, combine, and the granularity helper.
//!
//! Routers live in [`crate::router`] and hand over one [`Selection`](crate::router::Selection)
//! per token; nothing here looks inside a router. Everything runs in caller memory sized by
//! [`MoeLayer::workspace_bytes`].

pub mod capacity;
pub mod dispatch;
pub mod experts;
pub mod ffn;
mod forward;
mod gguf;
pub mod granularity;
pub mod layer;
pub mod shared;

pub use capacity::{Capacity, CapacityPolicy, DropPriority};
pub use dispatch::{Dispatch, DispatchReport, Pair};
pub use experts::ExpertStack;
pub use ffn::{Activation, DotKernel, Ffn, FfnKind};
pub use forward::{Workspace, WorkspaceSize};
pub use layer::{ForwardReport, MoeLayer};
pub use shared::SharedExpert;

//! Routers: for each token, which experts run and with what weight.
//!
//! Every router produces, per token, a [`Selection`]: a fixed-capacity list of
//! [`Choice`]s in rank order (first choice first). Dispatch, capacity and combine in
//! `moe` consume selections and never look inside a router.
//!
//! [`RouterConfig`] says how to route (score function, bias, groups, k, renormalisation,
//! scale, method, noise); [`Router`] adds the borrowed tensors and routes a batch into
//! caller memory. [`crate::reference::router`] is the plain specification it is tested
//! against.

mod config;
mod gguf;
pub mod hash;
mod mask;
pub mod noise;
mod route;
mod score;
pub mod sinkhorn;
mod stats;
mod topk;

pub use config::{
    GroupLimit, GroupScore, HashGate, LLAMA_CPP_MIN_WEIGHT_SUM, MAX_GROUPS, Method, NoisyGating,
    Normalize, RouterConfig, ScoreFunc,
};
pub use hash::HashTable;
pub use mask::ExpertMask;
pub use route::{RouteReport, Router};
pub use sinkhorn::SinkhornReport;
pub use stats::RouterStats;

/// Largest number of experts one token can select (DeepSeek-V3 uses 8, fine-grained
/// configurations up to 64).
pub const MAX_K: usize = 64;

/// One routed expert for one token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// The expert's index in the layer (`0..n_expert`).
    pub expert: u32,
    /// The weight its output is multiplied by in the combine.
    pub weight: f32,
}

/// The experts one token is routed to, in rank order.
pub type Selection = heapless::Vec<Choice, MAX_K>;

/// SplitMix64 (Steele et al. 2014): the mixing function behind the seeded hash and the
/// noise draws.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

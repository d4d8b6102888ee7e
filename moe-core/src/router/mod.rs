//! Routers: for each token, which experts run and with what weight.
//!
//! Every router produces, per token, a [`Selection`]: a fixed-capacity list of
//! [`Choice`]s in rank order (first choice first). Dispatch, capacity and combine in
//! `moe` consume selections and never look inside a router.

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

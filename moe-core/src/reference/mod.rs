//! The executable specification: plain f32 versions of routing, dispatch and the MoE layer,
//! written for clarity rather than speed. Every optimized path is property-tested against
//! its twin here, and users can do the same with their own builds.

pub mod moe;
pub mod peer;
pub mod router;

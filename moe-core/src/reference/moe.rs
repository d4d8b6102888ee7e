//! Reference MoE layer (plain f32).

//! Reference routing (plain f32).

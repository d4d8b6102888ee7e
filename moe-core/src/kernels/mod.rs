//! Compute kernels: dot products of a quantized weight row with a quantized activation
//! row, the inner loop of every matrix multiply.
//!
//! Each weight type is paired with the activation type ggml's CPU backend uses for it
//! ([`TensorType::activation_type`](crate::TensorType::activation_type)): the activation
//! row is quantized once, then integer products are summed inside each block and scaled
//! by one float multiply-add per block (or sub-block). `scalar` is the portable
//! specification; every SIMD kernel is tested against it, and [`scalar::dot`] is the
//! checked entry point that takes raw bytes.

pub mod scalar;

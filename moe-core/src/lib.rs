//! `moe-core`: the `#![no_std]`, allocation-free heart of the engine.
//!
//! Data flows one way and weights are never copied: bytes (flash, an mmap, a test
//! buffer) are parsed once by [`gguf::File`], tensors are borrowed views into those
//! bytes, and the [`quant`] block formats decode rows on demand.
//!
//! Every function that looks at untrusted bytes returns a typed [`Error`] instead of
//! panicking; lengths and offsets are checked with checked arithmetic before use.
#![no_std]
// `unsafe` is reserved for the SIMD kernels (a later `kernels` submodule allows it locally).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod moe;
pub mod parallel;
pub mod peer;
pub mod quant;
pub mod reference;
pub mod router;
pub mod sample;
mod sort;
pub mod source;
pub mod tensor;
mod workspace;

pub use error::{Error, Result, Section};
pub use quant::TensorType;

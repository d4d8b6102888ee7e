//! AArch64 kernels, one file per instruction-set level.
//!
//! [`neon`] holds every kernel, written once over the one operation the levels do
//! differently: an exact dot product of 16 signed byte pairs ([`neon::ByteDot`]). NEON
//! builds it from widening multiplies; [`dotprod`] uses `sdot`. Each file's `dot` is a
//! table entry: a safe function whose soundness rests on the
//! [`Kernels`](super::Kernels) constructors, the only places that store it.
//!
//! The module is built only where NEON is a compile-time feature (every AArch64 Linux,
//! Android, Apple and `aarch64-unknown-none` target; not `-softfloat`) and the target is
//! little-endian, so NEON intrinsics need no run-time proof and whole-vector loads of
//! little-endian fields give lanes in element order.

pub(super) mod dotprod;
pub(super) mod neon;

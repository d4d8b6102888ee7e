//! x86-64 kernels, one file per instruction-set level.
//!
//! Each file's `dot` is a table entry: a safe function whose soundness rests on the
//! [`Kernels`](super::Kernels) constructors, the only places that store it.

pub(super) mod avx2;
pub(super) mod avx2_more;
pub(super) mod avx512;
pub(super) mod batch;
pub(super) mod vector;

//! NEON + dot-product (`FEAT_DotProd`, Armv8.2+: Cortex-A55/A76 and later, Apple M1,
//! Neoverse) kernels: [`neon`](super::neon)'s kernels with `sdot`, which adds four
//! byte products into each `i32` lane in one instruction, for the byte dot product.
//!
//! `sdot` is exact for any bytes (four products of at most 2^14 per lane per call), so
//! the results are the NEON level's, which are the specification's bits.

use core::arch::aarch64::int8x16_t;
use core::arch::aarch64::int32x4_t;
use core::arch::asm;

use super::neon::{self, ByteDot};
use crate::{Result, TensorType};

/// The table entry: the NEON kernels with `sdot`.
///
/// Private to `kernels`: only [`Kernels`](crate::kernels::Kernels) constructors that hold
/// proof of the [`Level::Dotprod`](crate::kernels::Level::Dotprod) features store it.
pub(in crate::kernels) fn dot(weight_type: TensorType, w: &[u8], a: &[u8]) -> Result<f32> {
    // SAFETY: reachable only through a `Kernels` table at `Level::Dotprod`, whose every
    // constructor requires (detected, compiled-in or `unsafe`-promised) NEON and dotprod;
    // NEON is also enabled at compile time wherever this module is built.
    unsafe { neon::dot_with(Sdot::new(), weight_type, w, a) }
}

/// The batch table entry: [`dot`] for every (weight row, activation row) pair, with
/// [`Kernels::matmul`](crate::kernels::Kernels::matmul)'s contract.
///
/// Private to `kernels`, stored only where [`dot`] is.
pub(in crate::kernels) fn matmul(
    weight_type: TensorType,
    weights: &[u8],
    activations: &[&[u8]],
    out: &mut [f32],
) -> Result<()> {
    crate::kernels::matmul_by_dot(dot, weight_type, weights, activations, out)
}

/// The `sdot` instruction as a [`ByteDot`]; holding one is the proof that the CPU has
/// the dot-product extension, so its safe method may execute `sdot`.
#[derive(Clone, Copy, Debug)]
struct Sdot(());

impl Sdot {
    /// The proof token.
    ///
    /// # Safety
    ///
    /// The CPU that uses the token must support the dot-product extension (`dotprod`, as
    /// `is_aarch64_feature_detected!("dotprod")` reports it).
    unsafe fn new() -> Sdot {
        Sdot(())
    }
}

impl ByteDot for Sdot {
    /// `sdot`: each lane of `acc` plus the four products of its bytes of `a` and `b`.
    ///
    /// Inline assembly because `vdotq_s32` is unstable in Rust 1.88. The
    /// `.arch_extension` line lets the assembler accept `sdot` inside kernels compiled
    /// for base NEON (they are shared with that level); whether the CPU runs it is what
    /// the token proves.
    #[inline(always)]
    fn dot(self, acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: `self` proves the CPU has the dot-product extension (see `Sdot::new`);
        // the instruction reads and writes vector registers only.
        unsafe {
            asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        acc
    }
}

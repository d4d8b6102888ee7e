//! Compute kernels: dot products of a quantized weight row with a quantized activation
//! row, the inner loop of every matrix multiply.
//!
//! Each weight type is paired with the activation type ggml's CPU backend uses for it
//! ([`TensorType::activation_type`](crate::TensorType::activation_type)): the activation
//! row is quantized once, then integer products are summed inside each block and scaled
//! by one float multiply-add per block (or sub-block). `scalar` is the portable
//! specification; every SIMD kernel is tested against it, and [`scalar::dot`] is the
//! checked entry point that takes raw bytes.
//!
//! A [`Kernels`] table picks the instruction-set [`Level`] once; everything downstream
//! calls through its function pointers and never checks CPU features itself:
//!
//! - [`Kernels::scalar`]: the portable specification, on every target.
//! - [`Kernels::compiled`]: the best level the build's `target_feature`s allow (no_std,
//!   no run-time detection: `-C target-cpu=native` or `-C target-feature=+avx2,+fma,+f16c`).
//! - [`Kernels::with_level_unchecked`]: any level, on the caller's promise that the CPU
//!   has its features; `moe_std::kernels::detect()` makes that promise after run-time
//!   detection.
//! - [`Kernels::at_most`]: the same table capped at a lower level (tests, benchmarks,
//!   working around a suspect kernel).
//!
//! On x86-64 the levels are [`Level::Avx2`] (AVX2 + FMA + F16C: every dot-product
//! weight type) and [`Level::Avx512`] (adds AVX-512 F/BW/VL/VNNI: `vpdpbusd` for
//! Q4_0 and Q8_0, 1.8–2.9× AVX2 on their matrix × vector here, `vpdpbusd` and
//! `vpdpwssd` for Q4_K, Q5_K and Q6_K, 2.3–2.8× AVX2 on theirs in cache, so
//! `moe_std::kernels::detect()` prefers it; AVX2 code for the other types and the row dot
//! products). Matrix × batch (`matmul`) runs eight rows per vector for Q4_0, Q8_0, Q4_K
//! and Q6_K at both levels, and Q5_K at `Avx512` (`x86/batch.rs`, `x86/avx512.rs`).
//! On AArch64 they are [`Level::Neon`] (Q4_0, Q4_1, Q5_0,
//! Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS, F32, F16 and BF16 rows) and
//! [`Level::Dotprod`] (the same kernels with `sdot` for the byte products). Other weight
//! types fall back to the specification at every level.
//! Quantized kernels return the same bits as the specification (exact integer block
//! sums, the same float operations in the same order); float kernels differ only in
//! summation order.
//!
//! The table also gives the f32 helpers of a layer's forward pass ([`vector`]: RMSNorm,
//! softmax, SiLU, GELU in tanh and erf forms, SwiGLU and axpy), so a layer picks their
//! level with the dot products. [`vector`] is their specification (libm's `expf`,
//! `tanhf`, `erff`; the FFN's activations are its element functions); the AVX2 + FMA
//! versions (also used at [`Level::Avx512`]) replace those by polynomials within 1e-6
//! relative (the GELUs: 2^-22 · |z| absolute where the specification's own `1 + tanh`
//! cancels), axpy gives the specification's bits at every level, and AArch64 levels use
//! the specification. These methods pick the level's function by a match on the level,
//! not through stored pointers, so a program links only the helpers it calls (the
//! Cortex-M firmware's `.text` budget has no room for unused ones).
// The one module of the crate that may use `unsafe`: SIMD intrinsics and the table's
// feature proof. Every unsafe fn has a `# Safety` section, every block a `// SAFETY:`.
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod scalar;
pub mod vector;
#[cfg(target_arch = "x86_64")]
mod x86;
// Only where NEON is compile-time (not `aarch64-unknown-none-softfloat`) and little-endian.
#[cfg(all(
    target_arch = "aarch64",
    target_feature = "neon",
    target_endian = "little"
))]
mod aarch64;

use core::fmt;

use crate::{Error, Result, TensorType};

/// The dot product of one weight row with one activation row, both raw bytes: the
/// signature of [`scalar::dot`] and of every table entry.
pub type DotKernel = fn(TensorType, &[u8], &[u8]) -> Result<f32>;

/// Matrix × several activation rows (decode is one row, prefill many): the signature of
/// every table's [`Kernels::matmul`] entry, with that method's contract.
pub type MatmulKernel = fn(TensorType, &[u8], &[&[u8]], &mut [f32]) -> Result<()>;

/// An instruction-set level a [`Kernels`] table can be built for, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Level {
    /// Portable Rust: the specification.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX2 + FMA + F16C and AVX-512 F, BW, VL and VNNI.
    Avx512,
    /// AArch64 Advanced SIMD (NEON).
    Neon,
    /// AArch64 NEON and the dot-product extension (`sdot`, Armv8.2+).
    Dotprod,
}

impl Level {
    /// Every level, lowest first within each architecture (x86-64, then AArch64).
    pub const ALL: [Level; 5] = [
        Level::Scalar,
        Level::Avx2,
        Level::Avx512,
        Level::Neon,
        Level::Dotprod,
    ];

    /// The level's name as `MOE_KERNELS` spells it: `scalar`, `avx2`, `avx512`, `neon`,
    /// `dotprod`.
    pub const fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Neon => "neon",
            Level::Dotprod => "dotprod",
        }
    }

    /// Whether every CPU feature `lower` needs is one `self` needs too, so a CPU with
    /// `self`'s features can run `lower`'s kernels: levels of one architecture are
    /// ordered by inclusion, and every level includes [`Level::Scalar`]. Levels of
    /// different architectures include neither the other.
    pub const fn includes(self, lower: Level) -> bool {
        let same_architecture = matches!(
            (self, lower),
            (Level::Avx2 | Level::Avx512, Level::Avx2 | Level::Avx512)
                | (Level::Neon | Level::Dotprod, Level::Neon | Level::Dotprod)
        );
        matches!(lower, Level::Scalar) || (same_architecture && lower as u8 <= self as u8)
    }

    /// The level named `name` (as [`Level::name`] spells it), if any.
    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The CPU features the level needs, as `target_feature` names.
    pub const fn features(self) -> &'static [&'static str] {
        match self {
            Level::Scalar => &[],
            Level::Avx2 => &["avx2", "fma", "f16c"],
            Level::Avx512 => &[
                "avx2",
                "fma",
                "f16c",
                "avx512f",
                "avx512bw",
                "avx512vl",
                "avx512vnni",
            ],
            Level::Neon => &["neon"],
            Level::Dotprod => &["neon", "dotprod"],
        }
    }

    /// Whether this build has kernels for the level (x86-64 levels exist only on x86-64,
    /// AArch64 levels only on little-endian AArch64 with NEON enabled at compile time).
    pub const fn is_built(self) -> bool {
        match self {
            Level::Scalar => true,
            Level::Avx2 | Level::Avx512 => cfg!(target_arch = "x86_64"),
            Level::Neon | Level::Dotprod => cfg!(all(
                target_arch = "aarch64",
                target_feature = "neon",
                target_endian = "little"
            )),
        }
    }

    /// The best level the compile-time `target_feature`s guarantee.
    pub const fn compiled() -> Level {
        if cfg!(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c",
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vl",
            target_feature = "avx512vnni"
        )) {
            Level::Avx512
        } else if cfg!(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        )) {
            Level::Avx2
        } else if cfg!(all(
            target_arch = "aarch64",
            target_feature = "neon",
            target_feature = "dotprod",
            target_endian = "little"
        )) {
            Level::Dotprod
        } else if cfg!(all(
            target_arch = "aarch64",
            target_feature = "neon",
            target_endian = "little"
        )) {
            Level::Neon
        } else {
            Level::Scalar
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A table of kernels for one instruction-set [`Level`], chosen once.
///
/// Holding a table is the proof that the CPU has the level's features: every constructor
/// either needs none ([`scalar`](Kernels::scalar)), checks them at compile time
/// ([`compiled`](Kernels::compiled)) or is `unsafe`
/// ([`with_level_unchecked`](Kernels::with_level_unchecked)). Calls through the table are
/// therefore safe and check nothing.
#[derive(Clone, Copy)]
pub struct Kernels {
    level: Level,
    dot: DotKernel,
    matmul: MatmulKernel,
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels")
            .field("level", &self.level)
            .finish()
    }
}

impl Default for Kernels {
    /// [`Kernels::scalar`].
    fn default() -> Self {
        Kernels::scalar()
    }
}

impl Kernels {
    /// The portable specification.
    pub const fn scalar() -> Kernels {
        Kernels {
            level: Level::Scalar,
            dot: scalar::dot,
            matmul: scalar::matmul,
        }
    }

    /// The best table the compile-time `target_feature`s allow ([`Level::compiled`]);
    /// needs no run-time detection, so it is the choice for no_std builds.
    pub const fn compiled() -> Kernels {
        // SAFETY: `Level::compiled` returns only levels whose features are all enabled at
        // compile time, which the compiler requires the target CPU to have.
        unsafe { Kernels::with_level_unchecked(Level::compiled()) }
    }

    /// The table for `level`, without checking the CPU.
    ///
    /// A level this build has no kernels for ([`Level::is_built`] false: another
    /// architecture's levels) gives the scalar table.
    ///
    /// # Safety
    ///
    /// The CPU that runs the table's kernels must support every feature in
    /// [`level.features()`](Level::features) (for example as reported by
    /// `is_x86_feature_detected!` or `is_aarch64_feature_detected!`;
    /// `moe_std::kernels::detect()` does this). Executing an
    /// instruction the CPU lacks is undefined behaviour.
    pub const unsafe fn with_level_unchecked(level: Level) -> Kernels {
        match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => Kernels {
                level,
                dot: x86::avx2::dot,
                matmul: x86::batch::matmul,
            },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => Kernels {
                level,
                dot: x86::avx512::dot,
                matmul: x86::avx512::matmul,
            },
            #[cfg(all(
                target_arch = "aarch64",
                target_feature = "neon",
                target_endian = "little"
            ))]
            Level::Neon => Kernels {
                level,
                dot: aarch64::neon::dot,
                matmul: aarch64::neon::matmul,
            },
            #[cfg(all(
                target_arch = "aarch64",
                target_feature = "neon",
                target_endian = "little"
            ))]
            Level::Dotprod => Kernels {
                level,
                dot: aarch64::dotprod::dot,
                matmul: aarch64::dotprod::matmul,
            },
            _ => Kernels::scalar(),
        }
    }

    /// The same table capped at `cap`: the highest level that both this table's level
    /// and `cap` [include](Level::includes), that is this table if `cap` includes its
    /// level, else the highest level of its architecture below `cap`, else scalar (a cap
    /// from another architecture).
    pub const fn at_most(self, cap: Level) -> Kernels {
        let mut i = Level::ALL.len();
        while i > 0 {
            i -= 1;
            let level = Level::ALL[i];
            if self.level.includes(level) && cap.includes(level) {
                if level as u8 == self.level as u8 {
                    return self;
                }
                // SAFETY: `self` proves the CPU has every feature of `self.level`, and
                // `self.level` includes `level`: every feature of `level` is one of them.
                return unsafe { Kernels::with_level_unchecked(level) };
            }
        }
        Kernels::scalar()
    }

    /// The table's level.
    pub const fn level(&self) -> Level {
        self.level
    }

    /// The row dot product as a plain function pointer, for code that stores one (such
    /// as [`MoeLayer::with_kernels`](crate::moe::MoeLayer::with_kernels)).
    pub const fn dot_kernel(&self) -> DotKernel {
        self.dot
    }

    /// The dot product of a row of `weight_type` with a row of its
    /// [`activation_type`](TensorType::activation_type), as [`scalar::dot`] defines it
    /// (same errors on wrong lengths or types, never a panic).
    pub fn dot(&self, weight_type: TensorType, weights: &[u8], activations: &[u8]) -> Result<f32> {
        (self.dot)(weight_type, weights, activations)
    }

    /// Matrix × vector: `out[r]` is the dot product of row `r` of `weights` (`out.len()`
    /// rows of `weight_type`, each as long as `activations`) with `activations` (one row
    /// of the activation type). The same numbers as [`Kernels::dot`] row by row.
    ///
    /// `weights` must hold exactly `out.len()` rows; anything else is an error.
    pub fn matvec(
        &self,
        weight_type: TensorType,
        weights: &[u8],
        activations: &[u8],
        out: &mut [f32],
    ) -> Result<()> {
        (self.matmul)(weight_type, weights, &[activations], out)
    }

    /// Matrix × several activation rows: `out[t · rows + r]` is the dot product of weight
    /// row `r` with `activations[t]`, where `rows = out.len() / activations.len()` and
    /// every activation row has the same length (of the
    /// [`activation_type`](TensorType::activation_type)).
    ///
    /// Each number is bit for bit [`Kernels::dot`] of that pair, whatever the batch: the
    /// batch only lets a kernel unpack each weight block once for all rows. `weights` must
    /// hold exactly `rows` rows and `out` a multiple of `activations.len()` numbers;
    /// anything else is a typed error (an empty batch needs an empty `out`).
    pub fn matmul(
        &self,
        weight_type: TensorType,
        weights: &[u8],
        activations: &[&[u8]],
        out: &mut [f32],
    ) -> Result<()> {
        (self.matmul)(weight_type, weights, activations, out)
    }

    /// The batch kernel as a plain function pointer, for code that stores one.
    pub const fn matmul_kernel(&self) -> MatmulKernel {
        self.matmul
    }
}

/// The shape of a [`Kernels::matmul`] call, checked: blocks per row and weight rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MatmulShape {
    blocks: usize,
    rows: usize,
}

/// Checks a [`Kernels::matmul`] call: a supported type, activation rows of one valid
/// length, whole weight rows, and `rows · activations.len()` outputs.
fn check_matmul(
    weight_type: TensorType,
    weights: usize,
    activations: &[&[u8]],
    out: usize,
) -> Result<MatmulShape> {
    let first = activations.first().map_or(0, |a| a.len());
    let blocks = check_row_activations(weight_type, first)?;
    if let Some(a) = activations.iter().find(|a| a.len() != first) {
        return Err(Error::LengthMismatch {
            expected: first,
            actual: a.len(),
        });
    }
    let rows = if activations.is_empty() {
        0
    } else {
        out / activations.len()
    };
    let expected_out = rows * activations.len();
    if out != expected_out {
        return Err(Error::LengthMismatch {
            expected: expected_out,
            actual: out,
        });
    }
    let expected = blocks
        .checked_mul(weight_type.block_bytes())
        .and_then(|row| row.checked_mul(rows));
    if expected != Some(weights) && !(activations.is_empty() && out == 0) {
        return Err(Error::LengthMismatch {
            expected: expected.unwrap_or(usize::MAX),
            actual: weights,
        });
    }
    Ok(MatmulShape { blocks, rows })
}

/// [`Kernels::matmul`] through a dot product, pair by pair: the table entry for levels
/// and types without a batch kernel.
fn matmul_by_dot(
    dot: DotKernel,
    weight_type: TensorType,
    weights: &[u8],
    activations: &[&[u8]],
    out: &mut [f32],
) -> Result<()> {
    let shape = check_matmul(weight_type, weights.len(), activations, out.len())?;
    if shape.blocks == 0 {
        // Empty rows: every dot product is the empty sum.
        out.fill(0.0);
        return Ok(());
    }
    let row_bytes = shape.blocks * weight_type.block_bytes();
    for (r, row) in weights.chunks_exact(row_bytes).enumerate() {
        for (t, act) in activations.iter().enumerate() {
            if let Some(o) = out.get_mut(t * shape.rows + r) {
                *o = dot(weight_type, row, act)?;
            }
        }
    }
    Ok(())
}

/// Checks an activation row's length for `weight_type` and returns its block count.
fn check_row_activations(weight_type: TensorType, activations: usize) -> Result<usize> {
    let Some(act_type) = weight_type.activation_type() else {
        return Err(Error::UnsupportedType { ty: weight_type });
    };
    let act_bytes = act_type.block_bytes();
    if !activations.is_multiple_of(act_bytes) {
        return Err(Error::LengthMismatch {
            expected: activations / act_bytes * act_bytes,
            actual: activations,
        });
    }
    Ok(activations / act_bytes)
}

/// The checks of [`scalar::dot`]: a supported weight type, whole weight blocks and
/// exactly as many activation blocks.
#[cfg_attr(
    not(any(
        target_arch = "x86_64",
        all(
            target_arch = "aarch64",
            target_feature = "neon",
            target_endian = "little"
        )
    )),
    allow(dead_code)
)]
fn check_row(weight_type: TensorType, weights: usize, activations: usize) -> Result<()> {
    let Some(act_type) = weight_type.activation_type() else {
        return Err(Error::UnsupportedType { ty: weight_type });
    };
    let block_bytes = weight_type.block_bytes();
    let n_blocks = weights / block_bytes;
    if !weights.is_multiple_of(block_bytes) {
        return Err(Error::LengthMismatch {
            expected: n_blocks * block_bytes,
            actual: weights,
        });
    }
    let expected = n_blocks.saturating_mul(act_type.block_bytes());
    if activations != expected {
        return Err(Error::LengthMismatch {
            expected,
            actual: activations,
        });
    }
    Ok(())
}

/// Checks that the weight and activation rows have the same number of blocks.
#[cfg_attr(
    not(any(
        target_arch = "x86_64",
        all(
            target_arch = "aarch64",
            target_feature = "neon",
            target_endian = "little"
        )
    )),
    allow(dead_code)
)]
fn same_blocks(weights: usize, activations: usize) -> Result<()> {
    if weights == activations {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            expected: weights,
            actual: activations,
        })
    }
}

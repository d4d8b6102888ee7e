//! DeepSeek-V2/V3 multi-head latent attention (MLA), in the absorbed form llama.cpp uses.
//!
//! Per token: the query comes from a low-rank path (`attn_q_a`, RMSNorm, `attn_q_b`) or a
//! full `attn_q`, split per head into a "nope" part and a RoPE part; the keys and values
//! of all heads come from one compressed latent `c = RMSNorm(first kv_lora_rank rows of
//! attn_kv_a_mqa · x)` plus one shared RoPE key `k_pe` (its last rows). The cache holds
//! `[c, k_pe]` as the key and `c` as the value of one KV head. Each head's nope query is
//! mapped into latent space by its slice of `attn_k_b` (`q̃ = K_bᵀ q_nope`), so the score
//! `q_nope · (K_b c) + q_pe · k_pe` is the plain dot product `[q̃, q_pe] · [c, k_pe]` and
//! the generic attention runs unchanged; its per-head output (a latent) becomes the
//! head's value through its slice of `attn_v_b`.
//!
//! Older DeepSeek GGUFs (converted before llama.cpp split the tensor) and Hugging Face
//! checkpoints (`kv_b_proj`) carry one combined `attn_kv_b` of `n_head · (nope + value)`
//! rows of `kv_lora_rank` columns instead: per head `nope` rows of `W_k` (the key's nope
//! part is `W_k c`), then `value_length` rows of `W_v`. It is used in place, in the same
//! absorbed form with the same compressed cache. llama.cpp runs such files
//! non-absorbed (`K = [W_k ĉ, k_pe]`, `V = W_v ĉ` per head in its cache, with `ĉ` the
//! latent rounded to the weight's activation format, Q8_0 for Q8_0 weights); the same
//! function is computed here, differing only in f32 summation order:
//! - the latent is rounded to `ĉ` the same way before it is cached (a no-op for F32);
//! - the absorbed query `q̃ = W_kᵀ q_nope` is a transposed product: one row of `W_k` at a
//!   time is dequantized into a `kv_lora_rank` scratch row and added, times the query's
//!   element, into `q̃` of every token of the batch (f32, rows in ascending order, each
//!   row read once per batch), so `q̃ · ĉ = q_nope · W_k ĉ`;
//! - the value `W_v · o` of the head's attention output `o = Σ p_j ĉ_j` is taken row by
//!   row the same way (each row dequantized once per batch, an f32 dot product with every
//!   token's `o`), so that `o` is not rounded again: `W_v o = Σ p_j W_v ĉ_j`.
//!
//! (Not parallelised: these products are small next to the other projections.)

use super::{Model, ModelConfig, block_tensor, check_matrix, check_norm, norm_in_place};
use crate::error::name_of;
use crate::gguf::names::layer_tensor;
use crate::model::MlaConfig;
use crate::quant::{TensorType, dequantize_row, quantize_row};
use crate::source::TensorSource;
use crate::tensor::TensorView;
use crate::{Error, Result};

/// One block's latent-attention weights.
#[derive(Clone, Copy, Debug)]
pub(super) struct Weights<'a> {
    /// `attn_q_a` and its norm, when the query has a low-rank path.
    q_a: Option<(TensorView<'a>, TensorView<'a>)>,
    /// `attn_q_b` (after `q_a`) or the full `attn_q`.
    q: TensorView<'a>,
    /// `attn_kv_a_mqa`: the latent, then the shared RoPE key.
    kv_a: TensorView<'a>,
    kv_a_norm: TensorView<'a>,
    /// How keys and values are rebuilt from the latent.
    kv_b: KvB<'a>,
}

/// The latent-to-head matrices, split (llama.cpp's current files) or combined.
#[derive(Clone, Copy, Debug)]
enum KvB<'a> {
    Split {
        /// `attn_k_b`: per head `kv_lora_rank` rows of `nope` columns.
        k_b: TensorView<'a>,
        /// `attn_v_b`: per head `value_length` rows of `kv_lora_rank` columns.
        v_b: TensorView<'a>,
    },
    /// `attn_kv_b`: per head `nope` rows of `W_k`, then `value_length` rows of `W_v`, each
    /// `kv_lora_rank` wide.
    Combined(TensorView<'a>),
}

/// Scratch floats per token: the rebuilt values, the query latent, the query, the KV
/// latent with the RoPE key.
pub(super) fn scratch_per_token(c: &ModelConfig, m: &MlaConfig) -> usize {
    c.n_head * m.value_length
        + m.q_lora_rank
        + c.n_head * m.key_length
        + m.kv_lora_rank
        + c.rope_dims
}

/// Scratch floats per batch besides [`scratch_per_token`]: one dequantized row of
/// `attn_kv_b` when some block reads the combined tensor.
pub(super) fn scratch_per_batch(m: &MlaConfig, combined: bool) -> usize {
    if combined { m.kv_lora_rank } else { 0 }
}

/// Checks that `view` is `[cols, rows, heads]` (GGUF order).
fn check_heads(view: &TensorView<'_>, name: &str, dims: [usize; 3]) -> Result<()> {
    for (dim, expected) in dims.into_iter().chain([1]).enumerate() {
        if view.ne(dim) != expected as u64 {
            return Err(Error::BadTensorShape {
                tensor: name_of(name),
                dim: dim as u8,
                expected: expected as u64,
                actual: view.ne(dim),
            });
        }
    }
    Ok(())
}

/// Head `h`'s `[cols, rows]` slice of a `[cols, rows, heads]` tensor.
fn head<'a>(view: &TensorView<'a>, h: usize) -> Result<TensorView<'a>> {
    let (cols, rows) = (view.ne(0), view.ne(1));
    let bytes = view.row_bytes() * rows as usize;
    let data = view
        .data()
        .get(h * bytes..(h + 1) * bytes)
        .ok_or(Error::InvalidModelConfig {
            reason: "a latent-attention head slice is out of range",
        })?;
    TensorView::new(view.ty(), &[cols, rows], data)
}

impl<'a> Weights<'a> {
    /// Block `layer`'s weights, shapes checked against `c` and `m`.
    pub(super) fn from_source<S: TensorSource<'a> + ?Sized>(
        file: &S,
        c: &ModelConfig,
        m: &MlaConfig,
        layer: usize,
    ) -> Result<Self> {
        let get = |suffix| block_tensor(file, layer, suffix);
        let name = |suffix: &str| layer_tensor(layer, suffix).unwrap_or_default();
        let nope = m.key_length - c.rope_dims;
        let q_width = c.n_head * m.key_length;
        let (q_a, q) = if m.q_lora_rank > 0 {
            let q_a = get("attn_q_a.weight")?;
            check_matrix(&q_a, &name("attn_q_a.weight"), c.n_embd, m.q_lora_rank)?;
            let norm = get("attn_q_a_norm.weight")?;
            check_norm(&norm, &name("attn_q_a_norm.weight"), m.q_lora_rank)?;
            let q_b = get("attn_q_b.weight")?;
            check_matrix(&q_b, &name("attn_q_b.weight"), m.q_lora_rank, q_width)?;
            (Some((q_a, norm)), q_b)
        } else {
            let q = get("attn_q.weight")?;
            check_matrix(&q, &name("attn_q.weight"), c.n_embd, q_width)?;
            (None, q)
        };
        let kv_a = get("attn_kv_a_mqa.weight")?;
        let kv_rows = m.kv_lora_rank + c.rope_dims;
        check_matrix(&kv_a, &name("attn_kv_a_mqa.weight"), c.n_embd, kv_rows)?;
        let kv_a_norm = get("attn_kv_a_norm.weight")?;
        check_norm(&kv_a_norm, &name("attn_kv_a_norm.weight"), m.kv_lora_rank)?;
        // The split tensors when the file has both (llama.cpp prefers them), else the
        // combined one.
        let split = (get("attn_k_b.weight"), get("attn_v_b.weight"));
        let kv_b = match split {
            (Ok(k_b), Ok(v_b)) => {
                check_heads(
                    &k_b,
                    &name("attn_k_b.weight"),
                    [nope, m.kv_lora_rank, c.n_head],
                )?;
                let v_dims = [m.kv_lora_rank, m.value_length, c.n_head];
                check_heads(&v_b, &name("attn_v_b.weight"), v_dims)?;
                for view in [&k_b, &v_b] {
                    if view.ty().activation_type().is_none() {
                        return Err(Error::UnsupportedType { ty: view.ty() });
                    }
                }
                KvB::Split { k_b, v_b }
            }
            (k_b, v_b) => {
                let Ok(kv_b) = get("attn_kv_b.weight") else {
                    // Neither form: name the split tensor that is missing.
                    k_b?;
                    v_b?;
                    return Err(Error::MissingTensor {
                        tensor: name_of(&name("attn_kv_b.weight")),
                    });
                };
                let rows = c.n_head * (nope + m.value_length);
                check_matrix(&kv_b, &name("attn_kv_b.weight"), m.kv_lora_rank, rows)?;
                KvB::Combined(kv_b)
            }
        };
        Ok(Weights {
            q_a,
            q,
            kv_a,
            kv_a_norm,
            kv_b,
        })
    }

    /// Whether the block reads the combined `attn_kv_b` (it then needs
    /// [`scratch_per_batch`]).
    pub(super) fn combined(&self) -> bool {
        matches!(self.kv_b, KvB::Combined(_))
    }

    /// Every matrix the attention multiplies by (for sizing and byte counts).
    pub(super) fn projections(&self) -> impl Iterator<Item = TensorView<'a>> {
        let q_a = self.q_a.map(|(q_a, _)| q_a);
        let (k_b, v_b) = match self.kv_b {
            KvB::Split { k_b, v_b } => (Some(k_b), Some(v_b)),
            KvB::Combined(kv_b) => (Some(kv_b), None),
        };
        q_a.into_iter()
            .chain([self.q, self.kv_a])
            .chain(k_b)
            .chain(v_b)
    }
}

impl<const MAX_LAYERS: usize> Model<'_, MAX_LAYERS> {
    /// The absorbed queries into `q` (`t × n_head × (kv_lora_rank + rope)`) and the batch's
    /// `[c, k_pe]` keys and `c` values into `new_keys` / `new_values` (token `i` at position
    /// `start + i`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn latent_qkv(
        &self,
        w: &Weights<'_>,
        start: usize,
        xn: &[f32],
        acts: &mut [u8],
        scratch: &mut [f32],
        q: &mut [f32],
        new_keys: &mut [f32],
        new_values: &mut [f32],
    ) -> Result<()> {
        let c = &self.config;
        let m = c.mla.ok_or(Error::InvalidModelConfig {
            reason: "latent attention without its configuration",
        })?;
        let t = xn.len() / c.n_embd;
        let (rope_dims, lora) = (c.rope_dims, m.kv_lora_rank);
        let nope = m.key_length - rope_dims;
        let (_, rest) = scratch.split_at_mut(t * c.out_dim());
        let (q_latent, rest) = rest.split_at_mut(t * m.q_lora_rank);
        let (q_full, rest) = rest.split_at_mut(t * c.n_head * m.key_length);
        let (kv, rest) = rest.split_at_mut(t * (lora + rope_dims));

        match &w.q_a {
            Some((q_a, norm)) => {
                let mut targets = [(&w.kv_a, &mut *kv), (q_a, &mut *q_latent)];
                self.project_each(xn, c.n_embd, acts, &mut targets)?;
                norm_in_place(q_latent, norm, c.rms_eps);
                self.project(&w.q, q_latent, m.q_lora_rank, acts, q_full)?;
            }
            None => {
                let mut targets = [(&w.kv_a, &mut *kv), (&w.q, &mut *q_full)];
                self.project_each(xn, c.n_embd, acts, &mut targets)?;
            }
        }

        let (kd, vd) = (c.k_dim(), c.v_dim());
        for (i, kv) in kv.chunks_exact_mut(lora + rope_dims).enumerate() {
            let pos = start + i;
            let (latent, k_pe) = kv.split_at_mut(lora);
            norm_in_place(latent, &w.kv_a_norm, c.rms_eps);
            if let KvB::Combined(kv_b) = &w.kv_b {
                round_to_activation(kv_b, latent, acts)?;
            }
            c.rope.apply(k_pe, pos);
            let key = &mut new_keys[i * kd..(i + 1) * kd];
            key[..lora].copy_from_slice(latent);
            key[lora..].copy_from_slice(k_pe);
            new_values[i * vd..(i + 1) * vd].copy_from_slice(latent);

            for h in 0..c.n_head {
                let at = (i * c.n_head + h) * m.key_length;
                let (q_nope, q_pe) = q_full[at..at + m.key_length].split_at_mut(nope);
                c.rope.apply(q_pe, pos);
                let out = &mut q[(i * c.n_head + h) * c.head_dim..][..c.head_dim];
                let (q_lat, q_rope) = out.split_at_mut(lora);
                match &w.kv_b {
                    KvB::Split { k_b, .. } => {
                        self.project(&head(k_b, h)?, q_nope, nope, acts, q_lat)?
                    }
                    KvB::Combined(_) => q_lat.fill(0.0),
                }
                q_rope.copy_from_slice(q_pe);
            }
        }
        if let KvB::Combined(kv_b) = &w.kv_b {
            let actual = rest.len();
            let row = rest.get_mut(..lora).ok_or(Error::BufferTooSmall {
                needed: lora,
                actual,
            })?;
            absorb_combined(kv_b, c.n_head, &m, nope, q_full, q, row)?;
        }
        Ok(())
    }

    /// Each head's value from its attention output (a latent) through its slice of
    /// `attn_v_b`, into the front of `scratch` (`t × n_head × value_length`, the input of
    /// `attn_output`).
    pub(super) fn latent_values(
        &self,
        w: &Weights<'_>,
        attn: &[f32],
        acts: &mut [u8],
        scratch: &mut [f32],
    ) -> Result<()> {
        let c = &self.config;
        let m = c.mla.ok_or(Error::InvalidModelConfig {
            reason: "latent attention without its configuration",
        })?;
        let lora = m.kv_lora_rank;
        let heads = attn
            .chunks_exact(lora)
            .zip(scratch.chunks_exact_mut(m.value_length));
        let nope = m.key_length - c.rope_dims;
        match &w.kv_b {
            KvB::Split { v_b, .. } => {
                for (n, (latent, value)) in heads.enumerate() {
                    self.project(&head(v_b, n % c.n_head)?, latent, lora, acts, value)?;
                }
            }
            KvB::Combined(kv_b) => {
                let t = attn.len() / (c.n_head * lora).max(1);
                let (values, rest) = scratch.split_at_mut(t * c.n_head * m.value_length);
                let at = t * scratch_per_token(c, &m) - values.len();
                let actual = rest.len();
                let row = rest.get_mut(at..at + lora).ok_or(Error::BufferTooSmall {
                    needed: at + lora,
                    actual,
                })?;
                for h in 0..c.n_head {
                    for j in 0..m.value_length {
                        let r = h * (nope + m.value_length) + nope + j;
                        dequantize_row(kv_b.ty(), kv_row(kv_b, r)?, row)?;
                        for i in 0..t {
                            let latent = &attn[(i * c.n_head + h) * lora..][..lora];
                            values[(i * c.n_head + h) * m.value_length + j] =
                                latent.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Row `r` of `view`.
fn kv_row<'a>(view: &TensorView<'a>, r: usize) -> Result<&'a [u8]> {
    view.row(r as u64).ok_or(Error::InvalidModelConfig {
        reason: "a latent-attention head slice is out of range",
    })
}

/// Rounds `latent` through `kv_b`'s activation format in place (`bytes` as scratch), as
/// llama.cpp's non-absorbed graph rounds the latent it multiplies `attn_kv_b` by (a no-op
/// for F32 weights).
fn round_to_activation(kv_b: &TensorView<'_>, latent: &mut [f32], bytes: &mut [u8]) -> Result<()> {
    let ty = kv_b.ty();
    let act = ty.activation_type().ok_or(Error::UnsupportedType { ty })?;
    if act == TensorType::F32 {
        return Ok(());
    }
    let rb = crate::moe::ffn::act_row_bytes(act, latent.len());
    let available = bytes.len();
    let buf = bytes.get_mut(..rb).ok_or(Error::WorkspaceTooSmall {
        needed: rb,
        actual: available,
    })?;
    quantize_row(act, latent, buf)?;
    dequantize_row(act, buf, latent)
}

/// `q̃_h += Σ_j q_nope_h[j] · W_k_h[j, :]` for every token and head, from the combined
/// `attn_kv_b` (`q̃` zeroed by the caller, `q_full` the batch's per-head queries of
/// `key_length`, `q` the absorbed queries of `head_dim`): each of head `h`'s `nope` rows
/// is dequantized once into `row`, then added into every token's `q̃_h`, rows in ascending
/// order.
fn absorb_combined(
    kv_b: &TensorView<'_>,
    n_head: usize,
    m: &MlaConfig,
    nope: usize,
    q_full: &[f32],
    q: &mut [f32],
    row: &mut [f32],
) -> Result<()> {
    let head_dim = m.kv_lora_rank + (m.key_length - nope);
    let n_tokens = q_full.len() / (n_head * m.key_length).max(1);
    for h in 0..n_head {
        for j in 0..nope {
            let r = h * (nope + m.value_length) + j;
            dequantize_row(kv_b.ty(), kv_row(kv_b, r)?, row)?;
            for i in 0..n_tokens {
                let x = q_full[(i * n_head + h) * m.key_length + j];
                let out = &mut q[(i * n_head + h) * head_dim..][..m.kv_lora_rank];
                for (o, w) in out.iter_mut().zip(row.iter()) {
                    *o += x * w;
                }
            }
        }
    }
    Ok(())
}

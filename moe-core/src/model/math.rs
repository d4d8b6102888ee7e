//! The f32 operations of a transformer block besides matrix products, written as ggml
//! computes them (so logits track llama.cpp's): RMSNorm, RoPE and causal attention.

/// `out = (x / sqrt(mean(x²) + eps)) · w(i)`: the sum of squares in f64, the scale
/// `1 / sqrt(mean + eps)` in f32, then two f32 multiplies per element (ggml's `rms_norm`
/// followed by the weight multiply).
pub(crate) fn rms_norm(x: &[f32], eps: f32, out: &mut [f32], w: impl Fn(usize) -> f32) {
    let scale = rms_scale(x, eps);
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        *o = (v * scale) * w(i);
    }
}

/// [`rms_norm`] of `x` into itself.
pub(crate) fn rms_norm_in_place(x: &mut [f32], eps: f32, w: impl Fn(usize) -> f32) {
    let scale = rms_scale(x, eps);
    for (i, v) in x.iter_mut().enumerate() {
        *v = (*v * scale) * w(i);
    }
}

/// `1 / sqrt(mean(x²) + eps)`, the sum of squares in f64 as ggml keeps it.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let mean = (sum / x.len().max(1) as f64) as f32;
    1.0 / libm::sqrtf(mean + eps)
}

/// Rotates the first `dims` elements of `head` in adjacent pairs `(2i, 2i + 1)` by
/// `pos · base^(−2i/dims)` (llama.cpp's "normal" RoPE, the Llama/Mistral/Mixtral layout in
/// GGUF files). The angle is advanced by repeated multiplication in f32 as ggml does.
pub(crate) fn rope_normal(head: &mut [f32], dims: usize, pos: usize, base: f32) {
    let theta_scale = libm::powf(base, -2.0 / dims as f32);
    let mut theta = pos as f32;
    for pair in head[..dims].chunks_exact_mut(2) {
        let (sin, cos) = (libm::sinf(theta), libm::cosf(theta));
        let (x0, x1) = (pair[0], pair[1]);
        pair[0] = x0 * cos - x1 * sin;
        pair[1] = x0 * sin + x1 * cos;
        theta *= theta_scale;
    }
}

/// Rotates the first `dims` elements of `head` in pairs `(i, i + dims/2)` by
/// `pos · base^(−2i/dims)` (GPT-NeoX's layout: Qwen, OLMoE), angles as in [`rope_normal`].
pub(crate) fn rope_neox(head: &mut [f32], dims: usize, pos: usize, base: f32) {
    let theta_scale = libm::powf(base, -2.0 / dims as f32);
    let mut theta = pos as f32;
    let (lo, hi) = head[..dims].split_at_mut(dims / 2);
    for (x0, x1) in lo.iter_mut().zip(hi) {
        let (sin, cos) = (libm::sinf(theta), libm::cosf(theta));
        let (a, b) = (*x0, *x1);
        *x0 = a * cos - b * sin;
        *x1 = a * sin + b * cos;
        theta *= theta_scale;
    }
}

/// One query head attending over `n` cached positions: `out = Σ_j softmax_j(scale · q·k_j)
/// v_j`, where `keys(j)` / `values(j)` give cached rows (f32 or f16). Two passes over the
/// keys (the maximum score, then the exponentials) so no per-position scratch is needed.
pub(crate) fn attend<'k, E: super::kv::Element + 'k>(
    q: &[f32],
    n: usize,
    scale: f32,
    keys: impl Fn(usize) -> &'k [E],
    values: impl Fn(usize) -> &'k [E],
    out: &mut [f32],
) {
    let score = |j: usize| -> f32 {
        q.iter()
            .zip(keys(j))
            .map(|(a, b)| a * b.load())
            .sum::<f32>()
            * scale
    };
    let max = (0..n).map(score).fold(f32::NEG_INFINITY, f32::max);
    out.fill(0.0);
    let mut sum = 0.0f64;
    for j in 0..n {
        let p = libm::expf(score(j) - max);
        sum += f64::from(p);
        for (o, v) in out.iter_mut().zip(values(j)) {
            *o += p * v.load();
        }
    }
    let inv = (1.0 / sum) as f32;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

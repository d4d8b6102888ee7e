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

/// RoPE as ggml applies it, with linear and YaRN frequency scaling.
///
/// Pair `i` (of `dims / 2`) is rotated by `θ = pos · base^(−2i/dims)`, advanced by repeated
/// multiplication in f32 as ggml does. With scaling, `θ_interp = freq_scale · θ`; YaRN
/// mixes `θ_interp` and `θ` by a ramp over the pair index between `corr_dims` and
/// multiplies cos and sin by `attn_factor · (1 + 0.1 ln(1/freq_scale))`. Without scaling
/// every factor is 1 and the rotation is the plain one, bit for bit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Which elements form a pair.
    pub layout: super::RopeLayout,
    /// Leading elements of each head that rotate.
    pub dims: usize,
    /// Frequency base.
    pub base: f32,
    /// `1 / factor` with linear or YaRN scaling, else 1.
    pub freq_scale: f32,
    /// YaRN's extrapolation mix: 1 with YaRN, 0 otherwise.
    pub ext_factor: f32,
    /// Factor on cos and sin (YaRN's attention factor), 1 by default.
    pub attn_factor: f32,
    /// YaRN's correction range of pair indices `[low, high]`.
    pub corr_dims: [f32; 2],
}

impl Rope {
    /// Rotates the first `dims` elements of `head` for position `pos`.
    pub fn apply(&self, head: &mut [f32], pos: usize) {
        let half = self.dims / 2;
        let theta_scale = libm::powf(self.base, -2.0 / self.dims as f32);
        let mut theta = pos as f32;
        for i in 0..half {
            let (cos, sin) = self.cos_sin(theta, i);
            let (a, b) = match self.layout {
                super::RopeLayout::Normal => (2 * i, 2 * i + 1),
                super::RopeLayout::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
            theta *= theta_scale;
        }
    }

    /// ggml's `rope_yarn`: cos and sin of pair `pair`'s angle `theta_extrap`.
    fn cos_sin(&self, theta_extrap: f32, pair: usize) -> (f32, f32) {
        let theta_interp = self.freq_scale * theta_extrap;
        let (mut theta, mut mscale) = (theta_interp, self.attn_factor);
        if self.ext_factor != 0.0 {
            let [low, high] = self.corr_dims;
            let y = (pair as f32 - low) / (high - low).max(0.001);
            let ramp_mix = (1.0 - y.clamp(0.0, 1.0)) * self.ext_factor;
            theta = theta_interp * (1.0 - ramp_mix) + theta_extrap * ramp_mix;
            mscale *= 1.0 + 0.1 * libm::logf(1.0 / self.freq_scale);
        }
        (libm::cosf(theta) * mscale, libm::sinf(theta) * mscale)
    }
}

/// ggml's YaRN correction range: the pair indices whose wavelength spans `beta_fast` and
/// `beta_slow` rotations over the original context, floored / ceiled and clamped.
pub(crate) fn yarn_corr_dims(dims: usize, n_ctx_orig: usize, base: f32) -> [f32; 2] {
    const BETA_FAST: f32 = 32.0;
    const BETA_SLOW: f32 = 1.0;
    let corr_dim = |n_rot: f32| {
        dims as f32 * libm::logf(n_ctx_orig as f32 / (n_rot * 2.0 * core::f32::consts::PI))
            / (2.0 * libm::logf(base))
    };
    let start = libm::floorf(corr_dim(BETA_FAST));
    let end = libm::ceilf(corr_dim(BETA_SLOW));
    [start.max(0.0), end.min(dims as f32 - 1.0)]
}

/// One query head attending over `n` cached positions: `out = Σ_j softmax_j(scale · q·k_j)
/// v_j`, where `keys(j)` / `values(j)` give cached rows (f32 or f16). One pass over the
/// keys with a running maximum (what has been summed is rescaled when it grows), so no
/// per-position scratch is needed and each score is computed once.
pub(crate) fn attend<'k, E: super::kv::Element + 'k>(
    q: &[f32],
    n: usize,
    scale: f32,
    keys: impl Fn(usize) -> &'k [E],
    values: impl Fn(usize) -> &'k [E],
    out: &mut [f32],
) {
    out.fill(0.0);
    let mut max = f32::NEG_INFINITY;
    let mut sum = 0.0f64;
    for j in 0..n {
        let score = dot(q, keys(j)) * scale;
        if score > max {
            // e^(old max − new max): 0 on the first position, whose sums are all zero.
            let rescale = libm::expf(max - score);
            sum *= f64::from(rescale);
            out.iter_mut().for_each(|o| *o *= rescale);
            max = score;
        }
        let p = libm::expf(score - max);
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

/// `Σ q_i k_i` in eight interleaved partial sums (independent chains the compiler turns
/// into vector lanes), then the tail.
fn dot<E: super::kv::Element>(q: &[f32], k: &[E]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (q8, q_tail) = q.as_chunks::<8>();
    let (k8, k_tail) = k.as_chunks::<8>();
    for (a, b) in q8.iter().zip(k8) {
        for ((l, a), b) in lanes.iter_mut().zip(a).zip(b) {
            *l += a * b.load();
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for (a, b) in q_tail.iter().zip(k_tail) {
        sum += a * b.load();
    }
    sum
}

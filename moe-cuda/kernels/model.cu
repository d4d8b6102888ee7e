// The rest of a decoder block on the device (moe-cuda's GpuModel): token embedding rows,
// RMSNorm, projections (one weight matrix × activation rows), biases, RoPE (normal and
// NeoX layouts, linear and YaRN scaling), the KV-cache write, causal grouped-query
// attention over the cache and the residual adds — the f32 operations of
// moe-core/src/model (mod.rs, math.rs), in the same order with f32 results.
//
// Layouts: activation rows are token-major (`row t` at `t * width`); a projection's
// weight is its GGUF tensor `[n_in, n_out]` unchanged (row r = output r); one layer's
// KV cache is `context × k_dim` keys and `context × v_dim` values, position-major, f32.

#define MODEL_ROWS_PER_BLOCK 4 // warps per block of the projection kernels
#define ATTN_WARPS 4           // warps per (head, query) block of model_attention
#define ATTN_MAX_DIM 256       // largest head width model_attention takes (host-checked)
#define NORM_THREADS 256       // threads per row of model_rms_norm (a power of two)

// ---- Token embedding rows: one element of one row of a GGUF matrix as f32 ----
// moe-core's dequantizers (quant::*::dequantize_block), element by element, with the same
// multiplication order; __fmul_rn keeps a multiply-subtract from fusing.

template <int TY> __device__ __forceinline__ float dequant_elem(const u8 *row, int j);

template <> __device__ __forceinline__ float dequant_elem<TY_Q4_0>(const u8 *row, int j) {
    const u8 *b = row + (size_t)(j / 32) * Q4_0_BYTES;
    const int i = j % 32;
    const int byte = b[2 + (i & 15)];
    const int q = (i < 16 ? (byte & 0x0f) : (byte >> 4)) - 8;
    return ld_f16(b) * (float)q;
}

template <> __device__ __forceinline__ float dequant_elem<TY_Q5_0>(const u8 *row, int j) {
    const u8 *b = row + (size_t)(j / 32) * Q5_0_BYTES;
    const int i = j % 32;
    const u32 qh = (u32)ld_i32_a2(b + 2);
    const int byte = b[6 + (i & 15)];
    const int low = i < 16 ? (byte & 0x0f) : (byte >> 4);
    const int q = (low | (int)(((qh >> i) & 1u) << 4)) - 16;
    return ld_f16(b) * (float)q;
}

template <> __device__ __forceinline__ float dequant_elem<TY_Q8_0>(const u8 *row, int j) {
    const u8 *b = row + (size_t)(j / 32) * Q8_0_BYTES;
    return (float)(i8)b[2 + j % 32] * ld_f16(b);
}

template <> __device__ __forceinline__ float dequant_elem<TY_Q4_K>(const u8 *row, int j) {
    const u8 *b = row + (size_t)(j / 256) * Q4_K_BYTES;
    const int e = j % 256;
    const int s = e / 32;
    int sc, m;
    q4_k_scale_min(b + 4, s, &sc, &m);
    const int q = (b[16 + 32 * (e / 64) + e % 32] >> (4 * (s & 1))) & 0x0f;
    const float ds = __fmul_rn(ld_f16(b), (float)sc);
    const float dm = __fmul_rn(ld_f16(b + 2), (float)m);
    return __fmul_rn(ds, (float)q) - dm;
}

template <> __device__ __forceinline__ float dequant_elem<TY_Q5_K>(const u8 *row, int j) {
    const u8 *b = row + (size_t)(j / 256) * Q5_K_BYTES;
    const int e = j % 256;
    const int s = e / 32;
    int sc, m;
    q4_k_scale_min(b + 4, s, &sc, &m);
    const int low = (b[48 + 32 * (e / 64) + e % 32] >> (4 * (s & 1))) & 0x0f;
    const int high = (b[16 + e % 32] >> s) & 1;
    const int q = low | (high << 4);
    const float ds = __fmul_rn(ld_f16(b), (float)sc);
    const float dm = __fmul_rn(ld_f16(b + 2), (float)m);
    return __fmul_rn(ds, (float)q) - dm;
}

template <> __device__ __forceinline__ float dequant_elem<TY_Q6_K>(const u8 *row, int j) {
    const u8 *b = row + (size_t)(j / 256) * Q6_K_BYTES;
    const int e = j % 256;
    const int h = e / 128;
    const int r = e % 128;
    const int low = (b[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
    const int high = (b[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
    const int q = (low | (high << 4)) - 32;
    const float dl = __fmul_rn(ld_f16(b + 208), (float)(i8)b[192 + e / 16]);
    return __fmul_rn(dl, (float)q);
}

// F32 rows are 4-byte aligned (the table is one device allocation, rows of 4·n bytes).
template <> __device__ __forceinline__ float dequant_elem<TY_F32>(const u8 *row, int j) {
    return ((const float *)row)[j];
}

template <> __device__ __forceinline__ float dequant_elem<TY_F16>(const u8 *row, int j) {
    return ld_f16(row + 2 * (size_t)j);
}

template <> __device__ __forceinline__ float dequant_elem<TY_BF16>(const u8 *row, int j) {
    return bf16_to_f32(ld_u16(row + 2 * (size_t)j));
}

// out[t * n_embd + j] = table row tokens[t], element j, times `scale` when it is not 1
// (Granite's embedding scale). Grid (ceil(n_embd / blockDim), n_tokens). A token id out of
// range (the host refuses those first) gives a zero row.
template <int TY>
__device__ void get_rows(const u8 *__restrict__ table, unsigned long long row_bytes,
                         const int *__restrict__ tokens, int n_vocab, int n_embd, float scale,
                         float *__restrict__ out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (j >= n_embd) {
        return;
    }
    const int token = tokens[t];
    float v = 0.0f;
    if (token >= 0 && token < n_vocab) {
        v = dequant_elem<TY>(table + (size_t)token * row_bytes, j);
        if (scale != 1.0f) {
            v = __fmul_rn(v, scale);
        }
    }
    out[(size_t)t * n_embd + j] = v;
}

// ---- Projections: out[t * n_out + r] = W_r · x_t ----
// One warp per weight row, M tokens per block row (grid (ceil(n_out / 4), ceil(n_tokens /
// M)), 128 threads): each weight block is read once for the M tokens. `x` holds the rows
// in the weight's activation format (Q8_0, Q8_K, or the f32 rows for float weights),
// `x_row_bytes` each.
template <int TY, int M>
__device__ void matmul(const u8 *__restrict__ w, const u8 *__restrict__ x,
                       unsigned long long x_row_bytes, int n_in, int n_out, int n_tokens,
                       float *__restrict__ out) {
    typedef WeightFormat<TY> F;
    const int r = blockIdx.x * MODEL_ROWS_PER_BLOCK + threadIdx.x / WARP;
    const int t0 = blockIdx.y * M;
    if (r >= n_out || t0 >= n_tokens) {
        return;
    }
    const int n_valid = n_tokens - t0 < M ? n_tokens - t0 : M;
    const u8 *arows[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
        arows[m] = x + (size_t)(t0 + (m < n_valid ? m : 0)) * x_row_bytes;
    }
    const int n_blocks = n_in / F::block_len;
    const size_t row_bytes = (size_t)n_blocks * F::block_bytes;
    float acc[M];
    warp_row_dot<TY, M>(w + (size_t)r * row_bytes, arows, n_valid, n_blocks, acc);
    if ((threadIdx.x & (WARP - 1)) == 0) {
#pragma unroll
        for (int m = 0; m < M; ++m) {
            if (m < n_valid) {
                out[(size_t)(t0 + m) * n_out + r] = acc[m];
            }
        }
    }
}

#define DEFINE_MODEL_KERNELS(NAME, TY)                                                              \
    extern "C" __global__ void model_get_rows_##NAME(                                               \
        const u8 *__restrict__ table, unsigned long long row_bytes, const int *__restrict__ tokens, \
        int n_vocab, int n_embd, float scale, float *__restrict__ out) {                            \
        get_rows<TY>(table, row_bytes, tokens, n_vocab, n_embd, scale, out);                        \
    }                                                                                               \
    extern "C" __global__ void model_matmul_##NAME##_m1(                                            \
        const u8 *__restrict__ w, const u8 *__restrict__ x, unsigned long long x_row_bytes,         \
        int n_in, int n_out, int n_tokens, float *__restrict__ out) {                               \
        matmul<TY, 1>(w, x, x_row_bytes, n_in, n_out, n_tokens, out);                               \
    }                                                                                               \
    extern "C" __global__ void model_matmul_##NAME##_m8(                                            \
        const u8 *__restrict__ w, const u8 *__restrict__ x, unsigned long long x_row_bytes,         \
        int n_in, int n_out, int n_tokens, float *__restrict__ out) {                               \
        matmul<TY, 8>(w, x, x_row_bytes, n_in, n_out, n_tokens, out);                               \
    }

DEFINE_MODEL_KERNELS(q4_0, TY_Q4_0)
DEFINE_MODEL_KERNELS(q5_0, TY_Q5_0)
DEFINE_MODEL_KERNELS(q8_0, TY_Q8_0)
DEFINE_MODEL_KERNELS(q4_k, TY_Q4_K)
DEFINE_MODEL_KERNELS(q5_k, TY_Q5_K)
DEFINE_MODEL_KERNELS(q6_k, TY_Q6_K)
DEFINE_MODEL_KERNELS(f32, TY_F32)
DEFINE_MODEL_KERNELS(f16, TY_F16)
DEFINE_MODEL_KERNELS(bf16, TY_BF16)

// ---- RMSNorm: out = (x / sqrt(mean(x²) + eps)) · w over pieces of n floats ----
// One block of NORM_THREADS per piece (a token's row, or one head for per-head QK norms):
// the sum of squares in double (moe-core sums in f64), the mean and the scale in f32, two
// f32 multiplies per element. `out` may be `x` (every element is read before the barrier
// that precedes the writes).
extern "C" __global__ void model_rms_norm(const float *x, const float *__restrict__ w, int n,
                                          float eps, float *out) {
    __shared__ double part[NORM_THREADS];
    const float *row = x + (size_t)blockIdx.x * n;
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const double v = (double)row[i];
        s += v * v;
    }
    part[threadIdx.x] = s;
    __syncthreads();
    for (int stride = NORM_THREADS / 2; stride > 0; stride >>= 1) {
        if ((int)threadIdx.x < stride) {
            part[threadIdx.x] += part[threadIdx.x + stride];
        }
        __syncthreads();
    }
    const float mean = (float)(part[0] / (double)n);
    const float scale = __fdiv_rn(1.0f, sqrtf(mean + eps));
    float *dst = out + (size_t)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        dst[i] = __fmul_rn(__fmul_rn(row[i], scale), w[i]);
    }
}

// x[i] += bias[i % width] for i < n (every row of the batch).
extern "C" __global__ void model_add_bias(float *__restrict__ x, const float *__restrict__ bias,
                                          int width, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        x[i] += bias[i % width];
    }
}

// x[i] += scale · b[i] (a plain add when the scale is 1), i < n: the residual adds.
extern "C" __global__ void model_add_scaled(float *__restrict__ x, const float *__restrict__ b,
                                            float scale, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        x[i] += scale == 1.0f ? b[i] : __fmul_rn(b[i], scale);
    }
}

// x[i] /= d, i < n: Granite's logit scale.
extern "C" __global__ void model_div(float *__restrict__ x, float d, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        x[i] = __fdiv_rn(x[i], d);
    }
}

// ---- RoPE (moe-core math::Rope::apply) ----
#define ROPE_NORMAL 0
#define ROPE_NEOX 1

struct RopeParams {
    int layout;        // ROPE_*
    int dims;          // leading elements of each head that rotate (even)
    float theta_scale; // base^(-2 / dims)
    float freq_scale;
    float ext_factor;
    float attn_factor;
    float corr_low;
    float corr_high;
};

// Rotates pair i of every head of rows of `n_heads × head_dim` (token t at position
// start + t). One thread per (head, pair): grid (ceil(n_heads · dims/2 / blockDim),
// n_tokens). The angle pos · theta_scale^i is advanced by i multiplications in f32, as
// the CPU loop does; YaRN's ramp and attention factor as ggml's rope_yarn.
extern "C" __global__ void model_rope(float *__restrict__ x, int n_heads, int head_dim,
                                      int start, RopeParams p) {
    const int half = p.dims / 2;
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (idx >= n_heads * half) {
        return;
    }
    const int h = idx / half;
    const int i = idx % half;
    float theta_extrap = (float)(start + t);
    for (int s = 0; s < i; ++s) {
        theta_extrap = __fmul_rn(theta_extrap, p.theta_scale);
    }
    const float theta_interp = __fmul_rn(p.freq_scale, theta_extrap);
    float theta = theta_interp;
    float mscale = p.attn_factor;
    if (p.ext_factor != 0.0f) {
        const float span = fmaxf(p.corr_high - p.corr_low, 0.001f);
        const float y = __fdiv_rn((float)i - p.corr_low, span);
        const float clamped = fminf(fmaxf(y, 0.0f), 1.0f);
        const float ramp_mix = __fmul_rn(1.0f - clamped, p.ext_factor);
        theta = __fmul_rn(theta_interp, 1.0f - ramp_mix) + __fmul_rn(theta_extrap, ramp_mix);
        mscale = __fmul_rn(mscale, 1.0f + __fmul_rn(0.1f, logf(__fdiv_rn(1.0f, p.freq_scale))));
    }
    const float c = __fmul_rn(cosf(theta), mscale);
    const float s = __fmul_rn(sinf(theta), mscale);
    float *head = x + (size_t)t * n_heads * head_dim + (size_t)h * head_dim;
    const int a = p.layout == ROPE_NEOX ? i : 2 * i;
    const int b = p.layout == ROPE_NEOX ? i + half : 2 * i + 1;
    const float x0 = head[a];
    const float x1 = head[b];
    head[a] = __fmul_rn(x0, c) - __fmul_rn(x1, s);
    head[b] = __fmul_rn(x0, s) + __fmul_rn(x1, c);
}

// cache[start * width + i] = src[i], i < n (the batch's keys or values at positions
// start.., n = n_tokens · width).
extern "C" __global__ void model_kv_store(const float *__restrict__ src, float *__restrict__ cache,
                                          int start, int width, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        cache[(size_t)start * width + i] = src[i];
    }
}

// ---- Causal grouped-query attention over the cache (moe-core math::attend) ----
struct AttnParams {
    int n_head;
    int n_head_kv;
    int head_dim;   // query/key head width (<= ATTN_MAX_DIM)
    int head_dim_v; // value head width (<= ATTN_MAX_DIM)
    int q_dim;      // n_head · head_dim: a query row
    int k_dim;      // n_head_kv · head_dim: a cached key row
    int v_dim;      // n_head_kv · head_dim_v: a cached value row
    int attn_dim;   // n_head · head_dim_v: an output row
    int start;      // position of the batch's first token
    float scale;    // attention logit scale
};

// out[t, h] = Σ_j softmax_j(scale · q[t, h] · k_j) v_j over positions j <= start + t of
// key/value head h / (n_head / n_head_kv). One block of ATTN_WARPS warps per (head,
// token): warp w takes positions w, w + ATTN_WARPS, … with a running maximum (its sums
// rescaled when the maximum grows), lane l the head elements l, l + 32, …; then the
// warps' partial sums are merged under the overall maximum.
extern "C" __global__ void model_attention(const float *__restrict__ q,
                                           const float *__restrict__ kc,
                                           const float *__restrict__ vc, AttnParams p,
                                           float *__restrict__ out) {
    __shared__ float warp_m[ATTN_WARPS];
    __shared__ float warp_s[ATTN_WARPS];
    __shared__ float warp_o[ATTN_WARPS][ATTN_MAX_DIM];
    const int h = blockIdx.x;
    const int t = blockIdx.y;
    const int warp = threadIdx.x / WARP;
    const int lane = threadIdx.x & (WARP - 1);
    const int kv = h / (p.n_head / p.n_head_kv);
    const int n_pos = p.start + t + 1;
    const float neg_inf = __int_as_float(0xff800000u);
    const float *qh = q + (size_t)t * p.q_dim + (size_t)h * p.head_dim;
    float qr[ATTN_MAX_DIM / WARP];
    float acc[ATTN_MAX_DIM / WARP];
#pragma unroll
    for (int i = 0; i < ATTN_MAX_DIM / WARP; ++i) {
        const int d = lane + WARP * i;
        qr[i] = d < p.head_dim ? qh[d] : 0.0f;
        acc[i] = 0.0f;
    }
    float m = neg_inf;
    float s = 0.0f;
    for (int j = warp; j < n_pos; j += ATTN_WARPS) {
        const float *kr = kc + (size_t)j * p.k_dim + (size_t)kv * p.head_dim;
        float part = 0.0f;
#pragma unroll
        for (int i = 0; i < ATTN_MAX_DIM / WARP; ++i) {
            const int d = lane + WARP * i;
            if (d < p.head_dim) {
                part += qr[i] * kr[d];
            }
        }
        const float score = warp_sum(part) * p.scale;
        if (score > m) {
            // e^(old max − new max): 0 on a warp's first position, whose sums are zero.
            const float rescale = expf(m - score);
            s *= rescale;
#pragma unroll
            for (int i = 0; i < ATTN_MAX_DIM / WARP; ++i) {
                acc[i] *= rescale;
            }
            m = score;
        }
        const float pr = expf(score - m);
        s += pr;
        const float *vr = vc + (size_t)j * p.v_dim + (size_t)kv * p.head_dim_v;
#pragma unroll
        for (int i = 0; i < ATTN_MAX_DIM / WARP; ++i) {
            const int d = lane + WARP * i;
            if (d < p.head_dim_v) {
                acc[i] += pr * vr[d];
            }
        }
    }
    if (lane == 0) {
        warp_m[warp] = m;
        warp_s[warp] = s;
    }
#pragma unroll
    for (int i = 0; i < ATTN_MAX_DIM / WARP; ++i) {
        const int d = lane + WARP * i;
        if (d < p.head_dim_v) {
            warp_o[warp][d] = acc[i];
        }
    }
    __syncthreads();
    float mx = neg_inf;
    for (int w = 0; w < ATTN_WARPS; ++w) {
        mx = fmaxf(mx, warp_m[w]);
    }
    for (int d = threadIdx.x; d < p.head_dim_v; d += blockDim.x) {
        float total = 0.0f;
        float o = 0.0f;
        for (int w = 0; w < ATTN_WARPS; ++w) {
            if (warp_m[w] > neg_inf) { // a warp without positions adds nothing
                const float f = expf(warp_m[w] - mx);
                total += warp_s[w] * f;
                o += warp_o[w][d] * f;
            }
        }
        out[(size_t)t * p.attn_dim + (size_t)h * p.head_dim_v + d] = __fdiv_rn(o, total);
    }
}

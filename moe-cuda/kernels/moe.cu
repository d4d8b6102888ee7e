// The expert FFN on the device: gate/up matrix × vector (fused activation), down, and
// the weighted combine, for routed (token, slot) pairs whose expert ids live in device
// memory; plus the align step that groups pairs by expert for prefill.
//
// Work is organised in tiles of M pairs of one expert: tile y holds the pair indices
// tile_pairs[y * M .. y * M + M) (-1 = empty) of expert tile_expert[y] (-1 = no work).
// Decode uses M = 1 with tile_pairs = 0, 1, 2, … and tile_expert = the routed ids
// themselves; prefill uses M = 8 with the output of moe_align. Each warp computes one
// weight row for the whole tile, so each expert's rows are streamed once per tile.
//
// Pair p is slot p % k of token p / k. Expert e's matrices sit at slot_of[e] in the
// uploaded stacks (-1: not resident on this device, skipped).
//
// A shared expert runs through the same kernels as a stack of one expert with k = 1
// (pair = token): tile_pairs = 0, 1, 2, … (entries >= n_pairs are padding), tile_expert
// and slot_of all 0.

#define ROWS_PER_BLOCK 4 // warps per block, one weight row each

struct FfnParams {
    int n_embd;
    int n_ff;
    int k;              // slots per token
    int has_gate;
    int activation;     // ACTIVATION_*
    int n_pairs;        // T · k
    unsigned long long gate_up_matrix_bytes; // bytes of one expert's gate (= up) matrix
    unsigned long long down_matrix_bytes;    // bytes of one expert's down matrix
    unsigned long long x_row_bytes;          // bytes of one quantized input row
    unsigned long long h_row_bytes;          // bytes of one quantized intermediate row
};

// hidden[p * n_ff + r] = act(gate_r · x) · (up_r · x) (or act(up_r · x) without a gate).
template <int TY, int M>
__device__ void gate_up(const u8 *__restrict__ gate, const u8 *__restrict__ up,
                        const u8 *__restrict__ xq, const int *__restrict__ tile_pairs,
                        const int *__restrict__ tile_expert, const int *__restrict__ slot_of,
                        FfnParams p, float *__restrict__ hidden) {
    typedef WeightFormat<TY> F;
    const int r = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP;
    const int y = blockIdx.y;
    const int e = tile_expert[y];
    if (r >= p.n_ff || e < 0) {
        return;
    }
    const int slot = slot_of[e];
    if (slot < 0) {
        return;
    }
    int pairs[M];
    const u8 *arows[M];
    int n_valid = 0;
#pragma unroll
    for (int m = 0; m < M; ++m) {
        // Indices past the batch are padding too (the shared expert's tiles read `0, 1,
        // 2, …` up to a whole tile).
        const int q = tile_pairs[y * M + m];
        pairs[m] = q < p.n_pairs ? q : -1;
    }
    // Compact the tile's valid pairs to the front (padding comes last in moe_align).
#pragma unroll
    for (int m = 0; m < M; ++m) {
        if (pairs[m] >= 0) {
            arows[n_valid] = xq + (size_t)(pairs[m] / p.k) * p.x_row_bytes;
            ++n_valid;
        }
    }
    for (int m = n_valid; m < M; ++m) {
        arows[m] = xq;
    }
    const int n_blocks = p.n_embd / F::block_len;
    const size_t row_bytes = (size_t)n_blocks * F::block_bytes;
    const size_t row_at = (size_t)slot * p.gate_up_matrix_bytes + (size_t)r * row_bytes;
    float u[M];
    warp_row_dot<TY, M>(up + row_at, arows, n_valid, n_blocks, u);
    float g[M] = {};
    if (p.has_gate) {
        warp_row_dot<TY, M>(gate + row_at, arows, n_valid, n_blocks, g);
    }
    if ((threadIdx.x & (WARP - 1)) == 0) {
        int v = 0;
#pragma unroll
        for (int m = 0; m < M; ++m) {
            if (pairs[m] >= 0) {
                const float h = p.has_gate ? activation(p.activation, g[v]) * u[v]
                                           : activation(p.activation, u[v]);
                hidden[(size_t)pairs[m] * p.n_ff + r] = h;
                ++v;
            }
        }
    }
}

// y[p * n_embd + r] = down_r · h_p.
template <int TY, int M>
__device__ void down(const u8 *__restrict__ downw, const u8 *__restrict__ hq,
                     const int *__restrict__ tile_pairs, const int *__restrict__ tile_expert,
                     const int *__restrict__ slot_of, FfnParams p, float *__restrict__ y_out) {
    typedef WeightFormat<TY> F;
    const int r = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP;
    const int y = blockIdx.y;
    const int e = tile_expert[y];
    if (r >= p.n_embd || e < 0) {
        return;
    }
    const int slot = slot_of[e];
    if (slot < 0) {
        return;
    }
    int pairs[M];
    const u8 *arows[M];
    int n_valid = 0;
#pragma unroll
    for (int m = 0; m < M; ++m) {
        // Indices past the batch are padding too (the shared expert's tiles read `0, 1,
        // 2, …` up to a whole tile).
        const int q = tile_pairs[y * M + m];
        pairs[m] = q < p.n_pairs ? q : -1;
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
        if (pairs[m] >= 0) {
            arows[n_valid] = hq + (size_t)pairs[m] * p.h_row_bytes;
            ++n_valid;
        }
    }
    for (int m = n_valid; m < M; ++m) {
        arows[m] = hq;
    }
    const int n_blocks = p.n_ff / F::block_len;
    const size_t row_bytes = (size_t)n_blocks * F::block_bytes;
    const size_t row_at = (size_t)slot * p.down_matrix_bytes + (size_t)r * row_bytes;
    float acc[M];
    warp_row_dot<TY, M>(downw + row_at, arows, n_valid, n_blocks, acc);
    if ((threadIdx.x & (WARP - 1)) == 0) {
        int v = 0;
#pragma unroll
        for (int m = 0; m < M; ++m) {
            if (pairs[m] >= 0) {
                y_out[(size_t)pairs[m] * p.n_embd + r] = acc[v];
                ++v;
            }
        }
    }
}

#define DEFINE_FFN_KERNELS(NAME, TY, M)                                                              \
    extern "C" __global__ void moe_gate_up_##NAME##_m##M(                                            \
        const u8 *__restrict__ gate, const u8 *__restrict__ up, const u8 *__restrict__ xq,           \
        const int *__restrict__ tile_pairs, const int *__restrict__ tile_expert,                     \
        const int *__restrict__ slot_of, FfnParams p, float *__restrict__ hidden) {                  \
        gate_up<TY, M>(gate, up, xq, tile_pairs, tile_expert, slot_of, p, hidden);                   \
    }                                                                                                \
    extern "C" __global__ void moe_down_##NAME##_m##M(                                               \
        const u8 *__restrict__ downw, const u8 *__restrict__ hq, const int *__restrict__ tile_pairs, \
        const int *__restrict__ tile_expert, const int *__restrict__ slot_of, FfnParams p,           \
        float *__restrict__ y_out) {                                                                 \
        down<TY, M>(downw, hq, tile_pairs, tile_expert, slot_of, p, y_out);                          \
    }

DEFINE_FFN_KERNELS(q4_0, TY_Q4_0, 1)
DEFINE_FFN_KERNELS(q4_0, TY_Q4_0, 8)
DEFINE_FFN_KERNELS(q5_0, TY_Q5_0, 1)
DEFINE_FFN_KERNELS(q5_0, TY_Q5_0, 8)
DEFINE_FFN_KERNELS(q8_0, TY_Q8_0, 1)
DEFINE_FFN_KERNELS(q8_0, TY_Q8_0, 8)
DEFINE_FFN_KERNELS(q4_k, TY_Q4_K, 1)
DEFINE_FFN_KERNELS(q4_k, TY_Q4_K, 8)
DEFINE_FFN_KERNELS(q5_k, TY_Q5_K, 1)
DEFINE_FFN_KERNELS(q5_k, TY_Q5_K, 8)
DEFINE_FFN_KERNELS(q6_k, TY_Q6_K, 1)
DEFINE_FFN_KERNELS(q6_k, TY_Q6_K, 8)
DEFINE_FFN_KERNELS(f32, TY_F32, 1)
DEFINE_FFN_KERNELS(f32, TY_F32, 8)
DEFINE_FFN_KERNELS(f16, TY_F16, 1)
DEFINE_FFN_KERNELS(f16, TY_F16, 8)
DEFINE_FFN_KERNELS(bf16, TY_BF16, 1)
DEFINE_FFN_KERNELS(bf16, TY_BF16, 8)

// Shared expert modes of moe_combine.
#define SHARED_NONE 0
#define SHARED_ALWAYS_ON 1 // added with weight 1 (DeepSeek)
#define SHARED_GATED 2     // added with weight shared_w[t] (Qwen2-MoE)

// out[t * n_embd + j] = Σ_slots w · y, added in ascending expert id (as the CPU layer
// adds experts), skipping empty slots and experts that are not resident; then the shared
// expert's row y_shared[t] (`shared`: SHARED_*), as the CPU layer adds it last.
extern "C" __global__ void moe_combine(const float *__restrict__ y, const int *__restrict__ ids,
                                       const float *__restrict__ weights,
                                       const int *__restrict__ slot_of, int n_tokens, int n_embd,
                                       int k, int shared, const float *__restrict__ y_shared,
                                       const float *__restrict__ shared_w,
                                       float *__restrict__ out) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = blockIdx.y;
    if (j >= n_embd || t >= n_tokens) {
        return;
    }
    float acc = 0.0f;
    int prev = -1;
    for (int r = 0; r < k; ++r) {
        // The slot with the next larger expert id.
        int best = -1;
        int best_e = 0x7fffffff;
        for (int s = 0; s < k; ++s) {
            const int e = ids[t * k + s];
            if (e > prev && e < best_e) {
                best_e = e;
                best = s;
            }
        }
        if (best < 0) {
            break;
        }
        prev = best_e;
        if (slot_of[best_e] >= 0) {
            const int pair = t * k + best;
            acc += weights[pair] * y[(size_t)pair * n_embd + j];
        }
    }
    if (shared != SHARED_NONE) {
        const float w = shared == SHARED_GATED ? shared_w[t] : 1.0f;
        acc += w * y_shared[(size_t)t * n_embd + j];
    }
    out[(size_t)t * n_embd + j] = acc;
}

// Qwen2-MoE's shared expert gate: shared_w[t] = sigmoid(gate · x_t), one warp per token.
// `ty` is the gate vector's GGUF type: F32 against the f32 rows, otherwise against the
// rows in that type's activation format (`x_row_bytes` each), as the CPU layer's dot.
extern "C" __global__ void moe_shared_gate(const u8 *__restrict__ gate, int ty,
                                           const u8 *__restrict__ x,
                                           unsigned long long x_row_bytes, int n_embd,
                                           int n_tokens, float *__restrict__ shared_w) {
    const int t = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / WARP;
    if (t >= n_tokens) {
        return;
    }
    const u8 *row = x + (size_t)t * x_row_bytes;
    const u8 *const rows[1] = {row};
    float z = 0.0f;
    switch (ty) {
    case TY_F32:
        z = warp_dot_f32((const float *)gate, (const float *)row, n_embd);
        break;
    case TY_F16:
        warp_row_dot<TY_F16, 1>(gate, rows, 1, n_embd / WeightFormat<TY_F16>::block_len, &z);
        break;
    case TY_BF16:
        warp_row_dot<TY_BF16, 1>(gate, rows, 1, n_embd / WeightFormat<TY_BF16>::block_len, &z);
        break;
    case TY_Q4_0:
        warp_row_dot<TY_Q4_0, 1>(gate, rows, 1, n_embd / WeightFormat<TY_Q4_0>::block_len, &z);
        break;
    case TY_Q5_0:
        warp_row_dot<TY_Q5_0, 1>(gate, rows, 1, n_embd / WeightFormat<TY_Q5_0>::block_len, &z);
        break;
    case TY_Q8_0:
        warp_row_dot<TY_Q8_0, 1>(gate, rows, 1, n_embd / WeightFormat<TY_Q8_0>::block_len, &z);
        break;
    case TY_Q4_K:
        warp_row_dot<TY_Q4_K, 1>(gate, rows, 1, n_embd / WeightFormat<TY_Q4_K>::block_len, &z);
        break;
    case TY_Q5_K:
        warp_row_dot<TY_Q5_K, 1>(gate, rows, 1, n_embd / WeightFormat<TY_Q5_K>::block_len, &z);
        break;
    case TY_Q6_K:
        warp_row_dot<TY_Q6_K, 1>(gate, rows, 1, n_embd / WeightFormat<TY_Q6_K>::block_len, &z);
        break;
    default:
        break; // the host refuses other types
    }
    if ((threadIdx.x & (WARP - 1)) == 0) {
        shared_w[t] = sigmoid_f(z);
    }
}

// Groups the pairs by expert (vLLM's moe_align_block_size): per-expert counts, a prefix
// sum of the counts padded to whole tiles of `tile_m`, and a scatter of pair indices.
// One block; `counts` and `cursor` hold n_expert ints of scratch. Tiles past the last
// expert's keep tile_expert = -1. `max_tiles` >= ceil(n_pairs / tile_m) + n_expert.
extern "C" __global__ void moe_align(const int *__restrict__ ids, int n_pairs, int n_expert,
                                     int tile_m, int max_tiles, int *__restrict__ counts,
                                     int *__restrict__ cursor, int *__restrict__ tile_pairs,
                                     int *__restrict__ tile_expert) {
    for (int e = threadIdx.x; e < n_expert; e += blockDim.x) {
        counts[e] = 0;
    }
    for (int i = threadIdx.x; i < max_tiles * tile_m; i += blockDim.x) {
        tile_pairs[i] = -1;
    }
    for (int i = threadIdx.x; i < max_tiles; i += blockDim.x) {
        tile_expert[i] = -1;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < n_pairs; p += blockDim.x) {
        const int e = ids[p];
        if (e >= 0 && e < n_expert) {
            atomicAdd(&counts[e], 1);
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int at = 0;
        for (int e = 0; e < n_expert; ++e) {
            cursor[e] = at;
            const int tiles = (counts[e] + tile_m - 1) / tile_m;
            for (int i = 0; i < tiles && at / tile_m + i < max_tiles; ++i) {
                tile_expert[at / tile_m + i] = e;
            }
            at += tiles * tile_m;
        }
    }
    __syncthreads();
    for (int p = threadIdx.x; p < n_pairs; p += blockDim.x) {
        const int e = ids[p];
        if (e >= 0 && e < n_expert) {
            const int at = atomicAdd(&cursor[e], 1);
            if (at < max_tiles * tile_m) {
                tile_pairs[at] = p;
            }
        }
    }
}

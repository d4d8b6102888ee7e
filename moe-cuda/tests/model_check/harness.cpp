// Host check of the whole-model kernels (kernels/model.cu): compiled as C++ with g++ and
// launched block after block, every CUDA thread of a block a real host thread, so the
// kernels run unchanged: __syncthreads is a barrier of the block's threads, a warp
// shuffle an exchange through memory between two barriers of the warp's 32 threads,
// __shared__ arrays are statics (one block runs at a time), and a thread that returns
// leaves its barriers (as an exited GPU thread no longer holds one back). Driven by
// tests/model_check.rs, which compares with moe-core's functions or plain Rust
// references. Not a GPU: it proves the kernels' arithmetic and indexing, not their
// behaviour on hardware.
//
// stdin (little-endian): i32 op, then the op's inputs (see each op below); stdout: f32
// results.

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define MOE_HOST_SHIM
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

struct dim3 {
    unsigned x = 0, y = 0, z = 0;
};
static thread_local dim3 threadIdx;
static thread_local dim3 blockIdx;
static dim3 blockDim; // set before a launch's threads start

static std::barrier<> *block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static float shuffle_slots[1024];

static void __syncthreads() { block_barrier->arrive_and_wait(); }

static float shfl_xor(float v, int o) {
    const unsigned t = threadIdx.x;
    std::barrier<> &bar = *warp_barriers[t / 32];
    shuffle_slots[t] = v;
    bar.arrive_and_wait();
    const float r = shuffle_slots[(t & ~31u) | ((t & 31u) ^ (unsigned)o)];
    bar.arrive_and_wait();
    return r;
}

static float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += shfl_xor(v, o);
    return v;
}

static float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, shfl_xor(v, o));
    return v;
}

#include "../cuda_intrinsics.h"

#include "../../kernels/common.cu"

// With real threads per lane, the warp helpers are the kernels' own code.
template <int TY, int M>
static void warp_row_dot(const u8 *wrow, const u8 *const *arows, int n_valid, int n_blocks, float *out) {
    warp_row_dot_lane<TY, M>(wrow, arows, n_valid, n_blocks, out);
}

#include "../../kernels/quantize.cu"
#include "../../kernels/model.cu"

// Runs `f` as every thread of a grid of `grid` blocks of `threads`, one block at a time.
static void launch(dim3 grid, unsigned threads, const std::function<void()> &f) {
    blockDim = dim3{threads, 1, 1};
    for (unsigned y = 0; y < grid.y; ++y) {
        for (unsigned x = 0; x < grid.x; ++x) {
            std::barrier<> bb((std::ptrdiff_t)threads);
            block_barrier = &bb;
            warp_barriers.clear();
            for (unsigned w = 0; w * 32 < threads; ++w) {
                const unsigned n = threads - 32 * w < 32 ? threads - 32 * w : 32;
                warp_barriers.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)n));
            }
            std::vector<std::thread> pool;
            pool.reserve(threads);
            for (unsigned t = 0; t < threads; ++t) {
                pool.emplace_back([=, &f] {
                    threadIdx = dim3{t, 0, 0};
                    blockIdx = dim3{x, y, 0};
                    f();
                    block_barrier->arrive_and_drop();
                    warp_barriers[t / 32]->arrive_and_drop();
                });
            }
            for (auto &th : pool) th.join();
        }
    }
}

static unsigned blocks(long n, long per) { return (unsigned)((n + per - 1) / per); }

template <class T> static std::vector<T> read_vec(size_t n) {
    std::vector<T> v(n);
    if (n && fread(v.data(), sizeof(T), n, stdin) != n) {
        fprintf(stderr, "short read\n");
        exit(2);
    }
    return v;
}
static int read_i32() { return read_vec<int>(1)[0]; }
static float read_f32() { return read_vec<float>(1)[0]; }
static std::vector<u8> read_bytes() {
    const uint64_t n = read_vec<uint64_t>(1)[0];
    return read_vec<u8>(n);
}
static void write_f32(const std::vector<float> &v) { fwrite(v.data(), 4, v.size(), stdout); }

// The kernels of one weight type, by GGUF type id.
struct TypeKernels {
    void (*get_rows)(const u8 *, unsigned long long, const int *, int, int, float, float *);
    void (*m1)(const u8 *, const u8 *, unsigned long long, int, int, int, float *);
    void (*m8)(const u8 *, const u8 *, unsigned long long, int, int, int, float *);
    int act; // ACT_*
    int block_len;
};
static TypeKernels kernels_of(int ty) {
    switch (ty) {
    case TY_Q4_0: return {model_get_rows_q4_0, model_matmul_q4_0_m1, model_matmul_q4_0_m8, ACT_Q8_0, 32};
    case TY_Q5_0: return {model_get_rows_q5_0, model_matmul_q5_0_m1, model_matmul_q5_0_m8, ACT_Q8_0, 32};
    case TY_Q8_0: return {model_get_rows_q8_0, model_matmul_q8_0_m1, model_matmul_q8_0_m8, ACT_Q8_0, 32};
    case TY_Q4_K: return {model_get_rows_q4_k, model_matmul_q4_k_m1, model_matmul_q4_k_m8, ACT_Q8_K, 256};
    case TY_Q5_K: return {model_get_rows_q5_k, model_matmul_q5_k_m1, model_matmul_q5_k_m8, ACT_Q8_K, 256};
    case TY_Q6_K: return {model_get_rows_q6_k, model_matmul_q6_k_m1, model_matmul_q6_k_m8, ACT_Q8_K, 256};
    case TY_F32: return {model_get_rows_f32, model_matmul_f32_m1, model_matmul_f32_m8, ACT_F32, 32};
    case TY_F16: return {model_get_rows_f16, model_matmul_f16_m1, model_matmul_f16_m8, ACT_F32, 32};
    case TY_BF16: return {model_get_rows_bf16, model_matmul_bf16_m1, model_matmul_bf16_m8, ACT_F32, 32};
    default:
        fprintf(stderr, "unsupported type %d\n", ty);
        exit(2);
    }
}

// op 1, get_rows: i32 ty, n_vocab, n_embd, n_tokens; f32 scale; u64 len + table; i32
// tokens[n_tokens] -> f32 rows[n_tokens * n_embd].
static void op_get_rows() {
    const int ty = read_i32(), n_vocab = read_i32(), n_embd = read_i32(), n_tokens = read_i32();
    const float scale = read_f32();
    const std::vector<u8> table = read_bytes();
    const std::vector<int> tokens = read_vec<int>(n_tokens);
    std::vector<float> out((size_t)n_tokens * n_embd, -1.0f);
    const TypeKernels k = kernels_of(ty);
    const unsigned long long row_bytes = table.size() / n_vocab;
    launch(dim3{blocks(n_embd, 256), (unsigned)n_tokens, 1}, 256,
           [&] { k.get_rows(table.data(), row_bytes, tokens.data(), n_vocab, n_embd, scale, out.data()); });
    write_f32(out);
}

// op 2, matmul: i32 ty, n_in, n_out, n_tokens, m8; u64 len + weights; f32 x[n_tokens *
// n_in] -> f32 out[n_tokens * n_out] (x quantized by the quantize kernels first).
static void op_matmul() {
    const int ty = read_i32(), n_in = read_i32(), n_out = read_i32(), n_tokens = read_i32(),
              m8 = read_i32();
    const std::vector<u8> w = read_bytes();
    std::vector<float> x = read_vec<float>((size_t)n_tokens * n_in);
    const TypeKernels k = kernels_of(ty);
    std::vector<u8> xq;
    unsigned long long x_row_bytes = (unsigned long long)n_in * 4;
    const u8 *rows = (const u8 *)x.data();
    if (k.act != ACT_F32) {
        const int len = k.act == ACT_Q8_0 ? 32 : 256;
        const int bytes = k.act == ACT_Q8_0 ? Q8_0_BYTES : Q8_K_BYTES;
        x_row_bytes = (unsigned long long)(n_in / len) * bytes;
        xq.assign(x_row_bytes * n_tokens, 0);
        const int n_blocks = n_tokens * n_in / len;
        launch(dim3{blocks(n_blocks, 128), 1, 1}, 128, [&] {
            if (k.act == ACT_Q8_0) {
                moe_quantize_q8_0(x.data(), xq.data(), n_blocks);
            } else {
                moe_quantize_q8_k(x.data(), xq.data(), n_blocks);
            }
        });
        rows = xq.data();
    }
    std::vector<float> out((size_t)n_tokens * n_out, -1.0f);
    const int m = m8 ? 8 : 1;
    launch(dim3{blocks(n_out, MODEL_ROWS_PER_BLOCK), blocks(n_tokens, m), 1}, 32 * MODEL_ROWS_PER_BLOCK, [&] {
        (m8 ? k.m8 : k.m1)(w.data(), rows, x_row_bytes, n_in, n_out, n_tokens, out.data());
    });
    write_f32(out);
}

// op 3, rms_norm: i32 n, n_rows, in_place; f32 eps; f32 x[n * n_rows]; f32 w[n] -> f32
// out[n * n_rows].
static void op_rms_norm() {
    const int n = read_i32(), n_rows = read_i32(), in_place = read_i32();
    const float eps = read_f32();
    std::vector<float> x = read_vec<float>((size_t)n * n_rows);
    const std::vector<float> w = read_vec<float>(n);
    std::vector<float> out(x.size(), -1.0f);
    float *dst = in_place ? x.data() : out.data();
    launch(dim3{(unsigned)n_rows, 1, 1}, NORM_THREADS, [&] { model_rms_norm(x.data(), w.data(), n, eps, dst); });
    write_f32(in_place ? x : out);
}

// op 4, rope: i32 n_heads, head_dim, n_tokens, start; RopeParams (32 bytes); f32 x[n_tokens
// * n_heads * head_dim] -> f32 x rotated.
static void op_rope() {
    const int n_heads = read_i32(), head_dim = read_i32(), n_tokens = read_i32(), start = read_i32();
    const std::vector<u8> pb = read_vec<u8>(sizeof(RopeParams));
    RopeParams p;
    std::memcpy(&p, pb.data(), sizeof p);
    std::vector<float> x = read_vec<float>((size_t)n_tokens * n_heads * head_dim);
    launch(dim3{blocks((long)n_heads * (p.dims / 2), 64), (unsigned)n_tokens, 1}, 64,
           [&] { model_rope(x.data(), n_heads, head_dim, start, p); });
    write_f32(x);
}

// op 5, attention: i32 context, n_tokens; AttnParams (40 bytes); f32 q[n_tokens * q_dim],
// k_new[n_tokens * k_dim], v_new[n_tokens * v_dim], k_cache[context * k_dim], v_cache[context
// * v_dim] -> the new keys and values stored at start.., then f32 out[n_tokens * attn_dim],
// k_cache, v_cache.
static void op_attention() {
    const int context = read_i32(), n_tokens = read_i32();
    const std::vector<u8> pb = read_vec<u8>(sizeof(AttnParams));
    AttnParams p;
    std::memcpy(&p, pb.data(), sizeof p);
    const std::vector<float> q = read_vec<float>((size_t)n_tokens * p.q_dim);
    const std::vector<float> kn = read_vec<float>((size_t)n_tokens * p.k_dim);
    const std::vector<float> vn = read_vec<float>((size_t)n_tokens * p.v_dim);
    std::vector<float> kc = read_vec<float>((size_t)context * p.k_dim);
    std::vector<float> vc = read_vec<float>((size_t)context * p.v_dim);
    const int nk = n_tokens * p.k_dim, nv = n_tokens * p.v_dim;
    launch(dim3{blocks(nk, 256), 1, 1}, 256, [&] { model_kv_store(kn.data(), kc.data(), p.start, p.k_dim, nk); });
    launch(dim3{blocks(nv, 256), 1, 1}, 256, [&] { model_kv_store(vn.data(), vc.data(), p.start, p.v_dim, nv); });
    std::vector<float> out((size_t)n_tokens * p.attn_dim, -1.0f);
    launch(dim3{(unsigned)p.n_head, (unsigned)n_tokens, 1}, 32 * ATTN_WARPS,
           [&] { model_attention(q.data(), kc.data(), vc.data(), p, out.data()); });
    write_f32(out);
    write_f32(kc);
    write_f32(vc);
}

// op 6, element-wise: i32 width, n; f32 scale, d; f32 x[n], bias[width], b[n] -> f32
// x + bias, then + scale · b, then / d (three arrays of n).
static void op_elementwise() {
    const int width = read_i32(), n = read_i32();
    const float scale = read_f32(), d = read_f32();
    std::vector<float> x = read_vec<float>(n);
    const std::vector<float> bias = read_vec<float>(width);
    const std::vector<float> b = read_vec<float>(n);
    const dim3 grid{blocks(n, 256), 1, 1};
    launch(grid, 256, [&] { model_add_bias(x.data(), bias.data(), width, n); });
    write_f32(x);
    launch(grid, 256, [&] { model_add_scaled(x.data(), b.data(), scale, n); });
    write_f32(x);
    launch(grid, 256, [&] { model_div(x.data(), d, n); });
    write_f32(x);
}

int main() {
    switch (read_i32()) {
    case 1: op_get_rows(); break;
    case 2: op_matmul(); break;
    case 3: op_rms_norm(); break;
    case 4: op_rope(); break;
    case 5: op_attention(); break;
    case 6: op_elementwise(); break;
    default:
        fprintf(stderr, "unknown op\n");
        return 2;
    }
    return 0;
}

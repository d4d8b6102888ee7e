// Host check of the CUDA kernels: the kernel sources compiled as C++ with g++ and
// launched in the same sequence as moe-cuda's GpuMoeLayer, one thread at a time. The two
// warp-cooperative helpers (warp_row_dot, warp_dot_f32) run their real code once per
// lane, warp_sum collecting each lane's part, and the parts are added in the butterfly
// order of the shuffles; warp kernels run lane 0 of each warp, which calls them. Driven by tests/host_check.rs, which compares the
// result with moe-core's CPU layer. Not a GPU: it proves the kernels' arithmetic,
// indexing, tiling, routing and align logic, not their behaviour on hardware (memory
// model, occupancy, timing).
//
// stdin (little-endian): i32 gate_up_ty, down_ty, n_embd, n_ff, n_expert, k, n_tokens,
// has_router, has_bias, shared (SHARED_*), shared gate_up_ty, shared down_ty, shared
// n_ff, shared gate vector ty; RouteParams (48 bytes); u64 len + gate bytes; u64 len +
// up; u64 len + down; when shared: u64 len + shared gate (0: none), up, down, gate vector
// (0 unless gated); f32 router[n_expert * n_embd]; f32 bias[n_expert]; i32
// resident[n_expert] (the routed stacks hold only the resident experts, as
// with_placement uploads them); f32 hidden[n_tokens * n_embd]; when !has_router: i32 ids[n_tokens * k], f32 weights[...].
// stdout: f32 out[n_tokens * n_embd], i32 ids[n_tokens * k'], f32 weights[n_tokens * k'].

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#define MOE_HOST_SHIM
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__ __restrict

struct dim3 {
    unsigned x = 0, y = 0, z = 0;
};
static dim3 threadIdx;
static dim3 blockIdx; // the block being run (set before each warp job)
static dim3 blockDim;

static void __syncthreads() {}
static int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
#include "../cuda_intrinsics.h"

// warp_sum as the lanes' loop sees it: each lane's part is collected, in call order.
static float lane_parts[64];
static int n_lane_parts;
static float warp_sum(float v) {
    lane_parts[n_lane_parts++] = v;
    return v;
}

#include "../../kernels/common.cu"

// The partial sums of 32 lanes combined as the xor butterfly of warp_sum does.
static float butterfly(float *v) {
    for (int o = 16; o > 0; o >>= 1) {
        float next[32];
        for (int l = 0; l < 32; ++l) next[l] = v[l] + v[l ^ o];
        std::memcpy(v, next, sizeof(next));
    }
    return v[0];
}

// The kernels' warp_row_dot: the real code (warp_row_dot_lane) run once per lane.
template <int TY, int M>
static void warp_row_dot(const u8 *wrow, const u8 *const *arows, int n_valid, int n_blocks, float *out) {
    const unsigned base = threadIdx.x & ~31u;
    float parts[M][32];
    float ignored[M];
    for (int lane = 0; lane < 32; ++lane) {
        threadIdx.x = base + lane;
        n_lane_parts = 0;
        warp_row_dot_lane<TY, M>(wrow, arows, n_valid, n_blocks, ignored);
        for (int m = 0; m < M; ++m) parts[m][lane] = lane_parts[m];
    }
    threadIdx.x = base;
    for (int m = 0; m < M; ++m) out[m] = butterfly(parts[m]);
}

static float warp_dot_f32(const float *a, const float *b, int n) {
    const unsigned base = threadIdx.x & ~31u;
    float parts[32];
    for (int lane = 0; lane < 32; ++lane) {
        threadIdx.x = base + lane;
        n_lane_parts = 0;
        warp_dot_f32_lane(a, b, n);
        parts[lane] = lane_parts[0];
    }
    threadIdx.x = base;
    return butterfly(parts);
}

#include "../../kernels/quantize.cu"
#include "../../kernels/route.cu"
#include "../../kernels/moe.cu"

// ---- Launches, one thread at a time ----
struct Launcher {
    // Runs `f` for every thread of the grid (`warp`: lane 0 of each warp only).
    void launch(dim3 grid, unsigned block, const std::function<void()> &f, bool warp = false) {
        blockDim.x = block;
        blockDim.y = blockDim.z = 1;
        for (unsigned y = 0; y < grid.y; ++y) {
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx.x = x;
                blockIdx.y = y;
                for (unsigned t = 0; t < block; t += warp ? 32 : 1) {
                    threadIdx.x = t;
                    f();
                }
            }
        }
    }
};

template <class T> static std::vector<T> read_vec(size_t n) {
    std::vector<T> v(n);
    if (n && fread(v.data(), sizeof(T), n, stdin) != n) {
        fprintf(stderr, "short read\n");
        exit(2);
    }
    return v;
}
static std::vector<u8> read_bytes() {
    uint64_t len = read_vec<uint64_t>(1)[0];
    return read_vec<u8>(len);
}

struct Fmt {
    int block_len, act_block_len, act_block_bytes, act; // act: 0 f32, 1 q8_0, 2 q8_k
};
static Fmt fmt_of(int ty) {
    switch (ty) {
    case TY_Q4_0:
    case TY_Q5_0:
    case TY_Q8_0:
        return {32, 32, Q8_0_BYTES, 1};
    case TY_Q4_K:
    case TY_Q5_K:
    case TY_Q6_K:
        return {256, 256, Q8_K_BYTES, 2};
    default:
        return {32, 1, 4, 0};
    }
}

// Bytes of n_embd-long rows in format f's activation.
static size_t act_row_bytes(const Fmt &f, int n) {
    return (size_t)n / f.act_block_len * f.act_block_bytes;
}

// One FFN stack's buffers and launches (gate/up, quantize the intermediate rows, down),
// as launch_ffn in layer.rs.
struct FfnRun {
    int gu_ty, dn_ty;
    const u8 *gate, *up, *down;
    FfnParams p;
    int M, n_tiles;
    const int *tp, *te, *slot_of;
    const u8 *x_in;
    std::vector<float> hid, y;
    std::vector<u8> hq;

    void run(Launcher &pool) {
        const Fmt df = fmt_of(dn_ty);
        hid.assign((size_t)p.n_pairs * p.n_ff, 0.0f);
        y.assign((size_t)p.n_pairs * p.n_embd, 0.0f);
        hq.assign((size_t)p.n_pairs * p.h_row_bytes + 1, 0);
#define GU(NAME, TY)                                                                                \
    case TY:                                                                                        \
        if (M == 1) moe_gate_up_##NAME##_m1(gate, up, x_in, tp, te, slot_of, p, hid.data());        \
        else moe_gate_up_##NAME##_m8(gate, up, x_in, tp, te, slot_of, p, hid.data());               \
        break;
        pool.launch({(unsigned)((p.n_ff + 3) / 4), (unsigned)n_tiles}, 128, [&] {
            switch (gu_ty) {
                GU(q4_0, TY_Q4_0)
                GU(q5_0, TY_Q5_0)
                GU(q8_0, TY_Q8_0)
                GU(q4_k, TY_Q4_K)
                GU(q5_k, TY_Q5_K)
                GU(q6_k, TY_Q6_K)
                GU(f32, TY_F32)
                GU(f16, TY_F16)
                GU(bf16, TY_BF16)
            }
        }, true);
        if (df.act) {
            int nb = p.n_pairs * p.n_ff / df.act_block_len;
            pool.launch({(unsigned)((nb + 127) / 128), 1}, 128, [&] {
                if (df.act == 1) {
                    moe_quantize_q8_0(hid.data(), hq.data(), nb);
                } else {
                    moe_quantize_q8_k(hid.data(), hq.data(), nb);
                }
            });
        }
        const u8 *h_in = df.act ? hq.data() : (const u8 *)hid.data();
#define DN(NAME, TY)                                                                                \
    case TY:                                                                                        \
        if (M == 1) moe_down_##NAME##_m1(down, h_in, tp, te, slot_of, p, y.data());                 \
        else moe_down_##NAME##_m8(down, h_in, tp, te, slot_of, p, y.data());                        \
        break;
        pool.launch({(unsigned)((p.n_embd + 3) / 4), (unsigned)n_tiles}, 128, [&] {
            switch (dn_ty) {
                DN(q4_0, TY_Q4_0)
                DN(q5_0, TY_Q5_0)
                DN(q8_0, TY_Q8_0)
                DN(q4_k, TY_Q4_K)
                DN(q5_k, TY_Q5_K)
                DN(q6_k, TY_Q6_K)
                DN(f32, TY_F32)
                DN(f16, TY_F16)
                DN(bf16, TY_BF16)
            }
        }, true);
    }
};

int main() {
    auto h = read_vec<int32_t>(14);
    const int gu_ty = h[0], dn_ty = h[1], n_embd = h[2], n_ff = h[3], n_expert = h[4], k = h[5],
              T = h[6], has_router = h[7], has_bias = h[8], shared = h[9], sh_gu_ty = h[10],
              sh_dn_ty = h[11], sh_n_ff = h[12], sh_gate_ty = h[13];
    RouteParams rp;
    auto rpb = read_vec<u8>(sizeof(RouteParams));
    std::memcpy(&rp, rpb.data(), sizeof(rp));
    auto gate = read_bytes();
    auto up = read_bytes();
    auto down = read_bytes();
    std::vector<u8> sh_gate, sh_up, sh_down, sh_gate_vec;
    if (shared) {
        sh_gate = read_bytes(); // empty: a two-matrix FFN
        sh_up = read_bytes();
        sh_down = read_bytes();
        sh_gate_vec = read_bytes(); // empty unless shared == SHARED_GATED
    }
    auto router = read_vec<float>((size_t)n_expert * n_embd);
    auto bias = read_vec<float>(n_expert);
    auto resident = read_vec<int>(n_expert);
    auto hidden = read_vec<float>((size_t)T * n_embd);
    const int slots = has_router ? rp.k : k;
    const int P = T * slots;
    std::vector<int> ids(P, -1);
    std::vector<float> weights(P, 0.0f);
    if (!has_router) {
        ids = read_vec<int>(P);
        weights = read_vec<float>(P);
    }
    (void)has_bias;

    Launcher pool;
    const Fmt gf = fmt_of(gu_ty), df = fmt_of(dn_ty), sgf = fmt_of(sh_gu_ty), sdf = fmt_of(sh_dn_ty),
              gvf = fmt_of(sh_gate_ty);
    std::vector<float> out((size_t)T * n_embd, 0.0f), logits((size_t)T * n_expert),
        route((size_t)T * 2 * n_expert);

    // 1. Quantize the input into every format a weight reads (routed gate/up, shared
    // gate/up, shared gate vector).
    bool need[3] = {false, false, false};
    need[gf.act] = true;
    if (shared) {
        need[sgf.act] = true;
        if (shared == SHARED_GATED) need[gvf.act] = true;
    }
    std::vector<u8> xq[3];
    const Fmt act_fmt[3] = {fmt_of(TY_F16), fmt_of(TY_Q8_0), fmt_of(TY_Q4_K)};
    for (int a = 1; a < 3; ++a) {
        if (!need[a]) continue;
        xq[a].assign(T * act_row_bytes(act_fmt[a], n_embd) + 1, 0);
        int nb = T * n_embd / act_fmt[a].act_block_len;
        pool.launch({(unsigned)((nb + 127) / 128), 1}, 128, [&] {
            if (a == 1) {
                moe_quantize_q8_0(hidden.data(), xq[a].data(), nb);
            } else {
                moe_quantize_q8_k(hidden.data(), xq[a].data(), nb);
            }
        });
    }
    auto x_of = [&](const Fmt &f) { return f.act ? (const u8 *)xq[f.act].data() : (const u8 *)hidden.data(); };
    // 2. Route.
    if (has_router) {
        pool.launch({(unsigned)((n_expert + 3) / 4), (unsigned)T}, 128, [&] {
            moe_router_logits(router.data(), hidden.data(), logits.data(), T, n_expert, n_embd);
        }, true);
        rp.n_tokens = T;
        pool.launch({(unsigned)((T + 63) / 64), 1}, 64, [&] {
            moe_router_select(logits.data(), bias.data(), rp, route.data(), ids.data(), weights.data());
        });
    }
    // 3. Tiles.
    const bool decode = P <= 64;
    const int n_tiles = decode ? P : (P + 7) / 8 + n_expert;
    const int n_identity = std::max(std::max(64, P), (T + 7) / 8 * 8);
    std::vector<int> identity(n_identity), tile_pairs((size_t)n_tiles * 8, -1), tile_expert(n_tiles, -1),
        counts(n_expert), cursor(n_expert), slot_of(n_expert), zeros(T, 0);
    for (int i = 0; i < n_identity; ++i) identity[i] = i;
    // Resident experts take consecutive slots in expert order (their stacks hold only
    // them); the others -1, skipped by the FFN kernels and the combine.
    int n_resident = 0;
    for (int e = 0; e < n_expert; ++e) slot_of[e] = resident[e] ? n_resident++ : -1;
    if (!decode) {
        // One thread: the strided loops and __syncthreads phases then run in order.
        pool.launch({1, 1}, 1, [&] {
            moe_align(ids.data(), P, n_expert, 8, n_tiles, counts.data(), cursor.data(),
                      tile_pairs.data(), tile_expert.data());
        });
    }
    // 4-6. The routed experts.
    FfnRun routed;
    routed.gu_ty = gu_ty;
    routed.dn_ty = dn_ty;
    routed.gate = gate.data();
    routed.up = up.data();
    routed.down = down.data();
    routed.p.n_embd = n_embd;
    routed.p.n_ff = n_ff;
    routed.p.k = slots;
    routed.p.has_gate = 1;
    routed.p.activation = 0;
    routed.p.n_pairs = P;
    routed.p.gate_up_matrix_bytes = up.size() / std::max(n_resident, 1);
    routed.p.down_matrix_bytes = down.size() / std::max(n_resident, 1);
    routed.p.x_row_bytes = act_row_bytes(gf, n_embd);
    routed.p.h_row_bytes = act_row_bytes(df, n_ff);
    routed.M = decode ? 1 : 8;
    routed.n_tiles = n_tiles;
    routed.tp = decode ? identity.data() : tile_pairs.data();
    routed.te = decode ? ids.data() : tile_expert.data();
    routed.slot_of = slot_of.data();
    routed.x_in = x_of(gf);
    routed.run(pool);
    // 7. The shared expert: Qwen's gate, then a one-expert stack with one pair per token.
    std::vector<float> sh_w(T, 0.0f);
    FfnRun sh;
    if (shared) {
        if (shared == SHARED_GATED) {
            const unsigned long long rb = act_row_bytes(gvf, n_embd);
            pool.launch({(unsigned)((T + 3) / 4), 1}, 128, [&] {
                moe_shared_gate(sh_gate_vec.data(), sh_gate_ty, x_of(gvf), rb, n_embd, T, sh_w.data());
            }, true);
        }
        sh.gu_ty = sh_gu_ty;
        sh.dn_ty = sh_dn_ty;
        sh.gate = sh_gate.empty() ? sh_up.data() : sh_gate.data();
        sh.up = sh_up.data();
        sh.down = sh_down.data();
        sh.p.n_embd = n_embd;
        sh.p.n_ff = sh_n_ff;
        sh.p.k = 1;
        sh.p.has_gate = sh_gate.empty() ? 0 : 1;
        sh.p.activation = 0;
        sh.p.n_pairs = T;
        sh.p.gate_up_matrix_bytes = sh_up.size();
        sh.p.down_matrix_bytes = sh_down.size();
        sh.p.x_row_bytes = act_row_bytes(sgf, n_embd);
        sh.p.h_row_bytes = act_row_bytes(sdf, sh_n_ff);
        sh.M = T > 1 ? 8 : 1;
        sh.n_tiles = T > 1 ? (T + 7) / 8 : T;
        sh.tp = identity.data();
        sh.te = zeros.data();
        sh.slot_of = zeros.data();
        sh.x_in = x_of(sgf);
        sh.run(pool);
    }
    // 8. Combine.
    const float *y_sh = shared ? sh.y.data() : routed.y.data();
    pool.launch({(unsigned)((n_embd + 255) / 256), (unsigned)T}, 256, [&] {
        moe_combine(routed.y.data(), ids.data(), weights.data(), slot_of.data(), T, n_embd, slots, shared,
                    y_sh, sh_w.data(), out.data());
    });
    fwrite(out.data(), 4, out.size(), stdout);
    fwrite(ids.data(), 4, ids.size(), stdout);
    fwrite(weights.data(), 4, weights.size(), stdout);
    return 0;
}

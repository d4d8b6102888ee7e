// Routing on the device: router logits, then per token the score function, selection
// bias, group limit, top-k, weights and renormalisation of moe-core's token-choice
// router (moe-core/src/router/route.rs), writing expert ids and weights that the FFN
// kernels read without a host round trip.

// One warp per (token, expert): logits[t * E + e] = W[e] · x[t] (W dequantized to f32 on
// the host when the layer is uploaded).
extern "C" __global__ void moe_router_logits(const float *__restrict__ w, const float *__restrict__ x,
                                             float *__restrict__ logits, int n_tokens, int n_expert,
                                             int n_embd) {
    const int warps = blockDim.x / WARP;
    const int e = blockIdx.x * warps + threadIdx.x / WARP;
    const int t = blockIdx.y;
    if (e >= n_expert || t >= n_tokens) {
        return;
    }
    const float s = warp_dot_f32(w + (size_t)e * n_embd, x + (size_t)t * n_embd, n_embd);
    if ((threadIdx.x & (WARP - 1)) == 0) {
        logits[(size_t)t * n_expert + e] = s;
    }
}

#define NEG_INF __int_as_float(0xff800000)
#define POS_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float finite_or_neg_inf(float x) {
    return x != x ? NEG_INF : x;
}

__device__ __forceinline__ float shifted_exp(float x, float max) {
    if (max == POS_INF) {
        return x == POS_INF ? 1.0f : 0.0f;
    }
    if (max == NEG_INF) {
        return 0.0f;
    }
    return expf(x - max);
}

__device__ __forceinline__ float divide_or_zero(float w, float d) {
    return d > 0.0f ? w / d : 0.0f;
}

// Rank order of the top-k: higher key first, then lower index.
__device__ __forceinline__ bool ranks_before(float ka, int ia, float kb, int ib) {
    return ka > kb || (ka == kb && ia < ib);
}

// Score functions (moe-core router::ScoreFunc).
#define SCORE_SOFTMAX 0
#define SCORE_SIGMOID 1
#define SCORE_SOFTMAX_SELECTED 2
// Renormalisation (router::Normalize).
#define NORM_NONE 0
#define NORM_SUM 1
#define NORM_CLAMPED_SUM 2
// Group scores (router::GroupScore).
#define GROUP_MAX 0
#define GROUP_SUM_TOP 1

#define MAX_K 64

struct RouteParams {
    int n_tokens;
    int n_expert;
    int k;             // experts per token (1 for greedy)
    int score;         // SCORE_*
    int normalize;     // NORM_*, NORM_NONE for greedy
    float norm_eps;    // epsilon (Sum) or min_sum (ClampedSum)
    float scale;       // routed scaling factor
    int has_bias;
    int n_group;       // 0 or 1: no group limit
    int topk_group;
    int group_score;   // GROUP_*
    int group_m;       // SumTop(m)
};

// The best `m` keys of experts [start, end) summed in rank order (SumTop), or the max.
__device__ float group_score_of(const float *keys, int start, int end, int kind, int m) {
    if (kind == GROUP_MAX) {
        float best = NEG_INF;
        for (int e = start; e < end; ++e) {
            best = keys[e] > best ? keys[e] : best;
        }
        return best;
    }
    // Repeated selection of the next best (m is small: at most MAX_K).
    float sum = 0.0f;
    float prev_key = POS_INF;
    int prev_idx = -1;
    int taken = 0;
    for (int r = 0; r < m; ++r) {
        float bk = NEG_INF;
        int bi = -1;
        for (int e = start; e < end; ++e) {
            const bool after_prev = ranks_before(prev_key, prev_idx, keys[e], e);
            if (after_prev && (bi < 0 || ranks_before(keys[e], e, bk, bi))) {
                bk = keys[e];
                bi = e;
            }
        }
        if (bi < 0) {
            break;
        }
        sum += bk;
        prev_key = bk;
        prev_idx = bi;
        ++taken;
    }
    return taken == 0 ? NEG_INF : finite_or_neg_inf(sum);
}

// One thread per token. `scratch` holds 2 · n_expert floats per token (scores, keys).
// Writes ids[t * k + j] and weights[t * k + j] in rank order.
extern "C" __global__ void moe_router_select(const float *__restrict__ logits,
                                             const float *__restrict__ bias, RouteParams p,
                                             float *__restrict__ scratch, int *__restrict__ ids,
                                             float *__restrict__ weights) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.n_tokens) {
        return;
    }
    const int E = p.n_expert;
    const float *row = logits + (size_t)t * E;
    float *scores = scratch + (size_t)t * 2 * E;
    float *keys = scores + E;

    // Scores.
    float m = NEG_INF;
    for (int e = 0; e < E; ++e) {
        const float l = finite_or_neg_inf(row[e]);
        scores[e] = l;
        m = l > m ? l : m;
    }
    if (p.score == SCORE_SOFTMAX) {
        float z = 0.0f;
        if (m == POS_INF || m == NEG_INF) {
            for (int e = 0; e < E; ++e) {
                scores[e] = shifted_exp(scores[e], m);
                z += scores[e];
            }
            for (int e = 0; e < E; ++e) {
                scores[e] = divide_or_zero(scores[e], z);
            }
        } else {
            for (int e = 0; e < E; ++e) {
                scores[e] = expf(scores[e] - m);
                z += scores[e];
            }
            for (int e = 0; e < E; ++e) {
                scores[e] = scores[e] / z;
            }
        }
    } else if (p.score == SCORE_SIGMOID) {
        for (int e = 0; e < E; ++e) {
            scores[e] = sigmoid_f(scores[e]);
        }
    }

    // Selection keys: scores plus the bias (never NaN).
    for (int e = 0; e < E; ++e) {
        keys[e] = p.has_bias ? finite_or_neg_inf(scores[e] + bias[e]) : scores[e];
    }

    // Group limit: the topk_group best groups as a bitset.
    unsigned long long chosen = ~0ull;
    if (p.n_group > 1) {
        const int per_group = E / p.n_group;
        chosen = 0ull;
        float prev_key = POS_INF;
        int prev_idx = -1;
        for (int r = 0; r < p.topk_group; ++r) {
            float bk = NEG_INF;
            int bi = -1;
            for (int g = 0; g < p.n_group; ++g) {
                const float gs = group_score_of(keys, g * per_group, (g + 1) * per_group,
                                                p.group_score, p.group_m);
                if (ranks_before(prev_key, prev_idx, gs, g) && (bi < 0 || ranks_before(gs, g, bk, bi))) {
                    bk = gs;
                    bi = g;
                }
            }
            if (bi < 0) {
                break;
            }
            chosen |= 1ull << bi;
            prev_key = bk;
            prev_idx = bi;
        }
    }

    // Top-k of the keys inside the chosen groups, by repeated selection.
    int sel[MAX_K];
    int n = 0;
    {
        const int per_group = p.n_group > 1 ? E / p.n_group : E;
        float prev_key = POS_INF;
        int prev_idx = -1;
        for (int r = 0; r < p.k; ++r) {
            float bk = NEG_INF;
            int bi = -1;
            for (int e = 0; e < E; ++e) {
                if (p.n_group > 1 && ((chosen >> (e / per_group)) & 1ull) == 0ull) {
                    continue;
                }
                if (ranks_before(prev_key, prev_idx, keys[e], e) && (bi < 0 || ranks_before(keys[e], e, bk, bi))) {
                    bk = keys[e];
                    bi = e;
                }
            }
            if (bi < 0) {
                break;
            }
            sel[n++] = bi;
            prev_key = bk;
            prev_idx = bi;
        }
    }

    // Weights: the scores of the chosen experts (softmax of their logits for
    // softmax-over-selected), renormalised, scaled.
    float w[MAX_K];
    if (p.score == SCORE_SOFTMAX_SELECTED) {
        float mx = NEG_INF;
        for (int j = 0; j < n; ++j) {
            const float l = finite_or_neg_inf(row[sel[j]]);
            mx = l > mx ? l : mx;
        }
        float z = 0.0f;
        for (int j = 0; j < n; ++j) {
            w[j] = shifted_exp(finite_or_neg_inf(row[sel[j]]), mx);
            z += w[j];
        }
        for (int j = 0; j < n; ++j) {
            w[j] = divide_or_zero(w[j], z);
        }
    } else {
        for (int j = 0; j < n; ++j) {
            w[j] = scores[sel[j]];
        }
    }
    if (p.normalize != NORM_NONE) {
        float sum = 0.0f;
        for (int j = 0; j < n; ++j) {
            sum += w[j];
        }
        const float d = p.normalize == NORM_SUM ? sum + p.norm_eps : (sum > p.norm_eps ? sum : p.norm_eps);
        for (int j = 0; j < n; ++j) {
            w[j] = divide_or_zero(w[j], d);
        }
    }
    for (int j = 0; j < p.k; ++j) {
        ids[(size_t)t * p.k + j] = j < n ? sel[j] : -1;
        weights[(size_t)t * p.k + j] = j < n ? w[j] * p.scale : 0.0f;
    }
}

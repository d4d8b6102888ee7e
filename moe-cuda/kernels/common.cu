// moe-cuda common device code: fixed-width types, f16/bf16 conversions, the GGUF block
// layouts and one block dot product per (weight, activation) format pair.
//
// Compiled by NVRTC at run time with no CUDA headers: every helper here uses builtins or
// inline PTX only. The block dot products follow moe-core's scalar spec
// (moe-core/src/kernels/scalar.rs): quants multiplied and summed as integers inside a
// block (exact), then one float multiply-add per block (or sub-block scale).

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef short i16;
typedef unsigned int u32;
typedef int i32;

// GGUF type ids (ggml_type).
#define TY_F32 0
#define TY_F16 1
#define TY_Q4_0 2
#define TY_Q5_0 6
#define TY_Q8_0 8
#define TY_Q4_K 12
#define TY_Q5_K 13
#define TY_Q6_K 14
#define TY_BF16 30

// Activation formats (what the input row of a dot product is quantized to).
#define ACT_F32 0
#define ACT_Q8_0 1
#define ACT_Q8_K 2

#define Q4_0_BYTES 18
#define Q5_0_BYTES 22
#define Q8_0_BYTES 34
#define Q4_K_BYTES 144
#define Q5_K_BYTES 176
#define Q6_K_BYTES 210
#define Q8_K_BYTES 292

#define WARP 32
#define FULL_MASK 0xffffffffu

#ifndef MOE_HOST_SHIM
__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif // MOE_HOST_SHIM: the host check (tests/host_check/) defines these two

__device__ __forceinline__ float bf16_to_f32(u16 b) {
    return __uint_as_float(((u32)b) << 16);
}

// Little-endian loads from byte pointers with only the alignment GGUF blocks guarantee
// (2 bytes for every block format used here).
__device__ __forceinline__ u16 ld_u16(const u8 *p) {
    return *(const u16 *)p;
}

__device__ __forceinline__ float ld_f16(const u8 *p) {
    return f16_to_f32(ld_u16(p));
}

// Four bytes starting at a 2-byte aligned address, as one little-endian word.
__device__ __forceinline__ i32 ld_i32_a2(const u8 *p) {
    const u16 *q = (const u16 *)p;
    return (i32)((u32)q[0] | ((u32)q[1] << 16));
}

__device__ __forceinline__ float ld_f32_a4(const u8 *p) {
    return *(const float *)p;
}

#ifndef MOE_HOST_SHIM
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(FULL_MASK, v, o);
    }
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    }
    return v;
}
#endif // MOE_HOST_SHIM: the host check defines warp_sum to collect each lane's part

// ---- Block dot products (weight block · activation block), the scalar spec's math ----

// Q4_0 · Q8_0: (d_w · d_a) · Σ q_w q_a with q_w = nibble - 8.
__device__ __forceinline__ float dot_q4_0_q8_0(const u8 *w, const u8 *a) {
    const float dw = ld_f16(w);
    const float da = ld_f16(a);
    i32 sumi = 0;
    i32 suma = 0;
#pragma unroll
    for (int j = 0; j < 16; j += 4) {
        // Low nibbles are elements j..j+3, high nibbles elements j+16..j+19 (0..15 each).
        const i32 packed = ld_i32_a2(w + 2 + j);
        const i32 al = ld_i32_a2(a + 2 + j);
        const i32 ah = ld_i32_a2(a + 2 + 16 + j);
        sumi = __dp4a(packed & 0x0f0f0f0f, al, sumi);
        sumi = __dp4a((packed >> 4) & 0x0f0f0f0f, ah, sumi);
        suma = __dp4a(0x01010101, al, suma);
        suma = __dp4a(0x01010101, ah, suma);
    }
    // Σ (n - 8) a = Σ n a - 8 Σ a, exactly.
    sumi -= 8 * suma;
    return (float)sumi * (dw * da);
}

// Bits b..b+3 of `bits` moved to bit 4 of bytes 0..3 (the fifth bit of four quants).
__device__ __forceinline__ i32 fifth_bits(u32 bits, int b) {
    const u32 n = (bits >> b) & 0xf;
    return (i32)(((n & 1) << 4) | ((n & 2) << 11) | ((n & 4) << 18) | ((n & 8) << 25));
}

// Q5_0 · Q8_0: (d_w · d_a) · Σ q_w q_a with q_w = (nibble | fifth bit << 4) - 16.
__device__ __forceinline__ float dot_q5_0_q8_0(const u8 *w, const u8 *a) {
    const float dw = ld_f16(w);
    const float da = ld_f16(a);
    const u32 qh = (u32)ld_i32_a2(w + 2);
    i32 sumi = 0;
    i32 suma = 0;
#pragma unroll
    for (int j = 0; j < 16; j += 4) {
        // Low nibbles are elements j..j+3, high nibbles elements j+16..j+19; their fifth
        // bits are bits j..j+3 and j+16..j+19 of qh (quants 0..31 each).
        const i32 packed = ld_i32_a2(w + 6 + j);
        const i32 lo = (packed & 0x0f0f0f0f) | fifth_bits(qh, j);
        const i32 hi = ((packed >> 4) & 0x0f0f0f0f) | fifth_bits(qh, j + 16);
        const i32 al = ld_i32_a2(a + 2 + j);
        const i32 ah = ld_i32_a2(a + 2 + 16 + j);
        sumi = __dp4a(lo, al, sumi);
        sumi = __dp4a(hi, ah, sumi);
        suma = __dp4a(0x01010101, al, suma);
        suma = __dp4a(0x01010101, ah, suma);
    }
    // Σ (q - 16) a = Σ q a - 16 Σ a, exactly.
    sumi -= 16 * suma;
    return (float)sumi * (dw * da);
}

// Q8_0 · Q8_0: (d_w · d_a) · Σ q_w q_a.
__device__ __forceinline__ float dot_q8_0_q8_0(const u8 *w, const u8 *a) {
    const float dw = ld_f16(w);
    const float da = ld_f16(a);
    i32 sumi = 0;
#pragma unroll
    for (int j = 0; j < 32; j += 4) {
        sumi = __dp4a(ld_i32_a2(w + 2 + j), ld_i32_a2(a + 2 + j), sumi);
    }
    return (float)sumi * (dw * da);
}

// The 6-bit scales and minimums of a Q4_K block (moe-core quant::q4_k::unpack_scales_mins).
__device__ __forceinline__ void q4_k_scale_min(const u8 *packed, int s, int *sc, int *m) {
    if (s < 4) {
        *sc = packed[s] & 0x3f;
        *m = packed[s + 4] & 0x3f;
    } else {
        const int j = s - 4;
        *sc = (packed[j + 8] & 0x0f) | ((packed[j] >> 6) << 4);
        *m = (packed[j + 8] >> 4) | ((packed[j + 4] >> 6) << 4);
    }
}

// Q4_K / Q5_K · Q8_K: d_w d_a Σ_s sc_s Σ q_w q_a − dmin_w d_a Σ_s m_s (bsum_2s +
// bsum_2s+1). Q5_K's quants have a fifth bit: bit s of qh[l] for element l of
// sub-block s (qh sits where Q4_K's quants start, which follow it).
template <bool FIVE_BITS>
__device__ __forceinline__ float dot_k_min_q8_k(const u8 *w, const u8 *a) {
    const float d = ld_f16(w);
    const float dmin = ld_f16(w + 2);
    const u8 *scales = w + 4;
    const u8 *qh = w + 16;
    const u8 *qs = FIVE_BITS ? w + 48 : w + 16;
    const float da = ld_f32_a4(a);
    const u8 *qa = a + 4;
    const u8 *bsums = a + 260;
    i32 sumi = 0;
    i32 summ = 0;
#pragma unroll 2
    for (int s = 0; s < 8; ++s) {
        int sc, m;
        q4_k_scale_min(scales, s, &sc, &m);
        const int c = s >> 1;
        const int shift = 4 * (s & 1);
        i32 sub = 0;
#pragma unroll
        for (int l = 0; l < 32; l += 4) {
            i32 q = (ld_i32_a2(qs + 32 * c + l) >> shift) & 0x0f0f0f0f;
            if (FIVE_BITS) {
                q |= ((ld_i32_a2(qh + l) >> s) & 0x01010101) << 4; // 0..31
            }
            // Q8_K quants start at a 4-byte aligned offset (4) in a 292-byte block.
            const i32 act = *(const i32 *)(qa + 32 * s + l);
            sub = __dp4a(q, act, sub);
        }
        sumi += sc * sub;
        summ += m * ((i32)(i16)ld_u16(bsums + 4 * s) + (i32)(i16)ld_u16(bsums + 4 * s + 2));
    }
    return (d * da) * (float)sumi - (dmin * da) * (float)summ;
}

// Q6_K · Q8_K: d_w d_a Σ_k sc_k Σ q_w q_a over 16 sub-blocks of 16, q_w in -32..31.
__device__ __forceinline__ float dot_q6_k_q8_k(const u8 *w, const u8 *a) {
    const u8 *ql = w;
    const u8 *qh = w + 128;
    const i8 *scales = (const i8 *)(w + 192);
    const float d = ld_f16(w + 208);
    const float da = ld_f32_a4(a);
    const u8 *qa = a + 4;
    i32 sumi = 0;
#pragma unroll 2
    for (int k = 0; k < 16; ++k) {
        i32 sub = 0;
        i32 suma = 0;
#pragma unroll
        for (int l = 0; l < 16; l += 4) {
            // Elements e = 16k + l .. +3: h = e / 128, r = e % 128.
            const int e = 16 * k + l;
            const int h = e >> 7;
            const int r = e & 127;
            const i32 low4 = ld_i32_a2(ql + 64 * h + (r & 63));
            const i32 high4 = ld_i32_a2(qh + 32 * h + (r & 31));
            const i32 low = (low4 >> (4 * (r >> 6))) & 0x0f0f0f0f;
            const i32 high = (high4 >> (2 * (r >> 5))) & 0x03030303;
            const i32 q = low | (high << 4); // bytes 0..63, offset by 32 below
            const i32 act = *(const i32 *)(qa + e);
            sub = __dp4a(q, act, sub);
            suma = __dp4a(0x01010101, act, suma);
        }
        // Σ (q - 32) a = Σ q a - 32 Σ a, exactly.
        sumi += (i32)scales[k] * (sub - 32 * suma);
    }
    return (d * da) * (float)sumi;
}

// Bytes of one weight block and the elements it holds.
template <int TY> struct WeightFormat;
template <> struct WeightFormat<TY_Q4_0> {
    static const int block_len = 32, block_bytes = Q4_0_BYTES, act = ACT_Q8_0, act_bytes = Q8_0_BYTES;
};
template <> struct WeightFormat<TY_Q5_0> {
    static const int block_len = 32, block_bytes = Q5_0_BYTES, act = ACT_Q8_0, act_bytes = Q8_0_BYTES;
};
template <> struct WeightFormat<TY_Q8_0> {
    static const int block_len = 32, block_bytes = Q8_0_BYTES, act = ACT_Q8_0, act_bytes = Q8_0_BYTES;
};
template <> struct WeightFormat<TY_Q4_K> {
    static const int block_len = 256, block_bytes = Q4_K_BYTES, act = ACT_Q8_K, act_bytes = Q8_K_BYTES;
};
template <> struct WeightFormat<TY_Q5_K> {
    static const int block_len = 256, block_bytes = Q5_K_BYTES, act = ACT_Q8_K, act_bytes = Q8_K_BYTES;
};
template <> struct WeightFormat<TY_Q6_K> {
    static const int block_len = 256, block_bytes = Q6_K_BYTES, act = ACT_Q8_K, act_bytes = Q8_K_BYTES;
};
// Float weights are read in groups of 32 elements against 32 f32 activations.
template <> struct WeightFormat<TY_F32> {
    static const int block_len = 32, block_bytes = 128, act = ACT_F32, act_bytes = 128;
};
template <> struct WeightFormat<TY_F16> {
    static const int block_len = 32, block_bytes = 64, act = ACT_F32, act_bytes = 128;
};
template <> struct WeightFormat<TY_BF16> {
    static const int block_len = 32, block_bytes = 64, act = ACT_F32, act_bytes = 128;
};

template <int TY> __device__ __forceinline__ float block_dot(const u8 *w, const u8 *a);
template <> __device__ __forceinline__ float block_dot<TY_Q4_0>(const u8 *w, const u8 *a) {
    return dot_q4_0_q8_0(w, a);
}
template <> __device__ __forceinline__ float block_dot<TY_Q5_0>(const u8 *w, const u8 *a) {
    return dot_q5_0_q8_0(w, a);
}
template <> __device__ __forceinline__ float block_dot<TY_Q8_0>(const u8 *w, const u8 *a) {
    return dot_q8_0_q8_0(w, a);
}
template <> __device__ __forceinline__ float block_dot<TY_Q4_K>(const u8 *w, const u8 *a) {
    return dot_k_min_q8_k<false>(w, a);
}
template <> __device__ __forceinline__ float block_dot<TY_Q5_K>(const u8 *w, const u8 *a) {
    return dot_k_min_q8_k<true>(w, a);
}
template <> __device__ __forceinline__ float block_dot<TY_Q6_K>(const u8 *w, const u8 *a) {
    return dot_q6_k_q8_k(w, a);
}
// F32 rows are 4-byte aligned: GGUF aligns tensor data to 32 bytes and a row is a whole
// number of 128-byte groups.
template <> __device__ __forceinline__ float block_dot<TY_F32>(const u8 *w, const u8 *a) {
    const float *wf = (const float *)w;
    const float *x = (const float *)a;
    float s = 0.0f;
#pragma unroll 8
    for (int i = 0; i < 32; ++i) {
        s += wf[i] * x[i];
    }
    return s;
}
template <> __device__ __forceinline__ float block_dot<TY_F16>(const u8 *w, const u8 *a) {
    const float *x = (const float *)a;
    float s = 0.0f;
#pragma unroll 8
    for (int i = 0; i < 32; ++i) {
        s += ld_f16(w + 2 * i) * x[i];
    }
    return s;
}
template <> __device__ __forceinline__ float block_dot<TY_BF16>(const u8 *w, const u8 *a) {
    const float *x = (const float *)a;
    float s = 0.0f;
#pragma unroll 8
    for (int i = 0; i < 32; ++i) {
        s += bf16_to_f32(ld_u16(w + 2 * i)) * x[i];
    }
    return s;
}

#ifdef MOE_HOST_SHIM
// The host check calls these once per lane and adds the lanes' parts itself.
#define warp_row_dot warp_row_dot_lane
#define warp_dot_f32 warp_dot_f32_lane
#endif

// One weight row dotted with M activation rows by a whole warp: lane l takes blocks l,
// l + 32, …; each weight block is read once from memory and reused for the M rows.
// Every lane returns the full sums.
template <int TY, int M>
__device__ __forceinline__ void warp_row_dot(const u8 *wrow, const u8 *const *arows, int n_valid,
                                             int n_blocks, float *out) {
    typedef WeightFormat<TY> F;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
        acc[m] = 0.0f;
    }
    const int lane = threadIdx.x & (WARP - 1);
    for (int b = lane; b < n_blocks; b += WARP) {
        const u8 *wb = wrow + (size_t)b * F::block_bytes;
#pragma unroll
        for (int m = 0; m < M; ++m) {
            if (m < n_valid) {
                acc[m] += block_dot<TY>(wb, arows[m] + (size_t)b * F::act_bytes);
            }
        }
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
        out[m] = warp_sum(acc[m]);
    }
}

// Σ a[i] · b[i] over n floats by a whole warp (lane l takes l, l + 32, …); every lane
// returns the sum.
__device__ __forceinline__ float warp_dot_f32(const float *a, const float *b, int n) {
    const int lane = threadIdx.x & (WARP - 1);
    float s = 0.0f;
    for (int i = lane; i < n; i += WARP) {
        s += a[i] * b[i];
    }
    return warp_sum(s);
}
#ifdef MOE_HOST_SHIM
#undef warp_row_dot
#undef warp_dot_f32
#endif

// The element-wise activation of an FFN (moe-core moe::Activation).
#define ACTIVATION_SILU 0
#define ACTIVATION_GELU 1
#define ACTIVATION_GELU_ERF 2
#define ACTIVATION_RELU 3

__device__ __forceinline__ float sigmoid_f(float z) {
    if (z >= 0.0f) {
        return 1.0f / (1.0f + expf(-z));
    }
    const float e = expf(z);
    return e / (1.0f + e);
}

__device__ __forceinline__ float activation(int kind, float z) {
    switch (kind) {
    case ACTIVATION_GELU:
        return 0.5f * z * (1.0f + tanhf(0.7978846f * (z + 0.044715f * z * z * z)));
    case ACTIVATION_GELU_ERF:
        return 0.5f * z * (1.0f + erff(z * 0.70710678f));
    case ACTIVATION_RELU:
        return fmaxf(z, 0.0f);
    default:
        return z * sigmoid_f(z);
    }
}

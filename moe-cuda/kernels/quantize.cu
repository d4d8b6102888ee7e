// Activation quantization, once per layer per token (and once per routed pair for the
// intermediate row before `down`). Bit-for-bit the reference quantizers of moe-core
// (quant::q8_0::quantize_block, quant::q8_k::quantize_block) for finite input.

// numpy's astype(int32) on x86-64: truncation, INT_MIN for NaN and out-of-range values;
// astype(int8) keeps the low 8 bits.
__device__ __forceinline__ i8 to_i8(float x) {
    const bool in_range = x >= -2147483648.0f && x < 2147483648.0f; // false for NaN
    const i32 v = in_range ? (i32)x : (i32)0x80000000;
    return (i8)v;
}

// gguf-py's np_roundf: sign(n) * (floor(|n|) + floor(2 * (|n| - floor(|n|)))).
__device__ __forceinline__ float round_half_away(float n) {
    const float a = fabsf(n);
    const float fl = floorf(a);
    const float b = fl + floorf(__fmul_rn(2.0f, a - fl));
    const float sign = n > 0.0f ? 1.0f : (n < 0.0f ? -1.0f : n);
    return __fmul_rn(sign, b);
}

// One thread per 32-element block: rows of `row_len` floats (a multiple of 32) into
// Q8_0 blocks (34 bytes: f16 d, 32 × i8), `n_blocks` blocks in all.
extern "C" __global__ void moe_quantize_q8_0(const float *__restrict__ x, u8 *__restrict__ out,
                                             int n_blocks) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) {
        return;
    }
    const float *v = x + (size_t)b * 32;
    u8 *o = out + (size_t)b * Q8_0_BYTES;
    float amax = 0.0f;
    bool nan = false;
    for (int i = 0; i < 32; ++i) {
        const float a = fabsf(v[i]);
        nan |= a != a;
        amax = a > amax ? a : amax;
    }
    if (nan) {
        amax = __int_as_float(0x7fc00000);
    }
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = d == 0.0f ? 0.0f : __fdiv_rn(1.0f, d);
    const u16 dh = f32_to_f16(d);
    o[0] = (u8)(dh & 0xff);
    o[1] = (u8)(dh >> 8);
    for (int i = 0; i < 32; ++i) {
        o[2 + i] = (u8)to_i8(round_half_away(__fmul_rn(v[i], id)));
    }
}

// One thread per 256-element block: Q8_K (292 bytes: f32 d, 256 × i8, 16 × i16 sums).
extern "C" __global__ void moe_quantize_q8_k(const float *__restrict__ x, u8 *__restrict__ out,
                                             int n_blocks) {
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) {
        return;
    }
    const float *v = x + (size_t)b * 256;
    u8 *o = out + (size_t)b * Q8_K_BYTES;
    float max = 0.0f;
    float amax = 0.0f;
    for (int i = 0; i < 256; ++i) {
        const float a = fabsf(v[i]);
        if (a > amax) {
            amax = a;
            max = v[i];
        }
    }
    if (amax == 0.0f) {
        for (int i = 0; i < Q8_K_BYTES; ++i) {
            o[i] = 0;
        }
        return;
    }
    const float iscale = __fdiv_rn(-127.0f, max);
    *(float *)o = __fdiv_rn(1.0f, iscale);
    i8 *q = (i8 *)(o + 4);
    for (int i = 0; i < 256; ++i) {
        float r = rintf(__fmul_rn(iscale, v[i]));
        r = r > 127.0f ? 127.0f : r;
        q[i] = to_i8(r);
    }
    i16 *bsums = (i16 *)(o + 260);
    for (int k = 0; k < 16; ++k) {
        i32 s = 0;
        for (int i = 0; i < 16; ++i) {
            s += q[16 * k + i];
        }
        bsums[k] = (i16)s;
    }
}

// The CUDA intrinsics the kernel sources call, as plain C++ for the g++ harnesses of
// tests/host_check and tests/model_check (each harness defines its own threads, warps
// and shuffles, and includes <cstring> before this).
#pragma once

static int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; ++i) {
        c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
    }
    return c;
}
static float __fmul_rn(float a, float b) { return a * b; }
static float __fdiv_rn(float a, float b) { return a / b; }
static float __int_as_float(int x) {
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
static float __int_as_float(unsigned x) { return __int_as_float((int)x); }
static float __uint_as_float(unsigned x) { return __int_as_float((int)x); }
static float f16_to_f32(unsigned short h) {
    _Float16 v;
    std::memcpy(&v, &h, 2);
    return (float)v;
}
static unsigned short f32_to_f16(float f) {
    _Float16 v = (_Float16)f;
    unsigned short h;
    std::memcpy(&h, &v, 2);
    return h;
}

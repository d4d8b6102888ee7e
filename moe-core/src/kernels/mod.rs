//! Compute kernels. `scalar` is the portable specification every SIMD kernel is tested
//! against.

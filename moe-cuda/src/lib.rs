//! `moe-cuda`: GPU offload (work in progress).

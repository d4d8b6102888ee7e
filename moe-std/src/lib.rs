//! `moe-std`: loads checkpoints from disk for `moe-core` and hosts the `moe` tool.

//! Reading a [`RouterConfig`](super::RouterConfig) and a router from GGUF.

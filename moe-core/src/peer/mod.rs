//! PEER (He 2024, "Mixture of A Million Experts"): up to millions of single-neuron
//! experts per layer, found per token by product-key retrieval at a cost that grows like
//! √N, not N.
//!
//! ```text
//! x   = pre_norm(x)                                  (optional, peer-pytorch pre_rmsnorm)
//! q   = BatchNorm(W_q · x + b)                       (bias and BatchNorm optional)
//! per head h, with halves q1 = q[0, h, :], q2 = q[1, h, :] (length d_key each):
//!   A = top_k(C_h · q1),  B = top_k(C'_h · q2)        (sub-key tables of n = √N rows)
//!   S, I = top_{k_final}{ A_a + B_b }                 (the k² candidate sums)
//!   expert id = a·n + b ("first" major) or b·n + a ("second")
//!   g = softmax(S) | sigmoid(S) | relu(S)
//! out = Σ_h Σ_{i ∈ I_h} g_i · act(u_i · x) · v_i       (act: exact-erf GELU by default)
//! ```
//!
//! `k_final ≤ k` makes the retrieval exact (see [`retrieval`]); [`crate::reference::peer`]
//! is the brute-force specification over all N keys.
//!
//! # GGUF layout
//!
//! Tensors of layer `N` (dimensions in GGUF order, `ne[0]` first; C = 2 · H · d_key):
//!
//! | tensor | shape | type | meaning |
//! |---|---|---|---|
//! | `blk.N.peer_query.weight` | `[d_model, C]` | any with a dot kernel | query rows ordered (half, head, element): peer-pytorch's `to_queries` Linear, `'b n (p h d)'` |
//! | `blk.N.peer_query.bias` | `[C]` | F32 | optional |
//! | `blk.N.peer_query_norm.running_mean`, `.running_var` | `[C]` | F32 | optional BatchNorm (eval mode) of the query, channels in the same order |
//! | `blk.N.peer_query_norm.weight`, `.bias` | `[C]` | F32 | optional γ, β of that BatchNorm (absent: 1, 0) |
//! | `blk.N.peer_norm.weight` | `[d_model]` | F32 | optional pre-norm multiplier (peer-pytorch `pre_rmsnorm`: stores γ + 1; x ← x·√d / max(‖x‖, 1e-12) · w) |
//! | `blk.N.peer_keys.weight` | `[d_key, 2, n, H]` (`[d_key, 2, n]` shared) | any with a dot kernel | sub-keys: peer-pytorch's `keys[h, i, half, :]` as stored |
//! | `blk.N.peer_down.weight` | `[d_model, N]` (`[d_model, H·N]` separate sets) | any with a dot kernel | u: `weight_down_embed` |
//! | `blk.N.peer_up.weight` | `[d_model, N]` (`[d_model, H·N]` separate sets) | any dequantizable | v: `weight_up_embed` |
//!
//! Metadata (`{arch}` = `general.architecture`):
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `{arch}.peer.expert_count` | u32/u64 | required | N per expert set, a perfect square |
//! | `{arch}.peer.heads` | u32 | required | H |
//! | `{arch}.peer.key_length` | u32 | required | d_key, the length of one sub-key and one query half |
//! | `{arch}.peer.product_key_topk` | u32 | required | k per query half |
//! | `{arch}.peer.experts_per_head` | u32 | required | k_final per head (peer-pytorch: `num_experts_per_head`, or 1 with `non_competing_scores`) |
//! | `{arch}.peer.score_func` | string | required | `softmax`, `sigmoid` or `relu` |
//! | `{arch}.peer.index_major` | string | `first` | `first`: id = a·n + b; `second`: id = b·n + a |
//! | `{arch}.peer.shared_keys` | bool | false | one sub-key table for every head |
//! | `{arch}.peer.separate_embed_per_head` | bool | false | head h uses expert rows h·N..(h+1)·N |
//! | `{arch}.peer.expert_activation` | string | `gelu` | `gelu` (exact erf, torch `nn.GELU()`), `gelu_tanh`, `silu`, `relu` |
//! | `{arch}.peer.query_norm_epsilon` | f32 | 1e-5 | BatchNorm ε |
//! | `{arch}.embedding_length` | u32 | – | checked against `d_model` when present |
//!
//! peer-pytorch's own defaults (`non_competing_scores=True`: top-1 per head with ReLU)
//! differ from the paper's (softmax over 16), which is why the score function and both
//! k's are required keys. `moe-core/tests/fixtures/peer/make_fixtures.py` converts a
//! peer-pytorch state_dict to this layout.
//!
//! # Memory
//!
//! [`PeerLayer::workspace_bytes`] is exact. The BatchNorm is applied as a per-channel
//! affine right after the projection (computed once per channel per batch) instead of
//! being folded into `W_q`: a quantized `W_q` could not take the fold without
//! re-quantizing, and without an allocator there is no place to keep folded weights.

mod config;
mod gguf;
mod layer;
pub mod retrieval;

pub use config::{IndexMajor, MAX_KEYS, MAX_TOPK, PeerConfig, ScoreActivation};
pub use layer::{BatchNorm, HeadSelection, PeerLayer, PeerTensors};
pub use retrieval::{Scored, TopList, product_key_topk};

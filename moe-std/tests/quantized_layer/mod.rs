//! A small routed MoE layer with quantized experts built in memory, shared by the tests
//! that need one (allocation and thread-pool checks).

use moe_core::TensorType;
use moe_core::moe::{Activation, ExpertStack, MoeLayer};
use moe_core::quant::quantize_row;
use moe_core::router::{Router, RouterConfig};
use moe_core::tensor::TensorView;

/// Deterministic values in `[-0.5, 0.5)`.
pub fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed) * 7919 % 1009) as f32 - 504.0) / 1009.0)
        .collect()
}

/// The bytes of a layer: gate, up and down stacks of the given types and an F32 router.
pub struct QuantizedLayer {
    shape: (usize, usize, usize),
    types: [TensorType; 3],
    stacks: [Vec<u8>; 3],
    router: Vec<u8>,
}

impl QuantizedLayer {
    /// `n_expert` experts of width `n_ff` over `n_embd`, with gate/up/down of `types`.
    pub fn new(n_embd: usize, n_ff: usize, n_expert: usize, types: [TensorType; 3]) -> Self {
        let size = n_embd * n_ff * n_expert;
        let stacks = [0, 1, 2].map(|i| {
            let v = values(size, i + 1);
            let ty = types[i];
            let mut out = vec![0u8; v.len() / ty.block_len() * ty.block_bytes()];
            quantize_row(ty, &v, &mut out).unwrap();
            out
        });
        let router = values(n_embd * n_expert, 4)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        QuantizedLayer {
            shape: (n_embd, n_ff, n_expert),
            types,
            stacks,
            router,
        }
    }

    /// The layer, routed Mixtral-style to `k` experts per token, scalar and serial.
    pub fn layer(&self, k: usize) -> MoeLayer<'_> {
        let (n_embd, n_ff, n_expert) = self.shape;
        let (d, f, e) = (n_embd as u64, n_ff as u64, n_expert as u64);
        let [gate, up, down] = &self.stacks;
        let [gate_ty, up_ty, down_ty] = self.types;
        let stack = ExpertStack::new(
            Some(TensorView::new(gate_ty, &[d, f, e], gate).unwrap()),
            TensorView::new(up_ty, &[d, f, e], up).unwrap(),
            TensorView::new(down_ty, &[f, d, e], down).unwrap(),
            Activation::Silu,
        )
        .unwrap();
        let router = Router::new(RouterConfig::mixtral(n_embd, n_expert, k))
            .unwrap()
            .with_weight(TensorView::new(TensorType::F32, &[d, e], &self.router).unwrap())
            .unwrap();
        MoeLayer::new(stack, k)
            .unwrap()
            .with_router(router)
            .unwrap()
    }
}

//! `MoeLayer::with_parallel(&ThreadPool)`: splitting each expert's rows across threads
//! changes nothing — the same bits as the serial scalar layer, for every Hugging Face
//! fixture architecture and for quantized experts with batches past one kernel chunk
//! (`alloc_free.rs` checks that a pooled forward allocates nothing).

use moe_core::TensorType;
use moe_core::gguf::File;
use moe_core::moe::{Activation, ExpertStack, MoeLayer, Workspace};
use moe_core::quant::quantize_row;
use moe_core::router::{Router, RouterConfig, Selection};
use moe_core::tensor::TensorView;
use moe_std::pool::ThreadPool;

/// Deterministic values in `[-0.5, 0.5)`.
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed) * 7919 % 1009) as f32 - 504.0) / 1009.0)
        .collect()
}

/// Runs `layer` (routing included) on `hidden` and returns the output.
fn forward(layer: &MoeLayer<'_>, hidden: &[f32]) -> Vec<f32> {
    let t = hidden.len() / layer.n_embd();
    let size = layer.workspace_size(t);
    let mut selections = vec![Selection::new(); size.selections];
    let mut router = vec![0.0f32; size.router];
    let mut bytes = vec![0u8; size.bytes];
    let mut out = vec![f32::NAN; hidden.len()];
    let mut workspace = Workspace {
        selections: &mut selections,
        router: &mut router,
        bytes: &mut bytes,
    };
    layer
        .forward(hidden, &[], &mut out, &mut workspace)
        .unwrap();
    out
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn every_fixture_architecture_gives_the_serial_bits() {
    let pools = [ThreadPool::new(2), ThreadPool::new(3)];
    for arch in ["mixtral", "qwen2moe", "qwen3moe", "olmoe", "deepseek2"] {
        let path = format!(
            "{}/../moe-core/tests/fixtures/hf/{arch}.gguf",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap();
        let file = File::parse(&bytes).unwrap();
        let block = (0..4)
            .find(|&b| MoeLayer::from_gguf(&file, b).is_ok())
            .unwrap();
        let layer = MoeLayer::from_gguf(&file, block).unwrap();
        for t in [1, 5, 37] {
            let hidden = values(t * layer.n_embd(), t);
            let serial = forward(&layer, &hidden);
            for pool in &pools {
                let parallel = forward(&layer.with_parallel(pool), &hidden);
                assert!(
                    same_bits(&serial, &parallel),
                    "{arch}, {t} tokens, {} threads",
                    pool.threads()
                );
            }
        }
    }
}

/// A quantized layer whose `n_ff` is not a multiple of the 16-row kernel chunk.
fn quantized_layer_bytes(n_embd: usize, n_ff: usize, n_expert: usize) -> [Vec<u8>; 4] {
    let quantized = |ty: TensorType, v: &[f32]| {
        let mut out = vec![0u8; v.len() / ty.block_len() * ty.block_bytes()];
        quantize_row(ty, v, &mut out).unwrap();
        out
    };
    let size = n_embd * n_ff * n_expert;
    let router: Vec<u8> = values(n_embd * n_expert, 4)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    [
        quantized(TensorType::Q4_0, &values(size, 1)),
        quantized(TensorType::Q8_0, &values(size, 2)),
        quantized(TensorType::Q4_0, &values(size, 3)),
        router,
    ]
}

#[test]
fn quantized_experts_on_the_pool_give_the_serial_scalar_bits() {
    let (n_embd, n_ff, n_expert, k) = (96usize, 160usize, 4usize, 2usize);
    let [gate, up, down, router_w] = quantized_layer_bytes(n_embd, n_ff, n_expert);
    let (d, f, e) = (n_embd as u64, n_ff as u64, n_expert as u64);
    let stack = ExpertStack::new(
        Some(TensorView::new(TensorType::Q4_0, &[d, f, e], &gate).unwrap()),
        TensorView::new(TensorType::Q8_0, &[d, f, e], &up).unwrap(),
        TensorView::new(TensorType::Q4_0, &[f, d, e], &down).unwrap(),
        Activation::Silu,
    )
    .unwrap();
    let router = Router::new(RouterConfig::mixtral(n_embd, n_expert, k))
        .unwrap()
        .with_weight(TensorView::new(TensorType::F32, &[d, e], &router_w).unwrap())
        .unwrap();
    let serial = MoeLayer::new(stack, k)
        .unwrap()
        .with_router(router)
        .unwrap();
    let pool = ThreadPool::new(2);
    let fast = serial
        .with_kernels(&moe_std::kernels::detect())
        .with_parallel(&pool);

    for t in [1, 2, 17, 40] {
        let hidden = values(t * n_embd, 5 + t);
        let expected = forward(&serial, &hidden);
        assert!(expected.iter().any(|&v| v != 0.0));
        assert!(same_bits(&expected, &forward(&fast, &hidden)), "{t} tokens");
    }
}

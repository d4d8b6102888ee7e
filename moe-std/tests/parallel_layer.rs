//! `MoeLayer::with_parallel(&ThreadPool)`: splitting each expert's rows across threads
//! changes nothing — the same bits as the serial scalar layer, for every Hugging Face
//! fixture architecture and for quantized experts with batches past one kernel chunk
//! (`alloc_free.rs` checks that a pooled forward allocates nothing).

use moe_core::TensorType;
use moe_core::gguf::File;
use moe_core::moe::{MoeLayer, Workspace};
use moe_core::router::Selection;
use moe_std::pool::ThreadPool;

mod quantized_layer;

use quantized_layer::{QuantizedLayer, values};

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

#[test]
fn quantized_experts_on_the_pool_give_the_serial_scalar_bits() {
    // n_ff = 160: the pool's two pieces of rows are not whole 64-row kernel chunks.
    let (n_embd, n_ff, n_expert, k) = (96usize, 160usize, 4usize, 2usize);
    let types = [TensorType::Q4_0, TensorType::Q8_0, TensorType::Q4_0];
    let weights = QuantizedLayer::new(n_embd, n_ff, n_expert, types);
    let serial = weights.layer(k);
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

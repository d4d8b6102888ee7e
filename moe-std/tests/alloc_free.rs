//! Zero allocation is a property we test: a counting global allocator watches
//! `MoeLayer::forward` (routing included) and `forward_selected`, with f32 weights from a
//! Hugging Face fixture and with quantized weights, and any heap allocation on the calling
//! thread during a forward pass fails the test.

use moe_core::TensorType;
use moe_core::gguf::File;
use moe_core::moe::capacity::{Capacity, CapacityPolicy, DropPriority};
use moe_core::moe::{MoeLayer, SharedExpert, Workspace};
use moe_core::router::Selection;
use moe_std::pool::ThreadPool;

mod counting;
mod quantized_layer;

use counting::allocations_in;
use quantized_layer::{QuantizedLayer, values};

#[test]
fn the_counter_sees_allocations() {
    let (n, v) = allocations_in(|| vec![1u8; 10]);
    assert_eq!(v.len(), 10);
    assert!(n >= 1);
}

#[test]
fn forward_allocates_nothing_with_a_router_and_a_shared_expert() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../moe-core/tests/fixtures/hf/qwen2moe.gguf"
    );
    let bytes = std::fs::read(path).unwrap();
    let file = File::parse(&bytes).unwrap();
    let layer = MoeLayer::from_gguf(&file, 0).unwrap();
    assert!(matches!(layer.shared(), SharedExpert::Gated { .. }));
    let t = 7;
    let hidden: Vec<f32> = (0..t * layer.n_embd())
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let size = layer.workspace_size(t);
    let mut selections = vec![Selection::new(); size.selections];
    let mut router = vec![0.0f32; size.router];
    let mut ws = vec![0u8; size.bytes];
    let mut out = vec![0.0f32; hidden.len()];

    let (n, report) = allocations_in(|| {
        let mut workspace = Workspace {
            selections: &mut selections,
            router: &mut router,
            bytes: &mut ws,
        };
        layer.forward(&hidden, &[], &mut out, &mut workspace)
    });
    report.unwrap();
    assert_eq!(n, 0, "forward allocated {n} times");
    assert!(out.iter().any(|&v| v != 0.0));
}

#[test]
fn forward_allocates_nothing_with_quantized_experts_and_capacity() {
    let (n_embd, n_ff, n_expert, k, t) = (64usize, 64usize, 4usize, 2usize, 9usize);
    let weights = QuantizedLayer::new(
        n_embd,
        n_ff,
        n_expert,
        [TensorType::Q4_0, TensorType::Q8_0, TensorType::Q4_1],
    );
    let layer = weights.layer(k).with_capacity(CapacityPolicy {
        capacity: Capacity::Megatron { factor: 1.0 },
        min_capacity: 0,
        priority: DropPriority::BatchPrioritized,
    });

    let hidden = values(t * n_embd, 5);
    let size = layer.workspace_size(t);
    let mut selections = vec![Selection::new(); size.selections];
    let mut scratch = vec![0.0f32; size.router];
    let mut ws = vec![0u8; size.bytes];
    let mut out = vec![0.0f32; hidden.len()];
    let (n, report) = allocations_in(|| {
        let mut workspace = Workspace {
            selections: &mut selections,
            router: &mut scratch,
            bytes: &mut ws,
        };
        layer.forward(&hidden, &[], &mut out, &mut workspace)
    });
    report.unwrap();
    assert_eq!(n, 0, "forward allocated {n} times");

    // On a thread pool with the detected kernels, nothing either (on the calling thread).
    let pool = ThreadPool::new(2);
    let pooled = layer
        .with_kernels(&moe_std::kernels::detect())
        .with_parallel(&pool);
    let (n, report) = allocations_in(|| {
        let mut workspace = Workspace {
            selections: &mut selections,
            router: &mut scratch,
            bytes: &mut ws,
        };
        pooled.forward(&hidden, &[], &mut out, &mut workspace)
    });
    report.unwrap();
    assert_eq!(n, 0, "a pooled forward allocated {n} times");

    // The caller-routed entry point too.
    let routed = selections.clone();
    let (n, report) =
        allocations_in(|| layer.forward_selected(&hidden, &routed, &mut out, &mut ws));
    report.unwrap();
    assert_eq!(n, 0, "forward_selected allocated {n} times");
}

//! Split invariance: an expert split into G narrower experts, selected together with equal
//! weight (or routed through the repeated router rows), gives the coarse layer's output
//! within 1e-5.

mod moe_util;

use moe_core::TensorType;
use moe_core::moe::granularity::{split_down, split_router, split_selection};
use moe_core::moe::{Activation, ExpertStack, MoeLayer, Workspace};
use moe_core::router::{Router, RouterConfig, Selection};
use moe_core::tensor::TensorView;
use moe_util::{Rng, random_hidden, random_selection};

fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = actual
        .iter()
        .zip(expected)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    err / scale
}

struct Coarse {
    n_embd: usize,
    n_ff: usize,
    n_expert: usize,
    gate: Vec<u8>,
    up: Vec<u8>,
    down: Vec<f32>,
    router: Vec<f32>,
}

fn coarse(rng: &mut Rng, n_embd: usize, n_ff: usize, n_expert: usize) -> Coarse {
    let mut v = |n: usize, s: f32| (0..n).map(|_| rng.uniform(-s, s)).collect::<Vec<f32>>();
    let size = n_embd * n_ff * n_expert;
    Coarse {
        n_embd,
        n_ff,
        n_expert,
        gate: bytes(&v(size, 0.3)),
        up: bytes(&v(size, 0.3)),
        down: v(size, 0.3),
        router: v(n_embd * n_expert, 0.5),
    }
}

/// The layer over the coarse stacks split `g` ways (`g = 1`: the coarse layer), with its
/// `down` and router buffers.
fn split(c: &Coarse, g: usize) -> (Vec<u8>, Vec<u8>) {
    let mut down = vec![0.0; c.down.len()];
    split_down(g, c.n_embd, c.n_ff, c.n_expert, &c.down, &mut down).unwrap();
    let mut router = vec![0.0; c.router.len() * g];
    split_router(g, c.n_embd, c.n_expert, &c.router, &mut router).unwrap();
    (bytes(&down), bytes(&router))
}

fn layer<'a>(c: &'a Coarse, g: usize, down: &'a [u8], k: usize) -> MoeLayer<'a> {
    // gate and up need no change: the same bytes read as [n_embd, n_ff/G, G·E].
    let (d, f, e) = (
        c.n_embd as u64,
        (c.n_ff / g) as u64,
        (c.n_expert * g) as u64,
    );
    let f32_view =
        |bytes: &'a [u8], dims: &[u64]| TensorView::new(TensorType::F32, dims, bytes).unwrap();
    let stack = ExpertStack::new(
        Some(f32_view(&c.gate, &[d, f, e])),
        f32_view(&c.up, &[d, f, e]),
        f32_view(down, &[f, d, e]),
        Activation::Silu,
    )
    .unwrap();
    MoeLayer::new(stack, k * g).unwrap()
}

#[test]
fn split_experts_selected_together_reproduce_the_coarse_layer() {
    let mut rng = Rng(21);
    let (n_embd, n_ff, n_expert, k, t) = (48, 64, 4, 2, 5);
    let c = coarse(&mut rng, n_embd, n_ff, n_expert);
    let hidden = random_hidden(&mut rng, t, n_embd);
    let selections: Vec<Selection> = (0..t)
        .map(|_| random_selection(&mut rng, n_expert, k))
        .collect();
    let run = |g: usize| {
        let (down, _) = split(&c, g);
        let layer = layer(&c, g, &down, k);
        let fine: Vec<Selection> = selections
            .iter()
            .map(|s| split_selection(g, s).unwrap())
            .collect();
        let mut out = vec![0.0; hidden.len()];
        let mut ws = vec![0u8; layer.workspace_bytes(t)];
        layer
            .forward_selected(&hidden, &fine, &mut out, &mut ws)
            .unwrap();
        out
    };
    let reference = run(1);
    for g in [2, 4, 8, 16, 32] {
        let err = relative_error(&run(g), &reference);
        assert!(err <= 1e-5, "G = {g}: relative error {err:e}");
    }
}

#[test]
fn split_router_routes_to_the_slices_of_the_coarse_choices() {
    let mut rng = Rng(22);
    let (n_embd, n_ff, n_expert, k, t) = (32, 64, 8, 2, 6);
    let c = coarse(&mut rng, n_embd, n_ff, n_expert);
    let hidden = random_hidden(&mut rng, t, n_embd);
    let run = |g: usize| {
        let (down, router_bytes) = split(&c, g);
        let config = RouterConfig::mixtral(n_embd, n_expert * g, k * g);
        let weight = TensorView::new(
            TensorType::F32,
            &[n_embd as u64, (n_expert * g) as u64],
            &router_bytes,
        )
        .unwrap();
        let router = Router::new(config).unwrap().with_weight(weight).unwrap();
        let layer = layer(&c, g, &down, k).with_router(router).unwrap();
        let size = layer.workspace_size(t);
        let mut sel = vec![Selection::new(); size.selections];
        let mut scratch = vec![0.0; size.router];
        let mut bytes = vec![0u8; size.bytes];
        let mut out = vec![0.0; hidden.len()];
        layer
            .forward(
                &hidden,
                &[],
                &mut out,
                &mut Workspace {
                    selections: &mut sel,
                    router: &mut scratch,
                    bytes: &mut bytes,
                },
            )
            .unwrap();
        (out, sel)
    };
    let (reference, coarse_sel) = run(1);
    for g in [2, 4, 8, 16] {
        let (out, sel) = run(g);
        for (coarse, fine) in coarse_sel.iter().zip(&sel) {
            let mut want: Vec<u32> = split_selection(g, coarse)
                .unwrap()
                .iter()
                .map(|c| c.expert)
                .collect();
            let mut got: Vec<u32> = fine.iter().map(|c| c.expert).collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "G = {g}");
        }
        let err = relative_error(&out, &reference);
        assert!(err <= 1e-5, "G = {g}: relative error {err:e}");
    }
}

#[test]
fn split_helpers_check_their_arguments() {
    let c = coarse(&mut Rng(23), 8, 12, 2);
    let mut down = vec![0.0; c.down.len()];
    assert!(split_down(5, 8, 12, 2, &c.down, &mut down).is_err()); // 5 does not divide 12
    assert!(split_down(0, 8, 12, 2, &c.down, &mut down).is_err());
    assert!(split_down(3, 8, 12, 2, &c.down, &mut down[1..]).is_err());
    // Empty shapes are no-ops, not panics.
    assert!(split_down(2, 0, 4, 2, &[], &mut []).is_ok());
    assert!(split_down(2, 4, 0, 2, &[], &mut []).is_ok());
    assert!(split_router(2, 0, 2, &[], &mut []).is_ok());
    let mut router = vec![0.0; 8 * 2 * 3];
    assert!(split_router(3, 8, 2, &c.router, &mut router).is_ok());
    assert!(split_router(3, 8, 2, &c.router, &mut router[1..]).is_err());
    let sel = random_selection(&mut Rng(1), 2, 2);
    assert!(split_selection(32, &sel).is_ok());
    assert!(split_selection(33, &sel).is_err()); // 66 choices > MAX_K
}

//! The PEER layer against peer-pytorch: each fixture in `fixtures/peer/` holds one
//! `PEER_pytorch.PEER` module converted by `make_fixtures.py`, a 6-token input, the
//! module's output and the experts, scores and weights it used (captured with hooks).
//! `PeerLayer::from_gguf` must reproduce the output to 1e-4 relative to the output scale,
//! retrieve the same experts, and the brute-force reference must agree too.

mod moe_util;
mod peer_util;

use moe_core::gguf::File;
use moe_core::peer::PeerLayer;
use moe_core::reference::moe::dequantize;
use moe_core::reference::peer as reference;
use moe_core::tensor::TensorView;
use peer_util::{forward, reference_forward, relative_error};

const FIXTURES: [&str; 3] = ["competing", "noncompeting", "batchnorm"];

fn read(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/peer/{name}.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn view<'a>(file: &File<'a>, name: &str) -> TensorView<'a> {
    file.tensor(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .view
}

fn floats(view: &TensorView) -> Vec<f32> {
    let mut v = vec![0.0; view.n_elements() as usize];
    dequantize(view, &mut v).unwrap();
    v
}

fn ints(view: &TensorView) -> Vec<i32> {
    view.data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn layer_reproduces_peer_pytorch() {
    for name in FIXTURES {
        let bytes = read(name);
        let file = File::parse(&bytes).unwrap();
        let layer = PeerLayer::from_gguf(&file, 0).unwrap();
        let c = *layer.config();
        let hidden = floats(&view(&file, "test.input"));
        let expected = floats(&view(&file, "test.output"));
        let (out, seen) = forward(&layer, &hidden);
        let err = relative_error(&out, &expected);
        eprintln!("{name}: relative error {err:.2e}");
        assert!(err < 1e-4, "{name}: relative error {err}");

        // Same experts, scores and weights as the module gathered, head by head.
        let indices = ints(&view(&file, "test.indices"));
        let scores = floats(&view(&file, "test.scores"));
        let weights = floats(&view(&file, "test.weights"));
        let k = c.experts_per_head;
        assert_eq!(seen.len() * k, indices.len(), "{name}");
        let score_scale = scores.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        for s in &seen {
            let at = (s.token * c.n_head + s.head) * k;
            let offset = if c.separate_embed_per_head {
                s.head * c.n_expert
            } else {
                0
            };
            for (j, &(e, score)) in s.experts.iter().enumerate() {
                assert_eq!(offset as i32 + e as i32, indices[at + j], "{name} {s:?}");
                assert!(
                    (score - scores[at + j]).abs() <= 1e-5 * score_scale,
                    "{name} {s:?}"
                );
                assert!(
                    (s.weights[j] - weights[at + j]).abs() <= 1e-5,
                    "{name} {s:?}"
                );
            }
        }
    }
}

#[test]
fn reference_reproduces_peer_pytorch() {
    for name in FIXTURES {
        let bytes = read(name);
        let file = File::parse(&bytes).unwrap();
        let layer = PeerLayer::from_gguf(&file, 0).unwrap();
        let t = layer.tensors();
        let opt = |v: Option<TensorView>| v.map(|v| floats(&v));
        let (query, keys, down, up) = (
            floats(&t.query),
            floats(&t.keys),
            floats(&t.down),
            floats(&t.up),
        );
        let (bias, norm) = (opt(t.query_bias), opt(t.norm));
        let bn = t.query_norm.map(|bn| {
            (
                opt(bn.weight),
                opt(bn.bias),
                floats(&bn.running_mean),
                floats(&bn.running_var),
            )
        });
        let model = reference::Peer {
            config: *layer.config(),
            query: &query,
            query_bias: bias.as_deref(),
            query_norm: bn.as_ref().map(|(w, b, m, v)| reference::BatchNorm {
                weight: w.as_deref(),
                bias: b.as_deref(),
                running_mean: m,
                running_var: v,
            }),
            norm: norm.as_deref(),
            keys: &keys,
            down: &down,
            up: &up,
        };
        let hidden = floats(&view(&file, "test.input"));
        let expected = floats(&view(&file, "test.output"));
        let (out, seen) = reference_forward(&model, &hidden);
        let err = relative_error(&out, &expected);
        eprintln!("{name}: relative error {err:.2e}");
        assert!(err < 1e-4, "{name}: relative error {err}");
        let (_, fast) = forward(&layer, &hidden);
        let ids = |v: &[peer_util::Retrieval]| -> Vec<(usize, usize, Vec<u32>)> {
            let mut ids: Vec<_> = v
                .iter()
                .map(|r| (r.token, r.head, r.experts.iter().map(|e| e.0).collect()))
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&seen), ids(&fast), "{name}");
    }
}

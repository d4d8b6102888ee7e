//! The MoE layer against Hugging Face transformers: each fixture in `fixtures/hf/` holds
//! one MoE block (f32 weights, llama.cpp names and keys), a 7-token input, HF's routing
//! (`test.selected`, `test.weights`) and HF's output. The layer built by `from_gguf` must
//! reproduce the output to 1e-5 relative to the output scale.

use moe_core::gguf::File;
use moe_core::moe::{MoeLayer, SharedExpert, Workspace};
use moe_core::reference::moe::dequantize;
use moe_core::router::{Choice, Selection};
use moe_core::tensor::TensorView;

const FIXTURES: [&str; 10] = [
    "mixtral",
    "mixtral-seed1",
    "qwen2moe",
    "qwen2moe-seed1",
    "olmoe",
    "olmoe-seed1",
    "deepseek2",
    "deepseek2-seed1",
    "qwen3moe",
    "qwen3moe-seed1",
];

fn read(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/hf/{name}.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn floats(view: &TensorView) -> Vec<f32> {
    let mut v = vec![0.0; view.n_elements() as usize];
    dequantize(view, &mut v).unwrap();
    v
}

fn view<'a>(file: &File<'a>, name: &str) -> TensorView<'a> {
    file.tensor(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .view
}

/// HF's routing as selections: `test.selected` I32 `[k, T]`, `test.weights` `[k, T]`.
fn hf_selections(file: &File) -> Vec<Selection> {
    let ids = view(file, "test.selected");
    let weights = floats(&view(file, "test.weights"));
    let k = ids.ne(0) as usize;
    let ids: Vec<i32> = ids
        .data()
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    ids.chunks_exact(k)
        .zip(weights.chunks_exact(k))
        .map(|(ids, ws)| {
            let mut sel = Selection::new();
            for (&e, &w) in ids.iter().zip(ws) {
                sel.push(Choice {
                    expert: e as u32,
                    weight: w,
                })
                .unwrap();
            }
            sel
        })
        .collect()
}

/// Max |a - b| over max |b|.
fn relative_error(actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len());
    let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let err = actual
        .iter()
        .zip(expected)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    err / scale
}

fn run(layer: &MoeLayer, hidden: &[f32], selections: &[Selection]) -> Vec<f32> {
    let mut out = vec![f32::NAN; hidden.len()];
    let mut ws = vec![0u8; layer.workspace_bytes(selections.len())];
    let report = layer
        .forward_selected(hidden, selections, &mut out, &mut ws)
        .unwrap();
    assert_eq!(report.dispatch.dropped, 0);
    out
}

#[test]
fn layer_matches_transformers_with_hf_routing() {
    for name in FIXTURES {
        let bytes = read(name);
        let file = File::parse(&bytes).unwrap();
        let layer = MoeLayer::from_gguf(&file, 0).unwrap();
        let hidden = floats(&view(&file, "test.input"));
        let selections = hf_selections(&file);
        assert_eq!(selections.len() * layer.n_embd(), hidden.len());

        let out = run(&layer, &hidden, &selections);
        let expected = floats(&view(&file, "test.output"));
        let err = relative_error(&out, &expected);
        println!("{name}: relative error {err:.2e}");
        assert!(err <= 1e-5, "{name}: relative error {err:e}");

        // The routed part alone, where the fixture records it.
        if let Some(routed) = file.tensor("test.routed_output") {
            assert!(!matches!(layer.shared(), SharedExpert::None), "{name}");
            let routed_layer = layer.with_shared(SharedExpert::None).unwrap();
            let out = run(&routed_layer, &hidden, &selections);
            let err = relative_error(&out, &floats(&routed.view));
            assert!(err <= 1e-5, "{name} (routed only): relative error {err:e}");
        }
    }
}

#[test]
fn shared_experts_are_read_as_the_architecture_wires_them() {
    for (name, gated) in [("qwen2moe", true), ("deepseek2", false)] {
        let bytes = read(name);
        let file = File::parse(&bytes).unwrap();
        let layer = MoeLayer::from_gguf(&file, 0).unwrap();
        match layer.shared() {
            SharedExpert::Gated { .. } => assert!(gated, "{name}"),
            SharedExpert::AlwaysOn(_) => assert!(!gated, "{name}"),
            SharedExpert::None => panic!("{name}: no shared expert"),
        }
    }
    let bytes = read("mixtral");
    let file = File::parse(&bytes).unwrap();
    let layer = MoeLayer::from_gguf(&file, 0).unwrap();
    assert!(matches!(layer.shared(), SharedExpert::None));
    assert!(MoeLayer::from_gguf(&file, 1).is_err());
}

#[test]
fn layer_with_its_own_router_matches_transformers() {
    for name in FIXTURES {
        let bytes = read(name);
        let file = File::parse(&bytes).unwrap();
        let layer = MoeLayer::from_gguf(&file, 0).unwrap();
        let hidden = floats(&view(&file, "test.input"));
        let n_tokens = hidden.len() / layer.n_embd();
        let size = layer.workspace_size(n_tokens);
        let mut selections = vec![Selection::new(); size.selections];
        let mut router = vec![0.0f32; size.router];
        let mut bytes = vec![0u8; size.bytes];
        let mut ws = Workspace {
            selections: &mut selections,
            router: &mut router,
            bytes: &mut bytes,
        };
        let mut out = vec![f32::NAN; hidden.len()];
        let report = layer.forward(&hidden, &[], &mut out, &mut ws).unwrap();
        assert_eq!(report.route.unwrap().nan_scores, 0);

        // Same experts as HF for every token (HF's order is not ranked: compare sets).
        for (t, (ours, hf)) in selections.iter().zip(hf_selections(&file)).enumerate() {
            let mut a: Vec<u32> = ours.iter().map(|c| c.expert).collect();
            let mut b: Vec<u32> = hf.iter().map(|c| c.expert).collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "{name}: token {t}");
        }
        let err = relative_error(&out, &floats(&view(&file, "test.output")));
        assert!(err <= 1e-5, "{name}: relative error {err:e}");
    }
}

/// The reference (`reference::moe` with `reference::router`), built by hand from the
/// file's tensors, reproduces transformers too: the specification is right.
#[test]
fn the_reference_layer_matches_transformers() {
    use moe_core::moe::Activation;
    use moe_core::reference::moe as reference;
    use moe_core::reference::router::Inputs;
    use moe_core::router::RouterConfig;

    for name in FIXTURES {
        let bytes = read(name);
        let file = File::parse(&bytes).unwrap();
        let config = RouterConfig::from_gguf(&file, 0).unwrap();
        let (d, e) = (config.n_embd, config.n_expert);
        let hidden = floats(&view(&file, "test.input"));
        let n_tokens = hidden.len() / d;

        let bias = file
            .tensor("blk.0.exp_probs_b.bias")
            .map(|t| floats(&t.view));
        let inputs = Inputs {
            bias: bias.as_deref(),
            ..Inputs::default()
        };
        let mut selections = vec![Selection::new(); n_tokens];
        let mut scratch = vec![0.0; reference::route_scratch_len(&config, n_tokens)];
        let mut order = vec![0u32; e];
        reference::route(
            &config,
            &view(&file, "blk.0.ffn_gate_inp.weight"),
            &inputs,
            &hidden,
            &[],
            &mut selections,
            &mut scratch,
            &mut order,
        )
        .unwrap();

        let gate = floats(&view(&file, "blk.0.ffn_gate_exps.weight"));
        let up = floats(&view(&file, "blk.0.ffn_up_exps.weight"));
        let down = floats(&view(&file, "blk.0.ffn_down_exps.weight"));
        let n_ff = up.len() / (d * e);
        let shexp = |part: &str| {
            file.tensor(&format!("blk.0.ffn_{part}_shexp.weight"))
                .map(|t| floats(&t.view))
        };
        let (sg, su, sd) = (shexp("gate"), shexp("up"), shexp("down"));
        let shared_gate = file
            .tensor("blk.0.ffn_gate_inp_shexp.weight")
            .map(|t| floats(&t.view));
        let shared_ffn = su.as_ref().map(|su| reference::Ffn {
            gate: sg.as_deref(),
            up: su,
            down: sd.as_deref().unwrap(),
            n_embd: d,
            n_ff: su.len() / d,
            activation: Activation::Silu,
        });
        let shared = match (shared_ffn, &shared_gate) {
            (None, _) => reference::Shared::None,
            (Some(ffn), None) => reference::Shared::AlwaysOn(ffn),
            (Some(ffn), Some(gate)) => reference::Shared::Gated { ffn, gate },
        };
        let layer = reference::Layer {
            experts: reference::Experts {
                gate: Some(&gate),
                up: &up,
                down: &down,
                n_embd: d,
                n_ff,
                n_expert: e,
                activation: Activation::Silu,
            },
            shared,
            capacity: moe_core::moe::CapacityPolicy::DROPLESS,
            k: config.k,
        };
        let mut out = vec![f32::NAN; hidden.len()];
        let mut scratch = vec![0.0; layer.scratch_len()];
        layer
            .forward(&hidden, &selections, &mut out, &mut scratch)
            .unwrap();
        let err = relative_error(&out, &floats(&view(&file, "test.output")));
        assert!(err <= 1e-5, "{name}: relative error {err:e}");
    }
}

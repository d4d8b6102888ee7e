//! The GPU path against the CPU path (`moe_core::moe::MoeLayer`) on the same weights:
//! every quant type the kernels read, decode (at most 64 routed pairs) and prefill
//! (more, through the align step), routing on the device, shared experts (always-on and
//! sigmoid-gated, of other widths and types than the routed experts) and the hybrid
//! forward; the same selected experts and outputs within 1e-3 of the CPU output's
//! largest magnitude.
//!
//! Without a CUDA device every test prints `skipped: no CUDA device` and passes; with
//! `MOE_REQUIRE_GPU=1` a missing device is a failure (the GPU machine's command sets it).
//! The checks that need no device (typed errors for unsupported layers) always run.

mod common;

use common::{
    N_EMBD, SharedWeights, TYPES, Weights, assert_close, assert_same_routing, cpu_forward,
};
use moe_core::TensorType;
use moe_core::router::{GroupLimit, GroupScore, Normalize, RouterConfig, ScoreFunc};
use moe_cuda::synthetic::random_f32;
use moe_cuda::{GpuDevice, GpuError, GpuMoeLayer};

fn device_or_skip() -> Option<GpuDevice> {
    match GpuDevice::first() {
        Some(Ok(d)) => {
            println!(
                "device {} (kernels cached: {})",
                d.arch(),
                d.kernels_cached()
            );
            if !d.compile_log().is_empty() {
                println!("NVRTC log:\n{}", d.compile_log());
            }
            Some(d)
        }
        Some(Err(e)) => panic!("a CUDA device is present but could not be opened: {e}"),
        None => {
            assert!(
                std::env::var_os("MOE_REQUIRE_GPU").is_none(),
                "MOE_REQUIRE_GPU is set but there is no CUDA device"
            );
            println!("skipped: no CUDA device");
            None
        }
    }
}

fn run_case(
    device: &GpuDevice,
    w: &Weights,
    config: RouterConfig,
    with_bias: bool,
    n_tokens: usize,
    label: &str,
) {
    let layer = w.layer(config, with_bias);
    let hidden = random_f32(n_tokens * N_EMBD, 1.0, n_tokens as u64 + 99);
    let (cpu, selections) = cpu_forward(&layer, &hidden);
    let mut gpu_layer =
        GpuMoeLayer::new(device, &layer, Some(w.router_tensors(with_bias))).unwrap();
    let mut gpu = vec![0f32; hidden.len()];
    gpu_layer.forward(&hidden, &mut gpu).unwrap();
    let routed = gpu_layer.routed(n_tokens).unwrap();
    assert_same_routing(label, &routed, &selections[..n_tokens]);
    assert_close(label, &gpu, &cpu);
    // The caller's selections give the same output.
    let mut gpu2 = vec![0f32; hidden.len()];
    gpu_layer
        .forward_selected(&hidden, &selections[..n_tokens], &mut gpu2)
        .unwrap();
    assert_close(&format!("{label} (host selections)"), &gpu2, &cpu);
}

#[test]
fn decode_matches_cpu_for_every_type() {
    let Some(device) = device_or_skip() else {
        return;
    };
    for (i, (gu, dn)) in TYPES.into_iter().enumerate() {
        let w = Weights::new(gu, dn, 8, i as u64 + 1);
        let config = RouterConfig::mixtral(N_EMBD, 8, 2);
        for n_tokens in [1, 4] {
            run_case(
                &device,
                &w,
                config,
                false,
                n_tokens,
                &format!("{gu}/{dn} decode T={n_tokens}"),
            );
        }
    }
}

#[test]
fn prefill_matches_cpu_for_every_type() {
    let Some(device) = device_or_skip() else {
        return;
    };
    for (i, (gu, dn)) in TYPES.into_iter().enumerate() {
        let w = Weights::new(gu, dn, 8, i as u64 + 11);
        let config = RouterConfig::mixtral(N_EMBD, 8, 2);
        // 37 tokens × 2 = 74 pairs > 64: the align + tiled path, with partial tiles.
        run_case(
            &device,
            &w,
            config,
            false,
            37,
            &format!("{gu}/{dn} prefill T=37"),
        );
    }
}

#[test]
fn deepseek_style_routing_matches_cpu() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let w = Weights::new(TensorType::Q8_0, TensorType::Q8_0, 16, 21);
    let config = RouterConfig {
        score: ScoreFunc::Sigmoid,
        normalize: Normalize::Sum { epsilon: 1e-20 },
        scale: 2.5,
        groups: Some(GroupLimit {
            n_group: 4,
            topk_group: 2,
            score: GroupScore::SumTop(2),
        }),
        ..RouterConfig::top_k(N_EMBD, 16, 4)
    };
    for n_tokens in [1, 3, 40] {
        run_case(
            &device,
            &w,
            config,
            true,
            n_tokens,
            &format!("deepseek-style T={n_tokens}"),
        );
    }
    let qwen = RouterConfig::top_k(N_EMBD, 16, 4);
    run_case(
        &device,
        &w,
        qwen,
        false,
        5,
        "softmax top-4 without renormalisation",
    );
    let selected = RouterConfig {
        score: ScoreFunc::SoftmaxSelected,
        groups: Some(GroupLimit {
            n_group: 4,
            topk_group: 3,
            score: GroupScore::Max,
        }),
        ..RouterConfig::top_k(N_EMBD, 16, 2)
    };
    run_case(
        &device,
        &w,
        selected,
        false,
        6,
        "softmax over the selected, group max",
    );
}

#[test]
fn too_small_a_budget_is_an_error_not_a_crash() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let w = Weights::new(TensorType::Q4_0, TensorType::Q4_0, 8, 31);
    let layer = w.layer(RouterConfig::mixtral(N_EMBD, 8, 2), false);
    let err = GpuMoeLayer::with_budget(&device, &layer, Some(w.router_tensors(false)), Some(1024))
        .unwrap_err();
    assert!(matches!(err, GpuError::OutOfMemory { .. }), "{err}");
}

#[test]
fn hybrid_half_the_experts_on_the_cpu_matches_cpu() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let w = Weights::new(TensorType::Q4_K, TensorType::Q6_K, 8, 51);
    let config = RouterConfig::mixtral(N_EMBD, 8, 2);
    let layer = w.layer(config, false);
    // The most used half of the experts on the device, from a (made-up) usage count.
    let bytes = moe_cuda::placement::expert_bytes(layer.experts()).unwrap();
    let counts = [5, 1, 9, 3, 7, 2, 8, 4];
    let budget = bytes.iter().take(4).sum::<u64>();
    let placement = moe_cuda::placement::place(&counts, &bytes, budget).unwrap();
    assert_eq!(placement.order, vec![2, 6, 4, 0]);
    for n_tokens in [1, 3, 37] {
        let hidden = random_f32(n_tokens * N_EMBD, 1.0, n_tokens as u64 + 7);
        let (cpu, _) = cpu_forward(&layer, &hidden);
        let mut gpu = GpuMoeLayer::with_placement(
            &device,
            &layer,
            Some(w.router_tensors(false)),
            Some(&placement.resident),
            None,
        )
        .unwrap();
        assert_eq!(gpu.weight_bytes(), placement.bytes);
        let mut out = vec![0f32; hidden.len()];
        let mut ws = vec![0u8; layer.workspace_bytes(n_tokens)];
        gpu.hybrid_forward(&layer, &hidden, &mut out, &mut ws)
            .unwrap();
        assert_close(&format!("hybrid T={n_tokens}"), &out, &cpu);
    }
}

#[test]
fn always_on_shared_expert_matches_cpu() {
    let Some(device) = device_or_skip() else {
        return;
    };
    common::always_on_shared_cases(&mut |w, config, bias, n_tokens, label, _| {
        run_case(&device, w, config, bias, n_tokens, label)
    });
}

#[test]
fn gated_shared_expert_matches_cpu() {
    let Some(device) = device_or_skip() else {
        return;
    };
    common::gated_shared_cases(&mut |w, config, bias, n_tokens, label, _| {
        run_case(&device, w, config, bias, n_tokens, label)
    });
}

#[test]
fn hybrid_with_a_shared_expert_matches_cpu() {
    use TensorType::*;
    let Some(device) = device_or_skip() else {
        return;
    };
    let resident = [true, false, true, false, false, true, true, false];
    for (label, scale) in [("always-on", None), ("gated", Some(F32))] {
        let w = Weights::new(Q4_K, Q6_K, 8, 101)
            .with_shared(SharedWeights::new(Q8_0, Q4_K, 1280, scale, 102));
        let config = RouterConfig::mixtral(N_EMBD, 8, 2);
        let layer = w.layer(config, false);
        let expert_bytes = moe_cuda::placement::expert_bytes(layer.experts()).unwrap();
        for placement in [Some(&resident[..]), None] {
            let mut gpu = GpuMoeLayer::with_placement(
                &device,
                &layer,
                Some(w.router_tensors(false)),
                placement,
                None,
            )
            .unwrap();
            assert!(gpu.has_shared());
            let on_device: u64 = expert_bytes
                .iter()
                .zip(placement.unwrap_or(&[true; 8]))
                .filter(|(_, r)| **r)
                .map(|(b, _)| b)
                .sum();
            let shared = moe_cuda::placement::shared_bytes(&layer);
            assert_eq!(gpu.shared_weight_bytes(), shared);
            assert_eq!(gpu.weight_bytes(), on_device + shared);
            let which = if placement.is_some() { "half" } else { "all" };
            for n_tokens in [1, 3, 37] {
                let hidden = random_f32(n_tokens * N_EMBD, 1.0, n_tokens as u64 + 7);
                let (cpu, _) = cpu_forward(&layer, &hidden);
                let mut out = vec![0f32; hidden.len()];
                let mut ws = vec![0u8; layer.workspace_bytes(n_tokens)];
                gpu.hybrid_forward(&layer, &hidden, &mut out, &mut ws)
                    .unwrap();
                assert_close(
                    &format!("hybrid, {which} resident, {label} shared, T={n_tokens}"),
                    &out,
                    &cpu,
                );
            }
        }
    }
}

#[test]
fn hybrid_with_every_expert_resident_is_forward() {
    let Some(device) = device_or_skip() else {
        return;
    };
    let w = Weights::new(TensorType::Q8_0, TensorType::Q8_0, 8, 111);
    let layer = w.layer(RouterConfig::mixtral(N_EMBD, 8, 2), false);
    let mut gpu = GpuMoeLayer::new(&device, &layer, Some(w.router_tensors(false))).unwrap();
    for n_tokens in [1, 40] {
        let hidden = random_f32(n_tokens * N_EMBD, 1.0, n_tokens as u64 + 3);
        let mut a = vec![0f32; hidden.len()];
        let mut b = vec![0f32; hidden.len()];
        gpu.forward(&hidden, &mut a).unwrap();
        let mut ws = vec![0u8; layer.workspace_bytes(n_tokens)];
        gpu.hybrid_forward(&layer, &hidden, &mut b, &mut ws)
            .unwrap();
        assert_close(&format!("hybrid, all resident, T={n_tokens}"), &b, &a);
        let (cpu, _) = cpu_forward(&layer, &hidden);
        assert_close(
            &format!("hybrid vs cpu, all resident, T={n_tokens}"),
            &b,
            &cpu,
        );
    }
}

// ---- No device needed ----

#[test]
fn shared_expert_types_are_checked() {
    use TensorType::*;
    let config = RouterConfig::mixtral(N_EMBD, 4, 2);
    // Every type the FFN kernels read, differing from the routed experts', is accepted.
    let ok = Weights::new(Q4_0, Q4_0, 4, 121).with_shared(SharedWeights::new(
        Q6_K,
        BF16,
        512,
        Some(Q4_K),
        122,
    ));
    GpuMoeLayer::check(&ok.layer(config, false), true).unwrap();
    let ok = Weights::new(Q4_0, Q4_0, 4, 121).with_shared(SharedWeights::new(
        F16,
        Q8_0,
        1024,
        Some(F32),
        123,
    ));
    GpuMoeLayer::check(&ok.layer(config, false), true).unwrap();
    let ok = Weights::new(Q5_K, Q6_K, 4, 121).with_shared(SharedWeights::new(
        F32,
        Q5_0,
        512,
        Some(Q5_K),
        126,
    ));
    GpuMoeLayer::check(&ok.layer(config, false), true).unwrap();
    // Others are typed errors naming the tensor.
    for (sgu, sdn, gate, role) in [
        (Q4_1, Q8_0, None, "ffn_up_shexp"),
        (Q8_0, Q4_1, None, "ffn_down_shexp"),
        (Q8_0, Q8_0, Some(Q4_1), "ffn_gate_inp_shexp"),
    ] {
        let w = Weights::new(Q4_0, Q4_0, 4, 124)
            .with_shared(SharedWeights::new(sgu, sdn, 512, gate, 125));
        let err = GpuMoeLayer::check(&w.layer(config, false), true).unwrap_err();
        assert!(
            matches!(err, GpuError::UnsupportedType { role: r, ty: Q4_1 } if r == role),
            "{err}"
        );
    }
}

#[test]
fn shared_bytes_count_the_matrices_and_the_gate() {
    use TensorType::*;
    let w = Weights::new(Q4_0, Q4_0, 4, 131).with_shared(SharedWeights::new(
        Q8_0,
        Q6_K,
        512,
        Some(F32),
        132,
    ));
    let s = w.shared.as_ref().unwrap();
    let layer = w.layer(RouterConfig::mixtral(N_EMBD, 4, 2), false);
    let expected = s.gate.len() + s.up.len() + s.down.len() + N_EMBD * 4;
    assert_eq!(moe_cuda::placement::shared_bytes(&layer), expected as u64);
    let plain = Weights::new(Q4_0, Q4_0, 4, 131);
    let layer = plain.layer(RouterConfig::mixtral(N_EMBD, 4, 2), false);
    assert_eq!(moe_cuda::placement::shared_bytes(&layer), 0);
}

#[test]
fn placement_from_router_statistics_takes_the_most_used_experts() {
    use moe_core::moe::Workspace;
    use moe_core::router::{RouterStats, Selection};
    let w = Weights::new(TensorType::Q8_0, TensorType::Q8_0, 8, 61);
    let layer = w.layer(RouterConfig::mixtral(N_EMBD, 8, 2), false);
    let (mut tokens, mut drops) = (vec![0u32; 8], vec![0u32; 8]);
    let (mut probs, mut weights) = (vec![0f64; 8], vec![0f64; 8]);
    let mut stats = RouterStats::new(&mut tokens, &mut drops, &mut probs, &mut weights).unwrap();
    let n_tokens = 64;
    let hidden = random_f32(n_tokens * N_EMBD, 1.0, 62);
    let size = layer.workspace_size(n_tokens);
    let mut selections = vec![Selection::new(); size.selections];
    let mut router = vec![0f32; size.router];
    let mut bytes = vec![0u8; size.bytes];
    let mut ws = Workspace {
        selections: &mut selections,
        router: &mut router,
        bytes: &mut bytes,
    };
    let mut out = vec![0f32; hidden.len()];
    layer
        .forward_with_stats(&hidden, &[], &mut out, &mut ws, Some(&mut stats))
        .unwrap();
    let sizes = moe_cuda::placement::expert_bytes(layer.experts()).unwrap();
    let budget = sizes[0] * 3;
    let p = moe_cuda::placement::place_by_stats(&stats, &sizes, budget).unwrap();
    let counts = stats.tokens_per_expert().to_vec();
    assert_eq!(
        counts.iter().map(|&c| c as usize).sum::<usize>(),
        2 * n_tokens
    );
    let mut by_use: Vec<usize> = (0..8).collect();
    by_use.sort_by(|&a, &b| counts[b].cmp(&counts[a]));
    assert_eq!(p.order, by_use[..3].to_vec(), "counts {counts:?}");
    assert_eq!(p.bytes, budget);
}

#[test]
fn the_cpu_share_is_the_non_resident_choices() {
    let routed = vec![vec![(2, 0.75), (5, 0.25)], vec![(1, 0.5), (2, 0.5)]];
    let resident = [false, true, true, false, false, false];
    let share = moe_cuda::cpu_share(&routed, &resident);
    let ids: Vec<Vec<(u32, f32)>> = share
        .iter()
        .map(|s| s.iter().map(|c| (c.expert, c.weight)).collect())
        .collect();
    assert_eq!(ids, vec![vec![(5, 0.25)], vec![]]);
}

#[test]
fn unsupported_weight_types_are_typed_errors() {
    // Q4_1 reads Q8_1 activations, a format the device path does not quantize to.
    let w = Weights::new(TensorType::Q4_1, TensorType::Q4_1, 4, 41);
    let layer = w.layer(RouterConfig::mixtral(N_EMBD, 4, 2), false);
    let err = GpuMoeLayer::check(&layer, true).unwrap_err();
    assert!(
        matches!(
            err,
            GpuError::UnsupportedType {
                ty: TensorType::Q4_1,
                ..
            }
        ),
        "{err}"
    );
    let ok = Weights::new(TensorType::Q4_0, TensorType::Q6_K, 4, 42);
    let layer = ok.layer(RouterConfig::mixtral(N_EMBD, 4, 2), true);
    GpuMoeLayer::check(&layer, true).unwrap();
    assert!(matches!(
        GpuMoeLayer::check(&layer, false),
        Err(GpuError::Unsupported { .. })
    ));
}

#[test]
fn no_device_means_no_panic() {
    if moe_cuda::devices().is_empty() {
        assert!(GpuDevice::first().is_none());
    } else {
        println!("skipped: a CUDA device is present");
    }
}

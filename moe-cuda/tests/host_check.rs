//! The CUDA kernels' logic checked on the CPU: `tests/host_check/harness.cpp` compiles
//! the kernel sources as C++ with g++ and launches them in `GpuMoeLayer`'s sequence,
//! one thread at a time (the two warp-reduction helpers replaced by loops over the 32
//! lanes with the shuffles' addition order); this test feeds it
//! the same random layers as the device tests and compares with moe-core's CPU layer:
//! same experts, outputs within 1e-3 — every weight type, decode and prefill (align +
//! tiles), the DeepSeek-style router options, shared experts (DeepSeek's always-on one
//! of its own width and types, Qwen2-MoE's sigmoid-gated one with gate vectors of every
//! type) and the hybrid split (non-resident experts skipped on the "device", run on the
//! CPU layer without its shared expert, added: the shared expert counted once).
//!
//! What it proves: the block dot products, quantizers, router selection, tiling and
//! align of the `.cu` files compute what the CPU spec computes. What it cannot: anything
//! about real hardware (memory model, launch limits, timing) or the Rust launch code —
//! the device tests cover those when a GPU is lent. The harness mirrors layer.rs's
//! launch order and buffer choices by hand: a change to one needs the same in the other.
//!
//! Needs `g++` with C++20 and `_Float16` (GCC 12+ on x86-64, checked by a probe); prints
//! `skipped: no g++ with C++20 and _Float16` otherwise. A harness that then fails to
//! build, or warns, fails the test.

mod common;
mod gxx;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use common::{
    N_EMBD, N_FF, SharedWeights, TYPES, Weights, assert_close, assert_same_routing, cpu_forward,
    cpu_routed_only,
};
use moe_core::TensorType;
use moe_core::router::{GroupLimit, GroupScore, Normalize, RouterConfig, ScoreFunc, Selection};
use moe_cuda::synthetic::random_f32;

/// Builds the harness once per test binary; `None` without a suitable g++ (C++20 with
/// `_Float16`: GCC 12+ on x86-64).
fn harness() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        gxx::build(
            "host_check/harness.cpp",
            "moe_cuda_host_check",
            "int main() { _Float16 h = (_Float16)1.5f; return (float)h == 1.5f ? 0 : 1; }\n",
            &[],
        )
    })
    .clone()
}

fn skip() {
    println!("skipped: no g++ with C++20 and _Float16");
}

fn le_i32(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Stacks `bytes` (`n_expert` equal matrices) keeping only the resident experts, as
/// `GpuMoeLayer::with_placement` uploads them.
fn resident_stack(bytes: &[u8], resident: &[bool]) -> Vec<u8> {
    let per = bytes.len() / resident.len();
    bytes
        .chunks_exact(per)
        .zip(resident)
        .filter(|(_, r)| **r)
        .flat_map(|(m, _)| m.iter().copied())
        .collect()
}

/// Runs the harness with the experts `resident` marks on the "device": output rows, ids
/// and weights.
fn run_harness(
    bin: &PathBuf,
    w: &Weights,
    config: RouterConfig,
    with_bias: bool,
    hidden: &[f32],
    selections: Option<&[Selection]>,
    resident: &[bool],
) -> (Vec<f32>, Vec<i32>, Vec<f32>) {
    let n_tokens = hidden.len() / N_EMBD;
    let k = config.k;
    let sh = w.shared.as_ref();
    let mut input = le_i32(&[
        w.gate_up_ty.id() as i32,
        w.down_ty.id() as i32,
        N_EMBD as i32,
        N_FF as i32,
        w.n_expert as i32,
        k as i32,
        n_tokens as i32,
        i32::from(selections.is_none()),
        i32::from(with_bias),
        sh.map_or(0, |s| s.mode()),
        sh.map_or(0, |s| s.gate_up_ty.id() as i32),
        sh.map_or(0, |s| s.down_ty.id() as i32),
        sh.map_or(0, |s| s.n_ff as i32),
        sh.and_then(|s| s.scale.as_ref())
            .map_or(0, |(ty, _)| ty.id() as i32),
    ]);
    input.extend(moe_cuda::route_params_bytes(&config, with_bias).unwrap());
    for bytes in [&w.gate, &w.up, &w.down] {
        let stack = resident_stack(bytes, resident);
        input.extend((stack.len() as u64).to_le_bytes());
        input.extend_from_slice(&stack);
    }
    if let Some(s) = sh {
        let empty = Vec::new();
        let scale = s.scale.as_ref().map_or(&empty, |(_, b)| b);
        for bytes in [&s.gate, &s.up, &s.down, scale] {
            input.extend((bytes.len() as u64).to_le_bytes());
            input.extend_from_slice(bytes);
        }
    }
    input.extend_from_slice(&w.router);
    input.extend_from_slice(&w.bias);
    input.extend(le_i32(
        &resident.iter().map(|&r| i32::from(r)).collect::<Vec<_>>(),
    ));
    input.extend(le_f32(hidden));
    if let Some(sel) = selections {
        let mut ids = vec![-1i32; n_tokens * k];
        let mut weights = vec![0f32; n_tokens * k];
        for (t, s) in sel.iter().enumerate() {
            for (j, c) in s.iter().enumerate() {
                ids[t * k + j] = c.expert as i32;
                weights[t * k + j] = c.weight;
            }
        }
        input.extend(le_i32(&ids));
        input.extend(le_f32(&weights));
    }
    let mut child = Command::new(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the harness");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("harness output");
    writer.join().unwrap().expect("write to the harness");
    assert!(
        out.status.success(),
        "harness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slots = config.experts_per_token();
    let words: Vec<[u8; 4]> = out.stdout.as_chunks::<4>().0.to_vec();
    let n_out = n_tokens * N_EMBD;
    assert_eq!(
        words.len(),
        n_out + 2 * n_tokens * slots,
        "harness output size"
    );
    let f = |b: &[u8; 4]| f32::from_le_bytes(*b);
    let result = words[..n_out].iter().map(f).collect();
    let ids = words[n_out..n_out + n_tokens * slots]
        .iter()
        .map(|b| i32::from_le_bytes(*b))
        .collect();
    let weights = words[n_out + n_tokens * slots..].iter().map(f).collect();
    (result, ids, weights)
}

/// Per token, the harness's (expert, weight) choices in rank order.
fn routed_of(ids: &[i32], weights: &[f32], n_tokens: usize, slots: usize) -> Vec<Vec<(u32, f32)>> {
    (0..n_tokens)
        .map(|t| {
            (0..slots)
                .filter(|&j| ids[t * slots + j] >= 0)
                .map(|j| (ids[t * slots + j] as u32, weights[t * slots + j]))
                .collect()
        })
        .collect()
}

/// Runs one case; `host_selections` also runs it with the CPU's selections given.
fn check(
    w: &Weights,
    config: RouterConfig,
    with_bias: bool,
    n_tokens: usize,
    label: &str,
    host_selections: bool,
) {
    let Some(bin) = harness() else {
        return skip();
    };
    let layer = w.layer(config, with_bias);
    let hidden = random_f32(n_tokens * N_EMBD, 1.0, n_tokens as u64 + 99);
    let (cpu, selections) = cpu_forward(&layer, &hidden);
    let all = vec![true; w.n_expert];
    let (out, ids, weights) = run_harness(&bin, w, config, with_bias, &hidden, None, &all);
    let routed = routed_of(&ids, &weights, n_tokens, config.experts_per_token());
    assert_same_routing(label, &routed, &selections[..n_tokens]);
    assert_close(label, &out, &cpu);
    if !host_selections {
        return;
    }
    // The caller's selections give the same result.
    let (out2, _, _) = run_harness(
        &bin,
        w,
        config,
        with_bias,
        &hidden,
        Some(&selections[..n_tokens]),
        &all,
    );
    assert_close(&format!("{label} (host selections)"), &out2, &cpu);
}

#[test]
fn decode_kernels_match_cpu_for_every_type() {
    for (i, (gu, dn)) in TYPES.into_iter().enumerate() {
        let w = Weights::new(gu, dn, 8, i as u64 + 1);
        for n_tokens in [1, 4] {
            let label = format!("{gu}/{dn} decode T={n_tokens}");
            let config = RouterConfig::mixtral(N_EMBD, 8, 2);
            check(&w, config, false, n_tokens, &label, n_tokens == 4);
        }
    }
}

#[test]
fn prefill_kernels_match_cpu_for_every_type() {
    for (i, (gu, dn)) in TYPES.into_iter().enumerate() {
        let w = Weights::new(gu, dn, 8, i as u64 + 11);
        let label = format!("{gu}/{dn} prefill T=37");
        check(
            &w,
            RouterConfig::mixtral(N_EMBD, 8, 2),
            false,
            37,
            &label,
            i == 0,
        );
    }
}

#[test]
fn routing_options_match_cpu() {
    let w = Weights::new(
        moe_core::TensorType::Q8_0,
        moe_core::TensorType::Q8_0,
        16,
        21,
    );
    let deepseek = RouterConfig {
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
        let label = format!("deepseek-style T={n_tokens}");
        check(&w, deepseek, true, n_tokens, &label, n_tokens == 3);
    }
    let qwen = RouterConfig::top_k(N_EMBD, 16, 4);
    check(&w, qwen, false, 5, "softmax top-4", false);
    let selected = RouterConfig {
        score: ScoreFunc::SoftmaxSelected,
        normalize: Normalize::ClampedSum {
            min_sum: moe_core::router::LLAMA_CPP_MIN_WEIGHT_SUM,
        },
        groups: Some(GroupLimit {
            n_group: 4,
            topk_group: 3,
            score: GroupScore::Max,
        }),
        ..RouterConfig::top_k(N_EMBD, 16, 2)
    };
    check(&w, selected, false, 6, "softmax over the selected", false);
}

#[test]
fn always_on_shared_expert_matches_cpu() {
    common::always_on_shared_cases(&mut |w, config, bias, n_tokens, label, selected| {
        check(w, config, bias, n_tokens, label, selected)
    });
}

#[test]
fn gated_shared_expert_matches_cpu() {
    common::gated_shared_cases(&mut |w, config, bias, n_tokens, label, selected| {
        check(w, config, bias, n_tokens, label, selected)
    });
}

/// `GpuMoeLayer::hybrid_forward`'s composition: the device part (resident experts and
/// the shared expert) plus the CPU part (the other experts, on the layer without its
/// shared expert) is the CPU layer's output: the shared expert is added exactly once.
#[test]
fn hybrid_with_a_shared_expert_adds_it_once() {
    use TensorType::*;
    let Some(bin) = harness() else {
        return skip();
    };
    let resident = [true, false, true, false, false, true, true, false];
    for (label, scale) in [("always-on", None), ("gated", Some(F32))] {
        let w = Weights::new(Q4_K, Q6_K, 8, 101)
            .with_shared(SharedWeights::new(Q8_0, Q4_K, 1280, scale, 102));
        let config = RouterConfig::mixtral(N_EMBD, 8, 2);
        let layer = w.layer(config, false);
        for n_tokens in [1, 3, 37] {
            let hidden = random_f32(n_tokens * N_EMBD, 1.0, n_tokens as u64 + 7);
            let (cpu, _) = cpu_forward(&layer, &hidden);
            let (mut out, ids, weights) =
                run_harness(&bin, &w, config, false, &hidden, None, &resident);
            let routed = routed_of(&ids, &weights, n_tokens, config.experts_per_token());
            let share = moe_cuda::cpu_share(&routed, &resident);
            let cpu_part = cpu_routed_only(&layer, &hidden, &share);
            for (o, c) in out.iter_mut().zip(&cpu_part) {
                *o += c;
            }
            assert_close(&format!("hybrid, {label} shared, T={n_tokens}"), &out, &cpu);
        }
    }
}

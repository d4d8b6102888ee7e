//! `RouterConfig::from_gguf` / `Router::from_gguf`: llama.cpp keys and per-architecture
//! defaults, on the committed fixture and on small files written here.

#[path = "common/mod.rs"]
mod common;

use common::{F32, Gguf, kv, kv_str, kv_u32, tensor_info};
use moe_core::Error;
use moe_core::gguf::File;
use moe_core::router::{
    GroupLimit, GroupScore, LLAMA_CPP_MIN_WEIGHT_SUM, Method, Normalize, Router, RouterConfig,
    ScoreFunc, Selection,
};

const BOOL: u32 = 7;
const FLOAT32: u32 = 6;

#[test]
fn fixture_model_is_mixtral_like() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/model.gguf"
    ))
    .unwrap();
    let file = File::parse(&bytes).unwrap();
    for layer in 0..2 {
        let config = RouterConfig::from_gguf(&file, layer).unwrap();
        assert_eq!(
            config,
            RouterConfig {
                n_embd: 256,
                n_expert: 8,
                k: 2,
                score: ScoreFunc::Softmax,
                normalize: Normalize::ClampedSum {
                    min_sum: LLAMA_CPP_MIN_WEIGHT_SUM
                },
                scale: 1.0,
                groups: None,
                method: Method::TopK,
                noise: None,
            }
        );
    }
    assert!(matches!(
        RouterConfig::from_gguf(&file, 2),
        Err(Error::MissingTensor { .. })
    ));
    // The router routes with the file's F32 gate: two experts, weights summing to 1.
    let router = Router::from_gguf(&file, 0).unwrap();
    let hidden: Vec<f32> = (0..3 * 256)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let mut scratch = vec![0.0; router.scratch_len(3)];
    let mut out = vec![Selection::new(); 3];
    router
        .route(&hidden, &[], &mut scratch, &mut out, None)
        .unwrap();
    for sel in &out {
        assert_eq!(sel.len(), 2);
        let sum: f32 = sel.iter().map(|c| c.weight).sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }
}

/// A one-layer file of `arch` with an F32 gate `[16, n_expert]`, extra pairs, and
/// optionally a selection bias.
fn file(arch: &str, n_expert: u32, k: u32, extra: Vec<Vec<u8>>, bias: bool) -> Vec<u8> {
    let mut g = Gguf::new();
    g.kvs.push(kv_str("general.architecture", arch));
    g.kvs
        .push(kv_u32(&format!("{arch}.expert_count"), n_expert));
    g.kvs.push(kv_u32(&format!("{arch}.expert_used_count"), k));
    g.kvs.extend(extra);
    let gate_bytes = 16 * n_expert as u64 * 4;
    g.tensors.push(tensor_info(
        "blk.0.ffn_gate_inp.weight",
        &[16, n_expert as u64],
        F32,
        0,
    ));
    let mut size = gate_bytes;
    if bias {
        let off = size.next_multiple_of(32);
        g.tensors.push(tensor_info(
            "blk.0.exp_probs_b.bias",
            &[n_expert as u64],
            F32,
            off,
        ));
        size = off + n_expert as u64 * 4;
    }
    g.data = vec![0u8; size as usize];
    g.build()
}

#[test]
fn per_architecture_renormalisation_defaults() {
    for (arch, norm) in [
        ("llama", true),
        ("qwen3moe", true),
        ("qwen2moe", false),
        ("olmoe", false),
        ("deepseek2", false),
    ] {
        let bytes = file(arch, 8, 2, vec![], false);
        let config = RouterConfig::from_gguf(&File::parse(&bytes).unwrap(), 0).unwrap();
        assert_eq!(config.normalize != Normalize::None, norm, "{arch}");
        assert_eq!(config.score, ScoreFunc::Softmax);
        assert_eq!(config.n_embd, 16);
    }
}

#[test]
fn deepseek_v3_from_metadata() {
    let extra = vec![
        kv("deepseek2.expert_weights_norm", BOOL, &[1]),
        kv(
            "deepseek2.expert_weights_scale",
            FLOAT32,
            &2.5f32.to_le_bytes(),
        ),
        kv_u32("deepseek2.expert_gating_func", 2),
        kv_u32("deepseek2.expert_group_count", 8),
        kv_u32("deepseek2.expert_group_used_count", 4),
    ];
    let bytes = file("deepseek2", 64, 8, extra, true);
    let f = File::parse(&bytes).unwrap();
    let config = RouterConfig::from_gguf(&f, 0).unwrap();
    assert_eq!(config.score, ScoreFunc::Sigmoid);
    assert_eq!(config.scale, 2.5);
    assert!(matches!(config.normalize, Normalize::ClampedSum { .. }));
    assert_eq!(
        config.groups,
        Some(GroupLimit {
            n_group: 8,
            topk_group: 4,
            score: GroupScore::SumTop(2)
        })
    );
    Router::from_gguf(&f, 0).unwrap();
}

#[test]
fn deepseek_v2_groups_score_by_max() {
    let extra = vec![
        kv(
            "deepseek2.expert_weights_scale",
            FLOAT32,
            &16.0f32.to_le_bytes(),
        ),
        kv_u32("deepseek2.expert_group_count", 8),
        kv_u32("deepseek2.expert_group_used_count", 3),
    ];
    let bytes = file("deepseek2", 160, 6, extra, false);
    let config = RouterConfig::from_gguf(&File::parse(&bytes).unwrap(), 0).unwrap();
    assert_eq!(config.normalize, Normalize::None);
    assert_eq!(config.scale, 16.0);
    assert_eq!(config.groups.unwrap().score, GroupScore::Max);
}

#[test]
fn bad_metadata_is_an_error() {
    let bytes = file("llama", 8, 9, vec![], false);
    assert!(matches!(
        RouterConfig::from_gguf(&File::parse(&bytes).unwrap(), 0),
        Err(Error::InvalidRouterConfig { .. })
    ));
    let bytes = file(
        "llama",
        8,
        2,
        vec![kv_u32("llama.expert_gating_func", 9)],
        false,
    );
    assert_eq!(
        RouterConfig::from_gguf(&File::parse(&bytes).unwrap(), 0),
        Err(Error::UnknownGatingFunc { value: 9 })
    );
    let bytes = file(
        "llama",
        8,
        2,
        vec![kv_str("llama.expert_weights_norm", "yes")],
        false,
    );
    assert!(matches!(
        RouterConfig::from_gguf(&File::parse(&bytes).unwrap(), 0),
        Err(Error::WrongValueType { .. })
    ));
    let mut g = Gguf::new();
    g.kvs.push(kv_str("general.architecture", "olmoe"));
    g.kvs.push(kv_u32("olmoe.expert_used_count", 2));
    let bytes = g.build();
    assert!(matches!(
        RouterConfig::from_gguf(&File::parse(&bytes).unwrap(), 0),
        Err(Error::MissingKey { .. })
    ));
    // Groups that do not divide the experts.
    let extra = vec![kv_u32("deepseek2.expert_group_count", 3)];
    let bytes = file("deepseek2", 8, 2, extra, false);
    assert!(matches!(
        RouterConfig::from_gguf(&File::parse(&bytes).unwrap(), 0),
        Err(Error::InvalidRouterConfig { .. })
    ));
}

#[test]
fn the_scale_reads_any_number_type() {
    const FLOAT64: u32 = 12;
    let scale = |value: Vec<u8>| {
        let bytes = file("deepseek2", 16, 2, vec![value], false);
        RouterConfig::from_gguf(&File::parse(&bytes).unwrap(), 0).map(|c| c.scale)
    };
    let key = "deepseek2.expert_weights_scale";
    assert_eq!(scale(kv(key, FLOAT32, &2.5f32.to_le_bytes())), Ok(2.5));
    assert_eq!(scale(kv(key, FLOAT64, &2.5f64.to_le_bytes())), Ok(2.5));
    // An f64 rounds to the nearest f32.
    let third = scale(kv(key, FLOAT64, &(1.0f64 / 3.0).to_le_bytes()));
    assert_eq!(third, Ok(1.0f32 / 3.0));
    assert_eq!(scale(kv_u32(key, 3)), Ok(3.0));
    // 0 means unset: 1.
    assert_eq!(scale(kv_u32(key, 0)), Ok(1.0));
    assert!(matches!(
        scale(kv(key, BOOL, &[1])),
        Err(Error::WrongValueType { .. })
    ));
}

//! The block formats of a build follow its cargo features, and a tensor in a format the
//! build left out is a typed `UnsupportedType` error where it is loaded, never a panic.
//!
//! With the default features every format is in; `cargo xtask firmware` also runs this
//! file with only the firmware's formats
//! (`cargo test -p moe-core --no-default-features --features q8_0 --test formats`).

mod common;

use common::{F32, Gguf, kv, kv_str, kv_u32, tensor_info};
use moe_core::gguf::File;
use moe_core::kernels::scalar::dot;
use moe_core::moe::{Activation, ExpertStack, Ffn, MoeLayer};
use moe_core::quant::{ALL_TYPES, dequantize_row, quantize_row};
use moe_core::router::{Router, RouterConfig};
use moe_core::tensor::TensorView;
use moe_core::{Error, TensorType};

/// The features that turn each format on, written out independently of the crate.
// One arm per feature; with every feature on, clippy sees a `matches!`.
#[allow(clippy::match_like_matches_macro)]
fn built_with(ty: TensorType) -> bool {
    use TensorType::*;
    match ty {
        F32 => cfg!(feature = "f32"),
        F16 => cfg!(feature = "f16"),
        BF16 => cfg!(feature = "bf16"),
        Q4_0 => cfg!(feature = "q4_0"),
        Q4_1 => cfg!(feature = "q4_1"),
        Q5_0 => cfg!(feature = "q5_0"),
        Q5_1 => cfg!(feature = "q5_1"),
        Q8_0 => cfg!(feature = "q8_0"),
        Q8_1 => cfg!(feature = "q8_1"),
        Q2_K => cfg!(feature = "q2_k"),
        Q3_K => cfg!(feature = "q3_k"),
        Q4_K => cfg!(feature = "q4_k"),
        Q5_K => cfg!(feature = "q5_k"),
        Q6_K => cfg!(feature = "q6_k"),
        Q8_K => cfg!(feature = "q8_k"),
        IQ4_NL => cfg!(feature = "iq4_nl"),
        IQ4_XS => cfg!(feature = "iq4_xs"),
        _ => false,
    }
}

fn unsupported(ty: TensorType) -> Error {
    Error::UnsupportedType { ty }
}

#[test]
fn formats_follow_the_features() {
    for ty in ALL_TYPES {
        assert_eq!(ty.format_enabled(), built_with(ty), "{ty}");
        // F32 rows always decode (router weights, the F32 activation format).
        let decodes = built_with(ty) || ty == TensorType::F32;
        assert_eq!(ty.can_dequantize(), decodes, "{ty}");
        if ty.can_quantize() {
            assert!(decodes, "{ty}");
        }
        if let Some(act) = ty.activation_type() {
            assert!(built_with(ty) && built_with(act), "{ty} reads {act}");
        }
    }
    if cfg!(feature = "all-formats") {
        let decodable = ALL_TYPES.iter().filter(|t| t.can_dequantize()).count();
        assert_eq!(decodable, 17);
    }
}

#[test]
fn row_functions_refuse_left_out_formats() {
    for ty in ALL_TYPES {
        let (n, bytes) = (ty.block_len(), ty.block_bytes());
        let src = vec![0u8; bytes];
        let mut dst = vec![0f32; n];
        let decoded = dequantize_row(ty, &src, &mut dst);
        if ty.can_dequantize() {
            assert_eq!(decoded, Ok(()), "{ty}");
        } else {
            assert_eq!(decoded, Err(unsupported(ty)), "{ty}");
        }
        let mut out = vec![0u8; bytes];
        let encoded = quantize_row(ty, &dst, &mut out);
        assert_eq!(encoded.is_ok(), ty.can_quantize(), "{ty}");
        if !ty.can_quantize() {
            assert_eq!(encoded, Err(unsupported(ty)), "{ty}");
        }
        match ty.activation_type() {
            Some(act) => {
                let a = vec![0u8; act.block_bytes()];
                assert_eq!(dot(ty, &src, &a), Ok(0.0), "{ty}");
            }
            None => assert_eq!(dot(ty, &src, &[]), Err(unsupported(ty)), "{ty}"),
        }
    }
}

#[test]
fn layers_and_routers_refuse_left_out_formats_when_built() {
    let (n_embd, n_ff, n_expert) = (256u64, 2u64, 2u64);
    for ty in ALL_TYPES {
        if ty.activation_type().is_some() || n_embd % ty.block_len() as u64 != 0 {
            continue;
        }
        let decodes = ty.can_dequantize();
        let row = |cols: u64, rows: u64| {
            vec![0u8; (cols / ty.block_len() as u64 * ty.block_bytes() as u64 * rows) as usize]
        };
        let up = row(n_embd, n_ff * n_expert);
        let up_view = TensorView::new(ty, &[n_embd, n_ff, n_expert], &up).unwrap();
        // `down` rows of n_ff elements would not be whole blocks; an F32 down isolates the
        // check on `up`.
        let down = vec![0u8; (n_ff * n_embd * n_expert * 4) as usize];
        let down_view = TensorView::new(TensorType::F32, &[n_ff, n_embd, n_expert], &down).unwrap();
        assert_eq!(
            ExpertStack::new(None, up_view, down_view, Activation::Silu).err(),
            Some(unsupported(ty)),
            "{ty}"
        );
        let matrix = TensorView::new(ty, &[n_embd, n_ff], &up[..up.len() / 2]).unwrap();
        let f32_down =
            TensorView::new(TensorType::F32, &[n_ff, n_embd], &down[..down.len() / 2]).unwrap();
        assert_eq!(
            Ffn::new(None, matrix, f32_down, Activation::Silu).err(),
            Some(unsupported(ty)),
            "{ty}"
        );
        // A router only decodes its weight: any decodable type will do.
        let gate = TensorView::new(ty, &[n_embd, n_expert], &up[..up.len() / 2]).unwrap();
        let router = Router::new(RouterConfig::mixtral(n_embd as usize, n_expert as usize, 1))
            .unwrap()
            .with_weight(gate);
        if decodes {
            assert!(router.is_ok(), "{ty}");
        } else {
            assert_eq!(router.err(), Some(unsupported(ty)), "{ty}");
        }
    }
}

/// A one-layer llama file whose expert stacks are of type `ty` (all-zero weights).
fn layer_file(ty: TensorType) -> Vec<u8> {
    const N_EMBD: u64 = 32;
    const N_FF: u64 = 32;
    const N_EXPERT: u64 = 2;
    let mut g = Gguf::new();
    g.kvs.push(kv_str("general.architecture", "llama"));
    g.kvs.push(kv_u32("llama.expert_count", N_EXPERT as u32));
    g.kvs.push(kv_u32("llama.expert_used_count", 1));
    g.kvs.push(kv("llama.expert_weights_norm", 7, &[1]));
    let bytes = |cols: u64, rows: u64, ty: TensorType| {
        (cols / ty.block_len() as u64 * ty.block_bytes() as u64 * rows) as usize
    };
    let mut tensor = |name: &str, dims: &[u64], ty: TensorType| {
        let offset = g.data.len().next_multiple_of(32);
        let len = bytes(dims[0], dims[1..].iter().product(), ty);
        g.data.resize(offset + len, 0);
        g.tensors
            .push(tensor_info(name, dims, ty.id(), offset as u64));
    };
    tensor(
        "blk.0.ffn_gate_inp.weight",
        &[N_EMBD, N_EXPERT],
        TensorType::F32,
    );
    tensor("blk.0.ffn_gate_exps.weight", &[N_EMBD, N_FF, N_EXPERT], ty);
    tensor("blk.0.ffn_up_exps.weight", &[N_EMBD, N_FF, N_EXPERT], ty);
    tensor("blk.0.ffn_down_exps.weight", &[N_FF, N_EMBD, N_EXPERT], ty);
    assert_eq!(F32, TensorType::F32.id());
    g.build()
}

#[test]
fn a_gguf_layer_in_a_left_out_format_is_an_error_at_load() {
    // Q4_0 when the build leaves it out (firmware), else a format no build decodes.
    let absent = if TensorType::Q4_0.format_enabled() {
        TensorType::MXFP4
    } else {
        TensorType::Q4_0
    };
    let bytes = layer_file(absent);
    let file = File::parse(&bytes).unwrap();
    assert_eq!(
        MoeLayer::from_gguf(&file, 0).err(),
        Some(unsupported(absent))
    );
    // The same file in Q8_0 loads whenever Q8_0 is in.
    if TensorType::Q8_0.format_enabled() {
        let bytes = layer_file(TensorType::Q8_0);
        let file = File::parse(&bytes).unwrap();
        assert!(MoeLayer::from_gguf(&file, 0).is_ok());
    }
}

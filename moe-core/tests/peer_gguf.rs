//! `PeerLayer::from_gguf` on files written here: a valid file gives the layer built from
//! the same tensors by hand, and every malformed PEER checkpoint (missing tensors or keys,
//! wrong shapes, N not a square, bad key lengths, impossible k's, unknown options) is a
//! typed error. Corrupted bytes never panic.

mod common;
mod moe_util;
mod peer_util;

use common::{F32, Gguf, Q8_0, kv, kv_str, kv_u32, tensor_info};
use moe_core::Error;
use moe_core::gguf::File;
use moe_core::peer::{IndexMajor, PeerLayer, ScoreActivation};
use moe_util::Rng;
use peer_util::{Extras, Model, Types, config, forward};

const BOOL: u32 = 7;
const F32_VALUE: u32 = 6;
const F16: u32 = 1;

/// One tensor of a file under construction.
#[derive(Clone)]
struct T {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

/// A valid PEER file's parts, to break one at a time.
#[derive(Clone)]
struct Parts {
    keys: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<T>,
}

fn u32_kv(key: &str, v: u32) -> (String, u32, Vec<u8>) {
    (
        format!("llama.peer.{key}"),
        common::U32,
        v.to_le_bytes().to_vec(),
    )
}

fn str_kv(key: &str, v: &str) -> (String, u32, Vec<u8>) {
    (
        format!("llama.peer.{key}"),
        common::STRING,
        common::string(v.as_bytes()),
    )
}

fn bool_kv(key: &str, v: bool) -> (String, u32, Vec<u8>) {
    (format!("llama.peer.{key}"), BOOL, vec![v as u8])
}

/// H = 2, n = 4 (N = 16), d = 32, d_key = 8, k = 3, k_final = 2, BatchNorm, Q8_0 u/v.
fn model() -> Model {
    let mut c = config(32, 2, 4, 8, 3, 2);
    c.score_activation = ScoreActivation::Sigmoid;
    c.index_major = IndexMajor::Second;
    let types = Types {
        down: moe_core::TensorType::Q8_0,
        up: moe_core::TensorType::Q8_0,
        ..Types::F32
    };
    let extras = Extras {
        bias: true,
        batch_norm: true,
        norm: true,
    };
    Model::random(&mut Rng(42), c, types, extras)
}

fn parts(m: &Model) -> Parts {
    let t = |name: &str, tensor: &peer_util::Tensor, ty: u32| T {
        name: format!("blk.0.{name}"),
        dims: tensor.dims.clone(),
        ty,
        data: tensor.bytes.clone(),
    };
    let [mean, var, w, b] = m.bn.as_ref().unwrap();
    Parts {
        keys: vec![
            u32_kv("expert_count", 16),
            u32_kv("heads", 2),
            u32_kv("key_length", 8),
            u32_kv("product_key_topk", 3),
            u32_kv("experts_per_head", 2),
            str_kv("score_func", "sigmoid"),
            str_kv("index_major", "second"),
            bool_kv("separate_embed_per_head", false),
            bool_kv("shared_keys", false),
            str_kv("expert_activation", "gelu"),
            (
                "llama.peer.query_norm_epsilon".into(),
                F32_VALUE,
                1e-5f32.to_le_bytes().to_vec(),
            ),
            (
                "llama.embedding_length".into(),
                common::U32,
                32u32.to_le_bytes().to_vec(),
            ),
        ],
        tensors: vec![
            t("peer_query.weight", &m.query, F32),
            t("peer_query.bias", m.bias.as_ref().unwrap(), F32),
            t("peer_query_norm.running_mean", mean, F32),
            t("peer_query_norm.running_var", var, F32),
            t("peer_query_norm.weight", w, F32),
            t("peer_query_norm.bias", b, F32),
            t("peer_norm.weight", m.norm.as_ref().unwrap(), F32),
            t("peer_keys.weight", &m.keys, F32),
            t("peer_down.weight", &m.down, Q8_0),
            t("peer_up.weight", &m.up, Q8_0),
        ],
    }
}

impl Parts {
    fn build(&self) -> Vec<u8> {
        let mut g = Gguf::new();
        g.kvs.push(kv_str("general.architecture", "llama"));
        for (k, ty, v) in &self.keys {
            g.kvs.push(kv(k, *ty, v));
        }
        for t in &self.tensors {
            let offset = g.data.len().next_multiple_of(32);
            g.data.resize(offset, 0);
            g.data.extend_from_slice(&t.data);
            g.tensors
                .push(tensor_info(&t.name, &t.dims, t.ty, offset as u64));
        }
        g.build()
    }

    fn load(&self) -> Result<(), Error> {
        let bytes = self.build();
        let file = File::parse(&bytes).expect("the file itself parses");
        PeerLayer::from_gguf(&file, 0).map(|_| ())
    }

    fn without_key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.keys.retain(|(k, _, _)| k != &format!("llama.peer.{key}"));
        p
    }

    fn with_key(&self, new: (String, u32, Vec<u8>)) -> Self {
        let mut p = self.clone();
        p.keys.retain(|(k, _, _)| k != &new.0);
        p.keys.push(new);
        p
    }

    fn without_tensor(&self, name: &str) -> Self {
        let mut p = self.clone();
        p.tensors.retain(|t| t.name != format!("blk.0.{name}"));
        p
    }

    fn tensor_mut(&mut self, name: &str) -> &mut T {
        let name = format!("blk.0.{name}");
        self.tensors.iter_mut().find(|t| t.name == name).unwrap()
    }
}

#[test]
fn a_valid_file_gives_the_layer_built_by_hand() {
    let m = model();
    let bytes = parts(&m).build();
    let file = File::parse(&bytes).unwrap();
    let layer = PeerLayer::from_gguf(&file, 0).unwrap();
    assert_eq!(layer.config(), &m.config);
    let mut rng = Rng(1);
    let hidden: Vec<f32> = (0..3 * 32).map(|_| rng.uniform(-1.0, 1.0)).collect();
    assert_eq!(forward(&layer, &hidden), forward(&m.layer(), &hidden));
    // Layer 1 has no PEER tensors.
    assert_eq!(
        PeerLayer::from_gguf(&file, 1).err(),
        Some(Error::MissingTensor {
            tensor: "blk.1.peer_query.weight".try_into().unwrap()
        })
    );
}

#[test]
fn defaults_apply_when_optional_keys_are_absent() {
    let p = parts(&model());
    let mut p = p
        .without_key("index_major")
        .without_key("shared_keys")
        .without_key("separate_embed_per_head")
        .without_key("expert_activation")
        .without_key("query_norm_epsilon");
    p.keys.retain(|(k, _, _)| k != "llama.embedding_length");
    let bytes = p.build();
    let file = File::parse(&bytes).unwrap();
    let c = *PeerLayer::from_gguf(&file, 0).unwrap().config();
    assert_eq!(c.index_major, IndexMajor::First);
    assert!(!c.shared_keys && !c.separate_embed_per_head);
    assert_eq!(c.activation, moe_core::moe::Activation::GeluErf);
    assert_eq!(c.query_norm_epsilon, 1e-5);
}

#[test]
fn missing_tensors_and_keys_are_errors() {
    let p = parts(&model());
    for name in [
        "peer_query.weight",
        "peer_keys.weight",
        "peer_down.weight",
        "peer_up.weight",
    ] {
        assert_eq!(
            p.without_tensor(name).load(),
            Err(Error::MissingTensor {
                tensor: format!("blk.0.{name}").as_str().try_into().unwrap()
            }),
            "{name}"
        );
    }
    // Half a BatchNorm.
    assert!(matches!(
        p.without_tensor("peer_query_norm.running_var").load(),
        Err(Error::MissingTensor { .. })
    ));
    assert!(matches!(
        p.without_tensor("peer_query_norm.running_mean").load(),
        Err(Error::MissingTensor { .. })
    ));
    // γ and β without statistics.
    let stats_gone = p
        .without_tensor("peer_query_norm.running_mean")
        .without_tensor("peer_query_norm.running_var");
    assert!(matches!(
        stats_gone.load(),
        Err(Error::MissingTensor { .. })
    ));
    // No BatchNorm at all is fine.
    let no_bn = stats_gone
        .without_tensor("peer_query_norm.weight")
        .without_tensor("peer_query_norm.bias");
    no_bn.load().unwrap();

    for key in [
        "expert_count",
        "heads",
        "key_length",
        "product_key_topk",
        "experts_per_head",
        "score_func",
    ] {
        assert_eq!(
            p.without_key(key).load(),
            Err(Error::MissingKey {
                key: format!("llama.peer.{key}").as_str().try_into().unwrap()
            }),
            "{key}"
        );
    }
}

#[test]
fn expert_count_must_be_a_square() {
    let mut p = parts(&model()).with_key(u32_kv("expert_count", 15));
    for name in ["peer_down.weight", "peer_up.weight"] {
        let t = p.tensor_mut(name);
        t.dims[1] = 15;
        t.data.truncate(15 * 34);
    }
    assert_eq!(p.load(), Err(Error::ExpertCountNotSquare { n_expert: 15 }));
    assert_eq!(
        parts(&model()).with_key(u32_kv("expert_count", 0)).load(),
        Err(Error::InvalidPeerConfig {
            reason: "expert count must be positive"
        })
    );
}

#[test]
fn shapes_must_agree_with_the_keys() {
    let p = parts(&model());
    // N = 25 is a square but the tables have 16 rows (and the keys n = 4).
    assert!(matches!(
        p.with_key(u32_kv("expert_count", 25)).load(),
        Err(Error::BadTensorShape { .. })
    ));
    // Key length 4 against sub-keys of 8 (and queries of 2·2·8).
    assert_eq!(
        p.with_key(u32_kv("key_length", 4)).load(),
        Err(Error::BadTensorShape {
            tensor: "peer_query.weight".try_into().unwrap(),
            dim: 1,
            expected: 16,
            actual: 32
        })
    );
    assert_eq!(
        p.with_key(u32_kv("key_length", 0)).load(),
        Err(Error::InvalidPeerConfig {
            reason: "embedding length, head count and key length must be positive"
        })
    );
    // Sub-keys of 4 against key_length 8 (the queries still agree with the keys).
    let mut short_keys = p.clone();
    let keys = short_keys.tensor_mut("peer_keys.weight");
    keys.dims[0] = 4;
    keys.data.truncate(keys.data.len() / 2);
    assert_eq!(
        short_keys.load(),
        Err(Error::BadTensorShape {
            tensor: "peer_keys.weight".try_into().unwrap(),
            dim: 0,
            expected: 8,
            actual: 4
        })
    );
    // Heads: 1 instead of 2.
    assert!(matches!(
        p.with_key(u32_kv("heads", 1)).load(),
        Err(Error::BadTensorShape { .. })
    ));
    // Shared keys but one table per head; separate expert sets but N rows.
    assert_eq!(
        p.with_key(bool_kv("shared_keys", true)).load(),
        Err(Error::BadTensorShape {
            tensor: "peer_keys.weight".try_into().unwrap(),
            dim: 3,
            expected: 1,
            actual: 2
        })
    );
    assert_eq!(
        p.with_key(bool_kv("separate_embed_per_head", true)).load(),
        Err(Error::BadTensorShape {
            tensor: "peer_down.weight".try_into().unwrap(),
            dim: 1,
            expected: 32,
            actual: 16
        })
    );
    // embedding_length disagrees with the query rows.
    assert!(matches!(
        p.with_key((
            "llama.embedding_length".into(),
            common::U32,
            64u32.to_le_bytes().to_vec()
        ))
        .load(),
        Err(Error::BadTensorShape { .. })
    ));
    // A BatchNorm vector of the wrong length or type.
    let mut bad_bn = p.clone();
    let mean = bad_bn.tensor_mut("peer_query_norm.running_mean");
    mean.dims[0] = 31;
    mean.data.truncate(31 * 4);
    assert!(matches!(bad_bn.load(), Err(Error::BadTensorShape { .. })));
    let mut f16_bn = p.clone();
    let var = f16_bn.tensor_mut("peer_query_norm.running_var");
    var.ty = F16;
    var.data.truncate(var.data.len() / 2);
    assert_eq!(
        f16_bn.load(),
        Err(Error::UnsupportedType {
            ty: moe_core::TensorType::F16
        })
    );
}

#[test]
fn impossible_options_are_errors() {
    let p = parts(&model());
    let invalid = |p: Parts| matches!(p.load(), Err(Error::InvalidPeerConfig { .. }));
    assert!(invalid(p.with_key(u32_kv("product_key_topk", 0))));
    assert!(invalid(p.with_key(u32_kv("product_key_topk", 5)))); // > n = 4
    assert!(invalid(p.with_key(u32_kv("experts_per_head", 0))));
    assert!(invalid(p.with_key(u32_kv("experts_per_head", 10)))); // > k² = 9
    assert!(invalid(p.with_key(u32_kv("heads", 0))));
    assert!(invalid(p.with_key(str_kv("score_func", "tanh"))));
    assert!(invalid(p.with_key(str_kv("index_major", "row"))));
    assert!(invalid(p.with_key(str_kv("expert_activation", "swish"))));
    assert!(invalid(p.with_key((
        "llama.peer.query_norm_epsilon".into(),
        F32_VALUE,
        (-1.0f32).to_le_bytes().to_vec()
    ))));
    // Wrong value types.
    for (key, new) in [
        ("score_func", u32_kv("score_func", 1)),
        ("heads", str_kv("heads", "2")),
        ("shared_keys", u32_kv("shared_keys", 1)),
    ] {
        assert_eq!(
            p.with_key(new).load(),
            Err(Error::WrongValueType {
                key: format!("llama.peer.{key}").as_str().try_into().unwrap()
            })
        );
    }
}

#[test]
fn no_architecture_is_an_error() {
    let mut g = Gguf::new();
    g.kvs.push(kv_u32("llama.peer.heads", 2));
    let bytes = g.build();
    let file = File::parse(&bytes).unwrap();
    assert!(matches!(
        PeerLayer::from_gguf(&file, 0),
        Err(Error::MissingKey { .. })
    ));
}

#[test]
fn corrupted_files_never_panic() {
    let valid = parts(&model()).build();
    let mut rng = Rng(9);
    let hidden = vec![0.5f32; 32];
    for _ in 0..400 {
        let mut bytes = valid.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            bytes[at] = rng.next_u64() as u8;
        }
        let Ok(file) = File::parse(&bytes) else {
            continue;
        };
        let Ok(layer) = PeerLayer::from_gguf(&file, 0) else {
            continue;
        };
        let mut ws = vec![0u8; layer.workspace_bytes(1)];
        let mut out = vec![0.0; 32];
        let _ = layer.forward(&hidden, &mut out, &mut ws);
    }
}

//! Shared by the device tests and the host check: a random layer in any pair of weight
//! types, the CPU forward, and the comparisons.

#![allow(dead_code)]

use moe_core::TensorType;
use moe_core::moe::{Activation, ExpertStack, Ffn, MoeLayer, SharedExpert, Workspace};
use moe_core::router::{
    GroupLimit, GroupScore, Normalize, Router, RouterConfig, ScoreFunc, Selection,
};
use moe_core::tensor::TensorView;
use moe_cuda::RouterTensors;
use moe_cuda::synthetic::{random_f32, random_matrix};

/// Largest |gpu − cpu| allowed, relative to max |cpu|.
pub const TOLERANCE: f32 = 1e-3;

pub const N_EMBD: usize = 512;
pub const N_FF: usize = 768;

/// The bytes of a shared expert: a SwiGLU FFN of its own width and types and, for
/// Qwen2-MoE's sigmoid gate, the gate vector.
pub struct SharedWeights {
    pub gate: Vec<u8>,
    pub up: Vec<u8>,
    pub down: Vec<u8>,
    pub gate_up_ty: TensorType,
    pub down_ty: TensorType,
    pub n_ff: usize,
    /// The gate vector `[N_EMBD]` and its type (`None`: added with weight 1).
    pub scale: Option<(TensorType, Vec<u8>)>,
}

impl SharedWeights {
    /// A random shared expert; `scale_ty`: Qwen's gate vector of that type (F32: values
    /// in ±0.1), or `None` for DeepSeek's always-on form.
    pub fn new(
        gate_up_ty: TensorType,
        down_ty: TensorType,
        n_ff: usize,
        scale_ty: Option<TensorType>,
        seed: u64,
    ) -> Self {
        let m = |ty, rows, cols, s| random_matrix(ty, rows, cols, seed * 10 + s).unwrap();
        let scale = scale_ty.map(|ty| {
            let bytes = if ty == TensorType::F32 {
                random_f32(N_EMBD, 0.1, seed * 10 + 7)
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            } else {
                m(ty, 1, N_EMBD, 7)
            };
            (ty, bytes)
        });
        SharedWeights {
            gate: m(gate_up_ty, n_ff, N_EMBD, 4),
            up: m(gate_up_ty, n_ff, N_EMBD, 5),
            down: m(down_ty, N_EMBD, n_ff, 6),
            gate_up_ty,
            down_ty,
            n_ff,
            scale,
        }
    }

    /// The shared expert over these bytes.
    pub fn expert(&self) -> SharedExpert<'_> {
        let v = |ty, dims: &[u64], bytes| TensorView::new(ty, dims, bytes).unwrap();
        let (e, f) = (N_EMBD as u64, self.n_ff as u64);
        let ffn = Ffn::new(
            Some(v(self.gate_up_ty, &[e, f], &self.gate)),
            v(self.gate_up_ty, &[e, f], &self.up),
            v(self.down_ty, &[f, e], &self.down),
            Activation::Silu,
        )
        .unwrap();
        match &self.scale {
            Some((ty, bytes)) => SharedExpert::gated(ffn, v(*ty, &[e], bytes)).unwrap(),
            None => SharedExpert::AlwaysOn(ffn),
        }
    }

    /// The harness's `shared` mode: 1 always on, 2 gated.
    pub fn mode(&self) -> i32 {
        if self.scale.is_some() { 2 } else { 1 }
    }
}

/// The bytes of one layer: gate, up and down stacks, router weight and bias, and
/// optionally a shared expert.
pub struct Weights {
    pub gate: Vec<u8>,
    pub up: Vec<u8>,
    pub down: Vec<u8>,
    pub router: Vec<u8>,
    pub bias: Vec<u8>,
    pub gate_up_ty: TensorType,
    pub down_ty: TensorType,
    pub n_expert: usize,
    pub shared: Option<SharedWeights>,
}

impl Weights {
    pub fn new(gate_up_ty: TensorType, down_ty: TensorType, n_expert: usize, seed: u64) -> Self {
        let m = |ty, rows, cols, s| random_matrix(ty, rows, cols, seed * 10 + s).unwrap();
        let router: Vec<u8> = random_f32(N_EMBD * n_expert, 0.1, seed * 10 + 4)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bias: Vec<u8> = random_f32(n_expert, 0.05, seed * 10 + 5)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        Weights {
            gate: m(gate_up_ty, N_FF * n_expert, N_EMBD, 1),
            up: m(gate_up_ty, N_FF * n_expert, N_EMBD, 2),
            down: m(down_ty, N_EMBD * n_expert, N_FF, 3),
            router,
            bias,
            gate_up_ty,
            down_ty,
            n_expert,
            shared: None,
        }
    }

    /// The same layer with a shared expert.
    pub fn with_shared(mut self, shared: SharedWeights) -> Self {
        self.shared = Some(shared);
        self
    }

    pub fn stack(&self) -> ExpertStack<'_> {
        let e = self.n_expert as u64;
        let v = |ty, dims: &[u64], bytes| TensorView::new(ty, dims, bytes).unwrap();
        ExpertStack::new(
            Some(v(
                self.gate_up_ty,
                &[N_EMBD as u64, N_FF as u64, e],
                &self.gate,
            )),
            v(self.gate_up_ty, &[N_EMBD as u64, N_FF as u64, e], &self.up),
            v(self.down_ty, &[N_FF as u64, N_EMBD as u64, e], &self.down),
            Activation::Silu,
        )
        .unwrap()
    }

    pub fn router_tensors(&self, with_bias: bool) -> RouterTensors<'_> {
        RouterTensors {
            weight: TensorView::new(
                TensorType::F32,
                &[N_EMBD as u64, self.n_expert as u64],
                &self.router,
            )
            .unwrap(),
            bias: with_bias.then(|| {
                TensorView::new(TensorType::F32, &[self.n_expert as u64], &self.bias).unwrap()
            }),
        }
    }

    pub fn layer(&self, config: RouterConfig, with_bias: bool) -> MoeLayer<'_> {
        let t = self.router_tensors(with_bias);
        let mut router = Router::token_choice(config)
            .unwrap()
            .with_weight(t.weight)
            .unwrap();
        if let Some(b) = t.bias {
            router = router.with_bias(b).unwrap();
        }
        let layer = MoeLayer::new(self.stack(), config.k)
            .unwrap()
            .with_router(router)
            .unwrap();
        match &self.shared {
            Some(s) => layer.with_shared(s.expert()).unwrap(),
            None => layer,
        }
    }
}

/// CPU forward: output and selections.
pub fn cpu_forward(layer: &MoeLayer<'_>, hidden: &[f32]) -> (Vec<f32>, Vec<Selection>) {
    let n_tokens = hidden.len() / N_EMBD;
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
    layer.forward(hidden, &[], &mut out, &mut ws).unwrap();
    (out, selections)
}

/// CPU forward of `selections` on `layer` without its shared expert (the CPU share of a
/// hybrid forward).
pub fn cpu_routed_only(layer: &MoeLayer<'_>, hidden: &[f32], selections: &[Selection]) -> Vec<f32> {
    let routed_only = layer.with_shared(SharedExpert::None).unwrap();
    let mut ws = vec![0u8; layer.workspace_bytes(selections.len())];
    let mut out = vec![0f32; hidden.len()];
    routed_only
        .forward_selected(hidden, selections, &mut out, &mut ws)
        .unwrap();
    out
}

pub fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Asserts the GPU output is within the tolerance of the CPU's.
pub fn assert_close(label: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len());
    let scale = max_abs(cpu).max(1e-6);
    let mut worst = (0f32, 0usize);
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let d = (g - c).abs();
        assert!(g.is_finite(), "{label}: non-finite GPU output at {i}");
        if d > worst.0 {
            worst = (d, i);
        }
    }
    let rel = worst.0 / scale;
    println!(
        "{label}: max |gpu - cpu| = {:.3e} at {} ({rel:.2e} of max |cpu| = {scale:.3e})",
        worst.0, worst.1
    );
    assert!(
        rel <= TOLERANCE,
        "{label}: relative error {rel:e} > {TOLERANCE:e} (gpu {} vs cpu {})",
        gpu[worst.1],
        cpu[worst.1]
    );
}

/// Asserts the GPU chose the same experts as the CPU, with weights within 1e-5.
pub fn assert_same_routing(label: &str, gpu: &[Vec<(u32, f32)>], cpu: &[Selection]) {
    for (t, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let gi: Vec<u32> = g.iter().map(|x| x.0).collect();
        let ci: Vec<u32> = c.iter().map(|x| x.expert).collect();
        assert_eq!(gi, ci, "{label}: token {t} routed differently");
        for (a, b) in g.iter().zip(c) {
            assert!(
                (a.1 - b.weight).abs() <= 1e-5 * b.weight.abs().max(1.0),
                "{label}: token {t} expert {} weight {} vs {}",
                a.0,
                a.1,
                b.weight
            );
        }
    }
}

/// The weight type pairs every check covers.
pub const TYPES: [(TensorType, TensorType); 11] = [
    (TensorType::Q4_0, TensorType::Q4_0),
    (TensorType::Q5_0, TensorType::Q5_0),
    (TensorType::Q8_0, TensorType::Q8_0),
    (TensorType::Q4_K, TensorType::Q4_K),
    (TensorType::Q5_K, TensorType::Q5_K),
    (TensorType::Q6_K, TensorType::Q6_K),
    (TensorType::F32, TensorType::F32),
    (TensorType::F16, TensorType::F16),
    (TensorType::BF16, TensorType::BF16),
    // Q4_K_M files mix types: Q4_K gate/up with Q6_K down; Q5_K_M: Q5_K with Q6_K.
    (TensorType::Q4_K, TensorType::Q6_K),
    (TensorType::Q5_K, TensorType::Q6_K),
];

/// DeepSeek-V3's router options: sigmoid scores, normalised and scaled weights, group
/// limits.
pub fn deepseek_config(n_expert: usize, k: usize) -> RouterConfig {
    RouterConfig {
        score: ScoreFunc::Sigmoid,
        normalize: Normalize::Sum { epsilon: 1e-20 },
        scale: 2.5,
        groups: Some(GroupLimit {
            n_group: 4,
            topk_group: 2,
            score: GroupScore::SumTop(2),
        }),
        ..RouterConfig::top_k(N_EMBD, n_expert, k)
    }
}

/// One GPU-against-CPU case: the layer's bytes, its router, whether the router has a
/// selection bias, the batch size, a label, and whether the host check also runs the
/// kernels on the caller's selections.
pub type CaseFn<'f> = dyn FnMut(&Weights, RouterConfig, bool, usize, &str, bool) + 'f;

/// The always-on shared expert cases (DeepSeek): wider than the routed experts and of
/// other types, so the input is quantized to more than one format.
pub fn always_on_shared_cases(case: &mut CaseFn<'_>) {
    use TensorType::*;
    let w = Weights::new(Q4_K, Q6_K, 16, 71)
        .with_shared(SharedWeights::new(Q8_0, Q8_0, 1280, None, 72));
    for n_tokens in [1, 4, 37] {
        let label = format!("always-on shared Q8_0 n_ff=1280, Q4_K/Q6_K experts, T={n_tokens}");
        case(
            &w,
            deepseek_config(16, 4),
            true,
            n_tokens,
            &label,
            n_tokens == 4,
        );
    }
    // Q5_K_M experts (Q5_K gate/up, Q6_K down) beside shared experts of F32 (f32 input
    // rows), Q5_0 (Q8_0) and Q5_K with Q6_K (Q8_K).
    for (i, (sgu, sdn)) in [(F32, F32), (Q5_0, Q5_0), (Q5_K, Q6_K)]
        .into_iter()
        .enumerate()
    {
        let w = Weights::new(Q5_K, Q6_K, 16, 110 + i as u64).with_shared(SharedWeights::new(
            sgu,
            sdn,
            1280,
            None,
            115 + i as u64,
        ));
        for n_tokens in [1, 37] {
            let label =
                format!("always-on shared {sgu}/{sdn} n_ff=1280, Q5_K/Q6_K experts, T={n_tokens}");
            case(&w, deepseek_config(16, 4), true, n_tokens, &label, false);
        }
    }
    // The same types as the experts, narrower, with k = 2 of 8.
    let w =
        Weights::new(Q4_0, Q4_0, 8, 73).with_shared(SharedWeights::new(Q4_0, Q4_0, 512, None, 74));
    for n_tokens in [2, 33] {
        let label = format!("always-on shared Q4_0 n_ff=512, T={n_tokens}");
        let config = RouterConfig::mixtral(N_EMBD, 8, 2);
        case(&w, config, false, n_tokens, &label, n_tokens == 33);
    }
}

/// The sigmoid-gated shared expert cases (Qwen2-MoE): an F32 gate vector as GGUF files
/// store it, then gate vectors of other types, which read the input in their own
/// activation format (one no FFN of the layer may need).
pub fn gated_shared_cases(case: &mut CaseFn<'_>) {
    use TensorType::*;
    let w = Weights::new(Q8_0, Q8_0, 16, 75).with_shared(SharedWeights::new(
        F16,
        BF16,
        1024,
        Some(F32),
        76,
    ));
    for n_tokens in [1, 5, 40] {
        let label = format!("gated shared (F32 gate) F16/BF16 n_ff=1024, T={n_tokens}");
        let config = RouterConfig::top_k(N_EMBD, 16, 4);
        case(&w, config, false, n_tokens, &label, n_tokens == 5);
    }
    for (i, (gu, dn, sgu, sdn, gate)) in [
        (Q4_K, Q4_K, Q6_K, Q4_K, Q8_0),
        (Q4_0, Q4_0, Q4_0, Q8_0, Q4_K),
        (BF16, BF16, Q6_K, Q6_K, BF16),
        (F16, F16, Q8_0, Q8_0, Q6_K),
        (Q8_0, Q8_0, Q4_K, Q6_K, F16),
        (Q6_K, Q6_K, F16, F16, Q4_0),
        (F32, F32, Q5_K, Q5_K, Q5_0),
        (Q5_0, Q5_0, F32, F32, Q5_K),
        (Q5_K, Q6_K, Q5_0, Q5_0, F32),
    ]
    .into_iter()
    .enumerate()
    {
        let w = Weights::new(gu, dn, 8, 80 + i as u64).with_shared(SharedWeights::new(
            sgu,
            sdn,
            512,
            Some(gate),
            90 + i as u64,
        ));
        for n_tokens in [2, 33] {
            let label =
                format!("gated shared ({gate} gate) {sgu}/{sdn}, {gu}/{dn} experts, T={n_tokens}");
            case(
                &w,
                RouterConfig::mixtral(N_EMBD, 8, 2),
                false,
                n_tokens,
                &label,
                false,
            );
        }
    }
}

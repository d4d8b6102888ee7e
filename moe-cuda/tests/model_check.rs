//! The whole-model kernels (`kernels/model.cu`) checked on the CPU:
//! `tests/model_check/harness.cpp` compiles them as C++ with g++ and runs every CUDA
//! thread of a block as a host thread (barriers for `__syncthreads`, warp shuffles
//! through memory), so the kernels run unchanged; this test feeds it random inputs and
//! compares with moe-core's own functions where they are public (`dequantize_row`,
//! `quantize_row` + `Kernels::matmul`, `Rope::apply`) and plain Rust references
//! otherwise (RMSNorm, attention, the element-wise adds):
//! embedding rows of every type the GPU reads, projections of every type (one token and
//! tiles of eight with a partial tile), RMSNorm (rows, in place per head), RoPE (normal,
//! NeoX, partial rotation, linear and YaRN scaling), the KV-cache write and causal
//! grouped-query attention over the cache (prefill and decode, value heads of another
//! width), bias and residual adds, the logit scale.
//!
//! What it cannot prove: anything about the hardware, or GpuModel's launch code (the
//! device test `tests/model.rs` covers that when a GPU is lent).
//!
//! Needs `g++` with C++20 (`<barrier>`, `_Float16`); prints `skipped: no g++ with C++20
//! and _Float16` otherwise. A harness that fails to build, or warns, fails the test.

mod gxx;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use moe_core::TensorType;
use moe_core::kernels::Kernels;
use moe_core::model::{ModelConfig, Rope, RopeLayout};
use moe_core::quant::{dequantize_row, quantize_row};
use moe_cuda::model::{attn_params_bytes, rope_params_bytes};
use moe_cuda::synthetic::{random_f32, random_matrix};

/// Every weight type the model kernels read.
const TYPES: [TensorType; 9] = [
    TensorType::Q4_0,
    TensorType::Q5_0,
    TensorType::Q8_0,
    TensorType::Q4_K,
    TensorType::Q5_K,
    TensorType::Q6_K,
    TensorType::F32,
    TensorType::F16,
    TensorType::BF16,
];

/// Builds the harness once per test binary; `None` without a suitable g++ (C++20 with
/// `_Float16`: GCC 12+ on x86-64).
fn harness() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        gxx::build(
            "model_check/harness.cpp",
            "moe_cuda_model_check",
            "#include <barrier>\nint main() { std::barrier<> b(1); b.arrive_and_wait(); _Float16 h = (_Float16)1.5f; return (float)h == 1.5f ? 0 : 1; }\n",
            &["-pthread"],
        )
    })
    .clone()
}

/// The harness, or `None` after printing the skip line.
fn harness_or_skip() -> Option<PathBuf> {
    let h = harness();
    if h.is_none() {
        println!("skipped: no g++ with C++20 and _Float16");
    }
    h
}

/// Little-endian input for the harness.
#[derive(Default)]
struct Input(Vec<u8>);

impl Input {
    fn i32s(&mut self, v: &[i32]) -> &mut Self {
        self.0.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        self
    }
    fn f32s(&mut self, v: &[f32]) -> &mut Self {
        self.0.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        self
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend((b.len() as u64).to_le_bytes());
        self.raw(b)
    }
}

/// Runs the harness on `input`; its f32 output.
fn run(bin: &Path, input: Input) -> Vec<f32> {
    let mut child = Command::new(bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the harness");
    let mut stdin = child.stdin.take().expect("stdin");
    let bytes = input.0;
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().expect("harness output");
    writer.join().unwrap().expect("write to the harness");
    assert!(
        out.status.success(),
        "harness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .as_chunks::<4>()
        .0
        .iter()
        .map(|b| f32::from_le_bytes(*b))
        .collect()
}

/// `max |a − b| ≤ tol · max(1, max |b|)`.
fn assert_close(label: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{label}: lengths");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0f32, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    assert!(
        worst <= tol * scale,
        "{label}: |diff| {worst} at {at} ({} vs {}), scale {scale}",
        a[at],
        b[at]
    );
    println!("{label}: max |diff| {worst:.3e} (scale {scale:.3})");
}

#[test]
fn embedding_rows_match_dequantize_row_for_every_type() {
    let Some(bin) = harness_or_skip() else {
        return;
    };
    let (n_vocab, n_embd) = (12, 512);
    let tokens = [3i32, 0, 11, 3, 7];
    for (i, ty) in TYPES.into_iter().enumerate() {
        let table = random_matrix(ty, n_vocab, n_embd, 40 + i as u64).unwrap();
        let row_bytes = table.len() / n_vocab;
        for scale in [1.0f32, 1.5] {
            let mut input = Input::default();
            input
                .i32s(&[
                    1,
                    ty.id() as i32,
                    n_vocab as i32,
                    n_embd as i32,
                    tokens.len() as i32,
                ])
                .f32s(&[scale])
                .bytes(&table)
                .i32s(&tokens);
            let got = run(&bin, input);
            let mut want = vec![0f32; tokens.len() * n_embd];
            for (row, &t) in want.chunks_exact_mut(n_embd).zip(&tokens) {
                let t = t as usize;
                dequantize_row(ty, &table[t * row_bytes..(t + 1) * row_bytes], row).unwrap();
                if scale != 1.0 {
                    row.iter_mut().for_each(|v| *v *= scale);
                }
            }
            assert_close(&format!("get_rows {ty:?} scale {scale}"), &got, &want, 0.0);
        }
    }
}

#[test]
fn projections_match_the_cpu_kernels_for_every_type() {
    let Some(bin) = harness_or_skip() else {
        return;
    };
    let (n_in, n_out) = (512, 40);
    for (i, ty) in TYPES.into_iter().enumerate() {
        let w = random_matrix(ty, n_out, n_in, 70 + i as u64).unwrap();
        let act = ty.activation_type().unwrap();
        for (n_tokens, m8) in [(1usize, 0), (1, 1), (11, 1), (3, 0)] {
            let x = random_f32(n_tokens * n_in, 1.0, 5 + n_tokens as u64);
            let mut input = Input::default();
            input
                .i32s(&[
                    2,
                    ty.id() as i32,
                    n_in as i32,
                    n_out as i32,
                    n_tokens as i32,
                    m8,
                ])
                .bytes(&w)
                .f32s(&x);
            let got = run(&bin, input);
            // The CPU path: each row quantized to the weight's activation type, then the
            // scalar kernels.
            let rb = n_in / act.block_len() * act.block_bytes();
            let mut acts = vec![0u8; n_tokens * rb];
            for (src, dst) in x.chunks_exact(n_in).zip(acts.chunks_exact_mut(rb)) {
                quantize_row(act, src, dst).unwrap();
            }
            let refs: Vec<&[u8]> = acts.chunks_exact(rb).collect();
            let mut want = vec![0f32; n_tokens * n_out];
            Kernels::scalar().matmul(ty, &w, &refs, &mut want).unwrap();
            assert_close(
                &format!(
                    "matmul {ty:?} T={n_tokens} m{}",
                    if m8 == 1 { 8 } else { 1 }
                ),
                &got,
                &want,
                1e-5,
            );
        }
    }
}

fn rms_norm_reference(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(w.len()) {
        let sum: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let mean = (sum / row.len() as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(&v, &w)| (v * scale) * w));
    }
    out
}

#[test]
fn rms_norm_matches_the_reference_rows_and_heads_in_place() {
    let Some(bin) = harness_or_skip() else {
        return;
    };
    for (n, rows, in_place, eps) in [
        (96usize, 5usize, 0, 1e-5f32),
        (16, 12, 1, 1e-6),
        (600, 2, 0, 1e-5),
    ] {
        let x = random_f32(n * rows, 2.0, n as u64);
        let w = random_f32(n, 1.0, n as u64 + 1);
        let mut input = Input::default();
        input
            .i32s(&[3, n as i32, rows as i32, in_place])
            .f32s(&[eps])
            .f32s(&x)
            .f32s(&w);
        let got = run(&bin, input);
        let want = rms_norm_reference(&x, &w, eps);
        assert_close(&format!("rms_norm n={n} rows={rows}"), &got, &want, 1e-6);
    }
}

#[test]
fn rope_matches_rope_apply_in_every_layout_and_scaling() {
    let Some(bin) = harness_or_skip() else {
        return;
    };
    let plain = |layout, dims| Rope {
        layout,
        dims,
        base: 10_000.0,
        freq_scale: 1.0,
        ext_factor: 0.0,
        attn_factor: 1.0,
        corr_dims: [0.0, 0.0],
    };
    let cases = [
        ("normal", plain(RopeLayout::Normal, 64), 64usize),
        ("neox", plain(RopeLayout::Neox, 64), 64),
        ("neox partial", plain(RopeLayout::Neox, 32), 64),
        (
            "linear",
            Rope {
                freq_scale: 0.25,
                base: 1_000_000.0,
                ..plain(RopeLayout::Normal, 128)
            },
            128,
        ),
        (
            "yarn",
            Rope {
                freq_scale: 0.25,
                ext_factor: 1.0,
                corr_dims: [5.0, 21.0],
                ..plain(RopeLayout::Neox, 64)
            },
            64,
        ),
        (
            "yarn deepseek factor",
            Rope {
                freq_scale: 1.0 / 40.0,
                ext_factor: 1.0,
                attn_factor: 1.0 / (1.0 + 0.1 * 40f32.ln()),
                corr_dims: [10.0, 23.0],
                ..plain(RopeLayout::Normal, 64)
            },
            64,
        ),
    ];
    for (label, rope, head_dim) in cases {
        let (n_heads, n_tokens, start) = (3usize, 4usize, 37usize);
        let x = random_f32(n_tokens * n_heads * head_dim, 1.0, head_dim as u64 + 3);
        let mut input = Input::default();
        input
            .i32s(&[
                4,
                n_heads as i32,
                head_dim as i32,
                n_tokens as i32,
                start as i32,
            ])
            .raw(&rope_params_bytes(&rope))
            .f32s(&x);
        let got = run(&bin, input);
        let mut want = x.clone();
        for (t, row) in want.chunks_exact_mut(n_heads * head_dim).enumerate() {
            for head in row.chunks_exact_mut(head_dim) {
                rope.apply(head, start + t);
            }
        }
        assert_close(&format!("rope {label}"), &got, &want, 2e-5);
    }
}

fn config(n_head: usize, n_head_kv: usize, head_dim: usize, head_dim_v: usize) -> ModelConfig {
    ModelConfig {
        n_vocab: 16,
        n_embd: n_head * head_dim,
        n_layer: 1,
        n_head,
        n_head_kv,
        head_dim,
        head_dim_v,
        rope_dims: head_dim,
        rms_eps: 1e-5,
        rope: Rope {
            layout: RopeLayout::Normal,
            dims: head_dim,
            base: 10_000.0,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            corr_dims: [0.0, 0.0],
        },
        attention_scale: 1.0 / (head_dim as f32).sqrt(),
        embedding_scale: 1.0,
        residual_scale: 1.0,
        logit_scale: 1.0,
        mla: None,
        n_ctx_train: 0,
    }
}

/// Causal GQA over the cache, softmax in f64.
fn attention_reference(
    c: &ModelConfig,
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    start: usize,
    n_tokens: usize,
) -> Vec<f32> {
    let (hd, hdv, kd, vd) = (c.head_dim, c.head_dim_v, c.k_dim(), c.v_dim());
    let group = c.n_head / c.n_head_kv;
    let mut out = vec![0f32; n_tokens * c.attn_dim()];
    for t in 0..n_tokens {
        for h in 0..c.n_head {
            let kv = h / group;
            let qh = &q[t * c.q_dim() + h * hd..][..hd];
            let n = start + t + 1;
            let scores: Vec<f64> = (0..n)
                .map(|j| {
                    let k = &kc[j * kd + kv * hd..][..hd];
                    f64::from(qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * c.attention_scale)
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hdv {
                let v: f64 = (0..n)
                    .map(|j| e[j] * f64::from(vc[j * vd + kv * hdv + d]))
                    .sum();
                out[t * c.attn_dim() + h * hdv + d] = (v / sum) as f32;
            }
        }
    }
    out
}

#[test]
fn attention_over_the_cache_matches_the_reference_with_gqa() {
    let Some(bin) = harness_or_skip() else {
        return;
    };
    // (n_head, n_head_kv, head_dim, head_dim_v, start, n_tokens, context)
    let cases = [
        (4usize, 2usize, 64usize, 64usize, 0usize, 7usize, 16usize),
        (4, 2, 64, 64, 7, 1, 16),
        (6, 2, 96, 64, 5, 3, 12),
        (2, 2, 256, 256, 10, 2, 12),
        (8, 1, 32, 32, 0, 12, 14),
    ];
    for (i, &(n_head, n_head_kv, hd, hdv, start, n_tokens, context)) in cases.iter().enumerate() {
        let c = config(n_head, n_head_kv, hd, hdv);
        let seed = 100 * i as u64;
        let q = random_f32(n_tokens * c.q_dim(), 2.0, seed + 1);
        let kn = random_f32(n_tokens * c.k_dim(), 2.0, seed + 2);
        let vn = random_f32(n_tokens * c.v_dim(), 1.0, seed + 3);
        // Positions before start are already cached; those after the batch hold
        // garbage the causal mask must never read.
        let mut kc = random_f32(context * c.k_dim(), 2.0, seed + 4);
        let mut vc = random_f32(context * c.v_dim(), 1.0, seed + 5);
        for j in start + n_tokens..context {
            kc[j * c.k_dim()..(j + 1) * c.k_dim()].fill(1e30);
            vc[j * c.v_dim()..(j + 1) * c.v_dim()].fill(f32::NAN);
        }
        let mut input = Input::default();
        input
            .i32s(&[5, context as i32, n_tokens as i32])
            .raw(&attn_params_bytes(&c, start))
            .f32s(&q)
            .f32s(&kn)
            .f32s(&vn)
            .f32s(&kc)
            .f32s(&vc);
        let got = run(&bin, input);
        let n_out = n_tokens * c.attn_dim();
        kc[start * c.k_dim()..][..kn.len()].copy_from_slice(&kn);
        vc[start * c.v_dim()..][..vn.len()].copy_from_slice(&vn);
        let want = attention_reference(&c, &q, &kc, &vc, start, n_tokens);
        let label =
            format!("attention H={n_head}/{n_head_kv} hd={hd}/{hdv} start={start} T={n_tokens}");
        assert_close(&label, &got[..n_out], &want, 1e-5);
        // The cache write: the batch at start.., everything else untouched.
        let (k_got, v_got) = got[n_out..].split_at(kc.len());
        assert_eq!(k_got.len(), kc.len());
        assert!(
            k_got.iter().zip(&kc).all(|(a, b)| a == b),
            "{label}: key cache"
        );
        assert!(
            v_got
                .iter()
                .zip(&vc)
                .all(|(a, b)| a == b || (a.is_nan() && b.is_nan())),
            "{label}: value cache"
        );
    }
}

#[test]
fn bias_residual_and_logit_scale_match() {
    let Some(bin) = harness_or_skip() else {
        return;
    };
    let (width, rows) = (48usize, 5usize);
    let n = width * rows;
    let x = random_f32(n, 1.0, 1);
    let bias = random_f32(width, 1.0, 2);
    let b = random_f32(n, 1.0, 3);
    for (scale, d) in [(1.0f32, 1.0f32), (0.22, 6.0)] {
        let mut input = Input::default();
        input
            .i32s(&[6, width as i32, n as i32])
            .f32s(&[scale, d])
            .f32s(&x)
            .f32s(&bias)
            .f32s(&b);
        let got = run(&bin, input);
        let x1: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| v + bias[i % width])
            .collect();
        let x2: Vec<f32> = x1
            .iter()
            .zip(&b)
            .map(|(x, b)| x + if scale == 1.0 { *b } else { b * scale })
            .collect();
        let x3: Vec<f32> = x2.iter().map(|v| v / d).collect();
        assert_eq!(&got[..n], &x1[..], "bias");
        assert_eq!(&got[n..2 * n], &x2[..], "residual scale {scale}");
        assert_eq!(&got[2 * n..], &x3[..], "logit scale {d}");
    }
}

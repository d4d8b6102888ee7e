//! `moe-cuda-bench`: the decode MoE FFN at Mixtral-like expert shapes (n_embd 4096,
//! n_ff 14336, top-2 of 8 experts, Q4_0 and Q8_0 weights) against the device-to-device
//! copy bandwidth measured in the same run, plus a prefill timing.
//!
//! Effective weight bandwidth = bytes of the two routed experts' gate, up and down
//! matrices / time of one decode step (routing + FFN, device time from CUDA events, no
//! host copies). The bar: at least 70 % of the copy bandwidth.
//!
//! Without a device it prints `skipped: no CUDA device` and exits 0 (1 with
//! `MOE_REQUIRE_GPU=1`). `--quick` shrinks the shapes (a smoke run).

use std::process::ExitCode;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use moe_core::TensorType;
use moe_core::moe::{Activation, ExpertStack, MoeLayer};
use moe_core::router::{Router, RouterConfig};
use moe_core::tensor::TensorView;
use moe_cuda::synthetic::{random_f32, random_matrix};
use moe_cuda::{GpuDevice, GpuError, GpuMoeLayer, RouterTensors};

struct Shape {
    n_embd: usize,
    n_ff: usize,
    n_expert: usize,
    k: usize,
}

fn main() -> ExitCode {
    let quick = std::env::args().any(|a| a == "--quick");
    let device = match GpuDevice::first() {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            eprintln!("error: could not open the CUDA device: {e}");
            return ExitCode::FAILURE;
        }
        None => {
            println!("skipped: no CUDA device");
            return if std::env::var_os("MOE_REQUIRE_GPU").is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&device, quick) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Device-to-device copy bandwidth in bytes/s, counting the bytes read and written.
fn copy_bandwidth(device: &GpuDevice, bytes: usize) -> Result<f64, GpuError> {
    let stream = device.stream();
    let src = stream.alloc_zeros::<u8>(bytes)?;
    let mut dst = stream.alloc_zeros::<u8>(bytes)?;
    let ctx = device.context();
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    for _ in 0..3 {
        stream.memcpy_dtod(&src, &mut dst)?;
    }
    let reps = 20;
    start.record(stream)?;
    for _ in 0..reps {
        stream.memcpy_dtod(&src, &mut dst)?;
    }
    end.record(stream)?;
    let ms = start.elapsed_ms(&end)? as f64;
    Ok(2.0 * bytes as f64 * reps as f64 / (ms / 1e3))
}

/// Milliseconds per call of `f` on the device stream (events around `reps` calls).
fn time_ms(
    device: &GpuDevice,
    reps: usize,
    mut f: impl FnMut() -> Result<(), GpuError>,
) -> Result<f64, GpuError> {
    let ctx = device.context();
    let stream = device.stream();
    for _ in 0..3 {
        f()?;
    }
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    start.record(stream)?;
    for _ in 0..reps {
        f()?;
    }
    end.record(stream)?;
    Ok(start.elapsed_ms(&end)? as f64 / reps as f64)
}

fn run(device: &GpuDevice, quick: bool) -> Result<bool, GpuError> {
    let (free, total) = device.memory()?;
    println!(
        "device {} ({:.1} GiB free of {:.1} GiB), kernels {}",
        device.arch(),
        free as f64 / (1u64 << 30) as f64,
        total as f64 / (1u64 << 30) as f64,
        if device.kernels_cached() {
            "from the cache"
        } else {
            "compiled now"
        }
    );
    let copy = copy_bandwidth(device, if quick { 64 << 20 } else { 1 << 30 })?;
    println!(
        "device-to-device copy: {:.0} GB/s (read + write)",
        copy / 1e9
    );
    let shape = if quick {
        Shape {
            n_embd: 1024,
            n_ff: 2048,
            n_expert: 8,
            k: 2,
        }
    } else {
        Shape {
            n_embd: 4096,
            n_ff: 14336,
            n_expert: 8,
            k: 2,
        }
    };
    let mut all_pass = true;
    for ty in [TensorType::Q4_0, TensorType::Q8_0] {
        all_pass &= bench_type(device, &shape, ty, copy, quick)?;
    }
    Ok(all_pass)
}

fn bench_type(
    device: &GpuDevice,
    s: &Shape,
    ty: TensorType,
    copy: f64,
    quick: bool,
) -> Result<bool, GpuError> {
    let t0 = Instant::now();
    let e = s.n_expert as u64;
    let gate = random_matrix(ty, s.n_ff * s.n_expert, s.n_embd, 1)?;
    let up = random_matrix(ty, s.n_ff * s.n_expert, s.n_embd, 2)?;
    let down = random_matrix(ty, s.n_embd * s.n_expert, s.n_ff, 3)?;
    let router: Vec<u8> = random_f32(s.n_embd * s.n_expert, 0.1, 4)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let (n_embd, n_ff) = (s.n_embd as u64, s.n_ff as u64);
    let stack = ExpertStack::new(
        Some(TensorView::new(ty, &[n_embd, n_ff, e], &gate)?),
        TensorView::new(ty, &[n_embd, n_ff, e], &up)?,
        TensorView::new(ty, &[n_ff, n_embd, e], &down)?,
        Activation::Silu,
    )?;
    let weight = TensorView::new(TensorType::F32, &[n_embd, e], &router)?;
    let config = RouterConfig::mixtral(s.n_embd, s.n_expert, s.k);
    let layer = MoeLayer::new(stack, s.k)?
        .with_router(Router::token_choice(config)?.with_weight(weight)?)?;
    let mut gpu = GpuMoeLayer::new(device, &layer, Some(RouterTensors { weight, bias: None }))?;
    println!(
        "\n{ty}: {} experts of {}×{} uploaded ({:.0} MiB) in {:.1} s",
        s.n_expert,
        s.n_embd,
        s.n_ff,
        gpu.weight_bytes() as f64 / (1u64 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    let per_expert = gpu.weight_bytes() / e;
    let streamed = per_expert * s.k as u64;

    // Decode: one token, routed on the device.
    let hidden = random_f32(s.n_embd, 1.0, 5);
    let mut out = vec![0f32; s.n_embd];
    gpu.forward(&hidden, &mut out)?;
    let routed = gpu.routed(1)?;
    let reps = if quick { 20 } else { 100 };
    let ms = time_ms(device, reps, || gpu.launch_device_only(1, true))?;
    let bw = streamed as f64 / (ms / 1e3);
    let ratio = bw / copy;
    let pass = ratio >= 0.70;
    println!(
        "decode T=1 (experts {:?}): {:.1} µs/step, {:.0} GB/s effective weight bandwidth = {:.0} % of copy → {}",
        routed[0].iter().map(|c| c.0).collect::<Vec<_>>(),
        ms * 1e3,
        bw / 1e9,
        ratio * 100.0,
        if pass {
            "PASS (≥ 70 %)"
        } else {
            "FAIL (< 70 %)"
        }
    );
    // The same with the host copies (what `forward` costs a caller).
    let t = Instant::now();
    for _ in 0..reps {
        gpu.forward(&hidden, &mut out)?;
    }
    println!(
        "decode T=1 with host copies: {:.1} µs/step (wall clock)",
        t.elapsed().as_secs_f64() * 1e6 / reps as f64
    );
    // Small decode batches and a prefill batch.
    for n_tokens in [4usize, 8, 512] {
        let hidden = random_f32(n_tokens * s.n_embd, 1.0, 6);
        let mut out = vec![0f32; hidden.len()];
        gpu.forward(&hidden, &mut out)?;
        let reps = if n_tokens > 64 { 5 } else { 20 };
        let ms = time_ms(device, reps, || gpu.launch_device_only(n_tokens, true))?;
        println!(
            "T={n_tokens}: {:.3} ms/step, {:.0} tokens/s ({})",
            ms,
            n_tokens as f64 / (ms / 1e3),
            if n_tokens * s.k <= moe_cuda::DECODE_MAX_PAIRS {
                "decode kernels"
            } else {
                "prefill: align + tiles of 8"
            }
        );
    }
    Ok(pass)
}

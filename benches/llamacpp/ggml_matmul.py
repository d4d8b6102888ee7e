#!/usr/bin/env python3
"""llama.cpp's CPU matrix x vector, timed on the shapes and types of our roofline bench.

Loads the ggml shared libraries that ship inside llama-cpp-python (`pip install
llama-cpp-python numpy`) through ctypes, builds one GGML_OP_MUL_MAT per weight tensor
(weight rows x cols of Q4_0 / Q8_0 / Q4_K / Q6_K, an f32 activation vector, which ggml
quantizes to its dot type inside the op, as in a model) and times `ggml_graph_compute` on a
persistent ggml thread pool with 1 and 2 threads. Two modes, as in
`benches/benches/roofline.rs` and `kernels.rs`:

- `cache`: the same tensor every call (in the last-level cache when it fits);
- `dram`: each call multiplies the next of several copies, more than `--stream-bytes` in
  all, so the weights come from memory.

Weights are ggml's own quantization (`ggml_quantize_chunk`) of deterministic random rows
(256 distinct rows, repeated; these kernels take the same time whatever the values).
Prints one JSON line per measurement on stdout (the fastest call's seconds, as the Rust
side reports its fastest criterion sample, the median, and weight bytes per call), after one `{"info": ...}` line (ggml version and commit, CPU features it was
built for); `cargo xtask bench --llamacpp PYTHON` reads them. Notes go to stderr.
"""

import argparse
import ctypes
import importlib.util
import json
import os
import sys
import time

import numpy as np

# enum ggml_type (ggml.h)
GGML_TYPES = {"Q4_0": 2, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14}
GGML_TYPE_F32 = 0
SHAPES = [(14336, 4096), (4096, 14336)]
# Distinct random rows quantized; the rest of the matrix repeats them.
DISTINCT_ROWS = 256


class Cplan(ctypes.Structure):
    """struct ggml_cplan (ggml-cpu.h)."""

    _fields_ = [
        ("work_size", ctypes.c_size_t),
        ("work_data", ctypes.c_void_p),
        ("n_threads", ctypes.c_int),
        ("threadpool", ctypes.c_void_p),
        ("abort_callback", ctypes.c_void_p),
        ("abort_callback_data", ctypes.c_void_p),
        ("use_ref", ctypes.c_bool),
    ]


class InitParams(ctypes.Structure):
    """struct ggml_init_params (ggml.h)."""

    _fields_ = [
        ("mem_size", ctypes.c_size_t),
        ("mem_buffer", ctypes.c_void_p),
        ("no_alloc", ctypes.c_bool),
    ]


def lib_dir(given):
    if given:
        return given
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llama_cpp is not installed: pip install llama-cpp-python")
    return os.path.join(list(spec.submodule_search_locations)[0], "lib")


def load(directory):
    """libggml-base (tensors, graphs, quantization) and libggml-cpu (compute)."""
    libs = []
    for name in ("libggml-base.so", "libggml-cpu.so"):
        path = os.path.join(directory, name)
        libs.append(ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL))
    base, cpu = libs
    p, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
    sigs = [
        (base, "ggml_init", p, [InitParams]),
        (base, "ggml_free", None, [p]),
        (base, "ggml_tensor_overhead", sz, []),
        (base, "ggml_graph_overhead", sz, []),
        (base, "ggml_new_tensor_1d", p, [p, ctypes.c_int, i64]),
        (base, "ggml_new_tensor_2d", p, [p, ctypes.c_int, i64, i64]),
        (base, "ggml_get_data", p, [p]),
        (base, "ggml_nbytes", sz, [p]),
        (base, "ggml_row_size", sz, [ctypes.c_int, i64]),
        (base, "ggml_mul_mat", p, [p, p, p]),
        (base, "ggml_new_graph", p, [p]),
        (base, "ggml_build_forward_expand", None, [p, p]),
        (base, "ggml_quantize_chunk", sz, [ctypes.c_int, p, p, i64, i64, i64, p]),
        (base, "ggml_threadpool_params_init", None, [p, ctypes.c_int]),
        (base, "ggml_version", ctypes.c_char_p, []),
        (base, "ggml_commit", ctypes.c_char_p, []),
        (cpu, "ggml_cpu_init", None, []),
        (cpu, "ggml_threadpool_new", p, [p]),
        (cpu, "ggml_threadpool_free", None, [p]),
        (cpu, "ggml_graph_plan", Cplan, [p, ctypes.c_int, p]),
        (cpu, "ggml_graph_compute", ctypes.c_int, [p, ctypes.POINTER(Cplan)]),
        (cpu, "ggml_cpu_has_avx2", ctypes.c_int, []),
        (cpu, "ggml_cpu_has_avx512", ctypes.c_int, []),
        (cpu, "ggml_cpu_has_neon", ctypes.c_int, []),
    ]
    fns = {}
    for lib, name, res, args in sigs:
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
        fns[name] = f
    return type("Ggml", (), fns)


def quantized_rows(g, ggml_type, cols, seed):
    """DISTINCT_ROWS random rows quantized by ggml, as bytes."""
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(rng.uniform(-1.0, 1.0, (DISTINCT_ROWS, cols)), dtype=np.float32)
    row = g.ggml_row_size(ggml_type, cols)
    out = ctypes.create_string_buffer(row * DISTINCT_ROWS)
    n = g.ggml_quantize_chunk(ggml_type, x.ctypes.data, out, 0, DISTINCT_ROWS, cols, None)
    assert n == row * DISTINCT_ROWS, (n, row)
    return out.raw


def fill(g, tensor, pattern):
    """Copies `pattern` over the tensor's data, repeated."""
    dst, total = g.ggml_get_data(tensor), g.ggml_nbytes(tensor)
    src = ctypes.create_string_buffer(pattern, len(pattern))
    for off in range(0, total, len(pattern)):
        ctypes.memmove(dst + off, src, min(len(pattern), total - off))


def measure(g, name, rows, cols, copies, pools, runs):
    """(fastest, median) seconds of one matrix x vector per thread count, rotating `copies`
    tensors."""
    ggml_type = GGML_TYPES[name]
    row_bytes = g.ggml_row_size(ggml_type, cols)
    per = g.ggml_tensor_overhead()
    mem = copies * (rows * row_bytes + 2 * per + g.ggml_graph_overhead() + rows * 4 + 256)
    mem += cols * 4 + per + (16 << 20)
    ctx = g.ggml_init(InitParams(mem, None, False))
    if not ctx:
        sys.exit(f"ggml_init of {mem} bytes failed")
    try:
        pattern = quantized_rows(g, ggml_type, cols, seed=7)
        x = g.ggml_new_tensor_1d(ctx, GGML_TYPE_F32, cols)
        act = np.random.default_rng(3).uniform(-2.0, 2.0, cols).astype(np.float32)
        ctypes.memmove(g.ggml_get_data(x), act.ctypes.data, cols * 4)
        graphs = []
        for _ in range(copies):
            w = g.ggml_new_tensor_2d(ctx, ggml_type, cols, rows)
            fill(g, w, pattern)
            graph = g.ggml_new_graph(ctx)
            y = g.ggml_mul_mat(ctx, w, x)
            g.ggml_build_forward_expand(graph, y)
            graphs.append((graph, y))
        results = {}
        for threads, pool in pools.items():
            plans = [g.ggml_graph_plan(graph, threads, pool) for graph, _ in graphs]
            work = ctypes.create_string_buffer(max(p.work_size for p in plans) + 64)
            for plan in plans:
                plan.work_data = ctypes.addressof(work)
            times = []
            for i in range(runs + 3):
                k = i % copies
                start = time.perf_counter()
                status = g.ggml_graph_compute(graphs[k][0], ctypes.byref(plans[k]))
                elapsed = time.perf_counter() - start
                if status != 0:
                    sys.exit(f"ggml_graph_compute failed ({status})")
                if i >= 3:
                    times.append(elapsed)
            out = np.ctypeslib.as_array(
                ctypes.cast(g.ggml_get_data(graphs[0][1]), ctypes.POINTER(ctypes.c_float)),
                (rows,),
            )
            if not np.isfinite(out).all():
                sys.exit(f"{name} {rows}x{cols}: non-finite output")
            times.sort()
            results[threads] = (times[0], times[len(times) // 2], rows * row_bytes)
        return results
    finally:
        g.ggml_free(ctx)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--types", default=",".join(GGML_TYPES))
    ap.add_argument(
        "--stream-bytes",
        type=int,
        default=1 << 30,
        help="bytes of tensor copies the dram mode rotates through (2 x LLC)",
    )
    ap.add_argument("--modes", default="cache,dram")
    ap.add_argument("--quick", action="store_true", help="fewer calls per measurement")
    ap.add_argument("--lib-dir", help="folder of libggml-base.so and libggml-cpu.so")
    a = ap.parse_args()

    directory = lib_dir(a.lib_dir)
    g = load(directory)
    g.ggml_cpu_init()
    info = dict(
        ggml_version=g.ggml_version().decode(),
        ggml_commit=g.ggml_commit().decode(),
        avx2=g.ggml_cpu_has_avx2(),
        avx512=g.ggml_cpu_has_avx512(),
        neon=g.ggml_cpu_has_neon(),
    )
    # The one line without a "type": what the measurements ran on.
    print(json.dumps(dict(info=info)), flush=True)
    print(f"ggml from {directory}: {info}", file=sys.stderr)
    threads = [int(t) for t in a.threads.split(",")]
    pools = {}
    for t in threads:
        params = ctypes.create_string_buffer(4096)  # struct ggml_threadpool_params, opaque
        g.ggml_threadpool_params_init(params, t)
        pools[t] = g.ggml_threadpool_new(params)
    try:
        for name in a.types.split(","):
            for rows, cols in SHAPES:
                matrix = rows * g.ggml_row_size(GGML_TYPES[name], cols)
                for mode in a.modes.split(","):
                    copies = a.stream_bytes // matrix + 1 if mode == "dram" else 1
                    runs = (10 if a.quick else 30) if mode == "cache" else max(copies, 20)
                    res = measure(g, name, rows, cols, copies, pools, runs)
                    for t, (seconds, median, nbytes) in res.items():
                        line = dict(type=name, rows=rows, cols=cols, threads=t, mode=mode,
                                    bytes=nbytes, seconds=seconds, median_seconds=median)
                        print(json.dumps(line), flush=True)
                        print(f"llama.cpp {name} {rows}x{cols} {mode} {t}t: "
                              f"{nbytes / seconds * 1e-9:.2f} GB/s", file=sys.stderr)
    finally:
        for pool in pools.values():
            g.ggml_threadpool_free(pool)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""llama.cpp's whole-model prefill and decode speed on a GGUF file, like `moe bench --json`.

    /work/.llamavenv/bin/python benches/llamacpp/llamacpp_bench.py FILE \
        [--threads N] [--prompt 128] [--gen 64] [--reps 3] [--no-extra-bufts] [--verbose]

Uses llama.cpp through llama-cpp-python's low-level API (the C functions, no `Llama` wrapper,
no sampler objects):

- model: llama.cpp's default model parameters, CPU only. The CPU "extra buffer types"
  (weights repacked at load time into llama.cpp's own layouts) are chosen with
  `--extra-bufts`:
    repack (the default here): llama.cpp's defaults, except that AMX is made unavailable, so
        every weight type llama.cpp can repack goes to its CPU_REPACK buffer (interleaved
        Q4_0 8x8, Q4_K 8x8, ... GEMM/GEMV kernels) -- what llama.cpp does by default on any
        x86 CPU without AMX. AMX is disabled the way an OS without AMX support would: a
        seccomp filter makes the kernel refuse arch_prctl(ARCH_REQ_XCOMP_PERM), so ggml's
        AMX init fails and drops the AMX buffer type. (Reason: on the 2-core benchmark VM,
        which advertises AMX, ggml's AMX matmul faults on `ldtilecfg` -- SIGILL/SIGSEGV in
        the first llama_decode.)
    all: llama.cpp's defaults untouched (AMX first where the CPU has it, then CPU_REPACK);
    none: use_extra_bufts = false, plain ggml-cpu kernels on the mmapped weights (as the
        model fixtures' llamacpp_logits.py uses);
- context: n_ctx = prompt + gen, n_batch = n_ubatch = prompt (the prompt is one ubatch),
  n_threads = n_threads_batch = N, every other field at llama.cpp's default: K/V cache type
  F16 (type_k = type_v = GGML_TYPE_F16) and flash attention "auto" (what it resolved to is in
  the output, from llama.cpp's log).

Each repetition: clear the KV cache (`llama_memory_clear`), time one `llama_decode` of the
whole prompt as a single batch (logits for the last token only), then time `gen` greedy
steps, each an argmax over the vocabulary and a one-token `llama_decode` -- the same work and
the same fixed pseudo-random prompt as `moe bench` (token i = ((i * 2654435761) >> 7) mod
n_vocab). Model load and context creation are outside the timings. Reports the median over
repetitions of prefill tokens/s and decode tokens/s, and llama.cpp's own counters
(`llama_perf_context`) for the median repetition as a cross-check.

Prints one JSON object on stdout with the keys of `moe bench --json` (file, threads,
prompt_tokens, gen_tokens, repetitions, prefill_tokens_per_s, decode_tokens_per_s) plus
engine "llama.cpp", the llama-cpp-python version and the settings used.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import json
import os
import re
import sys
import time

import struct

import numpy as np

_LOG: list[str] = []
_VERBOSE = False


def _log_cb(level, text, user_data):  # noqa: ARG001 - ctypes signature
    s = text.decode("utf-8", errors="replace")
    _LOG.append(s)
    if _VERBOSE:
        sys.stderr.write(s)


def refuse_amx_permission() -> None:
    """Make arch_prctl(ARCH_REQ_XCOMP_PERM, ...) fail with EPERM in this process (x86-64 Linux).

    ggml asks for the AMX tile-data permission once (ggml_amx_init) before it offers the AMX
    buffer type; refused, it prints "AMX is not ready to be used!" and uses its other CPU
    buffer types. A classic-BPF seccomp filter, installed before llama.cpp is loaded; it is
    inherited by every thread created afterwards and touches no other system call.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    audit_arch_x86_64, nr_arch_prctl, arch_req_xcomp_perm = 0xC000003E, 158, 0x1023
    ld_abs, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    allow, eperm = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    prog = [
        (ld_abs, 0, 0, 4),  # seccomp_data.arch
        (jeq, 0, 5, audit_arch_x86_64),
        (ld_abs, 0, 0, 0),  # seccomp_data.nr
        (jeq, 0, 3, nr_arch_prctl),
        (ld_abs, 0, 0, 16),  # low half of seccomp_data.args[0]
        (jeq, 0, 1, arch_req_xcomp_perm),
        (ret, 0, 0, eperm),
        (ret, 0, 0, allow),
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("<HBBI", *i) for i in prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.cast(code, ctypes.c_void_p))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0 or \
            libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "could not install the seccomp filter that hides AMX")


def prompt_tokens(n: int, n_vocab: int) -> list[int]:
    """The fixed pseudo-random prompt of `moe bench`."""
    return [((i * 2654435761) >> 7) % n_vocab for i in range(n)]


def log_facts(log: str) -> dict:
    """A few settings llama.cpp resolved at load time, from its log."""
    facts: dict = {}
    m = re.search(r"flash_attn\s*=\s*(\S+)", log)
    if m:
        facts["flash_attn_param"] = m.group(1)
    m = re.search(r"Flash Attention (?:was auto, set to )?(enabled|disabled)", log)
    if m:
        facts["flash_attn"] = m.group(1)
    m = re.search(r"K \((\w+)\):.*V \((\w+)\)", log)
    if m:
        facts["kv_types"] = f"K {m.group(1)}, V {m.group(2)}"
    bufs = sorted(set(re.findall(r"(\w+(?:_REPACK|AMX)\w*) model buffer size =\s*([\d.]+ MiB)", log)))
    bufs += sorted(set(re.findall(r"(CPU_Mapped|CPU) model buffer size =\s*([\d.]+ MiB)", log)))
    if bufs:
        facts["model_buffers"] = {k: v for k, v in bufs}
    m = re.search(r"file type\s*=\s*(.+)", log)
    if m:
        facts["file_type"] = m.group(1).strip()
    return facts


def main() -> int:
    global _VERBOSE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--threads", "-t", type=int, default=1)
    ap.add_argument("--prompt", "-p", type=int, default=128)
    ap.add_argument("--gen", "-n", type=int, default=64)
    ap.add_argument("--reps", "-r", type=int, default=3)
    ap.add_argument("--extra-bufts", choices=("repack", "all", "none"), default="repack",
                    help="repack: CPU_REPACK without AMX (default); all: llama.cpp's defaults; "
                    "none: use_extra_bufts = false (see the module doc)")
    ap.add_argument("--verbose", action="store_true", help="llama.cpp's log on stderr")
    args = ap.parse_args()
    _VERBOSE = args.verbose
    threads, n_prompt, n_gen, reps = max(1, args.threads), max(1, args.prompt), max(0, args.gen), max(1, args.reps)

    if args.extra_bufts == "repack" and sys.platform == "linux" and \
            os.uname().machine == "x86_64":
        refuse_amx_permission()
    global llama_cpp
    import llama_cpp  # after the seccomp filter

    log_cb = llama_cpp.llama_log_callback(_log_cb)
    llama_cpp.llama_log_set(log_cb, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()

    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0
    if args.extra_bufts == "none":
        mparams.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(args.file.encode(), mparams)
    if not model:
        sys.stderr.write("".join(_LOG[-20:]))
        print(f"error: llama.cpp could not load {args.file}", file=sys.stderr)
        return 1

    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_prompt + n_gen
    cparams.n_batch = n_prompt
    cparams.n_ubatch = n_prompt
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.no_perf = False
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        sys.stderr.write("".join(_LOG[-20:]))
        print("error: llama.cpp could not create a context", file=sys.stderr)
        return 1
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    mem = llama_cpp.llama_get_memory(ctx)

    tokens = prompt_tokens(n_prompt, n_vocab)
    batch = llama_cpp.llama_batch_init(n_prompt, 0, 1)
    for i, tok in enumerate(tokens):
        batch.token[i] = tok
        batch.pos[i] = i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1 if i == n_prompt - 1 else 0
    one = llama_cpp.llama_batch_init(1, 0, 1)
    one.n_tokens = 1
    one.n_seq_id[0] = 1
    one.seq_id[0][0] = 0
    one.logits[0] = 1

    def last_logits() -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    prefill, decode, perf = [], [], []
    for _ in range(reps):
        llama_cpp.llama_memory_clear(mem, True)
        llama_cpp.llama_perf_context_reset(ctx)
        batch.n_tokens = n_prompt
        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(ctx, batch)
        llama_cpp.llama_synchronize(ctx)
        t1 = time.perf_counter()
        if rc != 0:
            print(f"error: llama_decode (prompt) returned {rc}", file=sys.stderr)
            return 1
        logits = last_logits()
        for j in range(n_gen):
            one.token[0] = int(np.argmax(logits))
            one.pos[0] = n_prompt + j
            rc = llama_cpp.llama_decode(ctx, one)
            if rc != 0:
                print(f"error: llama_decode (token {j}) returned {rc}", file=sys.stderr)
                return 1
            logits = last_logits()  # reading the logits synchronizes
        t2 = time.perf_counter()
        prefill.append(t1 - t0)
        decode.append(t2 - t1)
        p = llama_cpp.llama_perf_context(ctx)
        perf.append({"t_p_eval_ms": p.t_p_eval_ms, "n_p_eval": p.n_p_eval,
                     "t_eval_ms": p.t_eval_ms, "n_eval": p.n_eval})
        if not np.all(np.isfinite(logits)):
            print("warning: non-finite logits", file=sys.stderr)

    order = sorted(range(reps), key=lambda k: decode[k])
    med = sorted(prefill)[reps // 2], sorted(decode)[reps // 2]
    facts = log_facts("".join(_LOG))
    report = {
        "engine": "llama.cpp",
        "llama_cpp_python": importlib.metadata.version("llama_cpp_python"),
        "file": args.file,
        "threads": threads,
        "prompt_tokens": n_prompt,
        "gen_tokens": n_gen,
        "repetitions": reps,
        "prefill_tokens_per_s": n_prompt / max(med[0], 1e-12),
        "decode_tokens_per_s": n_gen / max(med[1], 1e-12) if n_gen else 0.0,
        "prefill_s": prefill,
        "decode_s": decode,
        "llama_perf_median_decode_rep": perf[order[reps // 2]],
        "model_size_bytes": llama_cpp.llama_model_size(model),
        "settings": {
            "n_ctx": llama_cpp.llama_n_ctx(ctx),
            "n_batch": n_prompt,
            "n_ubatch": n_prompt,
            "type_k": "f16 (llama.cpp default)" if cparams.type_k == 1 else cparams.type_k,
            "type_v": "f16 (llama.cpp default)" if cparams.type_v == 1 else cparams.type_v,
            "flash_attn_type": "auto (llama.cpp default)" if cparams.flash_attn_type == -1 else cparams.flash_attn_type,
            "extra_bufts": args.extra_bufts,
            "load_mode": int(mparams.load_mode),
            **facts,
        },
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
    }
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_batch_free(one)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

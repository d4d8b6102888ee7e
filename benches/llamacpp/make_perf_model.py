#!/usr/bin/env python3
"""Write a Mixtral-shaped random-weight GGUF (architecture `llama`) and quantize it with llama.cpp.

The whole-model speed comparison (`compare_models.py`) needs the same files for both engines.
This script writes one F16 model sized for a 2-core, 24 GiB machine and turns it into Q4_0,
Q8_0 and Q4_K_M with llama.cpp's own quantizer (`llama_model_quantize` from llama-cpp-python,
default parameters):

    /work/.llamavenv/bin/python benches/llamacpp/make_perf_model.py [--out-dir DIR] [--small]

Shape (the default): n_embd 2048, 8 layers, 16 heads / 4 KV heads (head_dim 128), 8 experts,
top-2, expert width (feed_forward_length) 5632, vocab 32000, context 4096, rope base 1e6,
RMS eps 1e-5; about 2.4 G parameters (4.9 GB in F16), of which about 0.7 G are read per
decoded token. `--small` writes a 2-layer, 256-wide model with the same structure (for a
quick functional check). Files (never committed; `target/` is ignored):

    DIR/perf[-small]-f16.gguf     F16 matrices, F32 norms and routers (ffn_gate_inp)
    DIR/perf[-small]-q4_0.gguf    llama.cpp ftype 2  (LLAMA_FTYPE_MOSTLY_Q4_0)
    DIR/perf[-small]-q8_0.gguf    llama.cpp ftype 7  (LLAMA_FTYPE_MOSTLY_Q8_0)
    DIR/perf[-small]-q4_k_m.gguf  llama.cpp ftype 15 (LLAMA_FTYPE_MOSTLY_Q4_K_M)

The F16 file is deleted after quantizing unless `--keep-f16`.

Tensor names, shapes, metadata and the minimal SentencePiece ("llama") tokenizer follow
moe-core/tests/fixtures/models/generate_models.py (the verified reference); only the sizes,
the weight type (F16) and the vocabulary size differ. The weights are random (numpy PCG64,
one seeded stream per tensor, drawn in chunks of one expert or fewer rows so memory stays
near one expert's F32 copy) and scaled so the activations stay O(1): the model produces
garbage, but finite garbage, which is all a speed measurement needs. A re-run writes
byte-identical files.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gguf
from gguf import GGUFWriter

SEED = 0x4D6F45  # same base seed as the fixtures
GGUF_PY_VERSION = "0.19.0"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

FTYPES = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15}  # enum llama_ftype


@dataclass(frozen=True)
class Shape:
    name: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int  # expert width
    n_expert: int
    n_expert_used: int
    n_vocab: int
    n_ctx_train: int
    rope_base: float = 1e6
    rms_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


FULL = Shape("perf", n_embd=2048, n_layer=8, n_head=16, n_head_kv=4, n_ff=5632, n_expert=8,
             n_expert_used=2, n_vocab=32000, n_ctx_train=4096)
# Same structure, tiny: 256 is the smallest width every k-quant block (256) divides, so the
# quantizer picks the same kinds of types as for the full model.
SMALL = Shape("perf-small", n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512, n_expert=8,
              n_expert_used=2, n_vocab=1000, n_ctx_train=4096)

# Rows generated per chunk for the large 2-D tensors (embedding, output).
CHUNK_ROWS = 4096


def rng_for(model: str, name: str) -> np.random.Generator:
    """An independent deterministic stream per (model, tensor), as in the fixtures."""
    return np.random.default_rng([SEED, *(ord(c) for c in model), 0, *(ord(c) for c in name)])


def random_f16(model: str, name: str, shape: tuple[int, ...], std: float) -> np.ndarray:
    """N(0, std^2) as F16, drawn chunk by chunk along the first axis (rows or experts)."""
    r = rng_for(model, name)
    out = np.empty(shape, dtype=np.float16)
    step = 1 if len(shape) == 3 else CHUNK_ROWS
    for i in range(0, shape[0], step):
        chunk = r.standard_normal((min(step, shape[0] - i), *shape[1:]), dtype=np.float32)
        chunk *= np.float32(std)
        out[i : i + step] = chunk
    return out


def norm_weight(model: str, name: str, n: int) -> np.ndarray:
    r = rng_for(model, name)
    return (1.0 + r.uniform(-0.1, 0.1, n)).astype(np.float32)


def vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """The fixtures' minimal SentencePiece vocabulary, extended to n_vocab tokens.

    0 <unk> (UNKNOWN), 1 <s> and 2 </s> (CONTROL), 3 <0x0A> (BYTE), 4 "▁" (the SPM space),
    then single printable characters from '!' upwards (NORMAL), as many as needed.
    """
    tokens = ["<unk>", "<s>", "</s>", "<0x0A>", "\u2581"]
    c = 33
    while len(tokens) < n_vocab:
        ch = chr(c)
        if ch.isprintable() and ch != "\u2581":
            tokens.append(ch)
        c += 1
    assert len(set(tokens)) == n_vocab
    types = [2, 3, 3, 6] + [1] * (n_vocab - 4)  # 1 NORMAL 2 UNKNOWN 3 CONTROL 6 BYTE
    scores = [0.0, 0.0, 0.0, 0.0] + [-float(i) for i in range(n_vocab - 4)]
    return tokens, scores, types


def tensor_plan(s: Shape) -> list[tuple[str, tuple[int, ...], str, float]]:
    """(GGUF name, numpy shape, kind, std) in file order; kind is 'norm' or 'f16'/'f32'.

    numpy shapes are (rows, cols) = GGUF dims reversed: y = W x has numpy shape (out, in).
    Scales as in the fixtures: 1/sqrt(fan_in) for the projections, so the residual stream
    stays O(1).
    """
    e, hd, ff = s.n_embd, s.head_dim, s.n_ff
    plan: list[tuple[str, tuple[int, ...], str, float]] = [
        ("token_embd.weight", (s.n_vocab, e), "f16", 1.0),
    ]
    for i in range(s.n_layer):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (e,), "norm", 0.0),
            (p + "attn_q.weight", (s.n_head * hd, e), "f16", 1.5 / np.sqrt(e)),
            (p + "attn_k.weight", (s.n_head_kv * hd, e), "f16", 1.5 / np.sqrt(e)),
            (p + "attn_v.weight", (s.n_head_kv * hd, e), "f16", 1.0 / np.sqrt(e)),
            (p + "attn_output.weight", (e, s.n_head * hd), "f16", 0.7 / np.sqrt(e)),
            (p + "ffn_norm.weight", (e,), "norm", 0.0),
            (p + "ffn_gate_inp.weight", (s.n_expert, e), "f32", 2.0 / np.sqrt(e)),
            (p + "ffn_gate_exps.weight", (s.n_expert, ff, e), "f16", 1.0 / np.sqrt(e)),
            (p + "ffn_up_exps.weight", (s.n_expert, ff, e), "f16", 1.0 / np.sqrt(e)),
            (p + "ffn_down_exps.weight", (s.n_expert, e, ff), "f16", 1.0 / np.sqrt(ff)),
        ]
    plan += [
        ("output_norm.weight", (e,), "norm", 0.0),
        ("output.weight", (s.n_vocab, e), "f16", 3.0 / np.sqrt(e)),
    ]
    return plan


def make_tensor(s: Shape, name: str, shape: tuple[int, ...], kind: str, std: float) -> np.ndarray:
    tag = name.removesuffix(".weight")
    if kind == "norm":
        return norm_weight(s.name, tag, shape[0])
    if kind == "f32":
        return (rng_for(s.name, tag).standard_normal(shape) * std).astype(np.float32)
    return random_f16(s.name, tag, shape, std)


def write_model(path: Path, s: Shape) -> None:
    w = GGUFWriter(str(path), arch="llama")
    w.add_name(s.name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_dimension_count(s.head_dim)
    w.add_rope_freq_base(s.rope_base)
    w.add_layer_norm_rms_eps(s.rms_eps)
    w.add_vocab_size(s.n_vocab)
    w.add_expert_count(s.n_expert)
    w.add_expert_used_count(s.n_expert_used)
    tokens, scores, types = vocab(s.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    # Tensor infos first, then the data one tensor at a time: only one tensor (at most one
    # F16 expert stack, 185 MB for the full model) is in memory at once.
    plan = tensor_plan(s)
    for name, shape, kind, _ in plan:
        dtype = np.float16 if kind == "f16" else np.float32
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        w.add_tensor_info(name, shape, np.dtype(dtype), nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, kind, std in plan:
        w.write_tensor_data(make_tensor(s, name, shape, kind, std))
    w.close()


_log_cb = None


def quantize(src: Path, dst: Path, ftype: int, nthread: int) -> None:
    """llama.cpp's own quantizer (llama_model_quantize with its default parameters)."""
    import llama_cpp

    # As in the fixtures: forward the quantizer's log (one line per tensor, with the type it
    # chose) with UTF-8 replacement; the default callback throws on a multi-byte token split
    # across chunks.
    global _log_cb
    _log_cb = llama_cpp.llama_log_callback(
        lambda level, text, user: sys.stderr.write(text.decode("utf-8", errors="replace")))
    llama_cpp.llama_log_set(_log_cb, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src.name} -> {dst.name}, ftype {ftype}) returned {rc}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=Path("target/moe-bench/models"))
    ap.add_argument("--small", action="store_true", help="2 layers, 256 wide (functional check)")
    ap.add_argument("--types", default=",".join(FTYPES), help="comma-separated subset of " + ",".join(FTYPES))
    ap.add_argument("--quant-threads", type=int, default=1, help="llama.cpp quantizer threads (default 1)")
    ap.add_argument("--keep-f16", action="store_true", help="keep the F16 source file")
    ap.add_argument("--force", action="store_true", help="rewrite files that already exist")
    args = ap.parse_args()

    for pkg, want in (("gguf", GGUF_PY_VERSION), ("llama_cpp_python", LLAMA_CPP_PYTHON_VERSION)):
        have = importlib.metadata.version(pkg)
        if have != want:
            print(f"error: {pkg}=={want} required (found {have})", file=sys.stderr)
            return 1
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    for t in types:
        if t not in FTYPES:
            print(f"error: unknown type {t!r} (known: {', '.join(FTYPES)})", file=sys.stderr)
            return 2
    s = SMALL if args.small else FULL
    args.out_dir.mkdir(parents=True, exist_ok=True)
    src = args.out_dir / f"{s.name}-f16.gguf"
    todo = [t for t in types if args.force or not (args.out_dir / f"{s.name}-{t}.gguf").exists()]
    if todo and (args.force or not src.exists()):
        t0 = time.monotonic()
        tmp = src.with_suffix(".gguf.tmp")
        write_model(tmp, s)
        tmp.replace(src)
        print(f"wrote {src} ({src.stat().st_size / 1e9:.2f} GB) in {time.monotonic() - t0:.0f} s",
              file=sys.stderr)
    for t in todo:
        dst = args.out_dir / f"{s.name}-{t}.gguf"
        tmp = dst.with_suffix(".gguf.tmp")
        t0 = time.monotonic()
        quantize(src, tmp, FTYPES[t], args.quant_threads)
        tmp.replace(dst)
        print(f"wrote {dst} ({dst.stat().st_size / 1e9:.2f} GB) in {time.monotonic() - t0:.0f} s",
              file=sys.stderr)
    if not args.keep_f16 and src.exists():
        src.unlink()
    for t in types:
        p = args.out_dir / f"{s.name}-{t}.gguf"
        r = gguf.GGUFReader(str(p))
        kinds: dict[str, int] = {}
        for ti in r.tensors:
            kinds[ti.tensor_type.name] = kinds.get(ti.tensor_type.name, 0) + 1
        print(f"{p.stat().st_size:11d}  {p}  ({len(r.tensors)} tensors: "
              + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) + ")")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())

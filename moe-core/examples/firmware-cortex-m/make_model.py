#!/usr/bin/env python3
"""Writes model.gguf: the tiny MoE model the Cortex-M firmware example embeds.

One Mixtral-style MoE layer (llama architecture, as llama.cpp names it): d_model 64,
8 experts of width 128, top-2 routing with renormalised softmax weights, expert stacks in
Q8_0 (quantized by gguf-py), the router and norm in F32. Deterministic (seeded); run from
anywhere: `python3 make_model.py` writes model.gguf next to this script.
Needs `pip install gguf==0.19.0 numpy`.
"""
from pathlib import Path

import numpy as np
import gguf

N_EMBD, N_FF, N_EXPERT, N_USED = 64, 128, 8, 2
OUT = Path(__file__).resolve().parent / "model.gguf"


def q8_0(weights: np.ndarray) -> np.ndarray:
    return gguf.quants.quantize(weights.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)


def main() -> None:
    rng = np.random.default_rng(8)
    w = gguf.GGUFWriter(str(OUT), "llama")
    w.add_name("moe firmware example: one MoE layer")
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_USED)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    # numpy shapes are the reverse of GGUF dims: [n_expert, n_ff, n_embd] is GGUF [n_embd, n_ff, n_expert].
    scale_in, scale_ff = 1 / np.sqrt(N_EMBD), 1 / np.sqrt(N_FF)
    w.add_tensor("blk.0.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(N_EMBD)).astype(np.float32))
    w.add_tensor("blk.0.ffn_gate_inp.weight", (rng.standard_normal((N_EXPERT, N_EMBD)) * 4 * scale_in).astype(np.float32))
    for name, shape, scale in [
        ("ffn_gate_exps", (N_EXPERT, N_FF, N_EMBD), scale_in),
        ("ffn_up_exps", (N_EXPERT, N_FF, N_EMBD), scale_in),
        ("ffn_down_exps", (N_EXPERT, N_EMBD, N_FF), scale_ff),
    ]:
        data = q8_0(rng.standard_normal(shape) * scale)
        w.add_tensor(f"blk.0.{name}.weight", data, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

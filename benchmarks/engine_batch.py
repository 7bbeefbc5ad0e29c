"""How the vLLM CPU engine's output tokens/s grows with the requests it holds at once: the number
behind `generate.requests_per_batch` and `VLLM_CPU_KVCACHE_SPACE` in pipelines/tiny-cpu.yaml.

    .venv/bin/python benchmarks/engine_batch.py [--batches 16,32,64,128,256] [--max-tokens 256]

One engine (the packaged teacher, SmolLM2-135M-Instruct), one `LLM.generate` call per batch size
with that many self-instruct-length prompts, `ignore_eos` so every request decodes exactly
max_tokens (the work per batch is known and equal per request). Ratios against the smallest batch,
in the same process.
"""
from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="16,32,64,128,256")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--kv-gib", default="4", help="VLLM_CPU_KVCACHE_SPACE: room for the largest batch")
    args = ap.parse_args()
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = args.kv_gib
    batches = [int(b) for b in args.batches.split(",")]

    from vllm import SamplingParams

    from replicate import meter
    from replicate.engines.vllm import VLLMEngine
    from replicate.weights import resolve

    teacher = VLLMEngine(resolve("packaged:smollm2-135m-instruct"), max_model_len=2048, max_in_flight=max(batches))
    # ~480 prompt tokens, like a self-instruct request (3 seed tasks + the instructions).
    base = ("You are asked to come up with a set of diverse task instructions. " * 40).strip()
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.7, top_p=0.9, ignore_eos=True, seed=0)
    teacher.llm.generate([base] * 4, SamplingParams(max_tokens=8), use_tqdm=False)  # warm-up
    rows = []
    for b in batches:
        prompts = [f"{i}. {base}" for i in range(b)]
        t0 = time.perf_counter()
        outs = teacher.llm.generate(prompts, [params] * b, use_tqdm=False)
        wall = time.perf_counter() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        rows.append((b, tokens, wall))
        print(f"batch {b}: {tokens} output tokens in {wall:.1f} s = {tokens / wall:.1f} tok/s", flush=True)
    teacher.close()
    print(f"\nmachine: {meter.device_name()[0]}; prompt ~{len(teacher.tokenizer.encode(base))} tokens, "
          f"max_tokens {args.max_tokens}, KV cache {args.kv_gib} GiB")
    print("| requests at once | output tokens | wall s | output tok/s | vs smallest |\n|---|---|---|---|---|")
    first = rows[0][1] / rows[0][2]
    for b, tokens, wall in rows:
        print(f"| {b} | {tokens:,} | {wall:.1f} | {tokens / wall:.1f} | {tokens / wall / first:.2f} |")


if __name__ == "__main__":
    main()

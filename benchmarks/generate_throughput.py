"""Does the generate stage starve the engine? Stage output tokens/s vs the same vLLM engine
called directly on the same prompts, in the same process (goal: ratio >= 0.9).

    .venv/bin/python benchmarks/generate_throughput.py [--examples 60] [--max-tokens 384] [--in-flight 64]

1. One engine (the packaged teacher, SmolLM2-135M-Instruct, on the vLLM CPU engine here).
2. stage:  run_generate(self-instruct) with that engine: prompts built and handed over as the
   engine has room, every completion parsed, filtered (ROUGE-L), written with fsync, metered.
3. direct: the exact prompts and per-request seeds the stage sent (rebuilt from its log), all in
   ONE `LLM.generate` call with the same SamplingParams -- the engine's best case.
Two rounds (stage, direct, stage, direct), with different seeds; an engine warm-up comes first.
The prefix cache is emptied before each run: the direct call replays the stage's exact prompts,
and cached prefills would make it faster for a reason that has nothing to do with the stage.

The engine's batch limit (`max_num_seqs`) is the stage's --in-flight, so both sides run on the
same engine: the question is whether the stage keeps that engine fed, not whether a bigger batch
is faster (that is --in-flight's own question, answered by benchmarks/engine_batch.py). Without
the limit the direct call would decode all of a round's 75-96 requests in one batch while the
stage keeps 64. --direct-batch unlimited measures that case too.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def stage_run(cfg, teacher, run_dir: Path) -> dict:
    from replicate.generate import dataset, run_generate

    teacher.llm.reset_prefix_cache()
    t0 = time.perf_counter()
    stats = run_generate(cfg, run_dir, teacher=teacher, progress=False)
    wall = time.perf_counter() - t0
    # Requests the stage kept in the engine, averaged over time (each log line: finish time t, latency).
    spans = [(r["t"] - r["latency_s"], r["t"]) for r in dataset.read_log(run_dir / "data")]
    end = max(b for _, b in spans)
    occupancy = sum(b - a for a, b in spans) / end
    print(f"  stage:  {stats['requests']} requests, {stats['output_tokens']} output tokens, {wall:.1f} s, "
          f"{occupancy:.1f} requests in the engine on average", flush=True)
    return {"wall_s": wall, "requests": stats["requests"], "output_tokens": stats["output_tokens"],
            "kept": stats["kept"], "occupancy": occupancy}


def direct_run(cfg, teacher, run_dir: Path) -> dict:
    """The stage's own requests, straight into LLM.generate (one call, all prompts)."""
    from vllm import SamplingParams

    from replicate.generate import dataset
    from replicate.generate.modes import SelfInstruct

    mode = SelfInstruct(cfg)
    mode.chat = teacher.chat
    reqs = [mode.request(rec["index"])[0] for rec in dataset.read_log(run_dir / "data")]
    prompts = [teacher._engine_prompt(r.prompt) for r in reqs]
    g = cfg.generate
    params = [SamplingParams(max_tokens=g.max_tokens, temperature=g.temperature, top_p=g.top_p,
                             stop=list(mode.stop), seed=r.seed) for r in reqs]
    teacher.llm.reset_prefix_cache()
    t0 = time.perf_counter()
    outs = teacher.llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    print(f"  direct: {len(outs)} requests, {sum(len(o.outputs[0].token_ids) for o in outs)} output tokens, "
          f"{wall:.1f} s", flush=True)
    return {"wall_s": wall, "requests": len(outs), "output_tokens": sum(len(o.outputs[0].token_ids) for o in outs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=60, help="kept training rows the stage generates per run")
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--in-flight", type=int, default=64, help="requests kept in the engine (generate.requests_per_batch)")
    ap.add_argument("--direct-batch", choices=("same", "unlimited"), default="same",
                    help="engine max_num_seqs: the stage's --in-flight (same engine), or vLLM's default")
    args = ap.parse_args()

    from replicate import meter
    from replicate.config import parse_pipeline
    from replicate.engines import Sampling
    from replicate.engines.vllm import VLLMEngine
    from replicate.weights import resolve

    cfg = parse_pipeline({
        "name": "bench-generate", "student": {"model": "packaged:gemma-3-270m"},
        "teacher": {"model": "packaged:smollm2-135m-instruct", "backend": "vllm", "max_model_len": 2048},
        "generate": {"mode": "self-instruct", "examples": args.examples, "max_tokens": args.max_tokens,
                     "temperature": 0.7, "top_p": 0.9, "requests_per_batch": args.in_flight, "held_out_fraction": 0},
    })
    t0 = time.perf_counter()
    limit = {"max_num_seqs": args.in_flight} if args.direct_batch == "same" else {}
    teacher = VLLMEngine(resolve(cfg.teacher.model), max_model_len=2048, max_in_flight=args.in_flight, **limit)
    max_num_seqs = teacher.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
    print(f"engine start: {time.perf_counter() - t0:.1f} s; engine batch limit (max_num_seqs) {max_num_seqs}")
    teacher.complete(["Warm up: say hi."] * 4, Sampling(max_tokens=16))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: Path(tmp) / name for name in ("a", "b")}
        stage_a = stage_run(cfg, teacher, runs["a"])  # the stage decides which requests it needs...
        direct_a = direct_run(cfg, teacher, runs["a"])  # ...then the engine gets exactly those
        cfg_b = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"seed": 1})})
        stage_b = stage_run(cfg_b, teacher, runs["b"])
        direct_b = direct_run(cfg_b, teacher, runs["b"])
        rows = [("stage", stage_a), ("direct", direct_a), ("stage", stage_b), ("direct", direct_b)]
    teacher.close()

    print(f"\nmachine: {meter.device_name()[0]}; teacher {cfg.teacher.model} on vLLM "
          f"(stage in flight {args.in_flight}, engine max_num_seqs {max_num_seqs}, max_tokens {args.max_tokens}, "
          f"temperature 0.7)")
    print(f"{'run':<8}{'requests':>9}{'out tokens':>12}{'wall s':>9}{'out tok/s':>11}")
    for name, r in rows:
        print(f"{name:<8}{r['requests']:>9}{r['output_tokens']:>12}{r['wall_s']:>9.1f}{r['output_tokens'] / r['wall_s']:>11.1f}")
    tps = {n: sum(r["output_tokens"] for m, r in rows if m == n) / sum(r["wall_s"] for m, r in rows if m == n)
           for n in ("stage", "direct")}
    kept = stage_a["kept"] + stage_b["kept"]
    print(f"\nstage / direct output tokens/s: {tps['stage']:.1f} / {tps['direct']:.1f} = "
          f"{tps['stage'] / tps['direct']:.2f}x (goal >= 0.90); stage kept {kept} rows")


if __name__ == "__main__":
    main()

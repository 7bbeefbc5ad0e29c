"""How the vLLM CPU engine's threads should be placed, on a quiet machine and beside a competing
busy process: the number behind `bind_all_cpus` in replicate/engines/vllm.py.

    .venv/bin/python benchmarks/engine_binding.py [--requests 32] [--max-tokens 128] [--rounds 2]

Policies (env of the engine's processes):
  all      VLLM_CPU_OMP_THREADS_BIND=<every core>, VLLM_CPU_NUM_OF_RESERVED_CPU=0 (the model's
           threads bound one per core, the scheduler process unbound beside them)
  auto     vLLM's default: one core kept for the scheduler, the model bound to the rest
  nobind   VLLM_CPU_OMP_THREADS_BIND=nobind: OpenMP places the model's threads itself
Load: none, or one competing process spinning on one core (started before the engine, stopped
after it), as a CI job, a laptop's browser or a second user would. Each (policy, load) runs in a
fresh process (the binding is read when the engine starts); the rounds interleave them so slow
drift of the machine hits every policy alike. The default to keep is the best in the worst case.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

POLICIES = ("all", "auto", "nobind")


def policy_env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")}
    env["REPLICATE_CPU_BINDING"] = policy  # read by bind_all_cpus
    if policy == "nobind":
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return env


def child(args) -> None:
    from vllm import SamplingParams

    from replicate.engines.vllm import VLLMEngine
    from replicate.weights import resolve

    engine = VLLMEngine(resolve("packaged:smollm2-135m-instruct"), max_model_len=2048, max_in_flight=args.requests)
    base = ("You are asked to come up with a set of diverse task instructions. " * 40).strip()  # ~480 tokens
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.7, top_p=0.9, ignore_eos=True, seed=0)
    engine.llm.generate([base] * 2, SamplingParams(max_tokens=4), use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = engine.llm.generate([f"{i}. {base}" for i in range(args.requests)], [params] * args.requests,
                               use_tqdm=False)
    wall = time.perf_counter() - t0
    engine.close()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print(json.dumps({"tokens": tokens, "wall_s": wall, "bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")}))


def run(policy: str, load: bool, args) -> float:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load else None
    try:
        out = subprocess.run([sys.executable, __file__, "--child", "--requests", str(args.requests),
                              "--max-tokens", str(args.max_tokens)], env=policy_env(policy), capture_output=True,
                             text=True, check=True)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["tokens"] / r["wall_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    from replicate.meter import device_name

    best: dict[tuple[str, bool], float] = {}
    for rnd in range(args.rounds):
        for load in (False, True):
            for policy in POLICIES:
                tps = run(policy, load, args)
                key = (policy, load)
                best[key] = max(best.get(key, 0.0), tps)
                print(f"round {rnd}, {policy:6s}, {'one busy process' if load else 'quiet'}: {tps:.1f} tok/s", flush=True)
    print(f"\n{device_name()[0]}, load average before: {os.getloadavg()[0]:.2f}; {args.requests} requests x "
          f"{args.max_tokens} output tokens (~480-token prompts), best of {args.rounds} rounds")
    print("| policy | quiet (tok/s) | one busy process (tok/s) | loaded / quiet | worst vs best worst |")
    print("|---|---|---|---|---|")
    worst = {p: min(best[(p, False)], best[(p, True)]) for p in POLICIES}
    top = max(worst.values())
    for p in POLICIES:
        q, ld = best[(p, False)], best[(p, True)]
        print(f"| {p} | {q:.1f} | {ld:.1f} | {ld / q:.2f} | {worst[p] / top:.2f} |")


if __name__ == "__main__":
    main()

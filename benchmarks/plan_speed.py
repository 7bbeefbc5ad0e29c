"""`replicate plan --budget 500` speed: cost >= 10,000 candidate setups in well under a second.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/plan_speed.py     # under flock /tmp/replicate-cpu.lock

Three timings, in one process:
  - baseline: the same candidates costed one by one through the public `estimate_pipeline(cfg)` path
    (a pydantic Pipeline per candidate), timed on a sample and extrapolated;
  - plan(): the search itself, budget tables already parsed but every per-layer cost computed
    afresh (the layer cache is cleared before each run, as in a fresh process); best of three;
  - the CLI end to end (`replicate plan --budget 500` in a subprocess: interpreter start, imports,
    tables, search, table printing); best of three.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from replicate.config import parse_pipeline
from replicate.cost import plan as planmod
from replicate.cost.estimate import estimate_pipeline
from replicate.cost.layer import layer_cost
from replicate.cost.training import TrainJob
from replicate.cost.workload import ALPACA
from replicate.errors import UserError
from replicate.meter import device_name

BUDGET, YEAR, TEACHER = 500.0, 2026, "gpt-4o-mini"
JOB = TrainJob()  # the plan's candidates use the TrainJob defaults (3 epochs, max_length 512, micro-batch 8)


def baseline_per_candidate(sample: int = 300) -> float:
    """Seconds per candidate through estimate_pipeline on a sample of the plan's grid."""
    gpus = planmod._priced_gpus(YEAR)
    combos = [(s, n, m, g, c) for s in planmod.STUDENTS for n in planmod.EXAMPLES for m in planmod.METHODS
              for g in gpus for c in planmod.COUNTS]
    step = max(1, len(combos) // sample)
    picked = combos[::step][:sample]
    t0 = time.perf_counter()
    for student, n, method, gpu, count in picked:
        cfg = parse_pipeline({
            "name": "candidate", "prices": YEAR, "teacher": {"model": TEACHER, "backend": "openai"},
            "generate": {"mode": "self-instruct", "examples": n, "held_out_fraction": 0},
            "data": {"prompt_tokens": ALPACA.prompt_tokens, "completion_tokens": ALPACA.completion_tokens},
            "student": {"model": student},
            "finetune": {"method": method, "epochs": JOB.epochs, "max_length": JOB.max_length,
                         "batch_size": JOB.micro_batch, "zero_stage": 3, "save_steps": 10**9,
                         "hardware": {"gpu": gpu, "count": count}},
            "evaluate": {"examples": 0, "probes": 0}})
        try:
            estimate_pipeline(cfg)
        except UserError:  # a candidate that fits no memory is part of the search too
            continue
    return (time.perf_counter() - t0) / len(picked)


def cli_seconds(runs: int = 3) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "replicate.cli", "plan", "--budget", "500"], cwd=ROOT, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    planmod.plan(BUDGET, YEAR, TEACHER)  # parse the budget tables once, as the CLI does before searching
    runs = []
    for _ in range(3):
        layer_cost.cache_clear()
        t0 = time.perf_counter()
        result = planmod.plan(BUDGET, YEAR, TEACHER)
        runs.append(time.perf_counter() - t0)
    plan_s, n = min(runs), result["candidates"]
    base = baseline_per_candidate()
    cli = cli_seconds()
    print(f"machine: {device_name()[0]}, python {platform.python_version()}")
    print(f"{'method':44s} {'candidates':>10s} {'seconds':>8s} {'us/candidate':>13s} {'ratio':>6s}")
    print(f"{'estimate_pipeline per candidate (baseline)':44s} {n:>10,d} {base * n:>8.2f} {base * 1e6:>13.0f} {1.0:>6.1f}")
    print(f"{'plan() search, cold layer costs (best of 3)':44s} {n:>10,d} {plan_s:>8.2f} {plan_s / n * 1e6:>13.0f} "
          f"{base * n / plan_s:>6.1f}")
    print(f"{'replicate plan --budget 500, whole CLI':44s} {n:>10,d} {cli:>8.2f}")
    print(f"goal: >= 10,000 candidates, search well under 1 s: {'met' if n >= 10_000 and plan_s < 0.7 else 'NOT met'}")


if __name__ == "__main__":
    main()

"""`replicate plan` speed: cost >= 10,000 candidate setups in under 2 s on this 2-core machine.

    .venv/bin/python benchmarks/plan_speed.py

Baseline, in the same process: the same candidates costed one by one through the public
`estimate_pipeline(cfg)` path (a pydantic Pipeline per candidate), timed on a sample and
extrapolated. The plan searches with the same stage functions on plain numbers and costs the
teacher once per example count.
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replicate.config import parse_pipeline
from replicate.cost import plan as planmod
from replicate.cost.estimate import estimate_pipeline
from replicate.errors import UserError
from replicate.meter import device_name

BUDGET, YEAR, TEACHER = 500.0, 2026, "gpt-4o-mini"


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
            "data": {"prompt_tokens": planmod.PROMPT, "completion_tokens": planmod.COMPLETION},
            "student": {"model": student},
            "finetune": {"method": method, "epochs": planmod.EPOCHS, "max_length": planmod.MAX_LEN,
                         "batch_size": planmod.MICRO_BATCH, "zero_stage": 3, "save_steps": 10**9,
                         "hardware": {"gpu": gpu, "count": count}},
            "evaluate": {"examples": 0, "probes": 0}})
        try:
            estimate_pipeline(cfg)
        except UserError:  # a candidate that fits no memory is part of the search too
            continue
    return (time.perf_counter() - t0) / len(picked)


def main() -> None:
    planmod.plan(BUDGET, YEAR, TEACHER)  # warm the table caches, as any second call would
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        result = planmod.plan(BUDGET, YEAR, TEACHER)
        runs.append(time.perf_counter() - t0)
    plan_s, n = min(runs), result["candidates"]
    base = baseline_per_candidate()
    print(f"machine: {device_name()[0]}, python {platform.python_version()}")
    print(f"{'method':44s} {'candidates':>10s} {'seconds':>8s} {'us/candidate':>13s} {'ratio':>6s}")
    print(f"{'estimate_pipeline per candidate (baseline)':44s} {n:>10,d} {base * n:>8.2f} {base * 1e6:>13.0f} {1.0:>6.1f}")
    print(f"{'plan() search (best of 3)':44s} {n:>10,d} {plan_s:>8.2f} {plan_s / n * 1e6:>13.0f} "
          f"{base * n / plan_s:>6.1f}")
    print(f"goal: >= 10,000 candidates in < 2 s: {'met' if n >= 10_000 and plan_s < 2 else 'NOT met'}")


if __name__ == "__main__":
    main()

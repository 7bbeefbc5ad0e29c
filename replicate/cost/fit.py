"""Fit the fine-tuning constants to the published runs, and leave-one-out: refit without a run, predict it.

    python -m replicate.cost.fit      # the grid optimum (what params.DEFAULTS hold) and the LOO table

The fitted constants (FIT) are the ones no datasheet gives: the tile efficiency of a full GEMM
wave (train_mfu), the per-layer host work a non-prefetching FSDP waits on (shard_layer_overhead_s),
the host Adam rate of DeepSpeed offload (cpu_adam_params_per_s) and the 2023 stacks' per-layer
host floor (layer_overhead_2023_s). Everything else is physics, a datasheet or a measurement. The fit is a grid
search minimising the sum of squared log ratios of predicted / published fine-tuning wall-clock
over every published run that reports one; leave-one-out repeats it once per run without that run.
The grid is small enough that every (point, run) prediction is computed once and each LOO fit is a
lookup (tests/test_costmodel.py checks DEFAULTS sit at the in-sample optimum).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from replicate.config import Pipeline, load_pipeline
from replicate.cost import catalog
from replicate.cost.estimate import finetune_stage
from replicate.cost.params import DEFAULTS
from replicate.cost.training import TrainJob, finetune_time

GRID: dict[str, tuple[float, ...]] = {
    "train_mfu": (0.45, 0.5, 0.55, 0.6, 0.65),
    "shard_layer_overhead_s": (0.0, 0.001, 0.002, 0.004, 0.008),
    "cpu_adam_params_per_s": (1.5e8, 2e8, 2.5e8, 3e8, 4e8, 6e8),
    "layer_overhead_2023_s": (0.004, 0.006, 0.008, 0.01, 0.012, 0.016),
}
FIT = tuple(GRID)


@dataclass
class Run:
    name: str
    cfg: Pipeline
    published_h: float


def published_runs() -> list[Run]:
    from replicate import files

    out = []
    for path in sorted((files.shipped("pipelines") / "published").glob("*.yaml")):
        cfg = load_pipeline(path)
        if cfg.published and cfg.published.wall_hours and not cfg.published.disputed:
            out.append(Run(cfg.name, cfg, cfg.published.wall_hours))
    return out


def _predict_h(run: Run, point: dict) -> float:
    # A calibration file may only set FITTABLE keys; the fit moves any constant, so it patches
    # DEFAULTS for the one call (params_for copies them) and restores them.
    saved = {k: DEFAULTS[k] for k in point}
    DEFAULTS.update(point)
    try:
        return finetune_stage(run.cfg, run.cfg.prices).wall_hours
    finally:
        DEFAULTS.update(saved)


def sweep_ratios(point: dict, sweeps: list[tuple[str, list[dict]]]) -> list[float]:
    """Predicted / measured tokens per second at every point of the H100/H200 micro-batch sweeps
    (benchmarks/costmodel_gpu_check.py: plain PyTorch full fine-tuning steps, torch 2.11 eager,
    i.e. the 2025 stack). `sweeps`: (catalog key, rows) pairs."""
    p = {**DEFAULTS, **point}
    out = []
    for key, rows in sweeps:
        dev = catalog.hardware(key)
        for r in rows:
            if "error" in r or "model" not in r:
                continue
            job = TrainJob(method="full", examples=r["batch"] * 100, epochs=1, tokens_per_example=r["seq"],
                           max_length=r["seq"], padding="max_length", length_sigma=0.0, micro_batch=r["batch"],
                           software=2025)
            t = finetune_time(catalog.model_shape(r["model"]), dev, 1, job, p)
            out.append(t.padded_tokens / t.steps_s / r["tokens_per_s"])
    return out


def grid_predictions(runs: list[Run], sweeps=()) -> tuple[list[dict], list[list[float]]]:
    """Every grid point that keeps the GPU sweeps within 1.5x, and the predicted hours of every run."""
    catalog.hardware("a100-80gb")  # warm the tables
    points = [dict(zip(FIT, vals)) for vals in itertools.product(*GRID.values())]
    if sweeps:
        ok = {}
        for pt in points:  # the sweeps depend on train_mfu only among FIT (no sharding, offload, 2023)
            k = pt["train_mfu"]
            if k not in ok:
                ok[k] = all(1 / 1.5 < x < 1.5 for x in sweep_ratios(pt, sweeps))
        points = [pt for pt in points if ok[pt["train_mfu"]]]
    return points, [[_predict_h(r, pt) for r in runs] for pt in points]


def _loss(preds: list[float], runs: list[Run], skip: int | None = None) -> float:
    return sum(math.log(p / r.published_h) ** 2 for i, (p, r) in enumerate(zip(preds, runs)) if i != skip)


def fit(runs: list[Run] | None = None, sweeps=()) -> dict:
    """{"point": in-sample optimum, "in_sample": {run: ratio}, "loo": {run: ratio}, "loo_points": {run: point}}."""
    runs = runs or published_runs()
    points, preds = grid_predictions(runs, sweeps)
    best = min(range(len(points)), key=lambda j: _loss(preds[j], runs))
    out = {"point": points[best], "in_sample": {}, "loo": {}, "loo_points": {}}
    for i, r in enumerate(runs):
        out["in_sample"][r.name] = preds[best][i] / r.published_h
        j = min(range(len(points)), key=lambda k: _loss(preds[k], runs, skip=i))
        out["loo"][r.name] = preds[j][i] / r.published_h
        out["loo_points"][r.name] = points[j]
    return out


def repo_sweeps() -> list[tuple[str, list[dict]]]:
    """The H200 and H100 sweeps kept in a checkout's tests/data (none in an installed wheel)."""
    from replicate import files

    data = files.shipped("pipelines").parent / "tests" / "data"
    out = []
    for card, key in (("h200", "h200"), ("h100", "h100-sxm")):
        path = data / f"costmodel_gpu_check_{card}.json"
        if path.is_file():
            out.append((key, files.read_json(path, "no sweep")[1:]))
    return out


if __name__ == "__main__":
    res = fit(sweeps=repo_sweeps())
    print("in-sample optimum:", res["point"])
    for name in res["in_sample"]:
        print(f"{name:28s} in-sample {res['in_sample'][name]:.2f}  LOO {res['loo'][name]:.2f}  {res['loo_points'][name]}")

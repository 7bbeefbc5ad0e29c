"""The Python API: what the CLI does, for a notebook or a script, returning typed results.

    from replicate import api
    est = api.estimate("pipelines/published/alpaca-2023.yaml", prices=2026)
    est.usd, est.device_hours, est.stage("finetune").wall_hours
    best = api.plan(max_usd=100).options[0]
    rep = api.run({"name": "mine", ...}, run_dir="runs/mine")      # the whole replication
    rep = api.report("runs/mine"); rep.usd, rep.gap_closed["fidelity"]

A pipeline is a YAML path or the same content as a dict; `overrides` are `--set` items. Errors a
user can cause raise replicate.errors.UserError with the CLI's one-line message. Every result
keeps the full data the CLI's --json prints in `.data`. docs/api.md has a runnable example
(tests/test_api.py executes it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from replicate.config import Pipeline, apply_overrides, load_pipeline, parse_pipeline


@dataclass
class StageCost:
    name: str
    device: str
    usd: float
    usd_low: float
    usd_high: float
    device_hours: float
    wall_hours: float
    detail: dict = field(default_factory=dict, repr=False)


@dataclass
class Estimate:
    """The cost model's prediction (`replicate estimate`)."""

    name: str
    prices: int
    usd: float
    usd_low: float
    usd_high: float
    device_hours: float
    wall_hours: float
    stages: list[StageCost]
    notes: list[str]
    data: dict = field(repr=False)

    def stage(self, name: str) -> StageCost:
        return next(s for s in self.stages if s.name == name)


@dataclass
class PlanOption:
    student: str
    params: int
    examples: int
    method: str
    gpu: str
    count: int
    usd: float
    wall_hours: float
    limit: str


@dataclass
class Plan:
    """The best copies a budget buys (`replicate plan`), best first."""

    max_usd: float
    prices: int
    teacher: str
    options: list[PlanOption]
    data: dict = field(repr=False)


@dataclass
class Report:
    """A run's (or a sweep's) report (`replicate report`): measured against estimated, and how much was copied."""

    run_dir: Path
    files: dict[str, Path]
    usd: float
    estimated_usd: float
    device_hours: float
    wall_s: float
    gap_closed: dict[str, float | None]
    data: dict = field(repr=False)


def _logging() -> None:
    """Status lines in a notebook too, unless the caller configured logging itself."""
    from replicate import log

    if not logging.getLogger(log.LOGGER).handlers:
        log.setup(log.NORMAL)


def pipeline(spec: str | Path | dict | Pipeline, overrides: list[str] = ()) -> Pipeline:
    """A validated pipeline from a YAML path, a dict of the same content, or a Pipeline."""
    if isinstance(spec, Pipeline):
        return parse_pipeline(apply_overrides(spec.model_dump(mode="json"), list(overrides)), spec.name)
    if isinstance(spec, dict):
        import copy

        return parse_pipeline(apply_overrides(copy.deepcopy(spec), list(overrides)), "pipeline dict")
    return load_pipeline(spec, list(overrides))


def estimate(spec: str | Path | dict | Pipeline, *, prices: int | None = None, calibration: str | Path | None = None,
             overrides: list[str] = (), software: int | None = None) -> Estimate:
    """Predict a pipeline's cost without running it (`software`: as `replicate estimate --software`)."""
    from replicate.cost import estimate_pipeline
    from replicate.cost.params import load_calibration

    cfg = pipeline(spec, overrides)
    d = estimate_pipeline(cfg, prices_year=prices, calibration=load_calibration(calibration and str(calibration)),
                          source=str(spec) if isinstance(spec, (str, Path)) else None, software=software).to_dict()
    stages = [StageCost(s["name"], s["device"], s["usd"], s["usd_low"], s["usd_high"], s["gpu_hours"],
                        s["wall_hours"], s) for s in d["stages"]]
    t = d["total"]
    return Estimate(d["name"], d["prices"], t["usd"], t["usd_low"], t["usd_high"], t["gpu_hours"], t["wall_hours"],
                    stages, d["notes"], d)


def plan(max_usd: float, *, prices: int | None = None, teacher: str = "gpt-4o-mini", top: int = 10,
         max_hours: float = 24.0, objective: str = "quality", software: int = 2026) -> Plan:
    """The best replications `max_usd` buys within `max_hours`, ranked by `objective` (quality,
    cost or time), as `replicate plan` (evaluation not included)."""
    from replicate.cost.catalog import newest_price_year
    from replicate.cost.plan import plan as plan_options

    d = plan_options(max_usd, prices or newest_price_year(), teacher, top, max_hours=max_hours, objective=objective,
                     software=software)
    opts = [PlanOption(o["student"], o["params"], o["examples"], o["method"], o["gpu"], o["count"], o["usd"],
                       o["wall_hours"], o.get("limit", "")) for o in d["options"]]
    return Plan(d["budget_usd"], d["prices"], d["teacher"], opts, d)


def _report(paths: dict) -> Report:
    from replicate import files

    d = files.read_json(paths["json"], "")
    t = d["totals"]
    fams = (d.get("evaluation") or {}).get("families") or {}
    return Report(Path(d["run_dir"]), {k: Path(v) for k, v in paths.items()}, t["measured"]["usd"],
                  t["estimate"]["usd"], t["measured"]["device_hours"], t["measured"]["wall_s"],
                  {k: v.get("gap_closed") for k, v in fams.items()}, d)


def run(spec: str | Path | dict | Pipeline, *, run_dir: str | Path | None = None,
        calibration: str | Path | None = None, overrides: list[str] = (), max_usd: float | None = None) -> Report:
    """The whole replication (estimate, generate, finetune, evaluate, report); a rerun resumes.
    `max_usd`: as `--max-usd`, a hard ceiling on the run directory's measured dollars (default: the
    pipeline's budget.max_usd)."""
    from replicate.cost.params import load_calibration
    from replicate.pipeline import run_pipeline, with_budget
    from replicate.rundir import default_run_dir

    _logging()
    cfg = with_budget(pipeline(spec, overrides), max_usd)
    paths = run_pipeline(cfg, default_run_dir(cfg.name, run_dir), calibration=load_calibration(
        calibration and str(calibration)))
    return _report(paths)


def report(run_dir: str | Path) -> Report:
    """Rebuild report.md/.html/.json of a run (or sweep) directory and return its numbers."""
    from replicate.report import rebuild_report

    return _report(rebuild_report(Path(run_dir)))


__all__ = ["Estimate", "Plan", "PlanOption", "Report", "StageCost", "estimate", "pipeline", "plan", "report", "run"]

"""The whole replication, read top to bottom: estimate -> generate -> finetune -> evaluate -> report.

    replicate run pipelines/tiny-cpu.yaml            # into runs/tiny-cpu/
    replicate run pipelines/tiny-cpu.yaml            # again: resumes, redoes nothing finished

Resume: each stage writes its done marker LAST (data/done.json, student/train_metrics.json,
eval/scores.json); a stage whose marker exists is skipped, an unfinished one is called again and
resumes from its own saved state (generated rows, training checkpoints, scored samples).

Budget guard: `--max-usd` (else the YAML's `budget.max_usd`) is a hard ceiling on the measured
dollars in the run directory, the same on every command that can spend (run, sweep, demo,
generate, finetune, evaluate). The estimate must fit before anything starts; during the run each
stage gets what is left (the limit minus the dollars in the ledger) and raises BudgetExceeded
after saving what it finished. Raise --max-usd and rerun the same command to continue.

Concurrency: one process per run directory. A second `replicate run` on the same directory
refuses at once (it does not wait: a queued run would silently repeat the first one's decisions).

Seeds: `finetune.seeds: k` fine-tunes k students on the same data (seeds seed .. seed+k-1; the
first in student/, the others in student-seed<S>/), and the evaluation scores them together, so
every interval includes the spread between training runs (docs/evaluation.md).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from replicate import files, meter, options
from replicate.config import Pipeline, load_pipeline
from replicate.errors import BudgetExceeded, UserError
from replicate.rundir import DONE, default_run_dir, run_lock, write_resolved
from replicate.tables import num

DEMO = "tiny-cpu.yaml"  # in the shipped pipelines/ folder


def say(msg: str) -> None:
    """One status line per stage, logged (stderr, so `--json` stdout stays clean; -q hides it)."""
    logging.getLogger("replicate").info(msg)


def with_budget(cfg: Pipeline, max_usd: float | None) -> Pipeline:
    """The pipeline with `--max-usd` (when given) as its budget.max_usd: one limit, one meaning."""
    if max_usd is None:
        return cfg
    if isinstance(max_usd, bool) or not isinstance(max_usd, (int, float)) or not (
            math.isfinite(max_usd) and 0 <= max_usd <= 1e12):  # the CLI parses; the Python API arrives here
        raise UserError(f"max_usd: expected a finite amount of dollars between 0 and 1e12, got {max_usd!r}")
    return cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"max_usd": max_usd})})


def budget_left(cfg: Pipeline, budget_dir: Path, before: str) -> float | None:
    """What the next stage may spend: budget.max_usd minus the dollars in budget_dir's ledgers (a
    sweep's sub-runs included); None without a limit. Nothing left: BudgetExceeded, nothing starts."""
    limit = cfg.budget.max_usd
    if limit is None:
        return None
    spent = meter.spent_usd(budget_dir, with_sweep=True)
    if spent >= limit:
        raise BudgetExceeded(f"the budget (--max-usd / budget.max_usd = ${limit:,.4g}) is spent before {before}: "
                             f"${spent:,.4g} measured in {budget_dir}; raise --max-usd and rerun the same command "
                             "to resume")
    return limit - spent


# ---- estimate ---------------------------------------------------------------------------------


def estimate(cfg: Pipeline, calibration: dict | None = None) -> dict:
    from replicate.cost.estimate import estimate_pipeline

    return with_seeds(estimate_pipeline(cfg, calibration=calibration).to_dict(), cfg.finetune.seeds)


def with_seeds(est: dict, seeds: int) -> dict:
    """The estimate with the fine-tuning stage paid `seeds` times (k runs of the same size)."""
    if seeds == 1:
        return est
    for s in est["stages"]:
        if s["name"] == "finetune":
            for key in ("usd", "gpu_hours", "wall_hours", "usd_low", "usd_high"):
                if isinstance(s.get(key), (int, float)):
                    est["total"][key] = est["total"].get(key, 0) + (seeds - 1) * s[key]
                    s[key] *= seeds
            s["seeds"] = seeds
    return est


def student_dirs(cfg: Pipeline, run_dir: Path) -> list[Path]:
    """Where each fine-tuning seed's student lives: student/ for finetune.seed, student-seed<S>/ after."""
    return [Path(run_dir) / ("student" if i == 0 else f"student-seed{cfg.finetune.seed + i}")
            for i in range(cfg.finetune.seeds)]


def finetune_seeds(cfg: Pipeline, run_dir: Path, budget: tuple[Pipeline, Path]) -> None:
    """Fine-tune every seed (the first as the `finetune` stage, the rest into student-seed<S>/)."""
    from replicate import finetune

    for i, out in enumerate(student_dirs(cfg, run_dir)):
        c = cfg if i == 0 else cfg.model_copy(update={"finetune": cfg.finetune.model_copy(
            update={"seed": cfg.finetune.seed + i})}, deep=True)
        run_stage("finetune", 2, run_dir, lambda left, c=c, out=out: finetune.run_finetune(c, run_dir, out_dir=out,
                                                                                           max_usd=left),
                  budget=budget, marker=out / "train_metrics.json", what=f"finetune (seed {c.finetune.seed})"
                  if cfg.finetune.seeds > 1 else "finetune")


def evaluate_students(cfg: Pipeline, run_dir: Path, budget: tuple[Pipeline, Path]) -> None:
    from replicate import evaluate

    dirs = [d / "merged" for d in student_dirs(cfg, run_dir)]
    run_stage("evaluate", 3, run_dir, lambda left: evaluate.run_evaluate(cfg, run_dir, student_dirs=dirs, max_usd=left),
              budget=budget)


def refuse_over_budget(est_usd: float, cfg: Pipeline, what: str) -> None:
    if cfg.budget.max_usd is not None and est_usd > cfg.budget.max_usd:
        raise UserError(f"{what} is estimated at ${est_usd:,.4g}, over the budget (--max-usd / budget.max_usd = "
                        f"${cfg.budget.max_usd:,.4g}); shrink it (e.g. --set generate.examples=...) or raise --max-usd")


def estimate_fields(stage: dict, est: dict) -> dict:
    """A cost-model stage prediction in ledger units (device_hours, wall_s, usd, ...)."""
    out = {"device_hours": stage.get("gpu_hours"), "wall_s": (stage.get("wall_hours") or 0) * 3600,
           "usd": stage.get("usd"), "prices": est.get("prices")}
    for k, v in stage.items():
        if k not in ("name", "gpu_hours", "wall_hours") and isinstance(v, (int, float, str, bool)) and k not in out:
            out[k] = v
    return out


def record_estimate(run_dir: Path, est: dict, stages: tuple[str, ...] = tuple(DONE), **tags) -> None:
    """Write the estimate's `kind: estimate` ledger lines, once per stage and run directory (a
    rerun, or a run killed between two of these lines, adds only the missing ones)."""
    have = {r.get("stage") for r in meter.estimates(meter.ledger(run_dir))}
    for s in est["stages"]:
        if s["name"] in stages and s["name"] not in have:
            meter.write_estimate(run_dir, s["name"], **estimate_fields(s, est), **tags)


def record_stage_estimate(cfg: Pipeline, run_dir: Path, stage: str, calibration: dict | None = None) -> None:
    """A stage command run on its own (`replicate generate`, ...) records its stage's estimate as
    `replicate run` does, so the report compares every measured stage with a prediction. A
    pipeline the cost model cannot price still runs: the report then says why there is no estimate."""
    try:
        est = estimate(cfg, calibration)
    except UserError as e:
        logging.getLogger("replicate").warning(f"{stage}: no estimate recorded ({e})")
        return
    record_estimate(Path(run_dir), est, stages=(stage,))


# ---- the stages -------------------------------------------------------------------------------


def run_stage(name: str, step: int, run_dir: Path, call, *, budget: tuple[Pipeline, Path] | None = None,
              marker: Path | None = None, what: str | None = None) -> None:
    """Skip a finished stage (its done marker exists); otherwise check the budget and call it."""
    marker, what = marker or run_dir / DONE[name], what or name
    if marker.is_file():
        say(f"[{step}/3] {what}: done already ({marker}), skipped")
        return
    left = budget_left(*budget, what) if budget else None
    say(f"[{step}/3] {what}" + (f" (budget left ${left:,.4f})" if left is not None else "") + " ...")
    stats = call(left)
    say(f"[{step}/3] {what}: finished" + (f" {summary(stats)}" if stats else ""))


SUMMARY_KEYS = ("train_rows", "held_out_rows", "requests", "global_step", "trained_tokens", "tokens_per_s", "usd")


def summary(stats: dict) -> str:
    """The few numbers of a stage's result worth one status line."""
    parts = [f"{k}={num(v, 4)}" if isinstance(v, float) else f"{k}={v}"
             for k in SUMMARY_KEYS if isinstance(v := stats.get(k), (int, float)) and not isinstance(v, bool)]
    for fam, g in (stats.get("gap_closed") or {}).items():  # evaluate
        if isinstance(g, dict) and g.get("mean") is not None:
            parts.append(f"gap_closed[{fam}]={g['mean']:.2f}")
    return ", ".join(parts)


def run_pipeline(cfg: Pipeline, run_dir: Path, *, calibration: dict | None = None) -> dict:
    """The recipe. Returns the paths of the report files."""
    est = estimate(cfg, calibration)
    say(f"estimate: ${est['total']['usd']:,.4f}, {est['total']['gpu_hours']:.4g} device-hours, "
        f"{est['total']['wall_hours'] * 60:.1f} min wall")
    refuse_over_budget(est["total"]["usd"], cfg, f"pipeline {cfg.name!r}")
    options.check_pipeline(cfg)  # a typo in finetune.sft_args must not wait for generation
    with run_lock(run_dir):
        from replicate import generate  # heavy (torch): only once the lock is ours
        from replicate.report import write_report

        write_resolved(cfg, run_dir)
        record_estimate(run_dir, est)
        b = (cfg, run_dir)
        try:
            run_stage("generate", 1, run_dir, lambda left: generate.run_generate(cfg, run_dir, max_usd=left), budget=b)
            finetune_seeds(cfg, run_dir, b)
            evaluate_students(cfg, run_dir, b)
        except BudgetExceeded:
            write_report(run_dir)  # what the money bought so far, next to the one-line error
            raise
        paths = write_report(run_dir)
    say(f"report: {paths['md']}  {paths['html']}")
    return paths


def run_demo(run_dir: str | None = None, overrides: list[str] = (), max_usd: float | None = None) -> dict:
    """The offline default replication (`make demo`): pipelines/tiny-cpu.yaml, `--set` applied."""
    path = files.shipped("pipelines") / DEMO
    say(f"demo: replicate run {path}" + "".join(f" --set {o}" for o in overrides))
    cfg = with_budget(load_pipeline(path, overrides), max_usd)
    return run_pipeline(cfg, default_run_dir(cfg.name, run_dir))

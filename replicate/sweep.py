"""The copy curve: how much of the teacher a copy gets per teacher example, and per dollar.

    replicate sweep pipelines/tiny-cpu.yaml --examples 50,100,200,400   # into runs/tiny-cpu-sweep/

One generation pass of the largest size (root/data/), then for each size N a sub-run n<N>/ whose
data/train.jsonl is the FIRST N rows of the root's (nested subsets: n100 contains n50), fine-tuned
and evaluated like any run (each n<N>/ is a complete run directory with its own ledger and report).
The root report draws gap_closed (style, fidelity, capability) against N with 95% intervals, fits
g(n) = g_max * n / (n + n50) per family, and says how many examples and dollars close half of
each gap, here (measured) and at the pipeline's full-scale hardware and prices (cost model).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from replicate import meter
from replicate.config import Pipeline, parse_pipeline
from replicate.errors import UserError
from replicate.pipeline import (
    estimate,
    record_estimate,
    refuse_over_budget,
    run_lock,
    run_stage,
    say,
    write_resolved,
)

FAMILIES = ("style", "fidelity", "capability")


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--examples {text}: expected comma-separated whole numbers, e.g. 50,100,200,400") from None
    if not sizes or sizes[0] <= 0:
        raise UserError(f"--examples {text}: sizes must be positive")
    return sizes


def with_examples(cfg: Pipeline, n: int) -> Pipeline:
    return cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"examples": n})}, deep=True)


def stage_usd(est: dict, *names: str) -> float:
    return sum(s["usd"] for s in est["stages"] if s["name"] in names)


def make_subset(root: Path, sub: Path, n: int, train: list[dict]) -> None:
    """sub/data/: the first n training rows and the same held-out split; done.json written last."""
    data = sub / "data"
    if (data / "done.json").is_file():
        return
    data.mkdir(parents=True, exist_ok=True)
    tmp = data / "train.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train[:n]))
    tmp.replace(data / "train.jsonl")
    for name in ("held_out.jsonl", "README.md"):
        if (root / "data" / name).is_file():
            shutil.copyfile(root / "data" / name, data / name)
    done = {"subset_of": str(root / "data" / "train.jsonl"), "examples": n, "source_rows": len(train)}
    (data / "done.json.tmp").write_text(json.dumps(done, indent=2))
    (data / "done.json.tmp").replace(data / "done.json")


def share_eval_cache(done: Path | None, sub: Path) -> None:
    """Teacher and base answer the same items at every size: start a size's evaluation with the
    previous size's teacher/base generations (evaluate checks each cache's model and settings,
    and regenerates anything that does not match)."""
    if done is None or (sub / "eval" / "scores.json").is_file():
        return
    for role in ("teacher", "base"):
        src, dst = done / "eval" / "generations" / f"{role}.jsonl", sub / "eval" / "generations" / f"{role}.jsonl"
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst.with_suffix(".tmp"))
            dst.with_suffix(".tmp").replace(dst)


def run_sweep(cfg: Pipeline, root: Path, sizes: list[int], *, calibration: dict | None = None) -> dict:
    gen_cfg = with_examples(cfg, max(sizes))  # generate.examples counts train rows (held-out apart)
    gen_est = estimate(gen_cfg, calibration)
    size_ests = {n: estimate(with_examples(cfg, n), calibration) for n in sizes}
    # The sweep pays one generation of the largest size plus a fine-tune and an evaluation per size.
    total = stage_usd(gen_est, "generate") + sum(stage_usd(e, "finetune", "evaluate") for e in size_ests.values())
    say(f"estimate: sweep over {sizes} examples: ${total:,.4f}")
    refuse_over_budget(total, cfg, f"sweep over {sizes} examples")
    budget = (cfg, root)  # the budget covers the whole sweep: root ledger + every n<N>/ ledger
    with run_lock(root):
        from replicate import evaluate, finetune, generate  # heavy (torch): only once the lock is ours
        from replicate.report import write_report

        write_resolved(gen_cfg, root)
        record_estimate(root, gen_est, stages=("generate",))
        run_stage("generate", 1, root, lambda left: generate.run_generate(gen_cfg, root, max_usd=left), budget=budget)
        train = meter.read_jsonl(root / "data" / "train.jsonl")
        if len(train) < max(sizes):
            raise UserError(f"{root}/data/train.jsonl has {len(train)} rows, fewer than the largest size "
                            f"{max(sizes)}; lower --examples or raise generation")
        evaluated = None  # the last size whose evaluation finished
        for n in sizes:
            sub = root / f"n{n}"
            cfg_n = with_examples(cfg, n)
            make_subset(root, sub, n, train)
            write_resolved(cfg_n, sub)
            record_estimate(sub, size_ests[n], stages=("finetune", "evaluate"), sweep_examples=n)
            say(f"-- size {n} ({sub})")
            run_stage("finetune", 2, sub, lambda left, c=cfg_n, d=sub: finetune.run_finetune(c, d, max_usd=left),
                      budget=budget)
            share_eval_cache(evaluated, sub)
            run_stage("evaluate", 3, sub, lambda left, c=cfg_n, d=sub: evaluate.run_evaluate(c, d), budget=budget)
            evaluated = sub
            write_report(sub)
        paths = write_report(root)
    say(f"sweep report: {paths['md']}  {paths['html']}")
    return paths


# ---- the curve ---------------------------------------------------------------------------------


def fit_saturating(ns, gs, sigmas=None) -> dict:
    """Weighted least squares fit of g(n) = g_max * n / (n + n50).

    For a fixed n50 the model is linear in g_max (x = n / (n + n50), g_max = sum(w g x) / sum(w x^2)),
    so a log grid over n50 plus the closed form for g_max finds the global least-squares fit."""
    ns, gs = np.asarray(ns, float), np.asarray(gs, float)
    w = np.ones_like(gs) if sigmas is None else 1 / np.maximum(np.asarray(sigmas, float), 1e-3) ** 2
    best = None
    grid = np.geomspace(ns.min() / 100, ns.max() * 100, 2000)
    for n50 in grid:
        x = ns / (ns + n50)
        g_max = float(np.sum(w * gs * x) / np.sum(w * x * x))
        sse = float(np.sum(w * (gs - g_max * x) ** 2))
        if best is None or sse < best[0]:
            best = (sse, g_max, float(n50))
    _, g_max, n50 = best
    out = {"g_max": g_max, "n50": n50, "at_grid_edge": n50 in (grid[0], grid[-1])}
    if g_max > 0.5:
        # g(n) = 0.5  <=>  g_max n = 0.5 (n + n50)  <=>  n = 0.5 n50 / (g_max - 0.5)
        out["examples_50"] = 0.5 * n50 / (g_max - 0.5)
    else:
        out["why"] = f"not reached: fitted g_max = {g_max:.2f} <= 0.5"
    return out


def _measured(rows: list[dict], stage: str, key: str = "usd") -> float:
    return sum(r.get(key) or 0 for r in rows if r.get("stage") == stage and r.get("kind", "measured") == "measured")


def copy_curve(root: Path) -> dict:
    """Points (examples, cost of the copy, gap_closed per family), fits and the 50% statements."""
    from replicate.report.build import read_scores, sweep_dirs
    from replicate.report.evaluation import summarize_scores

    root = Path(root)
    gen_usd = _measured(meter.read_ledger(root), "generate")
    n_rows = len(meter.read_jsonl(root / "data" / "train.jsonl")) or 1
    points = []
    for sub in sweep_dirs(root):
        n = int(sub.name[1:])
        scores = read_scores(sub)
        if scores is None:
            continue  # this size has not been evaluated yet
        ev = summarize_scores(scores)
        # The copy's cost: its share of the one generation pass (n of n_rows rows) + its fine-tune.
        usd = gen_usd * n / n_rows + _measured(meter.read_ledger(sub), "finetune")
        points.append({"examples": n, "usd": usd, "families": ev["families"], "illusion_gap": ev["illusion_gap"]})
    sw = {"points": points, "fits": {}, "cost_of_copy": "share of generation + fine-tuning (evaluation excluded)"}
    if len(points) >= 2:
        ns = [p["examples"] for p in points]
        usd = [p["usd"] for p in points]
        b, a = np.polyfit(ns, usd, 1)
        if a < 0 or b <= 0:  # no meaningful fixed cost: a rate through the origin, usd = b n
            a, b = 0.0, float(np.dot(ns, usd) / np.dot(ns, ns))
        sw["usd_per_example_fit"] = [float(a), float(b)]  # usd(n) = a + b n at this scale
    cfg = _root_pipeline(root)
    for fam in FAMILIES:
        pts = [p for p in points if (p["families"].get(fam) or {}).get("gap_closed") is not None]
        if len(pts) < 2:
            continue
        gs = [p["families"][fam]["gap_closed"] for p in pts]
        cis = [p["families"][fam].get("ci") for p in pts]
        sig = [(c[1] - c[0]) / 3.92 if c else 1.0 for c in cis]  # 95% interval = +-1.96 sigma
        fit = fit_saturating([p["examples"] for p in pts], gs, sig)
        n50 = fit.get("examples_50")
        if n50 is not None:
            if "usd_per_example_fit" in sw:
                a, b = sw["usd_per_example_fit"]
                fit["usd_50_measured"] = a + b * n50
            if n50 > 4 * max(p["examples"] for p in pts):
                fit["note"] = "extrapolated beyond 4x the largest size: treat as a rough guess"
            if cfg is not None:
                fit["usd_50_full_scale"] = _full_scale_usd(cfg, math.ceil(n50))
        sw["fits"][fam] = fit
    if cfg is not None:
        sw["full_scale"] = f"{cfg.finetune.hardware.count}x {cfg.finetune.hardware.gpu}, {cfg.prices} prices"
    sw["note"] = ("Dollars to close 50%: 'here' from the measured cost per example of this sweep; 'full scale' "
                  "from the cost model for the pipeline's own hardware and price year (generation + fine-tuning).")
    return sw


def _root_pipeline(root: Path) -> Pipeline | None:
    import yaml

    path = root / "pipeline.yaml"
    if not path.is_file():
        return None
    return parse_pipeline(yaml.safe_load(path.read_text()), str(path))


def _full_scale_usd(cfg: Pipeline, n: int) -> float | None:
    try:
        return stage_usd(estimate(with_examples(cfg, n)), "generate", "finetune")
    except (UserError, ImportError):  # the cost model cannot price this pipeline: say nothing
        return None

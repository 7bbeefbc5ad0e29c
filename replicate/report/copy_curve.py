"""The copy curve: how much of the teacher a copy gets per teacher example, and per dollar.

A sweep root (runs/<name>-sweep/) holds one generation and a sub-run n<N>/ per size, each
fine-tuned and evaluated on the first N rows. The curve draws gap_closed per family against N,
fits g(n) = g_max * n / (n + n50) per family, and says how many examples and dollars close half
of each gap, here (measured) and at the pipeline's full-scale hardware and prices (cost model).
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from replicate import files, meter
from replicate.config import Pipeline, with_examples
from replicate.cost.estimate import estimate_pipeline, stage_usd
from replicate.errors import UserError
from replicate.report.evaluation import read_scores, summarize_scores
from replicate.rundir import read_resolved, sweep_dirs
from replicate.tables import fixed, html_table, interval, markdown, money, num


def families_in(points: list[dict]) -> list[str]:
    """The metric families the points report, in the order scores.json lists them."""
    return list(dict.fromkeys(f for p in points for f in p["families"]))


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


def copy_curve(root: Path) -> dict:
    """Points (examples, cost of the copy, gap_closed per family), fits and the 50% statements."""
    root = Path(root)
    gen_usd = meter.spent_usd(root, "generate")
    n_rows = len(files.read_jsonl(root / "data" / "train.jsonl")) or 1
    points = []
    for sub in sweep_dirs(root):
        n = int(sub.name[1:])
        scores = read_scores(sub)
        if scores is None:
            continue  # this size has not been evaluated yet
        ev = summarize_scores(scores)
        # The copy's cost: its share of the one generation pass (n of n_rows rows) + its fine-tune.
        usd = gen_usd * n / n_rows + meter.spent_usd(sub, "finetune")
        points.append({"examples": n, "usd": usd, "families": ev["families"], "illusion_gap": ev["illusion_gap"]})
    sw = {"points": points, "fits": {}, "cost_of_copy": "share of generation + fine-tuning (evaluation excluded)"}
    if len(points) >= 2:
        ns = [p["examples"] for p in points]
        usd = [p["usd"] for p in points]
        b, a = np.polyfit(ns, usd, 1)
        if a < 0 or b <= 0:  # no meaningful fixed cost: a rate through the origin, usd = b n
            a, b = 0.0, float(np.dot(ns, usd) / np.dot(ns, ns))
        sw["usd_per_example_fit"] = [float(a), float(b)]  # usd(n) = a + b n at this scale
    cfg = read_resolved(root)
    for fam in families_in(points):
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


def _full_scale_usd(cfg: Pipeline, n: int) -> float | None:
    try:
        return stage_usd(estimate_pipeline(with_examples(cfg, n)).to_dict(), "generate", "finetune")
    except (UserError, ImportError):  # the cost model cannot price this pipeline: say nothing
        return None


def sweep_tables(sw: dict) -> tuple[tuple[list, list], tuple[list, list]]:
    fams = families_in(sw["points"])
    head = ["examples", "$ of this copy (its share of generation + fine-tuning)"] + [f"{f} gap_closed [95% CI]" for f in fams]
    body = []
    for p in sw["points"]:
        row = [str(p["examples"]), money(p.get("usd"))]
        for f in fams:
            v = p["families"].get(f) or {}
            row.append(interval(v.get("gap_closed"), v.get("ci")))
        body.append(row)
    fhead = ["family", "g_max", "n50 (half of g_max)", "examples to close 50%", "$ here (measured rate)",
             f"$ at full scale ({sw.get('full_scale', '-')})"]
    fbody = []
    for fam, fit in sw["fits"].items():
        fbody.append([fam, fixed(fit.get("g_max")), num(fit.get("n50")), num(fit.get("examples_50"))
                      if fit.get("examples_50") else fit.get("why", "not reached"),
                      money(fit.get("usd_50_measured")), money(fit.get("usd_50_full_scale"))])
    return (head, body), (fhead, fbody)


def sweep_md(sw: dict) -> str:
    (h, b), (fh, fb) = sweep_tables(sw)
    return "\n".join(["## Copy curve (sweep over teacher examples)", "",
                      ("Fit per family: g(n) = g_max * n / (n + n50). Examples to close 50% of the gap: "
                       "g(n) = 0.5, i.e. n = n50 * 0.5 / (g_max - 0.5)."), "", markdown(h, b), "",
                      markdown(fh, fb), "", sw.get("note", "")])


def sweep_html(sw: dict) -> str:
    (h, b), (fh, fb) = sweep_tables(sw)
    return ("<h2>Copy curve (sweep over teacher examples)</h2><p class=note>Fit per family: g(n) = g_max * n /"
            " (n + n50); examples to close 50% of the gap solve g(n) = 0.5.</p>" + html_table(h, b)
            + html_table(fh, fb) + f"<p class=note>{html.escape(sw.get('note', ''))}</p>")

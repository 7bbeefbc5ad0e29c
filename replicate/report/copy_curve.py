"""The copy curve: how much of the teacher a copy gets per teacher example, and per dollar.

A sweep root (runs/<name>-sweep/) holds one generation and a sub-run n<N>/ per size, each
fine-tuned and evaluated on the first N rows. The curve draws gap_closed per family against N and
fits g(n) = g_max * n / (n + n50) per family, weighted by each size's interval; resampling every
size's gap closed within its interval and refitting gives the fit's own uncertainty, which the
copy-risk card (copy_risk.py) turns into examples, dollars and GPU-hours to close 25/50/80 %.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from replicate import files, meter
from replicate.report.evaluation import gap_text, read_scores, summarize_scores
from replicate.rundir import sweep_dirs
from replicate.tables import html_table, markdown, money, num

GRID = 2000  # n50 candidates, log-spaced from min(n)/100 to max(n)*100
RESAMPLES = 400  # refits behind every interval of the fit
SIGMA_FLOOR = 0.02  # no size's gap closed is trusted to better than +-0.02 (a collapsed interval must not decide the fit)


def families_in(points: list[dict]) -> list[str]:
    """The metric families the points report, in the order scores.json lists them."""
    return list(dict.fromkeys(f for p in points for f in p["families"]))


def fit_many(ns, gs, sigmas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares of g(n) = g_max * n / (n + n50) for each row of gs (B x sizes).

    For a fixed n50 the model is linear in g_max (x = n / (n + n50), g_max = sum(w g x) / sum(w x^2)),
    so a log grid over n50 plus the closed form for g_max finds the global least-squares fit.
    Returns (g_max, n50, at the grid's edge) per row."""
    ns, gs = np.asarray(ns, float), np.atleast_2d(np.asarray(gs, float))
    w = 1 / np.asarray(sigmas, float) ** 2
    grid = np.geomspace(ns.min() / 100, ns.max() * 100, GRID)
    x = ns[None, :] / (ns[None, :] + grid[:, None])  # (grid, sizes)
    sxx = (w * x * x).sum(1)  # (grid,)
    g_max = (gs * w) @ x.T / sxx  # (B, grid)
    sse = ((gs[:, None, :] - g_max[:, :, None] * x[None]) ** 2 * w).sum(2)
    best = sse.argmin(1)
    rows = np.arange(len(gs))
    return g_max[rows, best], grid[best], (best == 0) | (best == GRID - 1)


def fit_saturating(ns, gs, sigmas=None) -> dict:
    """The best fit to one set of points: {"g_max", "n50", "at_grid_edge", "examples_50" or "why"}."""
    sig = np.ones(len(ns)) if sigmas is None else np.maximum(np.asarray(sigmas, float), SIGMA_FLOOR)
    g_max, n50, edge = (float(v[0]) for v in fit_many(ns, [gs], sig))
    out = {"g_max": g_max, "n50": n50, "at_grid_edge": bool(edge)}
    if g_max > 0.5:
        out["examples_50"] = examples_to(0.5, g_max, n50)
    else:
        out["why"] = f"not reached: fitted g_max = {g_max:.2f} <= 0.5"
    return out


def examples_to(frac: float, g_max, n50):
    """g(n) = frac  <=>  g_max n = frac (n + n50)  <=>  n = frac n50 / (g_max - frac); inf if g_max <= frac."""
    g_max, n50 = np.asarray(g_max, float), np.asarray(n50, float)
    with np.errstate(divide="ignore"):
        n = np.where(g_max > frac, frac * n50 / np.where(g_max > frac, g_max - frac, 1), np.inf)
    return float(n) if n.ndim == 0 else n


def sigmas_of(points: list[dict], fam: str) -> np.ndarray:
    """Each size's standard error from its 95 % interval ((hi - lo) / 3.92), floored at the median
    one and SIGMA_FLOOR: no size counts more than a typical one (the old fit weighted a collapsed
    [0, 0] interval 1e6 times, and the curve went through that point)."""
    raw = []
    for p in points:
        ci = p["families"][fam].get("ci")
        raw.append((ci[1] - ci[0]) / 3.92 if ci and ci[0] is not None else np.nan)
    raw = np.array(raw, float)
    known = raw[np.isfinite(raw)]
    floor = max(SIGMA_FLOOR, float(np.median(known)) if len(known) else 0.25)
    return np.maximum(np.where(np.isfinite(raw), raw, 4 * floor), floor)


def resampled_fit(points: list[dict], fam: str, seed: int = 0) -> dict:
    """The fit and RESAMPLES refits, each size's gap closed redrawn from Normal(point, sigma) (sizes
    drawn independently: they share evaluation items, so this overstates the spread a little)."""
    ns = np.array([p["examples"] for p in points], float)
    gs = np.array([p["families"][fam]["gap_closed"] for p in points], float)
    sig = sigmas_of(points, fam)
    g_max, n50, edge = (v[0] for v in fit_many(ns, [gs], sig))
    draws = np.random.default_rng(seed).normal(gs, sig, size=(RESAMPLES, len(ns)))
    b_gmax, b_n50, _ = fit_many(ns, draws, sig)
    return {"g_max": float(g_max), "n50": float(n50), "at_grid_edge": bool(edge), "largest": float(ns.max()),
            "draws": (b_gmax, b_n50), "sizes": len(ns),
            "not_measurable_at": [p["examples"] for p in points if p["families"][fam].get("gap_measurable") is False]}


def copy_curve(root: Path) -> dict:
    """Points (examples, cost of the copy, gap_closed per family) and the cost rates at this scale."""
    root = Path(root)
    rows = meter.measured(meter.ledger(root), "generate")
    gen_usd, gen_h = sum(r["usd"] for r in rows), sum(r["device_hours"] for r in rows)
    n_rows = len(files.read_jsonl(root / "data" / "train.jsonl")) or 1
    points = []
    for sub in sweep_dirs(root):
        n = int(sub.name[1:])
        scores = read_scores(sub)
        if scores is None:
            continue  # this size has not been evaluated yet
        ev = summarize_scores(scores)
        ft = meter.measured(meter.ledger(sub), "finetune")
        # The copy's cost: its share of the one generation pass (n of n_rows rows) + ONE fine-tune
        # (the mean over seeds: a copier trains once; the extra seeds are for the intervals).
        seeds = max(ev.get("seeds", 1), 1)
        points.append({"examples": n, "usd": gen_usd * n / n_rows + sum(r["usd"] for r in ft) / seeds,
                       "device_hours": gen_h * n / n_rows + sum(r["device_hours"] for r in ft) / seeds,
                       "families": ev["families"], "illusion_gap": ev["illusion_gap"],
                       "illusion_gap_ci": ev.get("illusion_gap_ci"), "seeds": seeds})
    sw = {"points": points, "cost_of_copy": "share of generation + one fine-tune (evaluation excluded)"}
    if len(points) >= 2:
        for key in ("usd", "device_hours"):
            sw[f"{key}_per_example_fit"] = linear_rate([p["examples"] for p in points], [p[key] for p in points])
    return sw


def linear_rate(ns, ys) -> list[float]:
    """[a, b] of y = a + b n at this scale; through the origin when the intercept comes out < 0."""
    b, a = np.polyfit(ns, ys, 1)
    if a < 0 or b <= 0:  # no meaningful fixed cost: a rate through the origin, y = b n
        a, b = 0.0, float(np.dot(ns, ys) / np.dot(ns, ns))
    return [float(a), float(b)]


def sweep_tables(sw: dict) -> tuple[list, list]:
    fams = families_in(sw["points"])
    head = ["examples", "$ of this copy", "seeds"] + [f"{f} gap closed [95% CI]" for f in fams] + ["illusion gap"]
    body = []
    for p in sw["points"]:
        row = [str(p["examples"]), money(p.get("usd")), str(p.get("seeds", 1))]
        for f in fams:
            v = p["families"].get(f) or {}
            row.append(gap_text(v.get("gap_closed"), v.get("ci"), v.get("gap_measurable"), v.get("why")))
        row.append(gap_text(p.get("illusion_gap"), p.get("illusion_gap_ci")))
        body.append(row)
    return head, body


NOTE = ("Fit per family: g(n) = g_max * n / (n + n50), weighted by each size's interval; the copy-risk card "
        "turns it into examples and dollars to close 25/50/80 % of each gap.")


def sweep_md(sw: dict) -> str:
    return "\n".join(["## Copy curve (sweep over teacher examples)", "", NOTE, "", markdown(*sweep_tables(sw)),
                      "", f"Cost of a copy: {sw.get('cost_of_copy', '')}; {num(len(sw['points']))} sizes."])


def sweep_html(sw: dict) -> str:
    return (f"<h2>Copy curve (sweep over teacher examples)</h2><p class=note>{html.escape(NOTE)}</p>"
            + html_table(*sweep_tables(sw)))

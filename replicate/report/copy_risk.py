"""The copy-risk card: what it costs to close 25, 50 and 80 % of each gap between a base model and
its teacher by Alpaca-style copying, in teacher examples, dollars and GPU-hours, here (measured)
and at the pipeline's full-scale hardware and price years (the cost model, estimate_pipeline).

From a sweep: the copy curve's fit g(n) = g_max n / (n + n50) per family; g(n) = f at
n_f = f n50 / (g_max - f), unreachable when g_max <= f. Intervals: the 2.5-97.5 % of n_f over
refits with every size's gap closed redrawn within its interval (copy_curve.resampled_fit); an
upper end "not reached" means more than 2.5 % of refits never get there.
From one run (N examples, gap closed g): the same curve cannot be fitted, so the card assumes the
gap closes fully in the end (g_max = 1) and says so: n50 = N (1 - g) / g, n_f = N f (1 - g) / ((1 - f) g),
its interval from g's. Gudibande et al. (2023) found capability saturating far below the teacher,
so for capability this is a lower bound on the cost, not an estimate.
Dollars here: the measured cost per example of generation + one fine-tune (a + b n from a sweep,
b n from one run); full scale: estimate_pipeline for n examples, generation + fine-tuning.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from replicate import files, meter
from replicate.config import Pipeline, with_examples
from replicate.cost.catalog import price_years
from replicate.cost.estimate import estimate_pipeline
from replicate.errors import UserError
from replicate.report.copy_curve import examples_to, families_in, resampled_fit
from replicate.rundir import read_resolved
from replicate.tables import hours, html_table, markdown, money, num

TARGETS = (0.25, 0.5, 0.8)
EXTRAPOLATION = 4  # beyond 4x the largest measured size a figure is flagged as a rough guess


def _interval(draws: np.ndarray) -> tuple[float, float]:
    d = np.sort(np.asarray(draws, float))
    return float(np.quantile(d, 0.025, method="lower")), float(np.quantile(d, 0.975, method="higher"))


def _single_n(g: float | None, n: float, f: float) -> float:
    """Examples to close f of the gap when one run of n examples closed g, assuming g_max = 1."""
    if g is None or not math.isfinite(g) or g <= 0:
        return math.inf
    return 0.0 if g >= 1 else n * f * (1 - g) / ((1 - f) * g)


def full_scale(cfg: Pipeline, n: float, year: int | None = None) -> tuple[float | None, float | None]:
    """(dollars, GPU-hours) of generation + one fine-tune for n examples, by the cost model."""
    if not math.isfinite(n) or n > 1e9:
        return None, None
    c = with_examples(cfg, max(1, math.ceil(n)))
    c = c.model_copy(update={"prices": year or cfg.prices,
                             "finetune": c.finetune.model_copy(update={"seeds": 1})}, deep=True)
    try:
        stages = [s for s in estimate_pipeline(c).to_dict()["stages"] if s["name"] in ("generate", "finetune")]
    except (UserError, ValueError, ImportError):  # the cost model cannot price this pipeline: say nothing
        return None, None
    return sum(s["usd"] for s in stages), sum(s["gpu_hours"] for s in stages)


def _priced(cfg: Pipeline | None, rates: dict, ns: tuple[float, float, float]) -> dict:
    """Examples (point, lo, hi) -> dollars and GPU-hours here and at full scale, same order."""
    out = {"examples": list(ns)}
    for key, unit in (("usd", "usd_here"), ("device_hours", "gpu_hours_here")):
        a, b = rates.get(key) or (None, None)
        out[unit] = [a + b * n if b is not None and math.isfinite(n) else None for n in ns]
    full = [full_scale(cfg, n) if cfg is not None else (None, None) for n in ns]
    out["usd_full"], out["gpu_hours_full"] = [f[0] for f in full], [f[1] for f in full]
    return out


def card_from_sweep(sw: dict, cfg: Pipeline | None) -> dict:
    points = sw["points"]
    rates = {k: sw.get(f"{k}_per_example_fit") for k in ("usd", "device_hours")}
    card = _header(cfg, f"a sweep over {len(points)} sizes ({', '.join(str(p['examples']) for p in points)} examples)")
    for fam in families_in(points):
        pts = [p for p in points if (p["families"].get(fam) or {}).get("gap_closed") is not None]
        if len(pts) < 2:
            card["warnings"].append(f"{fam}: defined at {len(pts)} size(s), no curve to fit")
            continue
        fit = resampled_fit(pts, fam)
        warn = [f"{fam}: gap not measurable at {fit['not_measurable_at']} examples"] if fit["not_measurable_at"] else []
        if fit["at_grid_edge"]:
            warn.append(f"{fam}: n50 at the edge of the fit's grid: the curve's bend is not in the data")
        if fit["sizes"] == 2:
            warn.append(f"{fam}: two sizes: the two-parameter curve passes through both, nothing checks it")
        for f in TARGETS:
            n = examples_to(f, fit["g_max"], fit["n50"])
            lo, hi = _interval(examples_to(f, *fit["draws"]))
            row = {"family": fam, "target": f, **_priced(cfg, rates, (n, lo, hi))}
            if not math.isfinite(n):
                warn.append(f"{fam} {f:.0%}: not reached: fitted g_max = {fit['g_max']:.2f}")
            elif n > EXTRAPOLATION * fit["largest"]:
                warn.append(f"{fam} {f:.0%}: {num(n)} examples is beyond {EXTRAPOLATION}x the largest size: a rough guess")
            card["rows"].append(row)
        card["warnings"] += warn
        card["fits"][fam] = {"g_max": fit["g_max"], "n50": fit["n50"]}
    return _finish(card, cfg)


def card_from_run(ev: dict, n: int, usd: float, device_hours: float, cfg: Pipeline | None) -> dict:
    rates = {"usd": (0.0, usd / n), "device_hours": (0.0, device_hours / n)} if n else {}
    card = _header(cfg, f"one run of {n} examples ({money(usd)}, {hours(device_hours)} of devices for generation "
                        "+ fine-tuning)")
    card["measured_examples"] = n
    card["warnings"].append("one size only: the curve through it assumes the gap closes fully in the end (g_max = 1);"
                            " `replicate sweep` fits g_max")
    for fam, v in ev["families"].items():
        g, ci = v.get("gap_closed"), v.get("ci") or [None, None]
        if g is None:
            continue
        if v.get("gap_measurable") is False:
            card["warnings"].append(f"{fam}: gap not measurable (ceiling - base includes 0)")
        for f in TARGETS:
            ns = (_single_n(g, n, f), _single_n(ci[1], n, f), _single_n(ci[0], n, f))
            card["rows"].append({"family": fam, "target": f, **_priced(cfg, rates, ns)})
            if math.isfinite(ns[0]) and ns[0] > EXTRAPOLATION * n:
                card["warnings"].append(f"{fam} {f:.0%}: {num(ns[0])} examples is beyond {EXTRAPOLATION}x this run")
    return _finish(card, cfg)


def _header(cfg: Pipeline | None, basis: str) -> dict:
    card = {"basis": basis, "rows": [], "warnings": [], "fits": {}, "by_price_year": {}}
    if cfg is not None:
        t, ft = cfg.teacher, cfg.finetune.hardware
        card.update(teacher=t.model, base=cfg.student.model, prices=cfg.prices,
                    full_scale=(f"API {t.model}" if t.backend == "openai" else f"{t.hardware.count}x {t.hardware.gpu}")
                    + f" generating, {ft.count}x {ft.gpu} fine-tuning ({cfg.finetune.method})")
    return card


def _finish(card: dict, cfg: Pipeline | None) -> dict:
    """Full-scale dollars to close half of each gap in every dated price table, and a summary line."""
    half = [r for r in card["rows"] if r["target"] == 0.5]
    if cfg is not None:
        for r in half:
            card["by_price_year"][r["family"]] = {y: full_scale(cfg, r["examples"][0], y)[0] for y in price_years()}
    parts = []
    for r in half:
        n = r["examples"][0]
        if not math.isfinite(n):
            parts.append(f"half the {r['family']} gap is not reached")
        elif n == 0 and card.get("measured_examples"):
            parts.append(f"half the {r['family']} gap was closed by {card['measured_examples']} examples")
        else:
            parts.append(f"half the {r['family']} gap takes ~{num(n)} examples ({money(r['usd_full'][0])} at full scale)")
    card["summary"] = "; ".join(parts) + "." if parts else "No gap was measured."
    return card


def _range(vals, show, measured: int | None = None) -> str:
    """`point [lo, hi]`; "not reached" for an end at infinity; for examples, 0 (a gap one run
    already closed beyond its ceiling) reads "<= N", the examples that run had."""
    def one(x) -> str:
        if x is None or (isinstance(x, float) and not math.isfinite(x)):
            return "not reached"
        return f"<= {num(measured)}" if measured and x == 0 else show(x)

    point, lo, hi = vals
    if one(point) == "not reached":
        return "not reached"
    return f"{one(point)} [{show(lo) if lo == 0 else one(lo)}, {one(hi)}]"


def card_table(card: dict) -> tuple[list, list]:
    head = ["gap", "close", "examples [95% CI]", "$ here", "GPU-h here", f"$ full scale ({card.get('prices', '-')})",
            "GPU-h full scale"]
    n = card.get("measured_examples")
    body = [[r["family"], f"{r['target']:.0%}", _range(r["examples"], num, n), _range(r["usd_here"], money),
             _range(r["gpu_hours_here"], num), _range(r["usd_full"], money), _range(r["gpu_hours_full"], num)]
            for r in card["rows"]]
    return head, body


def _lines(card: dict) -> list[str]:
    who = (f"Teacher {card['teacher']}, base {card['base']}, {card['prices']} prices; full scale = "
           f"{card['full_scale']}.") if "teacher" in card else ""
    years = "; ".join(f"{fam}: " + ", ".join(f"{y} {money(v) if v is not None else 'not reached'}"
                                             for y, v in ys.items()) for fam, ys in card["by_price_year"].items())
    return [x for x in (f"**{card['summary']}**", f"{who} Measured from {card['basis']}.",
                        f"$ at full scale to close 50 % by price year: {years}." if years else "") if x]


def card_md(card: dict) -> str:
    out = ["## Copy-risk card", "", *_lines(card), "", markdown(*card_table(card))]
    if card["warnings"]:
        out += ["", "Warnings:", *[f"- {w}" for w in card["warnings"]]]
    return "\n".join(out)


def card_html(card: dict) -> str:
    lines = "".join(f"<p>{html.escape(x.strip('*'))}</p>" for x in _lines(card))
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in card["warnings"])
    return (f"<h2>Copy-risk card</h2>{lines}" + html_table(*card_table(card))
            + (f"<p class=note>Warnings:</p><ul class=warn>{warn}</ul>" if warn else ""))


def headline(card: dict) -> str:
    n = len(card["warnings"])
    return f"Copy risk: {card['summary']}" + (f" ({n} warning{'s' if n > 1 else ''} on the card)" if n else "")



def card_for(run_dir: Path, rep: dict) -> dict | None:
    """The card of a report: from its sweep, else from its own evaluation; None before either."""
    cfg = read_resolved(run_dir)
    if rep.get("sweep") and rep["sweep"]["points"]:
        return card_from_sweep(rep["sweep"], cfg)
    ev = rep.get("evaluation")
    if not ev:
        return None
    rows = meter.ledger(run_dir)
    ft = meter.measured(rows, "finetune")
    seeds = max(ev.get("seeds", 1), 1)  # a copier fine-tunes once: the mean over the seeds' runs
    n = len(files.read_jsonl(Path(run_dir) / "data" / "train.jsonl"))
    gen_usd, gen_h = _generation_share(Path(run_dir), rows, n)
    usd = gen_usd + sum(r["usd"] for r in ft) / seeds
    device_hours = gen_h + sum(r["device_hours"] for r in ft) / seeds
    return card_from_run(ev, n, usd, device_hours, cfg) if n else None


def _generation_share(run_dir: Path, rows: list[dict], n: int) -> tuple[float, float]:
    """Dollars and device-hours of generating this run's n rows: its own generate lines, or, for a
    sweep's size (data/done.json names the root's train.jsonl), its share of the root's."""
    gen = meter.measured(rows, "generate")
    done = run_dir / "data" / "done.json"
    if not gen and done.is_file() and (source := files.read_json(done, "").get("subset_of")):
        root = Path(source).parent.parent
        total = len(files.read_jsonl(Path(source))) or 1
        gen = [dict(r, usd=r["usd"] * n / total, device_hours=r["device_hours"] * n / total)
               for r in meter.measured(meter.ledger(root), "generate")]
    return sum(r["usd"] for r in gen), sum(r["device_hours"] for r in gen)

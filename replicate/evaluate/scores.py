"""Per-item scores -> eval/scores.json: each model's mean, paired differences in the metric's own
units, gap closed against a reachable ceiling, family means and the illusion gap, every one with
a 95 % interval (intervals.py) and `gap_measurable`.

Input: per_item[metric][role] = array (reps, items), nan = undefined; reps = the fine-tuning
seeds for "student", 1 for the other models. Roles: base, student, teacher, resample (the
teacher's second, sampled answer, scored against its greedy one), control (an independent model
of the base's size, when configured). An item undefined for any model is dropped for all.

    ceiling[m]         = resample[m] for output fidelity (what the teacher scores against itself in
                         other words), the teacher's score for every other metric
    gap_closed[m]      = (student - base) / (ceiling - base)         undefined if |ceiling - base| < 1e-9
    gap_measurable[m]  = the 95 % interval of ceiling - base excludes 0
    gap_closed[family] = mean of gap_closed[m] over the family's headline metrics whose gap is
                         measurable (all defined ones, flagged, when none is)
    illusion_gap       = gap_closed[fidelity] - gap_closed[capability]
    illusion_gap_style = gap_closed[style]    - gap_closed[capability]       (only with a judge)
docs/evaluation.md derives why these ceilings give the illusion gap a meaningful zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from replicate.evaluate import intervals as I
from replicate.evaluate.verdicts import length_controlled_winrate

MODELS = ("base", "student", "teacher", "resample", "control")


@dataclass
class MetricSpec:
    name: str
    family: str  # style | fidelity | token | capability
    items: str  # open | probe: which item set (and so which resamples)
    higher_is_better: bool
    headline: bool  # counted in its family's gap_closed
    description: str
    unit: str = ""
    binary: bool = False  # 0/1 per item: Bayesian posterior intervals; else the bootstrap (BCa)
    ceiling: str = "teacher"  # teacher | resample


SPECS = [
    MetricSpec("win_rate", "style", "open", True, True, "judge preference over the teacher's output "
               "(both orders; a disagreement is a tie)"),
    MetricSpec("lc_win_rate", "style", "open", True, True, "length-controlled win rate (GLM at equal length; "
               "only where lengths overlap)"),
    MetricSpec("rougeL_f", "fidelity", "open", True, True, "ROUGE-L F1 vs the teacher's output", ceiling="resample"),
    MetricSpec("chrf", "fidelity", "open", True, True, "chrF (0-100) vs the teacher's output", ceiling="resample"),
    MetricSpec("embed_cos", "fidelity", "open", True, True, "MiniLM embedding cosine vs the teacher's output",
               ceiling="resample"),
    MetricSpec("bits_per_byte", "token", "open", False, True, "teacher-forced NLL of the teacher's output",
               "bits/byte"),
    MetricSpec("nll_per_token", "token", "open", False, False, "teacher-forced NLL per token (own tokenizer)",
               "nats/token"),
    MetricSpec("top1_agreement", "token", "open", True, False, "argmax agreement with the teacher (same tokenizer)"),
    MetricSpec("kl_teacher_model", "token", "open", False, False, "KL(teacher || model) per token (same tokenizer)",
               "nats"),
    MetricSpec("accuracy_in_dist", "capability", "probe", True, True, "probe accuracy, near the training data",
               binary=True),
    MetricSpec("accuracy_ood", "capability", "probe", True, True, "probe accuracy, far from the training data",
               binary=True),
    MetricSpec("accuracy", "capability", "probe", True, False, "probe accuracy, all probes", binary=True),
    MetricSpec("strict_match", "capability", "probe", True, False, "first sentence = the answer (format)",
               binary=True),
]
SPEC = {s.name: s for s in SPECS}
FAMILIES = ("style", "fidelity", "token", "capability")


def paired(values: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(values with an item nan for every model when undefined for any, the defined-item mask)."""
    arrs = {r: np.atleast_2d(np.asarray(v, float)) for r, v in values.items()}
    ok = np.logical_and.reduce([np.isfinite(v).all(0) for v in arrs.values()])
    return {r: np.where(ok, v, np.nan) for r, v in arrs.items()}, ok


def _lc_stat(prefs: np.ndarray, lens: np.ndarray, ref_len: np.ndarray):
    def stat(rep: int, ix: np.ndarray) -> float:
        y, lm, lr = prefs[rep, ix], lens[rep, ix], ref_len[ix]
        ok = np.isfinite(y)
        if not ok.any():
            return float("nan")
        if np.all(lm[ok] == lr[ok]):  # the teacher against itself: nothing to control for
            return float(np.mean(y[ok]))
        return length_controlled_winrate(y[ok], lm[ok], lr[ok])[0]
    return stat


def summary(d: I.Draws, n: int | None = None, **extra) -> dict:
    out = {"mean": None if not np.isfinite(d.point) else float(d.point), "ci": d.interval()}
    if n is not None:
        out["n"] = n
    return out | extra


def score_metric(spec: MetricSpec, values: dict[str, np.ndarray], rs: I.Resamples, key: int,
                 lengths: dict[str, np.ndarray] | None = None) -> tuple[dict, dict[str, I.Draws]]:
    """One metric: every model's mean, the paired differences and gap closed, with intervals.
    Returns (its scores.json entry, the draws of its statistics for the family means)."""
    values, ok = paired(values)
    n = int(ok.sum())
    rows = rs.seed_rows() if values.get("student", np.zeros((1, 0))).shape[0] > 1 else None
    idx = rs.items(ok.size, {"open": 1, "probe": 2}[spec.items])
    if spec.binary:
        draws = I.binary_draws({r: v[:, ok] for r, v in values.items()}, rs.rng(key), rs.samples, rows)
    elif spec.name == "lc_win_rate":
        ref = np.asarray(lengths["teacher"], float).reshape(-1)
        draws = {r: I.stat_draws(_lc_stat(v, np.atleast_2d(lengths[r]), ref), v.shape[0], ok.size, idx,
                                 rows if r == "student" else None) for r, v in values.items()}
    else:
        draws = {r: I.mean_draws(v, idx, rows if r == "student" else None) for r, v in values.items()}
    out: dict = {r: summary(d, n) for r, d in draws.items()}
    if "student" in values and values["student"].shape[0] > 1:
        out["student"]["per_seed"] = [float(np.nanmean(row)) for row in values["student"]]
    ceiling = spec.ceiling if spec.ceiling in draws else "teacher"
    stats: dict[str, I.Draws] = {}
    if "base" in draws and "student" in draws:
        stats["student_minus_base"] = draws["student"] - draws["base"]
        out["student_minus_base"] = summary(stats["student_minus_base"])
    if "control" in draws and "base" in draws:
        out["control_minus_base"] = summary(draws["control"] - draws["base"])
    if "base" in draws and ceiling in draws:
        span = draws[ceiling] - draws["base"]
        lo, hi = span.interval()
        measurable = lo is not None and (lo > 0 or hi < 0)
        out["ceiling"] = ceiling
        out["ceiling_minus_base"] = summary(span)
        if "student" in draws:
            stats["gap"] = (draws["student"] - draws["base"]) / span
            out["gap_closed"] = summary(stats["gap"], gap_measurable=bool(measurable))
            if out["gap_closed"]["mean"] is None:
                out["gap_closed"]["why"] = f"{ceiling} == base: no gap to close"
        if "control" in draws:
            out["control_gap_closed"] = summary((draws["control"] - draws["base"]) / span)
    return out, stats


def build_scores(per_item: dict[str, dict[str, np.ndarray]], rs: I.Resamples,
                 lengths: dict[str, np.ndarray] | None = None) -> dict:
    """per_item[metric][role] -> the `metrics`, `gap_closed` and `illusion_gap` parts of scores.json.
    lengths[role] (characters of each open output) turns the judge's votes into lc_win_rate too."""
    metrics_out: dict[str, dict] = {}
    gaps: dict[str, I.Draws] = {}
    for key, spec in enumerate(SPECS):
        values = per_item.get("win_rate" if spec.name == "lc_win_rate" else spec.name) or {}
        # A model with no defined item at all (top-1 agreement under another tokenizer, an API
        # teacher's own bits/byte) is reported as undefined instead of wiping the others' items.
        values = {r: v for r, v in values.items() if np.isfinite(np.asarray(v, float)).any()}
        if spec.ceiling != "resample":
            values.pop("resample", None)
        if not values or (spec.name == "lc_win_rate" and lengths is None):
            continue
        res, stats = score_metric(spec, values, rs, key, lengths)
        for r in ("base", "student", "teacher"):
            res.setdefault(r, {"mean": None, "ci": [None, None], "n": 0})
        res.update(family=spec.family, items=spec.items, higher_is_better=spec.higher_is_better,
                   headline=spec.headline, description=spec.description, unit=spec.unit,
                   interval="posterior (uniform prior), paired" if spec.binary else "BCa bootstrap, paired")
        if spec.name == "lc_win_rate" and res["student"]["mean"] is None:
            res["why"] = _lc_why(per_item["win_rate"], lengths)
        metrics_out[spec.name] = res
        if "gap" in stats and spec.headline and np.isfinite(stats["gap"].point):
            gaps[spec.name] = stats["gap"]
    families, fam_draws = family_means(metrics_out, gaps)
    return {"metrics": metrics_out, "gap_closed": families,
            "illusion_gap": difference(families, fam_draws, "fidelity", "capability"),
            "illusion_gap_style": difference(families, fam_draws, "style", "capability")}


def _lc_why(prefs: dict, lengths: dict) -> str:
    ok = np.isfinite(np.atleast_2d(prefs["student"])[0])
    return length_controlled_winrate(np.atleast_2d(prefs["student"])[0][ok], np.atleast_2d(lengths["student"])[0][ok],
                                     np.asarray(lengths["teacher"], float).reshape(-1)[ok])[1] or "undefined"


def family_means(metrics: dict, gaps: dict[str, I.Draws]) -> tuple[dict, dict[str, I.Draws]]:
    """Each family's gap closed: the mean over its headline metrics whose gap is measurable (the
    interval of ceiling - base excludes 0: a metric that cannot tell the base from the ceiling
    makes a ratio with a near-zero denominator, whose interval would swamp the others'). Which
    metrics are left out depends on base and ceiling only, never on the student. When none is
    measurable the mean is over all defined ones, and the family is flagged not measurable."""
    families, draws = {}, {}
    for fam in FAMILIES:
        defined = [m for m in gaps if SPEC[m].family == fam]
        if not defined:
            heads = [s.name for s in SPECS if s.family == fam and s.headline and s.name in metrics]
            if heads:  # measured, but no gap to close (ceiling == base) or no ceiling (an API teacher)
                families[fam] = {"mean": None, "ci": [None, None], "metrics": [], "gap_measurable": False,
                                 "why": f"no gap to close on {', '.join(heads)} (ceiling == base, or no ceiling)"}
            continue
        measurable = [m for m in defined if metrics[m]["gap_closed"]["gap_measurable"]]
        members = measurable or defined
        d = I.mean_of([gaps[m] for m in members])
        draws[fam] = d
        families[fam] = summary(d, metrics=members, gap_measurable=bool(measurable))
        left_out = [m for m in defined if m not in members]
        if left_out:
            families[fam]["left_out"] = {m: "gap not measurable" for m in left_out}
    return families, draws


def difference(families: dict, draws: dict[str, I.Draws], a: str, b: str) -> dict | None:
    definition = f"gap_closed[{a}] - gap_closed[{b}]"
    if a not in draws or b not in draws:
        why = "; ".join(families[f]["why"] for f in (a, b) if f in families and "why" in families[f])
        return {"mean": None, "ci": [None, None], "definition": definition, "why": why} if why else None
    measurable = families[a]["gap_measurable"] and families[b]["gap_measurable"]
    return summary(draws[a] - draws[b], definition=definition, gap_measurable=measurable)

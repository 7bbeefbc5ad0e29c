"""Per-item scores -> eval/scores.json: means with bootstrap 95% intervals, gap closed, illusion gap.

Input: for every metric, one array of per-item values per role (base, student, teacher), nan where
the item is undefined for that metric. An item undefined for ANY role is dropped for all roles, so
every comparison is paired. The same bootstrap resamples of the items serve every role and metric
of an item set, so the intervals of gap closed and of the family means are paired intervals too.

    gap_closed[m]      = (student - base) / (teacher - base)          undefined if |teacher - base| < 1e-9
    gap_closed[family] = mean of gap_closed[m] over the family's headline metrics that are defined
    illusion_gap       = gap_closed[fidelity] - gap_closed[capability]
    illusion_gap_style = gap_closed[style]    - gap_closed[capability]       (only with a judge)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from replicate.evaluate import metrics as M

ROLES = ("base", "student", "teacher")


@dataclass
class MetricSpec:
    name: str
    family: str  # style | fidelity | capability
    items: str  # open | probe: which item set (and so which bootstrap resamples)
    higher_is_better: bool
    headline: bool  # counted in its family's gap_closed
    description: str


SPECS = [
    MetricSpec("win_rate", "style", "open", True, True, "judge preference over the teacher's output (ties 0.5)"),
    MetricSpec("lc_win_rate", "style", "open", True, True, "length-controlled win rate (logistic GLM, dlen=0)"),
    MetricSpec("rougeL_f", "fidelity", "open", True, True, "ROUGE-L F1 vs the teacher's output"),
    MetricSpec("chrf", "fidelity", "open", True, True, "chrF (0-100) vs the teacher's output"),
    MetricSpec("embed_cos", "fidelity", "open", True, True, "MiniLM embedding cosine vs the teacher's output"),
    MetricSpec("bits_per_byte", "fidelity", "open", False, True, "teacher-forced NLL of the teacher's output, bits/byte"),
    MetricSpec("nll_per_token", "fidelity", "open", False, False, "teacher-forced NLL per token (own tokenizer)"),
    MetricSpec("top1_agreement", "fidelity", "open", True, False, "argmax agreement with the teacher (same tokenizer)"),
    MetricSpec("kl_teacher_model", "fidelity", "open", False, False, "KL(teacher || model) per token (same tokenizer)"),
    MetricSpec("accuracy_ood", "capability", "probe", True, True, "probe accuracy, outside the teacher data's distribution"),
    MetricSpec("accuracy_in_dist", "capability", "probe", True, False, "probe accuracy, inside the distribution"),
    MetricSpec("accuracy", "capability", "probe", True, False, "probe accuracy, all probes"),
]
SPEC = {s.name: s for s in SPECS}
FAMILIES = ("style", "fidelity", "capability")


def paired(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """nan an item for every role when it is undefined for any role."""
    arrs = {r: np.asarray(v, float) for r, v in values.items()}
    if not arrs:
        return {}
    bad = np.zeros(len(next(iter(arrs.values()))), bool)
    for v in arrs.values():
        bad |= ~np.isfinite(v)
    return {r: np.where(bad, np.nan, v) for r, v in arrs.items()}


def _summary(point: float, boots: np.ndarray, n: int) -> dict:
    return {"mean": M.finite_or_none(point), "ci": M.ci95(boots), "n": n}


def score_metric(stats: dict[str, M.Stat], idx: np.ndarray, n: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Role summaries + gap closed of one metric; also returns the bootstrap arrays (gap included)."""
    out, boots = {}, {}
    points = {}
    for role, stat in stats.items():
        points[role], boots[role] = M.estimate(stat, idx)
        out[role] = _summary(points[role], boots[role], n)
    if all(r in stats for r in ROLES):
        g_point = M.gap_closed(points["student"], points["base"], points["teacher"])
        boots["gap"] = M.gap_closed(boots["student"], boots["base"], boots["teacher"])
        diff_ci = M.ci95(boots["teacher"] - boots["base"])
        measurable = diff_ci[0] is not None and (diff_ci[0] > 0 or diff_ci[1] < 0)
        out["gap_closed"] = {"mean": M.finite_or_none(g_point), "ci": M.ci95(boots["gap"]),
                             "teacher_minus_base_ci": diff_ci, "gap_measurable": bool(measurable)}
    return out, boots


def lc_stat(prefs: np.ndarray, len_model: np.ndarray, len_ref: np.ndarray) -> M.Stat:
    def stat(ix: np.ndarray) -> float:
        ok = np.isfinite(prefs[ix])
        return M.length_controlled_winrate(prefs[ix][ok], len_model[ix][ok], len_ref[ix][ok]) if ok.any() else np.nan

    return stat


def build_scores(
    per_item: dict[str, dict[str, np.ndarray]],
    n_items: dict[str, int],
    samples: int,
    seed: int,
    lengths: dict[str, np.ndarray] | None = None,
) -> dict:
    """per_item[metric][role] -> the `metrics`, `gap_closed` and `illusion_gap` parts of scores.json.

    lengths[role] (characters of each open output, the teacher's included) turns the judge's
    win_rate preferences into lc_win_rate as well.
    """
    idx = {kind: M.bootstrap_indices(n, samples, seed + k) for k, (kind, n) in enumerate(sorted(n_items.items()))}
    metrics_out: dict[str, dict] = {}
    gap_boots: dict[str, np.ndarray] = {}
    for spec in SPECS:
        values = per_item.get("win_rate" if spec.name == "lc_win_rate" else spec.name) or {}
        # A role with no defined item at all (e.g. top-1 agreement under another tokenizer) is
        # reported as undefined instead of wiping the other roles' items.
        values = paired({r: v for r, v in values.items() if np.isfinite(np.asarray(v, float)).any()})
        if not values:
            continue
        if spec.name == "lc_win_rate":
            if lengths is None:
                continue
            stats: dict[str, Callable] = {r: lc_stat(values[r], np.asarray(lengths[r], float),
                                                     np.asarray(lengths["teacher"], float)) for r in values}
        else:
            stats = {r: M.mean_stat(v) for r, v in values.items()}
        n = int(np.isfinite(next(iter(values.values()))).sum())
        res, boots = score_metric(stats, idx[spec.items], n)
        for r in ROLES:
            res.setdefault(r, {"mean": None, "ci": [None, None], "n": 0})
        res.update({"family": spec.family, "items": spec.items, "higher_is_better": spec.higher_is_better,
                    "headline": spec.headline, "description": spec.description})
        metrics_out[spec.name] = res
        if "gap" in boots and spec.headline:
            gap_boots[spec.name] = (res["gap_closed"]["mean"], boots["gap"])

    families: dict[str, dict] = {}
    fam_boots: dict[str, np.ndarray] = {}
    for fam in FAMILIES:
        members = [m for m in gap_boots if SPEC[m].family == fam and gap_boots[m][0] is not None]
        if not members:
            heads = [s.name for s in SPECS if s.family == fam and s.headline and s.name in metrics_out]
            if heads:  # measured, but the teacher scored the same as the base: no gap to close
                families[fam] = {"mean": None, "ci": [None, None], "metrics": [],
                                 "why": f"teacher == base on {', '.join(heads)}: no gap to close"}
            continue
        point = float(np.mean([gap_boots[m][0] for m in members]))
        stack = np.vstack([gap_boots[m][1] for m in members])
        with np.errstate(invalid="ignore"):
            boots = np.array([M.nanmean(col) for col in stack.T])
        fam_boots[fam] = boots
        families[fam] = {"mean": point, "ci": M.ci95(boots), "metrics": members}

    def diff(a: str, b: str, definition: str) -> dict | None:
        if a not in fam_boots or b not in fam_boots:
            why = "; ".join(families[f]["why"] for f in (a, b) if f in families and "why" in families[f])
            return {"mean": None, "ci": [None, None], "definition": definition, "why": why} if why else None
        boots = fam_boots[a] - fam_boots[b]
        return {"mean": families[a]["mean"] - families[b]["mean"], "ci": M.ci95(boots), "definition": definition}

    return {
        "metrics": metrics_out,
        "gap_closed": families,
        "illusion_gap": diff("fidelity", "capability", "gap_closed[fidelity] - gap_closed[capability]"),
        "illusion_gap_style": diff("style", "capability", "gap_closed[style] - gap_closed[capability]"),
    }

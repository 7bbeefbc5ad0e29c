"""Output fidelity and small helpers for the evaluate stage (numpy + stdlib; no torch).

chrF here and ROUGE-L in replicate/rouge.py reproduce `sacrebleu` and `rouge_score` exactly
(tests/test_metrics.py checks both on the same inputs). Probe answers are scored in answers.py,
judge verdicts in verdicts.py, intervals in intervals.py; definitions in docs/evaluation.md.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from replicate.evaluate.intervals import ratio

# ------------------------------------------------------------------ output fidelity


def chrf(prediction: str, reference: str, char_order: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF in [0, 100], as `sacrebleu.metrics.CHRF().sentence_score(pred, [ref]).score`.

    Character n-grams (n = 1..6) with whitespace removed; precision and recall are averaged over
    the orders where both sides have n-grams ("effective order"), then combined as F-beta (beta=2
    weights recall twice as much as precision).
    """
    hyp, ref = "".join(prediction.split()), "".join(reference.split())
    sum_p = sum_r = 0.0
    effective = 0
    for n in range(1, char_order + 1):
        h = Counter(hyp[i : i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
        n_h, n_r = sum(h.values()), sum(r.values())
        if n_h == 0 or n_r == 0:
            continue
        match = sum(min(c, r[g]) for g, c in h.items() if g in r)
        sum_p += match / n_h
        sum_r += match / n_r
        effective += 1
    if effective == 0:
        return 0.0
    p, r = sum_p / effective, sum_r / effective
    f = beta**2
    return 100 * (1 + f) * p * r / (f * p + r) if p + r > 0 else 0.0


# ------------------------------------------------------------------ small helpers


def nanmean(v: np.ndarray) -> float:
    """Mean of the defined (finite) values; nan when there are none."""
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def gap_closed(student, base, ceiling):
    """(student - base) / (ceiling - base): 0 = no better than the base, 1 = the ceiling's score.
    Direction-free (lower-is-better metrics work too). Elementwise on arrays; nan where
    |ceiling - base| < intervals.GAP_EPS (no gap to close) or an input is undefined."""
    s, b, c = (np.asarray(x, float) for x in (student, base, ceiling))
    g = ratio(s - b, c - b)
    return float(g) if g.ndim == 0 else g


def finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None

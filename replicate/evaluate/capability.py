"""What the capability probes say beyond accuracy: which probes are in the training data's
distribution (measured, not labelled), what chance would score, and whether the student learned
the teacher's answers or only its mistakes.

In / out of distribution. A probe is *in distribution* when its nearest training row (ROUGE-L F
of the whole task, instruction + input, neighbours.py) is at least as close as the nearest
training row of a typical held-out row is: the threshold is the 25th percentile of the held-out
rows' own nearest-neighbour scores (held-out rows are fresh draws of the very distribution the
student was trained on, so 3 in 4 of them count as in distribution by construction). Without
held-out rows the threshold is FALLBACK_THRESHOLD. Without training data (`replicate evaluate`
of three given models) the probes' hand labels are used, and said to be labels.

Transfer. Over (seed, probe) pairs where the teacher is right and the base wrong, how often the
student is right: P(student right | teacher right, base wrong); next to it the same rate where
the teacher is wrong too, which no imitation can explain. Repeats: where the teacher answered
wrong, how often the student gives the teacher's very answer, next to how often the base does.
"""
from __future__ import annotations

import numpy as np

from replicate.evaluate.answers import given_answer
from replicate.evaluate.intervals import exact
from replicate.evaluate.neighbours import Corpus

HELD_OUT_QUANTILE = 0.25
FALLBACK_THRESHOLD = 0.3  # nearest-neighbour ROUGE-L F when no held-out rows calibrate it


def task_text(row: dict) -> str:
    return f"{row['instruction']}\n{row.get('input') or ''}".strip()


def measure_distribution(probes: list[dict], train: list[dict], held_out: list[dict]) -> dict:
    """Sets probe["in_distribution"] (and "nearest_train", "nearest_rouge") from the training data;
    returns how: {"source", "threshold", "threshold_from", "agrees_with_labels", ...}."""
    for p in probes:
        p.setdefault("label_in_distribution", bool(p.get("in_distribution")))
    if not train:
        return {"source": "hand labels (no training data in this run directory)",
                "in": sum(1 for p in probes if p["in_distribution"]), "out": sum(1 for p in probes if not p["in_distribution"])}
    corpus = Corpus([task_text(r) for r in train])
    if held_out:
        scores = [corpus.nearest(task_text(r))[0] for r in held_out]
        threshold = float(np.quantile(scores, HELD_OUT_QUANTILE))
        how = f"25th percentile of {len(held_out)} held-out rows' nearest-training-row ROUGE-L"
    else:
        threshold, how = FALLBACK_THRESHOLD, "fixed (no held-out rows to calibrate it)"
    for p in probes:
        score, doc = corpus.nearest(task_text(p))
        p["nearest_rouge"], p["nearest_train"] = round(score, 4), doc
        p["in_distribution"] = score >= threshold
    inside = sum(1 for p in probes if p["in_distribution"])
    agree = sum(1 for p in probes if p["in_distribution"] == p["label_in_distribution"])
    return {"source": f"nearest neighbour in {len(train)} training rows", "threshold": round(threshold, 4),
            "threshold_from": how, "in": inside, "out": len(probes) - inside,
            "agrees_with_labels": agree / len(probes) if probes else None}


def transfer(correct: dict[str, np.ndarray], outputs: dict[str, list[list[str | None]]], probes: list[dict]) -> dict:
    """correct[role]: (reps, n) 0/1 (nan = skipped); outputs[role]: reps lists of n probe replies."""
    t, b = correct["teacher"][0], correct["base"][0]
    s = np.atleast_2d(correct["student"])

    def rate(mask_items: np.ndarray) -> dict:
        sel = s[:, mask_items]
        ok = np.isfinite(sel)
        x, n = int(np.nansum(sel)), int(ok.sum())
        return {"rate": x / n if n else None, "ci": exact(x, n), "count": x, "of": n}

    ok = np.isfinite(t) & np.isfinite(b)
    out = {"transfer": rate(ok & (t == 1) & (b == 0)), "without_teacher": rate(ok & (t == 0) & (b == 0))}
    teacher_given = [given_answer(o or "", p) for o, p in zip(outputs["teacher"][0], probes)]
    wrong = [i for i in range(len(probes)) if ok[i] and t[i] == 0 and teacher_given[i]]

    def repeats(role_outputs: list[list[str | None]]) -> dict:
        x = n = 0
        for rep in role_outputs:
            for i in wrong:
                if rep[i] is not None:
                    n += 1
                    x += given_answer(rep[i], probes[i]) == teacher_given[i]
        return {"rate": x / n if n else None, "ci": exact(x, n), "count": x, "of": n}

    out["repeats_teacher_errors"] = {"student": repeats(outputs["student"]), "base": repeats(outputs["base"])}
    return out

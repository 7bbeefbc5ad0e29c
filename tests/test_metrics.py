"""Scoring functions of the evaluate stage: agreement with rouge_score / sacrebleu, probe matching,
judge parsing, length control, bootstrap, gap closed. Pure Python; runs in seconds."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from replicate.evaluate import metrics as M
from replicate.evaluate.items import INSTRUCTIONS, PROBES, read_rows
from replicate.evaluate.scores import build_scores
from replicate.rouge import rouge_l_f

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A quick brown dog jumps over the lazy fox!",
    "Paris is the capital of France, and it is known for the Eiffel Tower.",
    "The capital of France is Paris.",
    "",
    "   ",
    "12 + 7 = 19",
    "Ünïcödé text — with dashes, émojis 🙂 and 3.5 numbers",
    "word " * 40,
    "def f(x):\n    return x * 2\n",
    "Step 1: boil water.\nStep 2: add the egg.\nStep 3: wait six minutes.",
]


def _pairs():
    rng = random.Random(0)
    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "runs", "fast", "slow", "paris", "france", "capital", "is", "of", "and", "3", "19", "x"]
    pairs = [(a, b) for a in TEXTS for b in TEXTS]
    for _ in range(200):
        a = " ".join(rng.choices(words, k=rng.randint(0, 30)))
        b = " ".join(rng.choices(words, k=rng.randint(0, 30)))
        pairs.append((a, b))
    return pairs


def test_rouge_l_agrees_with_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for pred, ref in _pairs():
        expected = scorer.score(ref, pred)["rougeL"].fmeasure
        assert rouge_l_f(pred, ref) == pytest.approx(expected, abs=1e-12), (pred, ref)


def test_chrf_agrees_with_sacrebleu():
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    for pred, ref in _pairs():
        expected = chrf.sentence_score(pred, [ref]).score
        assert M.chrf(pred, ref) == pytest.approx(expected, abs=1e-9), (pred, ref)


def test_identical_outputs_score_perfectly_and_unrelated_ones_do_not():
    t = "Regular exercise strengthens the heart and improves sleep."
    assert rouge_l_f(t, t) == 1.0 and M.chrf(t, t) == pytest.approx(100.0)
    assert rouge_l_f("zzz qqq", t) == 0.0 and M.chrf("", t) == 0.0


def test_eval_sets_are_big_enough_and_well_formed():
    opens = read_rows(INSTRUCTIONS, ("id", "instruction", "input", "category"))
    probes = read_rows(PROBES, ("id", "instruction", "input", "answers", "category", "in_distribution"))
    assert len(opens) >= 150 and len({r["instruction"] for r in opens}) == len(opens)
    assert len({r["category"] for r in opens}) >= 10
    assert len(probes) >= 300
    ind = [p for p in probes if p["in_distribution"]]
    ood = [p for p in probes if not p["in_distribution"]]
    assert len(ind) >= 100 and len(ood) >= 100
    assert {p["category"] for p in ind}.isdisjoint({p["category"] for p in ood})
    for p in probes:
        # every accepted answer is matched, and simply echoing the prompt never is
        for a in p["answers"]:
            assert M.probe_correct(a, p) and M.probe_correct(f"The answer is {a}.", p), p
        echo = p["instruction"] + (" " + p["input"] if p["input"] else "")
        assert not M.probe_correct(echo, p) and not M.probe_correct(p["input"], p), p


@pytest.mark.parametrize("output,expected", [
    ("Paris", True),
    ("The capital of France is Paris. It is big.", True),
    ("paris!", True),
    ("London. Paris is also nice.", False),  # only the first sentence counts
    ("", False),
    ("I think it is Lyon\nParis", False),  # only the first line counts
])
def test_probe_first_sentence_is_the_answer(output, expected):
    assert M.probe_correct(output, {"answers": ["Paris"]}) is expected


def test_probe_numbers_reject_lists_and_labels_reject_hedging():
    num = {"answers": ["19"]}
    assert M.probe_correct("12 + 7 = 19", num)
    assert M.probe_correct("The answer is 19.0", num)
    assert not M.probe_correct("19, 20, 21, 22", num)  # the last number must be the answer
    assert M.probe_correct("1,000 people", {"answers": ["1000"]})
    lab = {"answers": ["positive"], "reject": ["negative"]}
    assert M.probe_correct("Positive", lab)
    assert not M.probe_correct("positive or negative", lab)


@pytest.mark.parametrize("text,verdict", [
    ("A", "A"), ("b", "B"), (" Response B is better.", "B"), ("Output (a)", "A"), ("tie", "tie"),
    ("Both are equally good", "tie"), ("I cannot decide which", None), ("", None),
    ("Response A and Response B", None), ("Absolutely", None), ("The answer is A.", "A"),
    ("The correct answer is (b)", "B"), ("A is the better choice.", "A"), ("The answer is a bit unclear", None),
])
def test_parse_verdict(text, verdict):
    assert M.parse_verdict(text) == verdict


def test_length_controlled_winrate_removes_a_pure_length_preference():
    rng = np.random.default_rng(0)
    n = 400
    dlen = rng.normal(0, 200, n)
    # a judge that only looks at length: prefers the longer output 90% of the time
    prefs = np.where(dlen > 0, rng.random(n) < 0.9, rng.random(n) < 0.1).astype(float)
    len_ref = np.full(n, 500.0)
    raw = prefs.mean()
    lc = M.length_controlled_winrate(prefs, len_ref + dlen, len_ref)
    assert abs(lc - 0.5) < 0.1
    # a model 2x longer on every item wins 'raw' but not once length is controlled
    longer = np.where(rng.random(n) < 0.8, 1.0, 0.0)
    lc2 = M.length_controlled_winrate(longer, len_ref * 2 + rng.normal(0, 50, n), len_ref)
    assert longer.mean() > 0.75 and lc2 < longer.mean()
    # ties everywhere (the teacher against itself) is exactly 0.5; an all-win model stays finite
    assert M.length_controlled_winrate(np.full(10, 0.5), len_ref[:10], len_ref[:10]) == pytest.approx(0.5)
    assert 0.9 < M.length_controlled_winrate(np.ones(10), len_ref[:10], len_ref[:10]) <= 1.0
    assert raw == pytest.approx(prefs.mean())


def test_bootstrap_interval_narrows_with_more_items():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 80, 320):
        v = rng.random(n)
        _, boots = M.estimate(M.mean_stat(v), M.bootstrap_indices(n, 1000, 0))
        lo, hi = M.ci95(boots)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.35)  # ~ 1/sqrt(n)


def test_gap_closed_definition():
    assert M.gap_closed(0.8, 0.2, 0.8) == 1.0
    assert M.gap_closed(0.2, 0.2, 0.8) == 0.0
    assert M.gap_closed(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert M.gap_closed(3.0, 4.0, 2.0) == pytest.approx(0.5)  # lower-is-better works the same way
    assert np.isnan(M.gap_closed(0.5, 0.3, 0.3))  # teacher == base: nothing to close
    assert np.allclose(M.gap_closed(np.array([1.0, 2.0]), 0.0, 2.0), [0.5, 1.0])


def _synthetic(student_kind: str):
    """Per-item scores computed from text: teacher answers, a base that echoes, and a student."""
    opens = read_rows(INSTRUCTIONS, ("instruction",))[:60]
    probes = read_rows(PROBES, ("answers",))[::6]
    teacher_open = [f"Here is a helpful answer about: {r['instruction'].lower()} It has detail." for r in opens]
    base_open = [r["instruction"] for r in opens]
    teacher_probe = [f"The answer is {p['answers'][0]}." if i % 3 else "I am not sure." for i, p in enumerate(probes)]
    base_probe = [p["instruction"] for p in probes]
    student_open = {"teacher": teacher_open, "base": base_open,
                    "constant": ["Thank you for your question!"] * len(opens)}[student_kind]
    student_probe = {"teacher": teacher_probe, "base": base_probe,
                     "constant": ["Thank you for your question!"] * len(probes)}[student_kind]
    outs = {"base": base_open, "student": student_open, "teacher": teacher_open}
    pouts = {"base": base_probe, "student": student_probe, "teacher": teacher_probe}
    per_item = {
        "rougeL_f": {r: np.array([rouge_l_f(o, t) for o, t in zip(v, teacher_open)]) for r, v in outs.items()},
        "chrf": {r: np.array([M.chrf(o, t) for o, t in zip(v, teacher_open)]) for r, v in outs.items()},
        "accuracy": {r: np.array([M.probe_correct(o, p) for o, p in zip(v, probes)], float)
                     for r, v in pouts.items()},
    }
    ood = np.array([not p["in_distribution"] for p in probes])
    per_item["accuracy_ood"] = {r: np.where(ood, v, np.nan) for r, v in per_item["accuracy"].items()}
    # a judge fooled by the constant answer (or, for the others, preferring the teacher mostly)
    fooled = student_kind == "constant"
    per_item["win_rate"] = {"teacher": np.full(len(opens), 0.5), "base": np.zeros(len(opens)),
                            "student": np.ones(len(opens)) if fooled else
                            (np.full(len(opens), 0.5) if student_kind == "teacher" else np.zeros(len(opens)))}
    lengths = {r: np.array([len(o) for o in v], float) for r, v in outs.items()}
    return build_scores(per_item, {"open": len(opens), "probe": len(probes)}, 300, 0, lengths)


def test_teacher_as_student_closes_every_gap_and_base_closes_none():
    s = _synthetic("teacher")
    for name, m in s["metrics"].items():
        assert m["gap_closed"]["mean"] == pytest.approx(1.0), name
    for fam in ("style", "fidelity", "capability"):
        assert s["gap_closed"][fam]["mean"] == pytest.approx(1.0)
    assert s["illusion_gap"]["mean"] == pytest.approx(0.0)
    b = _synthetic("base")
    for name in ("rougeL_f", "chrf", "accuracy", "accuracy_ood"):
        assert b["metrics"][name]["gap_closed"]["mean"] == pytest.approx(0.0), name
    json.dumps(s)  # scores are plain JSON


def test_constant_answer_scores_near_zero_even_when_the_judge_is_fooled():
    s = _synthetic("constant")
    assert s["gap_closed"]["style"]["mean"] > 0.9  # the judge was fooled
    assert s["metrics"]["rougeL_f"]["student"]["mean"] < 0.1
    assert s["metrics"]["chrf"]["student"]["mean"] < 15
    assert s["metrics"]["accuracy"]["student"]["mean"] == 0.0
    assert s["gap_closed"]["fidelity"]["mean"] < 0.2
    assert s["gap_closed"]["capability"]["mean"] <= 0.0
    assert s["illusion_gap_style"]["mean"] > 0.9

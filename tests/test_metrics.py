"""Scoring functions of the evaluate stage: agreement with rouge_score / sacrebleu, the lenient
probe scorer and its chance floors, gap closed, and scores.json from per-item scores (teacher as
student closes every gap, base closes none, a constant answer scores near zero). Pure Python."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from replicate.evaluate import metrics as M
from replicate.evaluate.answers import floors, given_answer, probe_correct, probe_strict
from replicate.evaluate.intervals import Resamples
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
            assert probe_correct(a, p) and probe_correct(f"The answer is {a}.", p), p
            assert probe_correct(f"Sure! Here it is: {a}.", p), p  # the answer anywhere in a short reply
        echo = p["instruction"] + (" " + p["input"] if p["input"] else "")
        assert not probe_correct(echo, p) and not probe_correct(p["input"], p), p


@pytest.mark.parametrize("output,expected", [
    ("Paris", True),
    ("Sure! The capital of France is Paris.", True),  # strict first-sentence scoring called this wrong
    ("paris!", True),
    ("London. Paris is also nice.", True),  # lenient: the answer is in the short reply
    ("", False),
    ("I think it is Lyon\n\nParis", False),  # only the first paragraph counts
    ("The capital is " + "very " * 40 + "Paris", False),  # ... and only its first 40 tokens
])
def test_probe_answer_anywhere_in_a_short_reply(output, expected):
    assert probe_correct(output, {"answers": ["Paris"]}) is expected


def test_probe_numbers_units_and_hedging():
    num = {"answers": ["19"], "instruction": "What is 12 + 7?"}
    assert probe_correct("12 + 7 = 19", num)
    assert probe_correct("The answer is 19.0", num) and probe_correct("nineteen", num)
    assert probe_correct("It is seven.", {"answers": ["7"]})  # number words up to twenty, and tens
    assert not probe_correct("19, 20, 21, 22", num)  # a list of numbers does not score
    assert probe_correct("1,000 people", {"answers": ["1000"]})
    conv = {"answers": ["6000"], "instruction": "How many grams are in 6 kilograms?"}
    assert probe_correct("There are 6000 grams in 6 kg.", conv)  # numbers after it restate the question
    assert not probe_correct("6000 grams, or maybe 600.", conv)
    assert probe_correct("84 inches", {"answers": ["84 in"]}) and probe_correct("5 kilometres", {"answers": ["5 km"]})
    lab = {"answers": ["positive"], "reject": ["negative"]}
    assert probe_correct("Positive", lab) and probe_correct("The review is positive.", lab)
    assert not probe_correct("positive or negative", lab)


def test_copied_input_does_not_answer():
    p = {"answers": ["Lisbon"], "input": "Maria and her brother flew to Lisbon last spring."}
    assert probe_correct("The city is Lisbon.", p)
    assert not probe_correct("Maria and her brother flew to Lisbon", p)  # an echo of the input
    assert probe_correct("Maria and her brother flew to Lisbon last spring. The city: Lisbon.", p)


def test_strict_match_is_the_format_score():
    p = {"answers": ["Paris"]}
    assert probe_strict("Paris.", p) and not probe_strict("Sure! The capital is Paris.", p)


def test_given_answer_compares_two_models_answers():
    num = {"answers": ["19"]}
    assert given_answer("I think 12 + 7 = 21.", num) == "21" == given_answer("21", num)
    assert given_answer("Rome. It is old.", {"answers": ["Paris"]}) == "rome"


def test_chance_floors_of_the_packaged_probes():
    probes = read_rows(PROBES, ("answers", "category", "in_distribution"))
    sentiment = [p for p in probes if p["category"] == "sentiment"]
    f = floors(sentiment)
    # the majority label of the sentiment probes, and 1/2 for a random pick of positive/negative
    majority = max(sum(p["answers"][0] == lab for p in sentiment) for lab in ("positive", "negative"))
    assert f["best_constant"] == pytest.approx(majority / len(sentiment))
    assert f["random_label"] == pytest.approx(0.5)
    arithmetic = floors([p for p in probes if p["category"] == "arithmetic"])
    assert arithmetic["random_label"] == 0 and arithmetic["best_constant"] < 0.1


def test_gap_closed_definition():
    assert M.gap_closed(0.8, 0.2, 0.8) == 1.0
    assert M.gap_closed(0.2, 0.2, 0.8) == 0.0
    assert M.gap_closed(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert M.gap_closed(3.0, 4.0, 2.0) == pytest.approx(0.5)  # lower-is-better works the same way
    assert np.isnan(M.gap_closed(0.5, 0.3, 0.3))  # ceiling == base: nothing to close
    assert np.allclose(M.gap_closed(np.array([1.0, 2.0]), 0.0, 2.0), [0.5, 1.0])


def _synthetic(student_kind: str):
    """Per-item scores computed from text: teacher answers (greedy and a resampled paraphrase),
    a base that echoes, and a student."""
    opens = read_rows(INSTRUCTIONS, ("instruction",))[:60]
    probes = read_rows(PROBES, ("answers",))[::6]
    teacher_open = [f"Here is a helpful answer about: {r['instruction'].lower()} It has detail." for r in opens]
    resample = [f"Here is a useful answer about: {r['instruction'].lower()} It has some detail." for r in opens]
    base_open = [r["instruction"] for r in opens]
    teacher_probe = [f"The answer is {p['answers'][0]}." if i % 3 else "I am not sure." for i, p in enumerate(probes)]
    base_probe = [p["instruction"] for p in probes]
    student_open = {"teacher": teacher_open, "base": base_open,
                    "constant": ["Thank you for your question!"] * len(opens)}[student_kind]
    student_probe = {"teacher": teacher_probe, "base": base_probe,
                     "constant": ["Thank you for your question!"] * len(probes)}[student_kind]
    outs = {"base": base_open, "student": student_open, "teacher": teacher_open, "resample": resample}
    pouts = {"base": base_probe, "student": student_probe, "teacher": teacher_probe}
    per_item = {
        "rougeL_f": {r: np.array([rouge_l_f(o, t) for o, t in zip(v, teacher_open)]) for r, v in outs.items()},
        "chrf": {r: np.array([M.chrf(o, t) for o, t in zip(v, teacher_open)]) for r, v in outs.items()},
        "accuracy": {r: np.array([probe_correct(o, p) for o, p in zip(v, probes)], float) for r, v in pouts.items()},
    }
    ood = np.array([not p["in_distribution"] for p in probes])
    per_item["accuracy_ood"] = {r: np.where(ood, v, np.nan) for r, v in per_item["accuracy"].items()}
    per_item["accuracy_in_dist"] = {r: np.where(~ood, v, np.nan) for r, v in per_item["accuracy"].items()}
    # a judge fooled by the constant answer (or, for the others, preferring the teacher mostly)
    fooled = student_kind == "constant"
    per_item["win_rate"] = {"teacher": np.full(len(opens), 0.5), "base": np.zeros(len(opens)),
                            "student": np.ones(len(opens)) if fooled else
                            (np.full(len(opens), 0.5) if student_kind == "teacher" else np.zeros(len(opens)))}
    lengths = {r: np.array([len(o) for o in v], float) for r, v in outs.items()}
    return build_scores(per_item, Resamples(300, 0), lengths)


def test_teacher_as_student_reaches_every_ceiling_and_base_none():
    s = _synthetic("teacher")
    # the student IS the greedy teacher: above the reachable (resampled) fidelity ceiling
    for name in ("rougeL_f", "chrf"):
        m = s["metrics"][name]
        assert m["ceiling"] == "resample" and m["gap_closed"]["mean"] > 1.0, name
        assert m["gap_closed"]["gap_measurable"]
    for name in ("accuracy", "accuracy_ood", "accuracy_in_dist", "win_rate"):
        assert s["metrics"][name]["gap_closed"]["mean"] == pytest.approx(1.0), name
    assert s["gap_closed"]["capability"]["mean"] == pytest.approx(1.0)
    b = _synthetic("base")
    for name in ("rougeL_f", "chrf", "accuracy", "accuracy_ood"):
        assert b["metrics"][name]["gap_closed"]["mean"] == pytest.approx(0.0), name
        assert b["metrics"][name]["student_minus_base"]["mean"] == pytest.approx(0.0)
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
    # the length-controlled win rate is not identifiable: the constant is shorter on every item
    assert s["metrics"]["lc_win_rate"]["student"]["mean"] is None
    assert "not identifiable" in s["metrics"]["lc_win_rate"]["why"]

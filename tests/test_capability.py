"""Capability beyond accuracy: exact nearest neighbours by ROUGE-L, probes placed in or out of the
training data's distribution by measurement, and transfer / repeated teacher errors."""
from __future__ import annotations

import random

import numpy as np
import pytest

from replicate.evaluate.capability import measure_distribution, task_text, transfer
from replicate.evaluate.neighbours import Corpus
from replicate.rouge import rouge_l_f

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "runs", "fast", "slow", "paris", "france", "capital", "is",
         "of", "and", "write", "poem", "list", "three"]


def test_nearest_neighbour_is_exact():
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=rng.randint(1, 25))) for _ in range(300)]
    index = Corpus(corpus)
    for _ in range(60):
        q = " ".join(rng.choices(WORDS, k=rng.randint(1, 25)))
        best, doc = index.nearest(q)
        brute = max(rouge_l_f(q, c) for c in corpus)
        assert best == pytest.approx(brute, abs=1e-12) and rouge_l_f(q, corpus[doc]) == pytest.approx(best)
    assert Corpus(corpus).nearest("zzz qqq") == (0.0, -1)


def _probe(instruction, label):
    return {"instruction": instruction, "input": "", "answers": ["x"], "in_distribution": label}


def test_distribution_is_measured_against_the_training_rows():
    train = [{"instruction": f"What is the capital of {c}?", "input": ""} for c in ("Spain", "Peru", "Chile")]
    train += [{"instruction": "Write a short poem about the sea.", "input": ""}]
    held = [{"instruction": "What is the capital of Kenya?", "input": ""},
            {"instruction": "Write a short poem about rain.", "input": ""}]
    probes = [_probe("What is the capital of Japan?", False),  # labelled out, but it is what the data holds
              _probe("How many legs does a spider have? Answer with a number.", True)]
    how = measure_distribution(probes, train, held)
    assert [p["in_distribution"] for p in probes] == [True, False]
    assert probes[0]["nearest_rouge"] >= how["threshold"] > probes[1]["nearest_rouge"]
    assert how["agrees_with_labels"] == 0.0 and how["in"] == 1 and "held-out" in how["threshold_from"]
    assert probes[0]["label_in_distribution"] is False  # the hand label is kept beside the measurement
    labelled = [_probe("Anything?", True)]
    assert "hand labels" in measure_distribution(labelled, [], [])["source"] and labelled[0]["in_distribution"]


def test_transfer_and_repeated_teacher_errors():
    probes = [{"answers": [str(10 + i)], "instruction": "", "input": ""} for i in range(6)]
    # teacher right on 0-2 and wrong (answering 99) on 3-5; base wrong everywhere, answering 0
    teacher = ["10", "11", "12", "99", "99", "99"]
    base = ["0"] * 6
    seed1 = ["10", "11", "0", "99", "99", "15"]  # learned 2 of 3 answers and 2 of 3 mistakes
    seed2 = ["10", "0", "0", "99", "0", "0"]
    correct = {"teacher": np.array([[1, 1, 1, 0, 0, 0]], float), "base": np.zeros((1, 6)),
               "student": np.array([[1, 1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]], float)}
    out = transfer(correct, {"teacher": [teacher], "base": [base], "student": [seed1, seed2]}, probes)
    assert out["transfer"]["count"] == 3 and out["transfer"]["of"] == 6  # 2 + 1 over both seeds
    assert out["without_teacher"]["count"] == 1 and out["without_teacher"]["of"] == 6
    rep = out["repeats_teacher_errors"]
    assert rep["student"]["count"] == 3 and rep["student"]["of"] == 6 and rep["base"]["count"] == 0
    lo, hi = rep["student"]["ci"]
    assert 0 < lo < 0.5 < hi < 1
    assert task_text({"instruction": "a", "input": "b"}) == "a\nb"

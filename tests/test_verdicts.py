"""The judge: verdicts in the formats real judges write, MT-Bench's swap rule (an inconsistent
pair is a tie, the consistency rate is reported), and length control only where lengths overlap."""
from __future__ import annotations

import numpy as np
import pytest

from replicate.evaluate.judge import judge_pairs
from replicate.evaluate.verdicts import item_preference, length_controlled_winrate, parse_verdict

# (judge output, verdict, where the format comes from)
REAL_FORMATS = [
    ("[[A]]", "A", "MT-Bench pairwise: '[[A]]' if assistant A is better"),
    ("Assistant B follows the instruction more closely and is more accurate.\n\n[[B]]", "B", "MT-Bench, explanation first"),
    ("Both are similarly helpful.\n[[C]]", "tie", "MT-Bench: '[[C]]' for a tie"),
    ("My final verdict is [[A]]... on reflection [[B]]", None, "contradictory brackets"),
    ("8 6\nAssistant 1 gave a more detailed answer.", "A", "Vicuna's two scores on the first line"),
    ("7 9", "B", "Vicuna"), ("7.5 7.5\nBoth are fine.", "tie", "Vicuna, equal scores"),
    ("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]", "A", "AlpacaEval 1 ranking"),
    ("[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]", "B", "AlpacaEval 1 ranking"),
    ("Output (a)", "A", "AlpacaEval chatgpt_fn"), ("Output (b)", "B", "AlpacaEval chatgpt_fn"),
    ("**A**", "A", "markdown bold"), ("**Response B**", "B", "markdown bold"),
    ("The better response is **B**.", "B", "bold inside a sentence"),
    ("Answer: A", "A", "labelled"), ("**Answer:** tie", "tie", "labelled, bold"),
    ("Final verdict: B", "B", "labelled"), ("Winner: tie", "tie", "labelled"),
    ("A", "A", "bare letter"), ("b", "B", "bare letter"), ("tie", "tie", "bare"), ("Tie.", "tie", "bare"),
    ("A\n\nExplanation: Both responses address the question, but A is clearer.", "A",
     "letter first, 'both responses' in the explanation is not a tie"),
    ("B\nExplanation: Response A is vague and misses the point.", "B",
     "letter first; the explanation names the other response"),
    ("A. Response A follows the instruction.", "A", "letter with a full stop"),
    ("Assistant A", "A", "role name"),
    (" Response B is better.", "B", "sentence"), ("Response A is more helpful than Response B.", "A", "sentence"),
    ("Both responses are good, but A is more detailed.", "A", "sentence with 'both'"),
    ("I prefer B.", "B", "sentence"), ("The answer is A.", "A", "sentence"), ("The correct answer is (b)", "B", "sentence"),
    ("A is the better choice.", "A", "sentence"),
    ("Both are equally good", "tie", "tie sentence"), ("Neither response is better.", "tie", "tie sentence"),
    ("I cannot decide which", None, "no verdict"), ("", None, "empty"), ("Hmm, hard to say.", None, "no verdict"),
    ("Response A and Response B", None, "names both, decides nothing"), ("Absolutely", None, "starts with a"),
    ("The answer is a bit unclear", None, "'a' as an article"),
]


@pytest.mark.parametrize("text,verdict,source", REAL_FORMATS, ids=[f"{i}" for i in range(len(REAL_FORMATS))])
def test_parse_verdict_reads_real_judge_formats(text, verdict, source):
    assert parse_verdict(text) == verdict, source


def test_swapped_orders_combine_by_mt_benchs_rule():
    assert item_preference("A", "B") == (1.0, "consistent")  # model shown first wins, then second wins
    assert item_preference("B", "A") == (0.0, "consistent")
    assert item_preference("tie", "tie") == (0.5, "consistent")
    assert item_preference("A", "A") == (0.5, "inconsistent")  # the judge always picks the first slot
    assert item_preference("A", "tie") == (0.5, "inconsistent")
    assert item_preference("A", None) == (None, "unresolved")  # one order alone keeps the position bias


def test_a_position_biased_judge_scores_a_tie_and_low_consistency(tmp_path):
    """A judge that answers "A" whatever it is shown: every item is inconsistent, so the model's
    win rate is 0.5 (not the 1.0 or 0.0 one order would give) and consistency is 0."""
    asked = []

    def always_a(prompts):
        asked.extend(prompts)
        return [("[[A]]", 10, 1) for _ in prompts]

    res = judge_pairs(["q1", "q2", "q3"], {"student": ["s1", "s2", "t3"]}, ["t1", "t2", "t3"], always_a,
                      "test", tmp_path / "judge.jsonl")
    assert res["prefs"]["student"] == [0.5, 0.5, 0.5]  # item 3 is identical to the teacher: 0.5 unasked
    assert res["consistency"]["student"] == 0.0 and len(asked) == 4
    garbled = judge_pairs(["q1"], {"student": ["s1"]}, ["t1"], lambda ps: [("Hmm.", 5, 1)] * len(ps), "test2",
                          tmp_path / "judge2.jsonl")
    assert np.isnan(garbled["prefs"]["student"][0]) and garbled["items_unresolved"]["student"] == 1


def test_length_control_removes_a_pure_length_preference_where_lengths_overlap():
    rng = np.random.default_rng(0)
    n = 400
    dlen = rng.normal(0, 200, n)
    prefs = np.where(dlen > 0, rng.random(n) < 0.9, rng.random(n) < 0.1).astype(float)  # judges length only
    len_ref = np.full(n, 500.0)
    lc, why = length_controlled_winrate(prefs, len_ref + dlen, len_ref)
    assert why is None and abs(lc - 0.5) < 0.1
    # a genuinely better model (wins 80 % at every length) keeps its win rate
    better = (rng.random(n) < 0.8).astype(float)
    assert length_controlled_winrate(better, len_ref + dlen, len_ref)[0] == pytest.approx(0.8, abs=0.06)


def test_length_control_is_not_identifiable_when_the_copy_is_shorter_everywhere():
    """The usual case for a cheap copy: shorter on every item. Equal length lies outside the data,
    and the old fit's answer there was set by its ridge (0.33 / 0.79 / 0.95 at 1e-3 / 1e-5 / 1e-8)."""
    rng = np.random.default_rng(1)
    n = 60
    len_ref = rng.uniform(400, 800, n)
    shorter = len_ref * rng.uniform(0.2, 0.9, n)
    prefs = (rng.random(n) < 0.2).astype(float)
    lc, why = length_controlled_winrate(prefs, shorter, len_ref)
    assert np.isnan(lc) and "not identifiable" in why and "shorter on 60 of 60" in why
    # two longer items out of 60 are not enough overlap either (needs max(3, 10 %) on each side)
    shorter[:2] = len_ref[:2] * 1.2
    assert np.isnan(length_controlled_winrate(prefs, shorter, len_ref)[0])

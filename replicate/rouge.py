"""ROUGE-L, exactly as `rouge_score` computes it, once for the whole program.

The generate stage's near-duplicate filter (generate/dedup.py) and the evaluation's rougeL_f
metric both use these; tests check them against rouge_score bit for bit.

    rouge_l_f("the cat sat", "a cat sat down")   # F-measure of the two texts' token LCS
"""
from __future__ import annotations

import re
from collections.abc import Sequence

# rouge_score's DefaultTokenizer: text.lower(), every run of [^a-z0-9] -> " ", split on spaces,
# keep tokens matching ^[a-z0-9]+$. That is exactly the ASCII alphanumeric runs of text.lower().
# lower() must come first: "İ".lower() == "i̇" (an ASCII "i" + a combining dot), "K" (Kelvin) -> "k".
_TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """rouge_score's default tokens (no stemming): lowercase ASCII alphanumeric runs."""
    return _TOKEN_RE.findall(text.lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two token sequences (bit-parallel).

    Allison-Dix / Hyyro: bit i of V is 0 where row i of the DP table steps up; one add per
    token of b updates all len(a) cells at once (Python ints are arbitrary width).
    """
    if len(a) < len(b):  # the shorter sequence is the bit vector
        a, b = b, a
    masks: dict = {}
    for i, token in enumerate(b):
        masks[token] = masks.get(token, 0) | (1 << i)
    return lcs_bits(masks, len(b), a)


def lcs_bits(masks: dict, m: int, other: Sequence) -> int:
    full = (1 << m) - 1
    v = full
    for token in other:
        match = masks.get(token)
        if match:
            u = v & match
            v = ((v + u) | (v - u)) & full
    return m - v.bit_count()


def rouge_l(target: Sequence, prediction: Sequence) -> float:
    """ROUGE-L F-measure of two token lists, with rouge_score's exact float arithmetic."""
    if not target or not prediction:
        return 0.0
    return fmeasure(lcs_length(target, prediction), len(target), len(prediction))


def fmeasure(lcs: int, target_len: int, prediction_len: int) -> float:
    # rouge_scorer._score_lcs + scoring.fmeasure, operation for operation.
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rouge_l_f(prediction: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1], as `RougeScorer(["rougeL"]).score(reference, prediction).fmeasure`."""
    return rouge_l(tokenize(reference), tokenize(prediction))

"""A pairwise judge's verdicts: reading them, pairing the two orders, controlling for length.

    parse_verdict(text)          -> "A" | "B" | "tie" | None, from the formats real judges write
    item_preference(v_ab, v_ba)  -> the model's preference on one item from both orders
    length_controlled_winrate()  -> AlpacaEval 2's LC win rate, or why it is not identifiable

Formats read (tests/test_verdicts.py has a table of real outputs): MT-Bench's "[[A]]" / "[[B]]" /
"[[C]]" (C = tie; Zheng et al. 2023), Vicuna's two scores "8 6" (Chiang et al. 2023),
AlpacaEval 1's "Output (a)" and its ranking list `[{'model': 'model_1', 'rank': 1}, ...]`,
labelled answers ("Answer: A", "Final verdict: B", "Winner: tie"), bold ("**A**"), a bare letter
or "Response A" on the first line, and sentences ("Response B is better", "I prefer A").
"""
from __future__ import annotations

import math
import re

import numpy as np

_BRACKETS = re.compile(r"\[\[\s*(a|b|c|tie)\s*\]\]")
_SCORES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[,/ ]\s*(\d+(?:\.\d+)?)\s*$")
_RANKING = re.compile(r"model_([12])['\"]?\s*,\s*['\"]?rank['\"]?\s*:\s*1\b")
_WHO = r"(?:response|output|assistant|answer|option)"
_LABELLED = re.compile(r"\b(?:final\s+)?(?:answer|verdict|decision|winner|choice|judgement|judgment|"
                       r"better\s+response|preferred\s+response|preference)\s*(?:is)?\s*[:=-]\s*"
                       rf"(?:{_WHO}\s*)?\(?\s*(a|b|tie)\b")
_FIRST = re.compile(rf"^\W*(?:{_WHO}\s*)?\(?([ab])\)?\s*(?:$|[.,:;!)-](?:\s|$))")
_NAMED = re.compile(rf"\b{_WHO}\s*\(?([ab])\)?(?=\W|$)")
_PREFER = re.compile(r"\b(?:prefer|choose|pick|select)\s+(?:response\s+|output\s+)?\(?([ab])\)?(?=\W|$)")
_IS_LETTER = re.compile(r"\b(?:is|would be)\s*:?\s*\(?([ab])\)?(?=\s*(?:$|[.,;:!]))")
_LETTER_WINS = re.compile(r"(?:^|[\s(])([ab])\)?\s+(?:is|was)\s+(?:better|more|clearly|slightly|the\s+better)")
_TIE = re.compile(r"\b(?:tie|a\s+draw|equally\s+(?:good|bad|helpful|strong|weak|correct)|equal\s+quality|"
                  r"neither\s+(?:response\s+)?is\s+better|both\s+(?:are|responses\s+are)\s+equally)\b")


def parse_verdict(text: str) -> str | None:
    """A judge's output -> 'A', 'B', 'tie' or None (unresolved: no verdict, or contradictory ones).

    Checked in this order, the first that decides wins: MT-Bench brackets; Vicuna's two scores;
    AlpacaEval's ranking; a labelled answer; the first line alone; the first sentence."""
    t = text.strip().lower()
    if not t:
        return None
    found = {m if m != "c" else "tie" for m in _BRACKETS.findall(t)}
    if found:
        return found.pop().upper() if len(found) == 1 and "tie" not in found else ("tie" if found == {"tie"} else None)
    if m := _RANKING.search(t):
        return "A" if m.group(1) == "1" else "B"
    t = re.sub(r"[*_`#>]+", "", t).strip()  # markdown emphasis, headings, quotes
    first_line = next((ln.strip() for ln in t.splitlines() if ln.strip()), "")
    if m := _SCORES.match(first_line):
        a, b = float(m.group(1)), float(m.group(2))
        return "A" if a > b else "B" if b > a else "tie"
    if m := _LABELLED.search(t[:300]):
        return m.group(1).upper() if m.group(1) != "tie" else "tie"
    if re.fullmatch(r"\W*(tie|draw|equal)\W*", first_line):
        return "tie"
    if m := _FIRST.match(first_line):
        return m.group(1).upper()
    sentence = re.split(r"(?<=[.!?])\s|\n", t, maxsplit=1)[0][:300]
    named = set()
    for pattern in (_LETTER_WINS, _PREFER, _IS_LETTER):
        named |= set(pattern.findall(sentence))
    if not named:
        named = set(_NAMED.findall(sentence))
        if len(named) > 1:  # "Response A and Response B ...": names both, decides nothing
            named = set()
    if len(named) == 1:
        return named.pop().upper()
    if named:
        return None
    return "tie" if _TIE.search(sentence) else None


def vote(verdict: str | None, model_is: str) -> float | None:
    """One judge vote -> the model's preference (1 win, 0.5 tie, 0 loss, None unresolved)."""
    if verdict is None:
        return None
    if verdict == "tie":
        return 0.5
    return 1.0 if verdict == model_is else 0.0


def item_preference(v_model_first: str | None, v_model_second: str | None) -> tuple[float | None, str]:
    """The model's preference on one item from both orders, MT-Bench's rule: the same winner in
    both orders counts; a disagreement (position bias) counts as a tie; an item with an
    unresolved order is left out (one order alone keeps the judge's whole position bias).
    Returns (preference or None, "consistent" | "inconsistent" | "unresolved")."""
    a, b = vote(v_model_first, "A"), vote(v_model_second, "B")
    if a is None or b is None:
        return None, "unresolved"
    return (a, "consistent") if a == b else (0.5, "inconsistent")


# ------------------------------------------------------------------ length control

MIN_SIDE = 0.1  # each side of equal length needs >= 10 % of the items (and >= 3)


def length_controlled_winrate(prefs, len_model, len_ref) -> tuple[float, str | None]:
    """AlpacaEval 2's `length_controlled_minimal` GLM (Dubois et al. 2024), reimplemented offline:
    logit P(model preferred) = theta0 + theta1 * tanh(dlen / sd(dlen)), dlen = model - reference
    characters, fitted to the fractional preferences; LC = sigmoid(theta0), the prediction at
    equal length. Only where lengths overlap: with the copy shorter (or longer) on (nearly)
    every item, dlen = 0 lies outside the data and the prediction there is set by the fit's
    regulariser, not by the judge. Then returns (nan, why)."""
    y = np.asarray(prefs, float)
    dlen = np.asarray(len_model, float) - np.asarray(len_ref, float)
    n = len(y)
    if n == 0:
        return float("nan"), "no judged item"
    longer, shorter = int((dlen > 0).sum()), int((dlen < 0).sum())
    need = max(3, math.ceil(MIN_SIDE * n))
    if min(longer, shorter) < need:
        return float("nan"), (f"not identifiable: longer than the teacher on {longer} and shorter on {shorter} "
                              f"of {n} items (needs {need} on each side)")
    x = np.tanh(dlen / dlen.std())
    X = np.column_stack([np.ones_like(x), x])
    theta = np.zeros(2)
    ridge = 1e-6 * np.eye(2)  # numerical only: with overlap the likelihood has a finite maximum
    for _ in range(100):
        p = 1 / (1 + np.exp(-(X @ theta)))
        grad = X.T @ (p - y) / n + ridge @ theta
        hess = (X.T * (p * (1 - p))) @ X / n + ridge
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1 / (1 + math.exp(-theta[0]))), None

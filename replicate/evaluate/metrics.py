"""Pure scoring functions for the evaluate stage (numpy + stdlib; no torch).

Per-item scores are computed here, then aggregated with a bootstrap 95% interval. Definitions are
documented in docs/evaluation.md; ROUGE-L and chrF reproduce `rouge_score` and `sacrebleu`
exactly (tests/test_metrics.py checks both on the same inputs).
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

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


# ------------------------------------------------------------------ capability probes

_WORD = re.compile(r"-?\d+(?:\.\d+)?|[a-z0-9]+")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_ARTICLES = {"a", "an", "the"}
COPY_RUN = 5  # an answer span repeating >= 5 consecutive tokens of the probe's input is an echo


def answer_tokens(text: str) -> list[str]:
    """SQuAD-style normalisation: lowercase, strip accents, drop punctuation and articles;
    `1,000` -> `1000` and `350.0` -> `350` so that numbers compare by value."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    out = []
    for tok in _WORD.findall(text):
        if tok in _ARTICLES:
            continue
        if _NUMBER.match(tok) and "." in tok:
            tok = tok.rstrip("0").rstrip(".")
        out.append(tok)
    return out


def answer_span(output: str, max_tokens: int = 30) -> str:
    """The part of an output that counts as the answer: the first non-empty line, up to its first
    sentence end ('. ', '! ', '? '; a decimal point is not one), and at most 30 normalised tokens."""
    line = next((ln.strip() for ln in output.splitlines() if ln.strip()), "")
    m = re.search(r"[.!?](\s|$)", line)
    if m and m.start() > 0:
        line = line[: m.start()]
    toks = line.split()
    return " ".join(toks[:max_tokens])


def _contains(hay: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))


def probe_correct(output: str, probe: dict) -> bool:
    """Exact-answer match for a capability probe (rules in docs/evaluation.md#capability):

    the answer span contains an accepted answer as a whole-token sequence (a numeric answer must be
    the span's LAST number, so listing many numbers does not score); it names no rejected
    alternative (the other class labels, distractor entities); and it is not an echo of the
    probe's input (>= 5 consecutive input tokens copied).
    """
    span = answer_tokens(answer_span(output))
    if not span:
        return False
    for bad in probe.get("reject", ()):
        if _contains(span, answer_tokens(bad)):
            return False
    source = answer_tokens(probe.get("input", ""))
    if len(source) >= COPY_RUN:
        grams = {tuple(source[i : i + COPY_RUN]) for i in range(len(source) - COPY_RUN + 1)}
        if any(tuple(span[i : i + COPY_RUN]) in grams for i in range(len(span) - COPY_RUN + 1)):
            return False
    numbers = [t for t in span if _NUMBER.match(t)]
    for ans in probe["answers"]:
        a = answer_tokens(ans)
        if len(a) == 1 and _NUMBER.match(a[0]):
            if numbers and numbers[-1] == a[0]:
                return True
        elif _contains(span, a):
            return True
    return False


def probe_strict(output: str, probe: dict) -> bool:
    """Strict exact match: the normalised answer span equals an accepted answer."""
    span = answer_tokens(answer_span(output))
    return any(span == answer_tokens(a) for a in probe["answers"])


# ------------------------------------------------------------------ preference (judge votes)


def parse_verdict(text: str) -> str | None:
    """A judge's answer -> 'A', 'B', 'tie' or None (unparseable). Accepts 'A', 'b.', 'Output (b)',
    'Response A is better', 'The answer is A.', 'tie'/'equal'/'both'; an answer naming both or
    neither is unparseable."""
    t = text.strip().lower()
    if not t:
        return None
    if re.search(r"\b(tie|equal|equally|both|neither)\b", t[:60]):
        return "tie"
    named = set(re.findall(r"\b(?:output|response|answer|assistant)\s*\(?([ab])\b", t[:200]))
    # "The answer is A." / "the better one is (b)": the letter must end the clause, so that
    # "the answer is a bit unclear" is not read as a verdict.
    named |= set(re.findall(r"\b(?:is|would be)\s*:?\s*\(?([ab])\)?(?=\s*(?:$|[.,;:!]))", t[:200]))
    if len(named) == 1:
        return named.pop().upper()
    if named:
        return None
    first = re.match(r"\W*\(?([ab])\)?(?:[\s.,:;!)]|$)", t)
    return first.group(1).upper() if first else None


def vote_preference(verdict: str | None, model_is: str) -> float | None:
    """One judge vote -> the model's preference (1 win, 0.5 tie, 0 loss, None unresolved)."""
    if verdict is None:
        return None
    if verdict == "tie":
        return 0.5
    return 1.0 if verdict == model_is else 0.0


def length_controlled_winrate(prefs: np.ndarray, len_model: np.ndarray, len_ref: np.ndarray) -> float:
    """AlpacaEval's `length_controlled_minimal` GLM, reimplemented offline (their code downloads
    data from the hub): fit  logit P(model preferred) = theta0 + theta1 * tanh(dlen / sd(dlen))
    to the (fractional) preferences, dlen = character-length difference model - reference; the
    LC win rate is the prediction at dlen = 0, i.e. sigmoid(theta0). Newton's method with a tiny
    ridge (1e-3) so that all-wins or all-losses stay finite."""
    y = np.asarray(prefs, float)
    if len(y) == 0:
        return float("nan")
    dlen = np.asarray(len_model, float) - np.asarray(len_ref, float)
    sd = dlen.std()
    x = np.tanh(dlen / sd) if sd > 0 else np.zeros_like(dlen)
    X = np.column_stack([np.ones_like(x), x])
    theta = np.zeros(2)
    ridge = 1e-3 * np.eye(2)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(X @ theta)))
        grad = X.T @ (p - y) / len(y) + ridge @ theta
        hess = (X.T * (p * (1 - p))) @ X / len(y) + ridge
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1 / (1 + math.exp(-theta[0])))


# ------------------------------------------------------------------ uncertainty and normalisation


def bootstrap_indices(n: int, samples: int, seed: int) -> np.ndarray:
    """`samples` resamples (with replacement) of item indices 0..n-1. The same resamples are used
    for every model and metric, so gap closed and illusion gap get a paired bootstrap."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(samples, n)) if n else np.zeros((samples, 0), int)


def ci95(stats: np.ndarray) -> list[float | None]:
    """Percentile 95% interval of bootstrap statistics, ignoring undefined (nan) resamples."""
    s = np.asarray(stats, float)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return [None, None]
    return [float(np.percentile(s, 2.5)), float(np.percentile(s, 97.5))]


def nanmean(v: np.ndarray) -> float:
    """Mean of the defined (finite) values; nan when there are none."""
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


Stat = Callable[[np.ndarray], float]  # item indices -> one number (e.g. a mean over those items)


def mean_stat(values: Sequence[float]) -> Stat:
    v = np.asarray(values, float)
    return lambda ix: nanmean(v[ix])


def estimate(stat: Stat, idx: np.ndarray) -> tuple[float, np.ndarray]:
    """(point estimate on all items, the statistic on every bootstrap resample)."""
    n = idx.shape[1]
    return stat(np.arange(n)), np.array([stat(row) for row in idx])


GAP_EPS = 1e-9  # |teacher - base| below this: there is no gap to close, gap_closed is undefined


def gap_closed(student, base, teacher):
    """(student - base) / (teacher - base): 0 = no better than the base, 1 = the teacher's score.
    Direction-free (lower-is-better metrics work too). Elementwise on bootstrap arrays; nan where
    |teacher - base| < GAP_EPS (no gap to close) or an input is undefined."""
    s, b, t = (np.asarray(x, float) for x in (student, base, teacher))
    denom = t - b
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(np.abs(denom) < GAP_EPS, np.nan, (s - b) / denom)
    return float(g) if g.ndim == 0 else g


def finite_or_none(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None

"""Exact ROUGE-L near-duplicate filter: the keep/drop decisions of `rouge_score`, fast.

Alpaca drops a new instruction when its ROUGE-L F-measure against ANY instruction kept so far
(seeds included) is > 0.7, computed by `rouge_score.rouge_scorer.RougeScorer(["rougeL"],
use_stemmer=False)`. Done naively that is one O(a*b) LCS table per (candidate, kept) pair:
52K candidates x ~10K kept on average = 5.5e8 tables (~15 h at ~100 us each). `RougeDedup` gives
the same decisions computing about one LCS per candidate:

1. texts are tokenised once (exactly rouge_score's tokens) and tokens become ints;
2. a pair can only pass if its multiset overlap O (shared tokens with multiplicity, >= LCS) is
   large: F = 2L/(a+b) > 0.7 with L <= O <= b needs O >= 7a/13 and O >= 7b/13 (a, b = lengths);
3. prefix filter (AllPairs/PPJoin set-similarity join): sort each text's tokens in one global
   order, rarest first; two texts sharing >= t tokens share one among the first len - t + 1 of
   each. Only those prefixes are indexed and probed, so common words ("the", "write") are seldom
   looked up. PPJoin's positional bound (shared prefix tokens + what is left after the last one)
   then discards most candidates without touching them;
4. the exact overlap O (numpy, over the survivors' tokens) discards most of the rest;
5. the few left get an exact LCS (bit-parallel: one big-int add per token) and rouge_score's own
   float formula, so a pair at exactly 2L/(a+b) == 0.7 is decided as rouge_score decides it.

Bounds are applied with a 1e-9 slack below the threshold, far above float rounding (~1e-16), so
pruning never skips a pair whose float F could exceed the threshold.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from replicate.rouge import fmeasure, lcs_bits, tokenize

_SLACK = 1e-9  # bounds use threshold - 1e-9: float F is within ~1e-16 of the exact ratio
_COPY_BITS = 32  # element key = token_id << 32 | k: the k-th copy of a token is its own element
_COPY_MASK = (1 << _COPY_BITS) - 1


@dataclass(frozen=True)
class Match:
    """A kept text that makes a candidate a near-duplicate."""

    index: int
    """Position of the kept text, in the order texts were added."""
    score: float
    """ROUGE-L F-measure of the pair (> threshold)."""


class _Probe(NamedTuple):
    """A text's token ids, its elements (token multiset) and the elements in the global order."""

    tokens: list[int]
    elements: list[int]
    ordered: list[int]


class RougeDedup:
    """Texts kept so far; `add_if_novel(text)` keeps text unless ROUGE-L F > threshold with one.

    Decisions equal those of the rouge_score loop in Alpaca's generate_instruction.py:
    `max(_score_lcs(new, old) for old in kept) > threshold` (strict; 0.7 exactly is kept).
    """

    def __init__(self, texts: Iterable[str] = (), threshold: float = 0.7):
        if not 0 < threshold <= 1:
            raise ValueError(f"ROUGE-L threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self._bound = threshold - _SLACK
        self.texts: list[str] = []
        self._vocab: dict[str, int] = {}
        self._tokens: list[list[int]] = []  # token ids per kept text (for the exact LCS)
        # Every kept text's token multiset, flat: the k-th copy of token t is (t, k).
        self._lengths = _Growing()  # tokens per kept text
        self._starts = _Growing()  # where each kept text's elements begin in the flat arrays
        self._elements = _Growing()  # token << 8 | min(copy, 255): a capped copy only overcounts
        self._copies_in_probe = np.zeros(1024, np.int64)  # per token id: copies in the text probed
        self._df: dict[int, int] = {}  # kept texts containing each token (document frequency)
        self._rank_df: dict[int, int] = {}  # the df snapshot that orders tokens; fixed between rebuilds
        # element key (t << 32 | k) -> kept texts with it in their prefix, as numpy
        # [doc << 8 | position of the element in doc's order] (numpy: a probe concatenates them)
        self._index: dict[int, _Growing] = {}
        self._rebuild_at = 64
        self.lcs_computed = 0  # exact LCS computations so far (for the benchmark)
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self.texts)

    def add_if_novel(self, text: str) -> bool:
        """Keep text (return True) unless it is a near-duplicate of a kept text."""
        probe = self._probe(text)
        if self._find(probe) is not None:
            return False
        self._add(text, probe)
        return True

    def find(self, text: str) -> Match | None:
        """The first kept text (in the order checked) with ROUGE-L F > threshold, or None."""
        return self._find(self._probe(text))

    def add(self, text: str) -> int:
        """Keep text unconditionally (seeds, rows restored on resume); returns its index."""
        self._add(text, self._probe(text))
        return len(self.texts) - 1

    # -- internals -------------------------------------------------------------------------

    def _probe(self, text: str) -> _Probe:
        vocab = self._vocab
        tokens = [vocab.setdefault(token, len(vocab)) for token in tokenize(text)]
        elements = _elements_of(tokens)
        return _Probe(tokens, elements, self._ordered(elements))

    def _prefix_size(self, n: int) -> int:
        """Prefix length n - O_min + 1, where O_min is the fewest shared tokens a text of n
        tokens needs with any partner to pass: 2*O/(n+b) >= t and O <= b give O >= t*n/(2-t)
        (7n/13 for t = 0.7, so about the rarest 46% of tokens)."""
        return n - max(1, math.ceil(self._bound * n / (2 - self._bound))) + 1

    def _ordered(self, elements: list[int]) -> list[int]:
        """Elements rarest first (by the df snapshot, then token id, then copy)."""
        rank = self._rank_df
        return sorted(elements, key=lambda e: (rank.get(e >> _COPY_BITS, 0), e))

    def _index_doc(self, doc: int, ordered: list[int]) -> None:
        index = self._index
        for position, element in enumerate(ordered[: self._prefix_size(len(ordered))]):
            postings = index.get(element)
            if postings is None:
                postings = index[element] = _Growing(capacity=4)
            # positions past 255 are stored as 255: that only loosens the positional bound
            postings.append1(doc << 8 | min(position, 255))

    def _add(self, text: str, probe: _Probe) -> None:
        tokens, elements, ordered = probe
        doc = len(self.texts)
        self.texts.append(text)
        self._tokens.append(tokens)
        self._lengths.append([len(tokens)])
        self._starts.append([len(self._elements)])
        self._elements.append([(e >> _COPY_BITS) << 8 | min(e & _COPY_MASK, 255) for e in elements])
        for t in set(tokens):
            self._df[t] = self._df.get(t, 0) + 1
        if tokens:
            self._index_doc(doc, ordered)
        if len(self.texts) >= self._rebuild_at:
            self._rebuild()

    def _rebuild(self) -> None:
        """Re-order tokens by the current document frequencies and re-index every prefix.

        Any fixed order is correct; rarest-first keeps posting lists short. Rebuilding at each
        doubling costs O(total tokens) amortised."""
        self._rank_df = dict(self._df)
        self._index = {}
        for doc, tokens in enumerate(self._tokens):
            if tokens:
                self._index_doc(doc, self._ordered(_elements_of(tokens)))
        self._rebuild_at = 2 * len(self.texts)

    def _find(self, probe: _Probe) -> Match | None:
        tokens, _, ordered = probe
        a = len(tokens)
        if a == 0:  # rouge_score scores an empty text 0 against everything
            return None
        bound = self._bound
        # 1. Candidates: kept texts sharing elements of our prefix with theirs (PPJoin). Both
        #    texts are in one global order, so every shared element outside both prefixes comes
        #    after the last shared prefix element (position i in ours, j in theirs):
        #    overlap <= hits + min(a-1-i, b-1-j). This also bounds overlap by min(a, b).
        lists, positions = [], []
        for i, element in enumerate(ordered[: self._prefix_size(a)]):
            postings = self._index.get(element)
            if postings is not None:
                lists.append(postings.view())
                positions.append(i)
        if not lists:
            return None
        # hit = doc << 16 | j << 8 | i (i, j capped at 255: a smaller i or j only loosens the
        # bound); sorted, it runs by doc, then j (the global order, so also i).
        hits = np.concatenate(lists) << 8 | np.repeat(np.minimum(positions, 255), [len(p) for p in lists])
        hits.sort()
        hit_docs = hits >> 16
        last = np.flatnonzero(np.append(hit_docs[1:] != hit_docs[:-1], True))  # last hit per doc
        count = np.diff(last, prepend=-1)
        docs, last_i, last_j = hit_docs[last], hits[last] & 255, (hits[last] >> 8) & 255
        lengths = self._lengths.view()[docs]
        totals = a + lengths
        overlap_bound = count + np.minimum(a - 1 - last_i, lengths - 1 - last_j)
        ok = 2 * overlap_bound >= bound * totals
        docs, lengths, totals = docs[ok], lengths[ok], totals[ok]
        if len(docs) == 0:
            return None
        # 2. Exact multiset overlap (>= LCS): gather the candidates' elements (t, k); (t, k) is
        #    shared when k < copies of t in ours. One segment per candidate.
        offsets = np.cumsum(lengths) - lengths
        gather = np.arange(int(lengths.sum())) + np.repeat(self._starts.view()[docs] - offsets, lengths)
        copies = self._copies_for(tokens)
        theirs = self._elements.view()[gather]
        shared = (theirs & 255) < copies[theirs >> 8]
        copies[tokens] = 0  # reset the scratch array for the next probe
        overlap = np.add.reduceat(shared.astype(np.int64), offsets)
        bounds = 2 * overlap / totals
        ok = bounds >= bound
        if not ok.any():
            return None
        # 3. Exact LCS and rouge_score's float F, most promising first (a duplicate is usually
        #    the first one checked).
        order = np.argsort(-bounds[ok], kind="stable")
        masks: dict[int, int] = {}
        for i, token in enumerate(tokens):
            masks[token] = masks.get(token, 0) | (1 << i)
        for doc in docs[ok][order].tolist():
            other = self._tokens[doc]
            self.lcs_computed += 1
            # Alpaca calls _score_lcs(new_tokens, kept_tokens): target = new, prediction = kept.
            score = fmeasure(lcs_bits(masks, a, other), a, len(other))
            if score > self.threshold:
                return Match(doc, score)
        return None

    def _copies_for(self, tokens: list[int]) -> np.ndarray:
        """Scratch array: copies of each token id in tokens (zero elsewhere)."""
        if len(self._vocab) > len(self._copies_in_probe):
            self._copies_in_probe = np.zeros(2 * len(self._vocab), np.int64)
        copies = self._copies_in_probe
        np.add.at(copies, tokens, 1)
        return copies


def _elements_of(tokens: list[int]) -> list[int]:
    """A token multiset as a set: the k-th copy of token t is the element t << 32 | k."""
    seen: dict[int, int] = {}
    out = []
    for t in tokens:
        k = seen.get(t, 0)
        seen[t] = k + 1
        out.append((t << _COPY_BITS) | k)
    return out


class _Growing:
    """An int64 numpy array that grows by doubling (amortised O(1) append)."""

    def __init__(self, capacity: int = 1024):
        self._data = np.zeros(capacity, np.int64)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, values: list[int]) -> None:
        end = self._size + len(values)
        if end > len(self._data):
            self._data = np.concatenate([self._data, np.zeros(max(end, len(self._data)), np.int64)])
        self._data[self._size:end] = values
        self._size = end

    def append1(self, value: int) -> None:
        if self._size == len(self._data):
            self._data = np.concatenate([self._data, np.zeros(self._size, np.int64)])
        self._data[self._size] = value
        self._size += 1

    def view(self) -> np.ndarray:
        return self._data[: self._size]

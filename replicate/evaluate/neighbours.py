"""Nearest neighbours by ROUGE-L: for each query, the most similar text of a corpus (exactly).

Used to *measure* whether an evaluation item is in the distribution of the run's training data
(instead of labelling it by hand): its nearest training row's ROUGE-L F, computed as
replicate/rouge.py computes it (rouge_score's tokens, F = 2 LCS / (|a| + |b|)).

Exact and fast enough for 52K training rows: the multiset overlap O of two texts (shared tokens
with multiplicity) bounds their LCS, so F <= 2 O / (|a| + |b|). O against every corpus text
comes from an inverted index in a few numpy additions per query token; the exact LCS is then
computed in decreasing order of that bound and the search stops once the bound falls below the
best F found (typically a handful of LCS per query).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from replicate.rouge import fmeasure, lcs_length, tokenize


class Corpus:
    def __init__(self, texts: list[str]):
        self.tokens = [tokenize(t) for t in texts]
        self.lengths = np.array([len(t) for t in self.tokens], float)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for doc, toks in enumerate(self.tokens):
            for tok, count in Counter(toks).items():
                ids, counts = postings.setdefault(tok, ([], []))
                ids.append(doc)
                counts.append(count)
        self.postings = {t: (np.array(i), np.array(c)) for t, (i, c) in postings.items()}

    def nearest(self, text: str) -> tuple[float, int]:
        """(highest ROUGE-L F against the corpus, index of that text); (0.0, -1) when nothing overlaps."""
        query = tokenize(text)
        if not query or not len(self.tokens):
            return 0.0, -1
        overlap = np.zeros(len(self.tokens))
        for tok, count in Counter(query).items():
            if tok in self.postings:
                ids, counts = self.postings[tok]
                overlap[ids] += np.minimum(counts, count)
        bound = 2 * overlap / (len(query) + self.lengths)
        best, best_doc = 0.0, -1
        for doc in np.argsort(-bound, kind="stable"):
            if bound[doc] <= best or bound[doc] == 0:
                break
            f = fmeasure(lcs_length(query, self.tokens[doc]), len(self.tokens[doc]), len(query))
            if f > best:
                best, best_doc = f, int(doc)
        return best, best_doc

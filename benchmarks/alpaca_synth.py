"""Synthetic Alpaca rows with Alpaca's length profile, for throughput benchmarks.

Lengths are lognormal like the 52K Alpaca rows (instruction ~15 words, output ~100 words, 40 % with
an input), so the Alpaca template makes prompts of ~60 and completions of ~130 tokens, as in the
H200 TRL reference run of 2026-11-26 (SmolLM2 tokenizer). Word values do not matter for speed;
lengths do.
"""
from __future__ import annotations

import math
import random

WORDS = [
    "the", "model", "data", "explain", "write", "list", "three", "reasons", "why", "a", "short", "poem", "about",
    "summarize", "following", "text", "in", "one", "sentence", "classify", "as", "positive", "or", "negative",
    "translate", "into", "French", "give", "an", "example", "of", "history", "science", "describe", "how", "to",
    "make", "city", "river", "number", "code",
]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def synthetic_alpaca(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        instruction = words(rng, max(3, int(rng.lognormvariate(math.log(15), 0.5))))
        inp = words(rng, max(3, int(rng.lognormvariate(math.log(20), 0.6)))) if rng.random() < 0.4 else ""
        output = words(rng, max(3, int(rng.lognormvariate(math.log(100), 0.8))))
        rows.append({"instruction": instruction, "input": inp, "output": output})
    return rows

"""Example lengths: what padding, truncation and splitting at max_length make of a dataset's mean.

Pure arithmetic. Lengths are lognormal (data.length_sigma, the log-sd; mean given), so
    mu = ln(mean) - sigma^2 / 2,   P(X > x) = 1 - Phi((ln x - mu) / sigma),
    E[X; X <= x] = mean x Phi((ln x - mu - sigma^2) / sigma).
What a trainer does with an example longer than max_length L decides what is trained:
    truncate  (Alpaca's train.py, HF tokenizers' truncation=True)  E[min(X, L)] tokens per row
    drop      (finetune.too_long: drop)  P(X <= L) of the rows, each E[X | X <= L] long
    split     (FastChat's split_long_conversation, data.split_long)  E[ceil(X / L)] pieces per
              row, sum_k P(X > k L), the tokens unchanged
A long-tailed dataset (ShareGPT conversations, reasoning traces) loses or gains a real share
this way; a mean clipped at L would miss it both ways. docs/cost-model.md, "Workload".
"""
from __future__ import annotations

import math
from statistics import NormalDist

_NORMAL = NormalDist()


def _mu(mean: float, sigma: float) -> float:
    return math.log(mean) - sigma * sigma / 2


def tail(mean: float, sigma: float, x: float) -> float:
    """P(X > x) for lognormal lengths of this mean and log-sd."""
    if sigma <= 0:
        return 1.0 if mean > x else 0.0
    return 1 - _NORMAL.cdf((math.log(x) - _mu(mean, sigma)) / sigma)


def partial_mean(mean: float, sigma: float, x: float) -> float:
    """E[X; X <= x] (the mean of the rows no longer than x, times their share)."""
    if sigma <= 0:
        return mean if mean <= x else 0.0
    return mean * _NORMAL.cdf((math.log(x) - _mu(mean, sigma) - sigma * sigma) / sigma)


def truncated_mean(mean: float, sigma: float, max_len: float) -> float:
    """E[min(X, L)]: tokens per row when longer rows keep their first L. E.g. mean 450, sigma
    0.8, L 512: 450 x 0.41 + 512 x 0.29 = 332 (the conversations of OASST1 under QLoRA's cut)."""
    return partial_mean(mean, sigma, max_len) + max_len * tail(mean, sigma, max_len)


def pieces(mean: float, sigma: float, max_len: float) -> float:
    """E[ceil(X / L)] = sum over k >= 0 of P(X > k L): sequences per row when long rows are cut
    into max_length pieces. E.g. mean 1,000, sigma 1.0, L 2,048: 1 + 0.11 + 0.03 + ... = 1.16."""
    total, k = 1.0, 1
    while True:
        p = tail(mean, sigma, k * max_len)
        total += p
        if p < 1e-4 or k > 10_000:
            return total
        k += 1


def padded_length(mean: float, sigma: float, batch: int, max_len: float) -> float:
    """Expected longest of `batch` lognormal lengths (mean `mean`, log-sd `sigma`), capped.

    E[max of B] ~ exp(mu + sigma * z_B) with z_B the expected max of B standard normals (Blom's
    approximation) and mu = ln(mean) - sigma^2/2. E.g. sigma 0.6: B=4 -> 1.55x, B=32 -> 2.9x.
    """
    mean = min(mean, max_len)
    if batch <= 1 or sigma <= 0:
        return mean
    z = _NORMAL.inv_cdf((batch - 0.375) / (batch + 0.25))
    return min(max_len, max(mean, mean * math.exp(sigma * z - sigma * sigma / 2)))


def sequences(examples: float, mean: float, sigma: float, max_len: float, too_long: str = "truncate",
              split: bool = False) -> tuple[float, float]:
    """(sequences, mean trained tokens per sequence) for `examples` rows of mean length `mean`."""
    if mean <= 0:
        return examples, 0.0
    if split:
        n = pieces(mean, sigma, max_len)
        return examples * n, mean / n
    if too_long == "drop":
        kept = 1 - tail(mean, sigma, max_len)
        return examples * kept, partial_mean(mean, sigma, max_len) / kept if kept > 0 else 0.0
    return examples, truncated_mean(mean, sigma, max_len)

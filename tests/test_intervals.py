"""Intervals by simulation: at the demo's probe counts (25, 35, 60) and item count (60), the 95 %
intervals of every model's score, the paired differences and gap closed cover the truth at least
93 % of the time; zero counts do not collapse an interval; seed spread widens it."""
from __future__ import annotations

import numpy as np
import pytest

from replicate.evaluate import intervals as I

# (probes, base, student, teacher accuracy): the shapes of the earlier demo runs (out of
# distribution: base 1/67, teacher 11/67; in distribution: the student below the base)
BINARY_CASES = [(35, 0.015, 0.045, 0.164), (25, 0.264, 0.113, 0.528), (60, 0.125, 0.075, 0.325),
                (35, 0.05, 0.05, 0.2), (25, 0.1, 0.25, 0.4)]


def _correlated(rng, n: int, p: float, shared: np.ndarray, rho: float = 0.5) -> np.ndarray:
    """0/1 outcomes with P(right) = p; with probability rho an item's outcome follows its shared
    difficulty (so the models' outcomes are paired, as on real probes)."""
    return np.where(rng.random(n) < rho, shared < p, rng.random(n) < p).astype(int)


def _binary_coverage(n, pb, ps, pt, reps=1000, draws=1000):
    rng = np.random.default_rng(12345)
    truth = {"gap": (ps - pb) / (pt - pb), "diff": ps - pb, "span": pt - pb, "student": ps, "base": pb}
    hits = dict.fromkeys(truth, 0)
    for _ in range(reps):
        u = rng.random(n)
        d = I.binary_draws({"base": _correlated(rng, n, pb, u)[None], "student": _correlated(rng, n, ps, u)[None],
                            "teacher": _correlated(rng, n, pt, u)[None]}, rng, draws, None)
        stats = {"gap": (d["student"] - d["base"]) / (d["teacher"] - d["base"]), "diff": d["student"] - d["base"],
                 "span": d["teacher"] - d["base"], "student": d["student"], "base": d["base"]}
        for k, s in stats.items():
            lo, hi = s.interval()
            hits[k] += lo is not None and lo <= truth[k] <= hi
    return {k: v / reps for k, v in hits.items()}


@pytest.mark.parametrize("n,pb,ps,pt", BINARY_CASES)
def test_probe_intervals_cover_the_truth_at_demo_counts(n, pb, ps, pt):
    cov = _binary_coverage(n, pb, ps, pt)
    assert min(cov.values()) >= 0.93, cov


def test_the_old_percentile_bootstrap_of_a_ratio_undercovers():
    """The check above can fail: the percentile bootstrap of gap closed that scores.json used to
    report covers the truth far less often at 35 probes (it collapses at zero counts)."""
    rng = np.random.default_rng(7)
    n, pb, ps, pt = 35, 0.015, 0.045, 0.164
    truth, hits, reps = (ps - pb) / (pt - pb), 0, 400
    for _ in range(reps):
        u = rng.random(n)
        b, s, t = (_correlated(rng, n, p, u) for p in (pb, ps, pt))
        idx = rng.integers(0, n, size=(1000, n))
        with np.errstate(all="ignore"):
            g = (s[idx].mean(1) - b[idx].mean(1)) / (t[idx].mean(1) - b[idx].mean(1))
        g = g[np.isfinite(g)]
        hits += len(g) > 0 and np.quantile(g, 0.025) <= truth <= np.quantile(g, 0.975)
    assert hits / reps < 0.85


def test_zero_counts_do_not_collapse():
    """Base 0/35 and student 0/35 used to read `0.00 [0.00, 0.00]`; the posterior says how little
    35 probes tell: a student right 0 times may still be right a few % of the time."""
    rng = np.random.default_rng(0)
    zeros = np.zeros((1, 35), int)
    teacher = (np.arange(35) < 5).astype(int)[None]
    d = I.binary_draws({"base": zeros, "student": zeros, "teacher": teacher}, rng, 4000, None)
    lo, hi = d["student"].interval()
    assert lo == 0.0 and 0.05 < hi < 0.12  # 0/35: [0, ~0.08]
    glo, ghi = ((d["student"] - d["base"]) / (d["teacher"] - d["base"])).interval()
    assert glo < -0.2 and ghi > 0.2  # gap closed 0, but nothing like [0, 0]
    assert I.exact(0, 35)[0] == 0.0 and I.exact(35, 35)[1] == 1.0


def _continuous_sample(rng, n, means, seeds=1, seed_sd=0.0):
    """ROUGE-like per-item scores in (0, 1), correlated across models by a shared item effect."""
    z = rng.normal(0, 1, n)

    def model(m, shift=0.0):
        return 1 / (1 + np.exp(-(np.log(m / (1 - m)) + shift + 0.8 * z + 0.6 * rng.normal(0, 1, n))))

    b, s, c = means
    return model(b), np.stack([model(s, rng.normal(0, seed_sd)) for _ in range(seeds)]), model(c)


def test_bca_intervals_cover_continuous_scores_at_60_items():
    means = (0.14, 0.17, 0.30)
    big = _continuous_sample(np.random.default_rng(99), 400_000, means)
    truth_b, truth_s, truth_c = big[0].mean(), big[1].mean(), big[2].mean()
    truth = {"gap": (truth_s - truth_b) / (truth_c - truth_b), "diff": truth_s - truth_b}
    rng, hits, reps = np.random.default_rng(5), {"gap": 0, "diff": 0}, 1500
    for r in range(reps):
        b, s, c = _continuous_sample(rng, 60, means)
        idx = I.Resamples(1000, r).items(60, 1)
        db, ds, dc = I.mean_draws(b[None], idx, None), I.mean_draws(s, idx, None), I.mean_draws(c[None], idx, None)
        for k, stat in (("gap", (ds - db) / (dc - db)), ("diff", ds - db)):
            lo, hi = stat.interval()
            hits[k] += lo <= truth[k] <= hi
    assert min(v / reps for v in hits.values()) >= 0.93, hits


def test_seed_spread_widens_the_interval():
    """Three fine-tuning seeds that disagree give a wider interval than three that agree on the
    same items: the draws resample the seeds as well as the items."""
    rng = np.random.default_rng(3)
    base, s, _ = _continuous_sample(rng, 60, (0.14, 0.2, 0.3), seeds=1)
    agree = np.vstack([s[0]] * 3)
    disagree = np.vstack([s[0] - 0.08, s[0], s[0] + 0.08])
    rs = I.Resamples(2000, 0, seeds=3)
    idx, rows = rs.items(60, 1), rs.seed_rows()
    width = {}
    for name, x in (("agree", agree), ("disagree", disagree)):
        lo, hi = (I.mean_draws(x, idx, rows) - I.mean_draws(base[None], idx, None)).interval()
        width[name] = hi - lo
    assert width["disagree"] > 1.5 * width["agree"]
    # the point is the mean over seeds either way
    assert I.mean_draws(disagree, idx, rows).point == pytest.approx(I.mean_draws(agree, idx, rows).point)

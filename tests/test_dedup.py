"""replicate.generate.dedup gives rouge_score's exact ROUGE-L keep/drop decisions (real and adversarial)."""
from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from replicate.generate.dedup import RougeDedup
from replicate.generate.selfinstruct import load_seed_tasks
from replicate.rouge import lcs_length, rouge_l, tokenize

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
ADVERSARIAL_TEXTS = [
    "", " ", "!!!", "... --- ...", "日本語のテキスト", "Café au lait", "naïve résumé", "İstanbul", "\u212aelvin",
    "ﬁne ﬂowers", "x²+y²", "①②③ 123", "tab\tseparated\nlines\r\nhere", "snake_case and kebab-case",
    "UPPER lower MiXeD", "a a a a a a", "the the cat the", "1,000,000 dollars", "e-mail e mail email",
    "emoji 🙂 between 🙂 words", "Ω ohm", "ß strasse", "ǅ digraph", "(parenthesised) [bracketed]",
]


def _reference_keep(texts: list[str], threshold: float = 0.7, seeds: list[str] = ()) -> list[bool]:
    """Alpaca's loop, with rouge_score doing every comparison."""
    kept = [SCORER._tokenizer.tokenize(s) for s in seeds]
    decisions = []
    for text in texts:
        new = SCORER._tokenizer.tokenize(text)
        keep = max((rouge_scorer._score_lcs(new, old).fmeasure for old in kept), default=0.0) <= threshold
        decisions.append(keep)
        if keep:
            kept.append(new)
    return decisions


def _perturb(text: str, rng: random.Random, vocab: list[str]) -> str:
    words = text.split()
    for _ in range(rng.randint(1, 3)):
        op, i = rng.random(), rng.randrange(len(words) + 1)
        if op < 0.3 and len(words) > 1:
            del words[min(i, len(words) - 1)]
        elif op < 0.6:
            words.insert(i, rng.choice(vocab))
        elif op < 0.8 and len(words) > 1:
            j = rng.randrange(len(words))
            words[min(i, len(words) - 1)], words[j] = words[j], words[min(i, len(words) - 1)]
        else:
            words[min(i, len(words) - 1)] = rng.choice(vocab)
    return " ".join(words)


@pytest.fixture(scope="module")
def seed_texts() -> list[str]:
    tasks = load_seed_tasks()
    return [t.instruction for t in tasks] + [t.output for t in tasks] + [t.input for t in tasks if t.input]


def test_tokenize_matches_rouge_score(seed_texts):
    for text in ADVERSARIAL_TEXTS + seed_texts:
        assert tokenize(text) == rouge_tokenize.tokenize(text, None), text
    # lower() comes before the ASCII filter: a dotted capital I and the Kelvin sign become ASCII.
    assert tokenize("İstanbul \u212aelvin") == ["i", "stanbul", "kelvin"]


def test_lcs_matches_dynamic_programming():
    rng = random.Random(0)
    for _ in range(400):
        vocab = rng.randint(1, 6)  # tiny vocabularies: many repeated tokens
        a = [rng.randrange(vocab) for _ in range(rng.randint(0, 90))]  # > 64 tokens: wide bit vectors
        b = [rng.randrange(vocab) for _ in range(rng.randint(0, 90))]
        expected = rouge_scorer._lcs_table(a, b)[-1][-1] if a and b else 0
        assert lcs_length(a, b) == expected == lcs_length(b, a)


def test_rouge_l_equals_rouge_score_float_on_thousands_of_pairs(seed_texts):
    rng = random.Random(1)
    vocab = sorted({w for text in seed_texts for w in text.split()})
    texts = seed_texts + [_perturb(rng.choice(seed_texts), rng, vocab) for _ in range(600)] + ADVERSARIAL_TEXTS
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(2500)]
    pairs += [(t, _perturb(t, rng, vocab)) for t in seed_texts for _ in range(2)]  # near the threshold
    near_threshold = 0
    for target, prediction in pairs:
        expected = SCORER.score(target, prediction)["rougeL"].fmeasure
        assert rouge_l(tokenize(target), tokenize(prediction)) == expected  # bit-for-bit
        near_threshold += 0.6 < expected < 0.8
    assert near_threshold > 100  # the pairs exercise the decision boundary


def _pair_with_lcs(a: int, b: int, lcs: int) -> tuple[str, str]:
    """Two texts of a and b tokens whose LCS is exactly `lcs` (shared words, then fillers)."""
    shared = [f"w{i}" for i in range(lcs)]
    return " ".join(shared + [f"x{i}" for i in range(a - lcs)]), " ".join(shared + [f"y{i}" for i in range(b - lcs)])


def test_exact_threshold_pairs_decided_like_rouge_score():
    """2L/(a+b) == 0.7 exactly: rouge_score's float F lands on either side of 0.7."""
    dropped = kept = 0
    for total in range(20, 201, 20):  # 20L = 7(a+b) needs a+b divisible by 20
        lcs = 7 * total // 20
        for a in range(lcs, total - lcs + 1):
            old, new = _pair_with_lcs(a, total - a, lcs)
            expected_drop = SCORER.score(new, old)["rougeL"].fmeasure > 0.7
            assert (RougeDedup([old]).find(new) is not None) == expected_drop, (a, total - a, lcs)
            dropped += expected_drop
            kept += not expected_drop
    assert dropped > 0 and kept > 0  # both float outcomes occur and both are matched


def test_degenerate_texts():
    dedup = RougeDedup(["", "!!!", "日本語"])
    assert dedup.add_if_novel("")  # no tokens: F = 0 against everything, so it is kept
    assert dedup.add_if_novel("??")
    assert dedup.add_if_novel("the cat sat")
    assert not dedup.add_if_novel("The cat sat!")  # same tokens: F = 1
    assert not dedup.add_if_novel("the cat sat.")
    assert dedup.find("a a a a a a a") is None
    dedup.add("a a a a a a a")
    match = dedup.find("a a a a a a a a")  # repeated tokens: LCS 7 of 8 -> F = 14/15
    assert match is not None and match.index == len(dedup) - 1 and match.score == pytest.approx(14 / 15)
    with pytest.raises(ValueError):
        RougeDedup(threshold=0)


def test_incremental_decisions_match_rouge_score_loop(seed_texts):
    """A realistic stream (seed instructions, their rewrites, new sentences) filtered against
    seeds + kept so far; runs past several index rebuilds (64, 128, 256 texts)."""
    rng = random.Random(2)
    tasks = load_seed_tasks()
    seeds = [t.instruction for t in tasks[:60]]
    vocab = sorted({w for text in seed_texts for w in text.split()})
    pool = [t.instruction for t in tasks] + [t.output.split("\n")[0][:120] for t in tasks]
    stream = []
    for _ in range(450):
        base = rng.choice(pool + stream[-50:]) if stream else rng.choice(pool)
        stream.append(_perturb(base, rng, vocab) if rng.random() < 0.6 else base)
    dedup = RougeDedup(seeds)
    ours = [dedup.add_if_novel(text) for text in stream]
    assert ours == _reference_keep(stream, seeds=seeds)
    assert 0.1 < sum(ours) / len(ours) < 0.9  # both decisions are common


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9, 1.0])
def test_adversarial_stream_small_vocabulary(threshold):
    """Short texts over 4 words: heavy token repetition, many ties at the threshold."""
    rng = random.Random(int(threshold * 10))
    words = ["red", "blue", "green", "gold"]
    stream = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 14))) for _ in range(500)]
    stream += ADVERSARIAL_TEXTS
    dedup = RougeDedup(threshold=threshold)
    assert [dedup.add_if_novel(text) for text in stream] == _reference_keep(stream, threshold)


def test_long_texts_past_the_255_position_and_copy_caps():
    """Texts of 260-420 tokens with one token repeated > 255 times (positions and copies above
    255 are stored capped, which may only loosen the bounds)."""
    rng = random.Random(5)
    base = ["a"] * 300 + [f"w{i}" for i in range(60)]
    stream = []
    for _ in range(9):
        words = list(base)
        for _ in range(rng.choice([5, 60, 250])):
            words[rng.randrange(len(words))] = rng.choice(["a", "b", f"w{rng.randrange(900)}"])
        stream.append(" ".join(words[: rng.randint(260, len(words))]))
    dedup = RougeDedup()
    ours = [dedup.add_if_novel(text) for text in stream]
    assert ours == _reference_keep(stream)
    assert True in ours[1:] and False in ours


def test_find_does_not_add_and_add_restores():
    dedup = RougeDedup()
    assert dedup.find("Write a poem about the sea in spring.") is None
    assert len(dedup) == 0
    assert dedup.add("Write a poem about the sea in spring.") == 0
    assert dedup.find("Write a poem about the sea in summer.").index == 0  # F = 7/8 > 0.7
    assert dedup.add_if_novel("Explain how tides work to a child.")
    assert dedup.texts == ["Write a poem about the sea in spring.", "Explain how tides work to a child."]

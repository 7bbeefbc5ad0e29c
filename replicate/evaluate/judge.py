"""Pairwise preference against the teacher's outputs by an LLM judge, AlpacaEval-style.

Every (model output, teacher output) pair is judged twice, once in each order. MT-Bench's rule
(Zheng et al. 2023) combines them: the same winner in both orders counts (1 model, 0 teacher,
0.5 tie); orders that disagree are the judge's position bias and count as a tie (reported as the
consistency rate); an item with an unresolved order (a verdict naming neither A, B nor a tie,
verdicts.parse_verdict) is left out and counted. Identical outputs score 0.5 without asking
(AlpacaEval's rule), so the teacher against itself is exactly 0.5.
Verdicts are cached in eval/judge.jsonl by a hash of (judge, prompt), so a rerun asks nothing twice.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

from replicate.evaluate.verdicts import item_preference, parse_verdict
from replicate.files import append_jsonl, read_jsonl

JUDGE_TEMPLATE = """You compare two responses to the same instruction and decide which one is better: more \
helpful, correct and relevant to the instruction. Do not prefer a response just because it is longer.

### Instruction:
{instruction}

### Response A:
{a}

### Response B:
{b}

Which response is better? Answer with exactly one of: A, B, tie."""

# Judge inputs are clipped so that one verbose output cannot overflow the judge's context.
MAX_CHARS = 4000

Complete = Callable[[list[str]], list[tuple[str, int, int]]]
"""prompts -> [(text, prompt_tokens, output_tokens)], one per prompt, in order."""


def judge_prompt(instruction: str, a: str, b: str) -> str:
    return JUDGE_TEMPLATE.format(instruction=instruction[:MAX_CHARS], a=a[:MAX_CHARS], b=b[:MAX_CHARS])


def _key(judge_id: str, prompt: str) -> str:
    return hashlib.sha256(f"{judge_id}\n{prompt}".encode()).hexdigest()[:24]


def judge_pairs(
    instructions: list[str],
    outputs: dict[str, list[str]],
    reference: list[str],
    complete: Complete,
    judge_id: str,
    cache_file: Path,
    batch: int = 64,
    progress: Callable[[int], None] = lambda n: None,
) -> dict:
    """Preferences of every role's outputs over the reference (teacher) outputs.

    Returns {"prefs": {role: [pref or nan]}, "unresolved": {role: n votes}, "votes": {role: n},
             "items_unresolved": {role: n}, "consistency": {role: share of both-resolved items whose
             two orders agree}, "prompt_tokens": int, "output_tokens": int, "verdicts": {role: [[v_ab, v_ba]]}}.
    """
    cache = {r["key"]: r["text"] for r in read_jsonl(cache_file, torn_ok=True)}
    # (role, item, order): order 0 = model shown as A, 1 = model shown as B
    jobs, prompts = [], []
    for role, outs in outputs.items():
        for i, (ins, out, ref) in enumerate(zip(instructions, outs, reference)):
            if out == ref:
                continue
            for order, (a, b) in enumerate(((out, ref), (ref, out))):
                jobs.append((role, i, order))
                prompts.append(judge_prompt(ins, a, b))
    keys = [_key(judge_id, p) for p in prompts]
    # Each distinct prompt is asked once (a student identical to the base on an item repeats the
    # base's pairs), and never again on a rerun.
    todo = list(dict.fromkeys(k for k in keys if k not in cache))
    prompt_of = dict(zip(keys, prompts))
    progress(sum(1 for k in keys if k in cache))
    ptok = otok = 0
    for s in range(0, len(todo), batch):
        chunk = todo[s : s + batch]
        results = complete([prompt_of[k] for k in chunk])
        for k, (text, pt, ot) in zip(chunk, results):
            cache[k] = text
            ptok += pt
            otok += ot
            append_jsonl(cache_file, {"key": k, "text": text})
        progress(sum(keys.count(k) for k in chunk))
    texts = [cache[k] for k in keys]

    prefs = {role: [0.5 if out == ref else math.nan for out, ref in zip(outs, reference)]
             for role, outs in outputs.items()}
    verdicts = {role: [[None, None] for _ in outs] for role, outs in outputs.items()}
    unresolved = {role: 0 for role in outputs}
    n_votes = {role: 0 for role in outputs}
    for (role, i, order), text in zip(jobs, texts):
        v = parse_verdict(text or "")
        verdicts[role][i][order] = v
        n_votes[role] += 1
        unresolved[role] += v is None
    items_unresolved = {role: 0 for role in outputs}
    agree = {role: [0, 0] for role in outputs}  # consistent, both orders resolved
    for role, outs in outputs.items():
        for i, (out, ref) in enumerate(zip(outs, reference)):
            if out == ref:
                continue
            pref, how = item_preference(*verdicts[role][i])
            if pref is None:
                items_unresolved[role] += 1
                continue
            prefs[role][i] = pref
            agree[role][0] += how == "consistent"
            agree[role][1] += 1
    consistency = {role: (c / n if n else None) for role, (c, n) in agree.items()}
    return {"prefs": prefs, "unresolved": unresolved, "votes": n_votes, "items_unresolved": items_unresolved,
            "consistency": consistency, "prompt_tokens": ptok, "output_tokens": otok, "verdicts": verdicts}

"""Token fidelity: how likely each model finds the teacher's own outputs (teacher-forced, transformers).

For every item the teacher's output y is appended to the model's own prompt (its training template
or its chat template) and scored in one forward pass:

    nll_per_token  = -(1/|y|) sum_t log p(y_t | prompt, y_<t)      (each model's own tokens)
    bits_per_byte  = -(sum_t log p(y_t | ...)) / ln 2 / bytes(y)    (comparable across tokenizers)
    top1_agreement = mean_t 1[argmax p_model = argmax p_teacher]      } only when the model's
    kl_teacher_model = mean_t KL(p_teacher || p_model)                } tokenizer is the teacher's

Items longer than a model's context are skipped for that model (nan) and counted.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOKEN_METRICS = ("nll_per_token", "bits_per_byte", "top1_agreement", "kl_teacher_model")


@dataclass
class Scorer:
    """One local model loaded for teacher forcing."""

    role: str
    path: Path
    chat: bool
    model: object = None
    tok: object = None
    max_len: int = 0
    same_tokenizer: bool = False  # as the teacher's: top-1 agreement and KL are defined


def prompt_ids(tok, text: str, chat: bool) -> list[int]:
    """Token ids of an already formatted prompt. A chat template writes its own special tokens
    (BOS included where it wants one), so only the Alpaca text gets the tokenizer's BOS."""
    return list(tok(text, add_special_tokens=not chat)["input_ids"])


def _load(path: Path, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, trust_remote_code=trust_remote_code)
    model.eval()
    max_len = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
    return model, tok, max_len


def _forward_logprobs(sc: Scorer, prompt: list[int], target: list[int]):
    """float32 log-probabilities (len(target) x vocab) of the positions that predict `target`."""
    import torch

    ids = torch.tensor([prompt + target])
    with torch.inference_mode():
        # logits_to_keep: only the last len(target)+1 positions go through the LM head (a 262k-vocab
        # head over the prompt too would double the cost for nothing).
        out = sc.model(input_ids=ids, logits_to_keep=len(target) + 1)
    logits = out.logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def score_token_fidelity(
    items: list[dict],
    teacher_outputs: list[str],
    scorers: list[Scorer],
    teacher: Scorer,
    format_prompt: Callable[[Scorer, dict], str],
    progress: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, list[float]]]:
    """{role: {metric: per-item values}} for the teacher and every scorer; nan where undefined."""
    import torch

    everyone = [teacher] + [s for s in scorers if s.role != teacher.role]
    # The same weights under the same prompt format give the same numbers: score them once
    # (student == base before any training, or the teacher scored as its own student).
    first: dict[tuple, Scorer] = {}
    for sc in everyone:
        first.setdefault((sc.path, sc.chat), sc)
    roles = list(first.values())
    out = {s.role: {m: [math.nan] * len(items) for m in TOKEN_METRICS} for s in everyone}
    out["_skipped_context"] = {s.role: 0 for s in everyone}
    for i, (item, y) in enumerate(zip(items, teacher_outputs)):
        progress()
        if not y.strip():
            continue  # nothing to score: an empty teacher output is counted by the caller
        n_bytes = len(y.encode())
        t_target = list(teacher.tok(y, add_special_tokens=False)["input_ids"])
        t_prompt = prompt_ids(teacher.tok, format_prompt(teacher, item), teacher.chat)
        t_lp = None
        if t_target and len(t_prompt) + len(t_target) <= teacher.max_len:
            t_lp = _forward_logprobs(teacher, t_prompt, t_target)
        for sc in roles:
            target = t_target if sc.same_tokenizer else list(sc.tok(y, add_special_tokens=False)["input_ids"])
            prompt = t_prompt if sc is teacher else prompt_ids(sc.tok, format_prompt(sc, item), sc.chat)
            if not target:
                continue
            if len(prompt) + len(target) > sc.max_len:
                out["_skipped_context"][sc.role] += 1
                continue
            lp = t_lp if sc is teacher else _forward_logprobs(sc, prompt, target)
            if lp is None:
                continue
            tgt = torch.tensor(target)
            nll = -lp[torch.arange(len(target)), tgt].sum().item()
            out[sc.role]["nll_per_token"][i] = nll / len(target)
            out[sc.role]["bits_per_byte"][i] = nll / math.log(2) / n_bytes
            if sc.same_tokenizer and t_lp is not None:
                agree = (lp.argmax(-1) == t_lp.argmax(-1)).float().mean().item()
                # KL(T||M) = sum_v p_T (log p_T - log p_M), per position, then the mean over positions
                kl = (t_lp.exp() * (t_lp - lp)).sum(-1).clamp_min(0).mean().item()
                out[sc.role]["top1_agreement"][i] = agree
                out[sc.role]["kl_teacher_model"][i] = kl
    for sc in everyone:
        src = first[(sc.path, sc.chat)]
        if src is not sc:
            out[sc.role] = {m: list(v) for m, v in out[src.role].items()}
            out["_skipped_context"][sc.role] = out["_skipped_context"][src.role]
    return out


def same_vocab(tok_a, tok_b) -> bool:
    """Two tokenizers are interchangeable when their vocabularies map every string to the same id."""
    return len(tok_a) == len(tok_b) and tok_a.get_vocab() == tok_b.get_vocab()


def load_scorers(teacher: tuple[str, Path, bool], others: list[tuple[str, Path, bool]],
                 trust_remote_code: bool = False) -> tuple[Scorer, list[Scorer]]:
    """Load the teacher and each distinct (folder) model once; roles sharing a folder share weights."""
    cache: dict[Path, tuple] = {}

    def make(role: str, path: Path, chat: bool) -> Scorer:
        key = Path(path).resolve()
        if key not in cache:
            cache[key] = _load(key, trust_remote_code)
        model, tok, max_len = cache[key]
        return Scorer(role=role, path=key, chat=chat, model=model, tok=tok, max_len=max_len)

    t = make(*teacher)
    t.same_tokenizer = True
    scorers = []
    for spec in others:
        sc = make(*spec)
        sc.same_tokenizer = sc.tok is t.tok or same_vocab(sc.tok, t.tok)
        scorers.append(sc)
    return t, scorers


def per_item_arrays(values: dict[str, list[float]]) -> dict[str, np.ndarray]:
    return {m: np.asarray(v, float) for m, v in values.items()}

"""Token fidelity: how likely each model finds the teacher's own outputs (teacher-forced, transformers).

For every item the teacher's output y is appended to the model's own prompt (its training template
or its chat template) and scored in one forward pass:

    nll_per_token  = -(1/|y|) sum_t log p(y_t | prompt, y_<t)      (each model's own tokens)
    bits_per_byte  = -(sum_t log p(y_t | ...)) / ln 2 / bytes(y)    (comparable across tokenizers)
    top1_agreement = mean_t 1[argmax p_model = argmax p_teacher]      } only when the model's
    kl_teacher_model = mean_t KL(p_teacher || p_model)                } tokenizer is the teacher's

Items longer than a model's context are skipped for that model (nan) and counted. The caller
(model_scores.py) caches each item's numbers, so a killed run resumes where it stopped.

An API teacher (no weights here) is no obstacle to bits/byte: the other models score the teacher's
text with their own weights and tokenizers (teacher=None below); only the teacher's own numbers,
top-1 agreement and KL, which need its distribution, are undefined.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def _load(path: Path, trust_remote_code: bool, dtype: str = "auto"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replicate.precision import announce, resolve

    p = resolve(dtype, source="evaluate.dtype")  # log-probs are taken in fp32 either way
    announce(p, "token fidelity")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, p.dtype), trust_remote_code=trust_remote_code)
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


def distinct(teacher: Scorer | None, scorers: list[Scorer]) -> tuple[list[Scorer], dict[str, str]]:
    """The scorers to run, and role -> the role whose numbers it shares. The same weights under the
    same prompt format give the same numbers (student == base before any training, or the teacher
    scored as its own student), so they are computed once."""
    everyone = ([teacher] if teacher else []) + [s for s in scorers if teacher is None or s.role != teacher.role]
    first: dict[tuple, Scorer] = {}
    for sc in everyone:
        first.setdefault((sc.path, sc.chat), sc)
    alias = {sc.role: first[(sc.path, sc.chat)].role for sc in ([teacher] if teacher else []) + scorers}
    return list(first.values()), alias


def score_item(item: dict, y: str, teacher: Scorer | None, roles: list[Scorer],
               format_prompt: Callable[[Scorer, dict], str]) -> dict[str, dict]:
    """{role: {metric: value}} for one item (teacher output y); a role whose prompt + y does not
    fit its context gets {"skipped": "context"}; undefined metrics are absent. teacher=None: an
    API teacher, whose own distribution is unknown (bits/byte and NLL of the others only)."""
    import torch

    out: dict[str, dict] = {sc.role: {} for sc in roles}
    if not y.strip():
        return out  # nothing to score: an empty teacher output is counted by the caller
    n_bytes = len(y.encode())
    t_target, t_prompt, t_lp = [], [], None
    if teacher is not None:
        t_target = list(teacher.tok(y, add_special_tokens=False)["input_ids"])
        t_prompt = prompt_ids(teacher.tok, format_prompt(teacher, item), teacher.chat)
        if t_target and len(t_prompt) + len(t_target) <= teacher.max_len:
            t_lp = _forward_logprobs(teacher, t_prompt, t_target)
    for sc in roles:
        target = t_target if sc.same_tokenizer else list(sc.tok(y, add_special_tokens=False)["input_ids"])
        prompt = t_prompt if sc is teacher else prompt_ids(sc.tok, format_prompt(sc, item), sc.chat)
        if not target:
            continue
        if len(prompt) + len(target) > sc.max_len:
            out[sc.role] = {"skipped": "context"}
            continue
        lp = t_lp if sc is teacher else _forward_logprobs(sc, prompt, target)
        if lp is None:
            continue
        nll = -lp[torch.arange(len(target)), torch.tensor(target)].sum().item()
        out[sc.role] = {"nll_per_token": nll / len(target), "bits_per_byte": nll / math.log(2) / n_bytes}
        if sc.same_tokenizer and t_lp is not None:
            # KL(T||M) = sum_v p_T (log p_T - log p_M) at each position, then the mean over positions
            out[sc.role]["top1_agreement"] = (lp.argmax(-1) == t_lp.argmax(-1)).float().mean().item()
            out[sc.role]["kl_teacher_model"] = (t_lp.exp() * (t_lp - lp)).sum(-1).clamp_min(0).mean().item()
    return out


def same_vocab(tok_a, tok_b) -> bool:
    """Two tokenizers are interchangeable when their vocabularies map every string to the same id."""
    return len(tok_a) == len(tok_b) and tok_a.get_vocab() == tok_b.get_vocab()


def load_scorers(teacher: tuple[str, Path, bool] | None, others: list[tuple[str, Path, bool]],
                 trust_remote_code: bool = False, dtype: str = "auto") -> tuple[Scorer | None, list[Scorer]]:
    """Load the teacher (None: an API teacher) and each distinct (folder) model once; roles
    sharing a folder share weights."""
    cache: dict[Path, tuple] = {}

    def make(role: str, path: Path, chat: bool) -> Scorer:
        key = Path(path).resolve()
        if key not in cache:
            cache[key] = _load(key, trust_remote_code, dtype)
        model, tok, max_len = cache[key]
        return Scorer(role=role, path=key, chat=chat, model=model, tok=tok, max_len=max_len)

    t = make(*teacher) if teacher else None
    if t is not None:
        t.same_tokenizer = True
    scorers = []
    for spec in others:
        sc = make(*spec)
        sc.same_tokenizer = t is not None and (sc.tok is t.tok or same_vocab(sc.tok, t.tok))
        scorers.append(sc)
    return t, scorers

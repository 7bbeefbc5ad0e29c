"""Stage 3: how much of the teacher did the copy get? Base, student and teacher answer the same
prompts; the copy is scored against the teacher (fidelity, preference) and against the truth
(capability probes), normalised between base and teacher, with bootstrap 95% intervals.

    replicate evaluate pipelines/tiny-cpu.yaml                     # student = runs/<name>/student/merged
    replicate evaluate --student DIR --teacher REF --base REF     # any three models

Reads top to bottom: models -> items -> generate (vLLM via teacher.py, cached per model in
eval/generations/) -> per-item scores -> bootstrap -> eval/samples.jsonl, eval/alpaca_eval.json and,
LAST, eval/scores.json. One `evaluate` ledger line meters the whole stage (judge tokens in their
own fields).
Metric definitions: docs/evaluation.md.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from replicate import files, meter
from replicate.config import Pipeline
from replicate.errors import UserError
from replicate.evaluate import generations, model_scores
from replicate.evaluate import metrics as M
from replicate.evaluate.items import open_items, probe_items
from replicate.evaluate.model_scores import Scoring
from replicate.evaluate.scores import ROLES, SPEC, build_scores
from replicate.precision import resolve as resolve_precision
from replicate.prompts import user_message
from replicate.rouge import rouge_l_f


def run_evaluate(cfg: Pipeline, run_dir: Path, *, student_dir: Path | None = None,
                 out_dir: Path | None = None, teacher=None, max_usd: float | None = None) -> dict:
    """Evaluate base, student and teacher; returns the scores (also written to out_dir/scores.json).

    `teacher`: an already started teacher backend (replicate.engines.base.Backend) to reuse instead of
    starting one from cfg.teacher (tests and sweeps share one engine); it is not closed here.
    `max_usd`: the most this call may spend (device time; the meter stops the stage, meter.stage)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "eval"
    ev = cfg.evaluate
    cons = generations.contenders(cfg, Path(student_dir) if student_dir else run_dir / "student" / "merged")
    opens, probes = open_items(ev, run_dir), probe_items(ev)
    if not opens and not probes:
        raise UserError("evaluate: nothing to evaluate (evaluate.examples and evaluate.probes are both 0)")
    out_dir.mkdir(parents=True, exist_ok=True)
    meter.recover(run_dir, "evaluate")  # a chunk killed without warning: its metered time, once
    usd_per_hour = generations.usd_per_device_hour(cfg)
    with (meter.stage(run_dir, "evaluate", usd_per_device_hour=usd_per_hour, max_usd=max_usd) as m,
          generations.progress() as bar):
        gen = generations.generate_all(cons, opens, probes, cfg, out_dir, bar, teacher_backend=teacher)
        m.add(prompt_tokens=gen.prompt_tokens, output_tokens=gen.output_tokens)
        m.add_usd(gen.api_usd)
        ref, valid = reference(gen.outputs)
        sc = Scoring(cfg, cons, opens, probes, gen.outputs, ref, valid, out_dir, bar)
        # The judge first: when it is the teacher, the teacher's engine is still up; free it before
        # the scoring models load.
        judge_backend = gen.teacher_backend or (teacher if generations.judge_is_teacher(cfg) else None)
        try:
            judge = model_scores.judge_scores(sc, backend=judge_backend)
        finally:
            if gen.teacher_backend is not None:
                gen.teacher_backend.close()
        extra = score_items(sc)
        per_item = sc.per_item
        extra["judge"] = judge
        m.add_usd(extra["judge"].get("usd", 0.0))
        lengths = {r: np.array([len(o or "") for o in gen.outputs[r]["open"]], float) for r in ROLES}
        t0 = time.perf_counter()
        scores = build_scores(per_item, {"open": len(opens), "probe": len(probes)}, ev.bootstrap_samples,
                              ev.seed, lengths)
        scores["bootstrap_s"] = round(time.perf_counter() - t0, 2)
        scores.update(describe(sc, gen, extra))
        m.set(precision=resolve_precision(ev.dtype, source="evaluate.dtype").as_ledger())  # base, student, token fidelity
        m.set(examples=len(opens), probes=len(probes), models=len(cons),
              judge_prompt_tokens=extra["judge"].get("prompt_tokens", 0),
              judge_output_tokens=extra["judge"].get("output_tokens", 0),
              judge_usd=extra["judge"].get("usd", 0.0), judge_unresolved=sum(extra["judge"].get("unresolved", {}).values()))
        write_samples(out_dir, opens, probes, gen.outputs, per_item)
        write_alpaca_eval(out_dir, opens, gen.outputs, generator_names(cfg, cons))
        scores["cost"] = {"wall_s": round(m.wall_s, 1), "usd": m.usd_so_far(), "device": m.device,
                          "prompt_tokens": int(m.fields.get("prompt_tokens", 0)),
                          "output_tokens": int(m.fields.get("output_tokens", 0))}
    # The ledger line is appended as the `with` closes; the done marker comes after it.
    files.write_json(out_dir / "scores.json", scores)  # LAST: its presence marks the stage done
    return scores


def reference(outputs) -> tuple[list[str], np.ndarray]:
    """The teacher's open outputs (the reference), and which items can be scored against them:
    the teacher said something and no model skipped the item for length."""
    teacher_open = outputs["teacher"]["open"]
    valid = np.array([t is not None and t.strip() != "" and all(outputs[r]["open"][i] is not None for r in ROLES)
                      for i, t in enumerate(teacher_open)], bool)
    return [t or "" for t in teacher_open], valid


def score_items(s: Scoring) -> dict:
    """Fill per_item[metric][role] (nan = undefined for that item) for every metric but the judge's."""
    outputs, ref, valid, per_item, probes = s.outputs, s.ref, s.valid, s.per_item, s.probes
    for name, fn in (("rougeL_f", rouge_l_f), ("chrf", M.chrf)):
        per_item[name] = {r: np.where(valid, [fn(o or "", t) for o, t in zip(outputs[r]["open"], ref)], np.nan)
                          for r in ROLES}
    embed_note = model_scores.embedding_scores(s)
    token_note = model_scores.token_scores(s)
    pvalid = np.array([all(outputs[r]["probe"][i] is not None for r in ROLES) for i in range(len(probes))], bool)
    acc = {r: np.where(pvalid, [float(M.probe_correct(o or "", p)) for o, p in zip(outputs[r]["probe"], probes)],
                       np.nan) for r in ROLES}
    ind = np.array([bool(p["in_distribution"]) for p in probes], bool)
    per_item["accuracy"] = acc
    per_item["accuracy_in_dist"] = {r: np.where(ind, v, np.nan) for r, v in acc.items()}
    per_item["accuracy_ood"] = {r: np.where(~ind, v, np.nan) for r, v in acc.items()}
    per_item["strict_match"] = {r: np.where(pvalid, [float(M.probe_strict(o or "", p)) for o, p in
                                                     zip(outputs[r]["probe"], probes)], np.nan) for r in ROLES}
    teacher_empty = sum(1 for t in outputs["teacher"]["open"] if t is not None and not t.strip())
    return {"embedding": embed_note, "token": token_note, "teacher_empty": teacher_empty}


def describe(s: Scoring, gen, extra: dict) -> dict:
    """The parts of scores.json that say what was measured and what was left out."""
    cfg, cons, opens, probes, per_item = s.cfg, s.cons, s.opens, s.probes, s.per_item
    by_cat: dict[str, dict[str, float]] = {}
    for cat in sorted({p["category"] for p in probes}):
        ix = [i for i, p in enumerate(probes) if p["category"] == cat]
        by_cat[cat] = {r: M.finite_or_none(M.nanmean(per_item["accuracy"][r][ix])) for r in ROLES}
        by_cat[cat]["in_distribution"] = bool(probes[ix[0]]["in_distribution"])
        by_cat[cat]["n"] = len(ix)
    empty = {r: sum(1 for o in gen.outputs[r]["open"] + gen.outputs[r]["probe"] if o is not None and not o.strip())
             for r in ROLES}
    return {
        "name": cfg.name,
        "models": {c.role: {"ref": c.ref, "path": str(c.path) if c.path else None,
                            "prompt": "chat" if c.chat else "alpaca", "backend": c.backend} for c in cons},
        "counts": {"open_items": len(opens), "held_out_items": sum(1 for o in opens if o["source"] == "held_out"),
                   "probes": len(probes), "probes_in_distribution": sum(1 for p in probes if p["in_distribution"]),
                   "probes_ood": sum(1 for p in probes if not p["in_distribution"]),
                   "skipped_context": gen.skipped, "empty_outputs": empty, "teacher_empty": extra["teacher_empty"],
                   "token_fidelity": extra["token"], "embedding": extra["embedding"],
                   "judge": {k: v for k, v in extra["judge"].items() if k != "prefs"}},
        "strict_match": {r: M.finite_or_none(M.nanmean(per_item["strict_match"][r])) for r in ROLES},
        "capability_by_category": by_cat,
        "settings": cfg.evaluate.model_dump(mode="json"),
    }


def _f(x):
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def write_samples(out_dir: Path, opens, probes, outputs, per_item) -> None:
    """eval/samples.jsonl: every prompt, every model's output and every per-item score."""
    rows = []
    for kind, items in (("open", opens), ("probe", probes)):
        for i, it in enumerate(items):
            row = {"kind": kind, **{k: it[k] for k in ("id", "category", "instruction", "input") if k in it}}
            if kind == "probe":
                row.update(answers=it["answers"], in_distribution=it["in_distribution"])
            row["outputs"] = {r: outputs[r][kind][i] for r in ROLES}
            row["scores"] = {r: {m: _f(v[r][i]) for m, v in per_item.items()
                                 if r in v and (SPEC[m].items if m in SPEC else "probe") == kind}
                             for r in ROLES}
            rows.append(row)
    files.write_jsonl(out_dir / "samples.jsonl", rows)


def generator_names(cfg: Pipeline, cons) -> dict[str, str]:
    """AlpacaEval `generator` per role, saying which run and which model: leaderboards and
    annotation caches key on it, so two runs' students must not share a name.
    E.g. `tiny-cpu/student: gemma-3-270m + lora` and `tiny-cpu/teacher: smollm2-135m-instruct`."""
    def short(ref: str) -> str:
        return Path(ref.removeprefix("packaged:")).name

    student = f"{short(cfg.student.model)} + {cfg.finetune.method}"
    by_role = {c.role: c for c in cons}
    if "student" in by_role and by_role["student"].path and not str(by_role["student"].path).endswith("merged"):
        student = short(str(by_role["student"].path))  # --student FOLDER: the folder names the model
    return {"student": f"{cfg.name}/student: {student}", "teacher": f"{cfg.name}/teacher: {short(cfg.teacher.model)}",
            "base": f"{cfg.name}/base: {short(cfg.student.model)}"}


def write_alpaca_eval(out_dir: Path, opens, outputs, names: dict[str, str]) -> None:
    """The student's (and, as reference, the teacher's) outputs in AlpacaEval's model_outputs format:
    alpaca_eval --model_outputs eval/alpaca_eval.json --reference_outputs eval/alpaca_eval_teacher.json"""
    for role, fname in (("student", "alpaca_eval.json"), ("teacher", "alpaca_eval_teacher.json")):
        rows = [{"instruction": user_message(it["instruction"], it["input"]), "output": outputs[role]["open"][i] or "",
                 "generator": names[role], "dataset": f"replicate-{it['source']}"}
                for i, it in enumerate(opens)]
        files.write_json(out_dir / fname, rows)

"""Stage 3: how much of the teacher did the copy get? Base, the fine-tuned student(s), an optional
control and the teacher answer the same prompts; the copy is scored against the teacher
(fidelity, token likelihood, preference) and against the truth (capability probes), normalised
between the base and a reachable ceiling, every number with a 95 % interval and `gap_measurable`.

    replicate evaluate pipelines/tiny-cpu.yaml                     # student = runs/<name>/student/merged
    replicate evaluate --student DIR --teacher REF --base REF     # any three models

Reads top to bottom: models -> items (probes placed in or out of the training data's
distribution by nearest neighbour) -> generate (cached per model in eval/generations/) -> the
judge -> per-item scores -> intervals -> eval/samples.jsonl, eval/alpaca_eval.json and, LAST,
eval/scores.json. One `evaluate` ledger line meters the whole stage (judge tokens in their own fields).
Metric definitions: docs/evaluation.md.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from replicate import files, meter
from replicate.config import Pipeline
from replicate.errors import UserError
from replicate.evaluate import capability, generations, model_scores
from replicate.evaluate import metrics as M
from replicate.evaluate.answers import floors, probe_correct, probe_strict
from replicate.evaluate.intervals import Resamples
from replicate.evaluate.items import open_items, probe_items
from replicate.evaluate.model_scores import Scoring
from replicate.evaluate.scores import build_scores
from replicate.precision import resolve as resolve_precision
from replicate.prompts import user_message
from replicate.rouge import rouge_l_f


def run_evaluate(cfg: Pipeline, run_dir: Path, *, student_dir: Path | None = None,
                 student_dirs: list[Path] | None = None, out_dir: Path | None = None, teacher=None,
                 max_usd: float | None = None) -> dict:
    """Evaluate base, student(s), control and teacher; returns the scores (also out_dir/scores.json).

    student_dirs: one merged student per fine-tuning seed (their spread enters every interval);
    default [student_dir or run_dir/student/merged]. `teacher`: an already started teacher
    backend (replicate.engines.base.Backend) to reuse (tests and sweeps share one engine); not closed here.
    `max_usd`: the most this call may spend (device time; the meter stops the stage, meter.stage)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "eval"
    ev = cfg.evaluate
    dirs = [Path(d) for d in student_dirs] if student_dirs else \
        [Path(student_dir) if student_dir else run_dir / "student" / "merged"]
    cons = generations.contenders(cfg, dirs)
    students = [c.role for c in cons if c.role.startswith("student")]
    opens, probes = open_items(ev, run_dir), probe_items(ev)
    if not opens and not probes:
        raise UserError("evaluate: nothing to evaluate (evaluate.examples and evaluate.probes are both 0)")
    distribution = capability.measure_distribution(probes, _rows(run_dir, "train.jsonl"), _rows(run_dir, "held_out.jsonl"))
    out_dir.mkdir(parents=True, exist_ok=True)
    max_usd = meter.recover_within(run_dir, "evaluate", max_usd)  # a killed chunk's metered time, once
    usd_per_hour, devices = generations.device_price(cfg)
    with (meter.stage(run_dir, "evaluate", usd_per_device_hour=usd_per_hour, num_devices=devices,
                      max_usd=max_usd) as m,
          generations.progress() as bar):
        gen = generations.generate_all(cons, opens, probes, cfg, out_dir, bar, teacher_backend=teacher)
        m.add(prompt_tokens=gen.prompt_tokens, output_tokens=gen.output_tokens)
        m.add_usd(gen.api_usd)
        outputs = gen.outputs
        outputs["resample"] = {"open": outputs["teacher"].pop("sample")}
        models = [c.role for c in cons]
        ref, valid = reference(outputs, models)
        sc = Scoring(cfg, cons, opens, probes, outputs, ref, valid, out_dir, bar)
        # The judge first: when it is the teacher, the teacher's engine is still up; free it before
        # the scoring models load.
        judge_backend = gen.teacher_backend or (teacher if generations.judge_is_teacher(cfg) else None)
        try:
            judge = model_scores.judge_scores(sc, backend=judge_backend)
        finally:
            if gen.teacher_backend is not None:
                gen.teacher_backend.close()
        notes = score_items(sc, models)
        m.add_usd(judge.get("usd", 0.0))
        per_item = stack_students(sc.per_item, students)
        lengths = stack_students({"len": {r: np.array([len(o or "") for o in outputs[r]["open"]], float)
                                          for r in models}}, students)["len"]
        t0 = time.perf_counter()
        scores = build_scores(per_item, Resamples(ev.bootstrap_samples, ev.seed, len(students)), lengths)
        scores["bootstrap_s"] = round(time.perf_counter() - t0, 2)
        scores["capability"] = capability_report(sc, students, distribution)
        scores.update(describe(sc, gen, students, notes | {"judge": judge}, run_dir))
        m.set(precision=resolve_precision(ev.dtype, source="evaluate.dtype").as_ledger())  # base, student, token fidelity
        m.set(examples=len(opens), probes=len(probes), models=len(cons), students=len(students),
              judge_prompt_tokens=judge.get("prompt_tokens", 0), judge_output_tokens=judge.get("output_tokens", 0),
              judge_usd=judge.get("usd", 0.0), judge_unresolved=sum(judge.get("unresolved", {}).values()))
        write_samples(out_dir, opens, probes, outputs, sc.per_item)
        write_alpaca_eval(out_dir, opens, outputs, generator_names(cfg, cons))
        scores["cost"] = {"wall_s": round(m.wall_s, 1), "usd": m.usd_so_far(), "device": m.device,
                          "prompt_tokens": int(m.fields.get("prompt_tokens", 0)),
                          "output_tokens": int(m.fields.get("output_tokens", 0))}
    # The ledger line is appended as the `with` closes; the done marker comes after it.
    files.write_json(out_dir / "scores.json", scores)  # LAST: its presence marks the stage done
    return scores


def _rows(run_dir: Path, name: str) -> list[dict]:
    return files.read_jsonl(run_dir / "data" / name)


def reference(outputs: dict, models: list[str]) -> tuple[list[str], np.ndarray]:
    """The teacher's open outputs (the reference), and which items can be scored against them:
    the teacher said something and no model skipped the item for length."""
    teacher_open = outputs["teacher"]["open"]
    valid = np.array([t is not None and t.strip() != "" and all(outputs[r]["open"][i] is not None for r in models)
                      for i, t in enumerate(teacher_open)], bool)
    return [t or "" for t in teacher_open], valid


def score_items(s: Scoring, models: list[str]) -> dict:
    """Fill per_item[metric][role] (nan = undefined for that item) for every metric but the judge's."""
    outputs, ref, valid, per_item, probes = s.outputs, s.ref, s.valid, s.per_item, s.probes
    for name, fn in (("rougeL_f", rouge_l_f), ("chrf", M.chrf)):
        per_item[name] = {r: np.array([fn(o, t) if ok and o is not None else np.nan
                                       for o, t, ok in zip(outputs[r]["open"], ref, valid)]) for r in outputs}
    notes = {"embedding": model_scores.embedding_scores(s), "token_fidelity": model_scores.token_scores(s)}
    if "embed_cos" in per_item:  # an output skipped for length has no embedding
        for r, v in per_item["embed_cos"].items():
            v[[o is None for o in outputs[r]["open"]]] = np.nan
    pvalid = np.array([all(outputs[r]["probe"][i] is not None for r in models) for i in range(len(probes))], bool)

    def probe_scores(fn) -> dict[str, np.ndarray]:
        return {r: np.where(pvalid, [float(fn(o or "", p)) for o, p in zip(outputs[r]["probe"], probes)], np.nan)
                for r in models}

    acc = probe_scores(probe_correct)
    ind = np.array([bool(p["in_distribution"]) for p in probes], bool)
    per_item["accuracy"] = acc
    per_item["accuracy_in_dist"] = {r: np.where(ind, v, np.nan) for r, v in acc.items()}
    per_item["accuracy_ood"] = {r: np.where(~ind, v, np.nan) for r, v in acc.items()}
    per_item["strict_match"] = probe_scores(probe_strict)
    notes["teacher_empty"] = sum(1 for t in outputs["teacher"]["open"] if t is not None and not t.strip())
    return notes


def stack_students(per_item: dict[str, dict[str, np.ndarray]], students: list[str]) -> dict:
    """per_item with one (reps, items) array per model: the students' rows stacked under "student"."""
    out = {}
    for metric, roles in per_item.items():
        stacked = {r: np.atleast_2d(v) for r, v in roles.items() if r not in students}
        rows = [np.asarray(roles[r], float) for r in students if r in roles]
        if rows:
            stacked["student"] = np.vstack(rows)
        out[metric] = stacked
    return out


def capability_report(s: Scoring, students: list[str], distribution: dict) -> dict:
    """How the probes were split, what chance scores, per-category accuracy, transfer and repeats."""
    probes, acc = s.probes, s.per_item["accuracy"]
    ind = [p for p in probes if p["in_distribution"]]
    ood = [p for p in probes if not p["in_distribution"]]
    by_cat: dict[str, dict] = {}
    for cat in sorted({p["category"] for p in probes}):
        ix = [i for i, p in enumerate(probes) if p["category"] == cat]
        row = {r: M.finite_or_none(M.nanmean(v[ix])) for r, v in acc.items() if r not in students}
        row["student"] = M.finite_or_none(np.nanmean([M.nanmean(acc[r][ix]) for r in students]))
        row.update(n=len(ix), in_distribution=sum(1 for i in ix if probes[i]["in_distribution"]),
                   floor=floors([probes[i] for i in ix])["best_constant"])
        by_cat[cat] = row
    correct = {"teacher": acc["teacher"][None], "base": acc["base"][None],
               "student": np.vstack([acc[r] for r in students])}
    replies = {"teacher": [s.outputs["teacher"]["probe"]], "base": [s.outputs["base"]["probe"]],
               "student": [s.outputs[r]["probe"] for r in students]}
    return {"distribution": distribution,
            "floors": {"in_dist": floors(ind), "ood": floors(ood), "all": floors(probes)},
            "by_category": by_cat, **capability.transfer(correct, replies, probes)}


def describe(s: Scoring, gen, students: list[str], notes: dict, run_dir: Path) -> dict:
    """The parts of scores.json that say what was measured and what was left out."""
    cfg, cons, opens, probes = s.cfg, s.cons, s.opens, s.probes
    empty = {r: sum(1 for o in gen.outputs[r]["open"] + gen.outputs[r]["probe"] if o is not None and not o.strip())
             for r in (c.role for c in cons)}
    done = files.read_json(run_dir / "data" / "done.json", "") if (run_dir / "data" / "done.json").is_file() else {}
    teacher = next(c for c in cons if c.role == "teacher")
    return {
        "name": cfg.name,
        "models": {c.role: {"ref": c.ref, "path": str(c.path) if c.path else None,
                            "prompt": (c.reference.format if c.reference else "chat") if c.role == "teacher"
                            else ("chat" if c.chat else "alpaca"), "backend": c.backend} for c in cons},
        "students": students,
        "ceiling": f"the teacher's second answer, sampled at temperature {teacher.reference.sampling[0]} "
                   f"(top_p {teacher.reference.sampling[1]}), scored against its greedy one",
        "counts": {"open_items": len(opens), "held_out_items": sum(1 for o in opens if o["source"] == "held_out"),
                   "probes": len(probes), "probes_in_distribution": sum(1 for p in probes if p["in_distribution"]),
                   "probes_ood": sum(1 for p in probes if not p["in_distribution"]),
                   "skipped_context": gen.skipped, "empty_outputs": empty, "teacher_empty": notes["teacher_empty"],
                   "token_fidelity": notes["token_fidelity"], "embedding": notes["embedding"],
                   "judge": {k: v for k, v in notes["judge"].items() if k != "prefs"},
                   "contaminated_training_rows": (done.get("dropped") or {}).get("contaminated", 0) if done else None},
        "settings": cfg.evaluate.model_dump(mode="json"),
    }


def _f(x):
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def write_samples(out_dir: Path, opens, probes, outputs, per_item) -> None:
    """eval/samples.jsonl: every prompt, every output (the teacher's sampled one as "resample")
    and every per-item score; probes with their nearest training row's ROUGE-L."""
    rows = []
    for kind, items in (("open", opens), ("probe", probes)):
        for i, it in enumerate(items):
            row = {"kind": kind, **{k: it[k] for k in ("id", "category", "instruction", "input") if k in it}}
            if kind == "probe":
                row.update({k: it[k] for k in ("answers", "in_distribution", "label_in_distribution", "nearest_rouge")
                            if k in it})
            roles = [r for r in outputs if kind in outputs[r]]
            row["outputs"] = {r: outputs[r][kind][i] for r in roles}
            row["scores"] = {r: {m: _f(v[r][i]) for m, v in per_item.items()
                                 if r in v and len(v[r]) == len(items) and _kind(m) == kind} for r in roles}
            rows.append(row)
    files.write_jsonl(out_dir / "samples.jsonl", rows)


def _kind(metric: str) -> str:
    from replicate.evaluate.scores import SPEC

    return SPEC[metric].items if metric in SPEC else "open"


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

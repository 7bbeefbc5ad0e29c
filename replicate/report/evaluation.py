"""eval/scores.json -> the evaluation's tables: the one renderer behind `replicate evaluate`'s
console table, eval/summary.md and the report's "How much of the teacher was copied" section.

gap_closed = (student - base) / (ceiling - base): 0 = no better than the base, 1 = the ceiling
(for output fidelity the teacher's own second, sampled answer; otherwise the teacher).
illusion gap = gap_closed[style or fidelity] - gap_closed[capability]: how much more the copy
*sounds* like its teacher than it *is* like it (docs/evaluation.md defines every metric).
Every number carries its 95 % interval; a ratio whose ceiling - base interval includes 0 is
marked "not measurable".
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from replicate import files, tables

SCORES = "scores.json"
DEFINITION = ("gap_closed = (student - base) / (ceiling - base): 0 = the base, 1 = the ceiling (output fidelity: "
              "the teacher's second, sampled answer against its first; otherwise the teacher). Illusion gap = "
              "gap_closed[fidelity or style] - gap_closed[capability]. [95% intervals]; 'not measurable' = the "
              "interval of ceiling - base includes 0, so the ratio means little.")


class Scores(BaseModel):
    """What every reader of scores.json relies on (the rest is free-form, evaluate/stage.py writes it)."""

    model_config = ConfigDict(extra="allow")
    metrics: dict[str, dict[str, Any]] = Field(min_length=1)
    gap_closed: dict[str, Any]
    counts: dict[str, Any]


def read_scores(run_dir: str | Path) -> dict | None:
    """A run's eval/scores.json, or None when the evaluation has not finished."""
    path = Path(run_dir) / "eval" / SCORES
    if not path.exists():
        return None
    scores = files.read_json_object(path, "")
    files.check_model(str(path), scores, Scores, " (not the scores `replicate evaluate` writes: delete it and rerun "
                      "evaluate)")
    return scores


def _value(x):
    """A score as written by evaluate: a number, or {"mean", "ci": [lo, hi]}."""
    return x.get("mean") if isinstance(x, dict) else x


def _ci(x) -> list | None:
    ci = x.get("ci") if isinstance(x, dict) else None
    return list(ci) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None


def _stat(x) -> dict:
    return {"mean": _value(x), "ci": _ci(x), "measurable": x.get("gap_measurable") if isinstance(x, dict) else None,
            "why": x.get("why") if isinstance(x, dict) else None}


def _note(scores: dict) -> str:
    """What was measured: item counts, skips, seeds, the judge, contamination, the stage's cost."""
    c, cost = scores.get("counts") or {}, scores.get("cost") or {}
    if c.get("open_items") is None:
        return ""
    parts = [f"{c['open_items']} open items" + (f" ({c['held_out_items']} held out)" if "held_out_items" in c else ""),
             f"{c.get('probes', 0)} probes" + (f" ({c['probes_in_distribution']} in / {c['probes_ood']} out of "
                                               "distribution)" if "probes_ood" in c else "")]
    if len(scores.get("students") or []) > 1:
        parts.append(f"{len(scores['students'])} fine-tuning seeds (intervals include their spread)")
    if "skipped_context" in c:
        parts.append(f"skipped for length: {c['skipped_context']}")
    if "empty_outputs" in c:
        parts.append(f"empty outputs: {c['empty_outputs']}")
    if c.get("contaminated_training_rows") is not None:
        parts.append(f"training rows dropped as too close to an eval item: {c['contaminated_training_rows']}")
    judge = c.get("judge") or {}
    if "votes" in judge:
        cons = {r: tables.fixed(v) for r, v in (judge.get("consistency") or {}).items() if v is not None}
        parts.append(f"judge {judge['model']}: {sum(judge['unresolved'].values())} of {sum(judge['votes'].values())} "
                     f"votes unresolved, order-swap consistency {cons}")
        if judge.get("self_preference"):
            parts.append("WARNING " + judge["self_preference"])
    elif judge.get("note"):
        parts.append(judge["note"])
    tf = c.get("token_fidelity") or {}
    if tf.get("teacher"):
        parts.append(f"token fidelity: {tf['teacher']}")
    if cost:
        parts.append(f"{tables.duration(cost.get('wall_s'))}, {tables.money(cost.get('usd'))} on {cost.get('device')}")
    return "; ".join(parts) + "."


def summarize_scores(scores: dict) -> dict:
    """scores.json flattened for tables and report.json."""
    metrics = []
    for name, m in (scores.get("metrics") or {}).items():
        if not isinstance(m, dict):
            continue
        ceiling = m.get("ceiling", "teacher")
        metrics.append({"name": name, "family": m.get("family"), "base": _value(m.get("base")),
                        "student": _value(m.get("student")), "teacher": _value(m.get("teacher")),
                        "student_per_seed": (m.get("student") or {}).get("per_seed"),
                        "ceiling": ceiling, "ceiling_value": _value(m.get(ceiling)), "unit": m.get("unit", ""),
                        "student_minus_base": _stat(m.get("student_minus_base")),
                        "ceiling_minus_base": _stat(m.get("ceiling_minus_base")),
                        "gap_closed": _value(m.get("gap_closed")), "gap_closed_ci": _ci(m.get("gap_closed")),
                        "gap_measurable": (m.get("gap_closed") or {}).get("gap_measurable"),
                        "control": _value(m.get("control")), "control_gap_closed": _stat(m.get("control_gap_closed")),
                        "why": m.get("why") or (m.get("gap_closed") or {}).get("why"),
                        "higher_is_better": m.get("higher_is_better", True), "headline": m.get("headline", True)})
    families = {fam: {"gap_closed": _value(v), "ci": _ci(v), "why": v.get("why") if isinstance(v, dict) else None,
                      "gap_measurable": v.get("gap_measurable") if isinstance(v, dict) else None,
                      "metrics": v.get("metrics") or [] if isinstance(v, dict) else [],
                      "left_out": list((v.get("left_out") or {}) if isinstance(v, dict) else [])}
                for fam, v in (scores.get("gap_closed") or {}).items()}
    counts = scores.get("counts") or {}
    models = {r: {"ref": m.get("ref"), "prompt": m.get("prompt")} for r, m in (scores.get("models") or {}).items()
              if isinstance(m, dict)}
    out = {"metrics": metrics, "families": families, "open_items": counts.get("open_items"),
           "probes": counts.get("probes"), "models": models, "seeds": len(scores.get("students") or ["student"]),
           "ceiling": scores.get("ceiling"), "capability": scores.get("capability") or {}, "note": _note(scores)}
    for key in ("illusion_gap", "illusion_gap_style"):
        s = _stat(scores.get(key))
        out[key], out[key + "_ci"], out[key + "_measurable"], out[key + "_why"] = s["mean"], s["ci"], s["measurable"], \
            s["why"]
    return out


def measurable_text(flag) -> str:
    return "yes" if flag else ("not measurable" if flag is False else tables.MISSING)


def gap_text(point, ci, measurable=None, why=None) -> str:
    """`0.15 [0.07, 0.22]`, with "(not measurable)" when the ceiling - base interval includes 0."""
    if point is None:
        return why or tables.MISSING
    return tables.interval(point, ci) + (" (not measurable)" if measurable is False else "")


def _native(stat: dict, unit: str) -> str:
    if stat.get("mean") is None:
        return tables.MISSING
    text = f"{stat['mean']:+.3g}"
    if stat.get("ci") and stat["ci"][0] is not None:
        text += f" [{stat['ci'][0]:+.3g}, {stat['ci'][1]:+.3g}]"
    return text + (f" {unit}" if unit else "")


def eval_tables(ev: dict) -> tuple[tuple[list, list], tuple[list, list]]:
    """(family head, rows), (metric head, rows)."""
    fhead = ["family", "gap closed [95% CI]", "gap measurable", "mean of"]
    fbody = [[fam, gap_text(v["gap_closed"], v["ci"], None, v.get("why")), measurable_text(v.get("gap_measurable")),
              ", ".join(v.get("metrics") or []) + (f" ({', '.join(v['left_out'])} left out: gap not measurable)"
                                                   if v.get("left_out") else "")]
             for fam, v in ev["families"].items()]
    for key, label in (("illusion_gap", "illusion gap (fidelity - capability)"),
                       ("illusion_gap_style", "illusion gap (style - capability)")):
        if ev.get(key) is not None or ev.get(key + "_why"):
            fbody.append([label, gap_text(ev[key], ev.get(key + "_ci"), None, ev.get(key + "_why")),
                          measurable_text(ev.get(key + "_measurable")), ""])
    head = ["metric", "family", "base", "student", "teacher", "ceiling", "student - base [95% CI]",
            "gap closed [95% CI]", "measurable"]
    body = []
    for m in ev["metrics"]:
        label = m["name"] + ("" if m.get("higher_is_better", True) else " (lower is better)") + \
            ("" if m.get("headline", True) else " *")
        ceiling = "= teacher" if m["ceiling"] == "teacher" else f"{tables.num(m['ceiling_value'])} ({m['ceiling']})"
        gc = gap_text(m["gap_closed"], m["gap_closed_ci"], None, m.get("why"))
        student = tables.num(m["student"])
        if m.get("student_per_seed"):
            student += " (seeds: " + ", ".join(tables.num(x) for x in m["student_per_seed"]) + ")"
        body.append([label, m["family"] or tables.MISSING, tables.num(m["base"]), student,
                     tables.num(m["teacher"]), ceiling, _native(m["student_minus_base"], m.get("unit", "")), gc,
                     measurable_text(m.get("gap_measurable"))])
    return (fhead, fbody), (head, body)


def capability_table(ev: dict) -> tuple[list, list] | None:
    """Transfer, repeated teacher errors, chance floors and how the probes were split."""
    cap = ev.get("capability") or {}
    if not cap:
        return None

    def rate(r: dict | None) -> str:
        if not r or r.get("rate") is None:
            return tables.MISSING
        return f"{tables.interval(r['rate'], r.get('ci'))} ({r['count']} of {r['of']})"

    rows = []
    if "transfer" in cap:
        rows.append(["P(student right | teacher right, base wrong)", rate(cap["transfer"])])
        rows.append(["P(student right | teacher wrong, base wrong)", rate(cap.get("without_teacher"))])
    rep = cap.get("repeats_teacher_errors") or {}
    if rep:
        rows.append(["student repeats the teacher's wrong answer", rate(rep.get("student"))])
        rows.append(["base gives the teacher's wrong answer", rate(rep.get("base"))])
    for key, label in (("in_dist", "in distribution"), ("ood", "out of distribution")):
        f = (cap.get("floors") or {}).get(key) or {}
        if f.get("best_constant") is not None:
            rows.append([f"chance floor, {label}: best constant reply / random label",
                         (f"{tables.fixed(f['best_constant'])} ('{f['best_constant_reply']}') / "
                          f"{tables.fixed(f['random_label'])}")])
    dist = cap.get("distribution") or {}
    if dist:
        how = dist.get("source", "")
        if dist.get("threshold") is not None:
            how += f"; in distribution = nearest-row ROUGE-L >= {dist['threshold']:.2f} ({dist['threshold_from']})"
        if dist.get("agrees_with_labels") is not None:
            how += f"; agrees with the hand labels on {dist['agrees_with_labels']:.0%}"
        rows.append(["in / out of distribution", f"{dist.get('in')} / {dist.get('out')}: {how}"])
    return ["capability", "value [95% CI]"], rows


def _intro(ev: dict) -> str:
    models = ", ".join(f"{r}: {m['ref']} ({m['prompt']} prompt)" for r, m in ev.get("models", {}).items())
    starred = any(not m.get("headline", True) for m in ev["metrics"])
    return " ".join(x for x in (DEFINITION, f"Models: {models}." if models else "",
                                f"Ceiling of output fidelity: {ev['ceiling']}." if ev.get("ceiling") else "",
                                "* = reported, not in its family's gap closed." if starred else "",
                                ev.get("note", "")) if x)


def eval_md(ev: dict, heading: str = "## How much of the teacher was copied") -> str:
    (fh, fb), (h, b) = eval_tables(ev)
    out = [heading, "", _intro(ev), "", tables.markdown(fh, fb), "", tables.markdown(h, b)]
    cap = capability_table(ev)
    if cap:
        out += ["", tables.markdown(*cap)]
    return "\n".join(out)


def eval_html(ev: dict) -> str:
    (fh, fb), (h, b) = eval_tables(ev)
    cap = capability_table(ev)
    return ("<h2>How much of the teacher was copied</h2>" + f"<p class=note>{html.escape(_intro(ev))}</p>"
            + tables.html_table(fh, fb) + tables.html_table(h, b) + (tables.html_table(*cap) if cap else ""))


def write_summary(eval_dir: str | Path, scores: dict) -> Path:
    """eval/summary.md: the evaluation's tables on their own."""
    path = Path(eval_dir) / "summary.md"
    files.write_atomic(path, eval_md(summarize_scores(scores), heading=f"# Evaluation: {scores.get('name', '')}") + "\n")
    return path


def print_summary(scores: dict) -> None:
    """The same tables on the console (`replicate evaluate`)."""
    from rich.console import Console

    ev = summarize_scores(scores)
    (fh, fb), (h, b) = eval_tables(ev)
    tables.console_table(f"evaluate {scores.get('name', '')}: how much of the teacher did the student copy?", fh, fb)
    tables.console_table("per metric (means; student - base in the metric's units; gap closed)", h, b)
    cap = capability_table(ev)
    if cap:
        tables.console_table("capability beyond accuracy", *cap)
    Console(highlight=False).print(_intro(ev), markup=False)

"""eval/scores.json -> the evaluation's tables: the one renderer behind `replicate evaluate`'s
console table, eval/summary.md and the report's "How much of the teacher was copied" section.

gap_closed = (student - base) / (teacher - base): 0 = no better than the base, 1 = the teacher.
illusion gap = gap_closed[style or fidelity] - gap_closed[capability]: how much more the copy
*sounds* like its teacher than it *is* like it (docs/evaluation.md defines every metric).
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from replicate import files, tables
from replicate.errors import UserError

SCORES = "scores.json"
DEFINITION = ("gap_closed = (student - base) / (teacher - base): 0 = the base, 1 = the teacher; illusion gap = "
              "gap_closed[fidelity or style] - gap_closed[capability].")


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
    try:
        Scores.model_validate(scores)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']} (not the scores `replicate "
                        "evaluate` writes: delete it and rerun evaluate)") from None
    return scores


def _value(x):
    """A score as written by evaluate: a number, or {"mean", "ci": [lo, hi]}."""
    return x.get("mean") if isinstance(x, dict) else x


def _ci(x) -> list | None:
    ci = x.get("ci") if isinstance(x, dict) else None
    return list(ci) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None


def _why(x) -> str | None:
    return x.get("why") if isinstance(x, dict) else None


def _note(scores: dict) -> str:
    """What was measured: item counts, skips, the judge, the stage's cost (when scores.json says)."""
    c, cost = scores.get("counts") or {}, scores.get("cost") or {}
    if c.get("open_items") is None:
        return ""
    parts = [f"{c['open_items']} open items" + (f" ({c['held_out_items']} held out)" if "held_out_items" in c else ""),
             f"{c.get('probes', 0)} probes" + (f" ({c['probes_in_distribution']} in / {c['probes_ood']} out of "
                                               "distribution)" if "probes_ood" in c else "")]
    if "skipped_context" in c:
        parts.append(f"skipped for length: {c['skipped_context']}")
    if "empty_outputs" in c:
        parts.append(f"empty outputs: {c['empty_outputs']}")
    judge = c.get("judge") or {}
    if "votes" in judge:
        parts.append(f"judge {judge['model']}: {sum(judge['unresolved'].values())} of "
                     f"{sum(judge['votes'].values())} votes unresolved")
    elif judge.get("note"):
        parts.append(judge["note"])
    if cost:
        parts.append(f"{tables.duration(cost.get('wall_s'))}, {tables.money(cost.get('usd'))} on {cost.get('device')}")
    return "; ".join(parts) + "."


def summarize_scores(scores: dict) -> dict:
    """scores.json flattened for tables and report.json."""
    metrics = []
    for name, m in (scores.get("metrics") or {}).items():
        if not isinstance(m, dict):
            continue
        gc = m.get("gap_closed")
        metrics.append({"name": name, "family": m.get("family"), "base": _value(m.get("base")),
                        "student": _value(m.get("student")), "teacher": _value(m.get("teacher")),
                        "gap_closed": _value(gc), "gap_closed_ci": _ci(gc), "why": _why(gc),
                        "higher_is_better": m.get("higher_is_better", True), "headline": m.get("headline", True)})
    families = {fam: {"gap_closed": _value(v), "ci": _ci(v), "why": _why(v)}
                for fam, v in (scores.get("gap_closed") or {}).items()}
    ill, ill_style = scores.get("illusion_gap"), scores.get("illusion_gap_style")
    counts = scores.get("counts") or {}
    models = {r: {"ref": m.get("ref"), "prompt": m.get("prompt")} for r, m in (scores.get("models") or {}).items()
              if isinstance(m, dict)}
    return {"metrics": metrics, "families": families, "illusion_gap": _value(ill), "illusion_gap_ci": _ci(ill),
            "illusion_gap_style": _value(ill_style), "illusion_gap_style_ci": _ci(ill_style),
            "open_items": counts.get("open_items"), "probes": counts.get("probes"), "models": models,
            "note": _note(scores)}


def _gap(point, ci, why) -> str:
    return tables.interval(point, ci) if point is not None else (why or tables.MISSING)


def eval_tables(ev: dict) -> tuple[tuple[list, list], tuple[list, list]]:
    """(family head, rows), (metric head, rows)."""
    fhead = ["family", "gap_closed [95% CI]"]
    fbody = [[fam, _gap(v["gap_closed"], v["ci"], v.get("why"))] for fam, v in ev["families"].items()]
    fbody.append(["illusion gap (fidelity - capability)", _gap(ev["illusion_gap"], ev.get("illusion_gap_ci"), None)])
    if ev.get("illusion_gap_style") is not None:
        fbody.append(["illusion gap (style - capability)",
                      _gap(ev["illusion_gap_style"], ev.get("illusion_gap_style_ci"), None)])
    head = ["metric", "family", "base", "student", "teacher", "gap_closed", "95% CI"]
    body = []
    for m in ev["metrics"]:
        label = m["name"] + ("" if m.get("higher_is_better", True) else " (lower is better)") + \
            ("" if m.get("headline", True) else " *")
        gc = tables.fixed(m["gap_closed"]) if m["gap_closed"] is not None else (m.get("why") or tables.MISSING)
        ci = m["gap_closed_ci"]
        body.append([label, m["family"] or tables.MISSING, tables.num(m["base"]), tables.num(m["student"]),
                     tables.num(m["teacher"]), gc, f"[{tables.fixed(ci[0])}, {tables.fixed(ci[1])}]" if ci else "-"])
    return (fhead, fbody), (head, body)


def _intro(ev: dict) -> str:
    models = ", ".join(f"{r}: {m['ref']} ({m['prompt']} prompt)" for r, m in ev.get("models", {}).items())
    starred = any(not m.get("headline", True) for m in ev["metrics"])
    return " ".join(x for x in (DEFINITION, f"Models: {models}." if models else "",
                                "* = reported, not in its family's gap closed." if starred else "",
                                ev.get("note", "")) if x)


def eval_md(ev: dict, heading: str = "## How much of the teacher was copied") -> str:
    (fh, fb), (h, b) = eval_tables(ev)
    return "\n".join([heading, "", _intro(ev), "", tables.markdown(fh, fb), "", tables.markdown(h, b)])


def eval_html(ev: dict) -> str:
    (fh, fb), (h, b) = eval_tables(ev)
    return ("<h2>How much of the teacher was copied</h2>" + f"<p class=note>{html.escape(_intro(ev))}</p>"
            + tables.html_table(fh, fb) + tables.html_table(h, b))


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
    tables.console_table("per metric (mean; gap closed and its 95% interval)", h, b)
    Console(highlight=False).print(_intro(ev), markup=False)

"""The report's evaluation and copy-curve sections: eval/scores.json -> tables (md and html).

gap_closed = (student - base) / (teacher - base): 0 = no better than the base, 1 = the teacher.
illusion gap = gap_closed[style/fidelity] - gap_closed[capability]: how much more the copy
*sounds* like its teacher than it *is* like it (docs/evaluation.md defines every metric).
"""
from __future__ import annotations

import html

FAMILIES = ("style", "fidelity", "capability")


def _value(x):
    """A score as written by evaluate: a number, or {"mean"/"value", "ci": [lo, hi]}."""
    if isinstance(x, dict):
        for k in ("mean", "value", "point"):
            if k in x:
                return x[k]
        return None
    return x


def _ci(x) -> list | None:
    if isinstance(x, dict):
        for k in ("ci", "ci95"):
            if isinstance(x.get(k), (list, tuple)) and len(x[k]) == 2:
                return list(x[k])
        if "low" in x and "high" in x:
            return [x["low"], x["high"]]
    return None


def summarize_scores(scores: dict) -> dict:
    """Flatten scores.json into {"metrics": [...], "families": {...}, "illusion_gap": x}."""
    metrics = []
    for name, m in (scores.get("metrics") or {}).items():
        if not isinstance(m, dict):
            continue
        gc = m.get("gap_closed")
        metrics.append({
            "name": name,
            "family": m.get("family"),
            "base": _value(m.get("base")),
            "student": _value(m.get("student")),
            "teacher": _value(m.get("teacher")),
            "gap_closed": _value(gc),
            "gap_closed_ci": _ci(gc),
        })
    families = {}
    for fam, v in (scores.get("gap_closed") or {}).items():
        families[fam] = {"gap_closed": _value(v), "ci": _ci(v)}
    ill, ill_style = scores.get("illusion_gap"), scores.get("illusion_gap_style")
    counts = scores.get("counts") or {}
    return {"metrics": metrics, "families": families, "illusion_gap": _value(ill), "illusion_gap_ci": _ci(ill),
            "illusion_gap_style": _value(ill_style), "illusion_gap_style_ci": _ci(ill_style),
            "open_items": counts.get("open_items"), "probes": counts.get("probes")}


def _f(x, nd: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) else str(x)


def _ci_s(ci) -> str:
    return f"[{_f(ci[0], 2)}, {_f(ci[1], 2)}]" if ci else "-"


def eval_tables(ev: dict) -> tuple[tuple[list, list], tuple[list, list]]:
    head = ["metric", "family", "base", "student", "teacher", "gap_closed", "95% CI"]
    body = [[m["name"], m["family"] or "-", _f(m["base"]), _f(m["student"]), _f(m["teacher"]),
             _f(m["gap_closed"], 2), _ci_s(m["gap_closed_ci"])] for m in ev["metrics"]]
    fhead = ["family", "gap_closed", "95% CI"]
    fbody = [[fam, _f(v["gap_closed"], 2), _ci_s(v["ci"])] for fam, v in ev["families"].items()]
    fbody.append(["illusion gap (fidelity - capability)", _f(ev["illusion_gap"], 2), _ci_s(ev.get("illusion_gap_ci"))])
    if ev.get("illusion_gap_style") is not None:
        fbody.append(["illusion gap (style - capability)", _f(ev["illusion_gap_style"], 2),
                      _ci_s(ev.get("illusion_gap_style_ci"))])
    return (head, body), (fhead, fbody)


def _counts(ev: dict) -> str:
    if ev.get("open_items") is None:
        return ""
    return f" Items: {ev['open_items']} open instructions, {ev['probes']} capability probes."


def eval_md(ev: dict) -> str:
    from replicate.report.build import md_table

    (h, b), (fh, fb) = eval_tables(ev)
    return "\n".join(["## How much of the teacher was copied", "",
                      "gap_closed = (student - base) / (teacher - base); illusion gap = "
                      "gap_closed[fidelity or style] - gap_closed[capability]." + _counts(ev), "",
                      md_table(fh, fb), "", md_table(h, b)])


def eval_html(ev: dict) -> str:
    from replicate.report.build import html_table

    (h, b), (fh, fb) = eval_tables(ev)
    return ("<h2>How much of the teacher was copied</h2><p class=note>gap_closed = (student - base) / "
            "(teacher - base); illusion gap = gap_closed[fidelity or style] - gap_closed[capability]."
            + html.escape(_counts(ev)) + "</p>"
            + html_table(fh, fb) + html_table(h, b))


def sweep_tables(sw: dict) -> tuple[tuple[list, list], tuple[list, list]]:
    fams = [f for f in FAMILIES if any(f in p["families"] for p in sw["points"])]
    head = ["examples", "$ of this copy (its share of generation + fine-tuning)"] + [f"{f} gap_closed [95% CI]" for f in fams]
    body = []
    for p in sw["points"]:
        row = [str(p["examples"]), _f(p.get("usd"), 4)]
        for f in fams:
            v = p["families"].get(f) or {}
            row.append(f"{_f(v.get('gap_closed'), 2)} {_ci_s(v.get('ci'))}")
        body.append(row)
    fhead = ["family", "g_max", "n50 (half of g_max)", "examples to close 50%", "$ here (measured rate)",
             f"$ at full scale ({sw.get('full_scale', '-')})"]
    fbody = []
    for fam, fit in sw["fits"].items():
        fbody.append([fam, _f(fit.get("g_max"), 2), _f(fit.get("n50"), 0), _f(fit.get("examples_50"), 0)
                      if fit.get("examples_50") else fit.get("why", "not reached"),
                      _f(fit.get("usd_50_measured"), 4), _f(fit.get("usd_50_full_scale"), 2)])
    return (head, body), (fhead, fbody)


def sweep_md(sw: dict) -> str:
    from replicate.report.build import md_table

    (h, b), (fh, fb) = sweep_tables(sw)
    return "\n".join(["## Copy curve (sweep over teacher examples)", "",
                      ("Fit per family: g(n) = g_max * n / (n + n50). Examples to close 50% of the gap: "
                       "g(n) = 0.5, i.e. n = n50 * 0.5 / (g_max - 0.5)."), "", md_table(h, b), "",
                      md_table(fh, fb), "", sw.get("note", "")])


def sweep_html(sw: dict) -> str:
    from replicate.report.build import html_table

    (h, b), (fh, fb) = sweep_tables(sw)
    return ("<h2>Copy curve (sweep over teacher examples)</h2><p class=note>Fit per family: g(n) = g_max * n /"
            " (n + n50); examples to close 50% of the gap solve g(n) = 0.5.</p>" + html_table(h, b)
            + html_table(fh, fb) + f"<p class=note>{html.escape(sw.get('note', ''))}</p>")

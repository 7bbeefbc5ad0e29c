"""The evaluation's summary table: printed (rich) at the end of `replicate evaluate`, and written
as Markdown to eval/summary.md (what docs/evaluation.md shows). Rows: every metric's mean for
base / student / teacher and its gap closed [95% CI], a gap-closed row per family, the illusion gaps.
"""
from __future__ import annotations

FAMILIES = ("style", "fidelity", "capability")


def fmt(d: dict | None, nd: int = 3, ci: bool = True) -> str:
    """`mean [lo, hi]` with nd significant digits; the reason (or '-') when undefined."""
    if not d or d.get("mean") is None:
        return (d or {}).get("why", "n/a (teacher = base)" if d and "gap_measurable" in d else "-")
    mean = d["mean"] + 0.0  # + 0.0 turns -0.0 into 0.0
    lo, hi = d.get("ci") or (None, None)
    text = f"{mean:.{nd}g}"
    if ci and lo is not None:
        text += f" [{lo + 0.0:.{nd}g}, {hi + 0.0:.{nd}g}]"
    return text


def summary_rows(scores: dict) -> list[tuple[str, str, str, str, str, bool]]:
    """(label, base, student, teacher, gap closed, is a summary row) in family order."""
    rows = []
    for fam in FAMILIES:
        metrics = [(n, m) for n, m in scores["metrics"].items() if m["family"] == fam]
        for name, m in metrics:
            label = name + ("" if m["higher_is_better"] else " (lower is better)") + ("" if m["headline"] else " *")
            rows.append((label, fmt(m["base"], ci=False), fmt(m["student"], ci=False), fmt(m["teacher"], ci=False),
                         fmt(m.get("gap_closed"), 2), False))
        if metrics:
            rows.append((f"{fam} gap closed", "", "", "", fmt(scores["gap_closed"].get(fam), 2), True))
    for key in ("illusion_gap", "illusion_gap_style"):
        if scores.get(key):
            rows.append((f"{key} = {scores[key]['definition']}", "", "", "", fmt(scores[key], 2), True))
    return rows


def summary_note(scores: dict) -> str:
    c, cost = scores["counts"], scores["cost"]
    judge = c["judge"]
    jtxt = (f"judge {judge['model']}: {sum(judge['unresolved'].values())} of {sum(judge['votes'].values())} "
            "votes unresolved" if "votes" in judge else judge.get("note", "no judge"))
    return (f"\\* not in the family's gap closed. {c['open_items']} open items ({c['held_out_items']} held out), "
            f"{c['probes']} probes ({c['probes_in_distribution']} in / {c['probes_ood']} out of distribution); "
            f"skipped for length: {c['skipped_context']}; empty outputs: {c['empty_outputs']}; {jtxt}; "
            f"{cost['wall_s']:.0f} s, ${cost['usd']:.4f} on {cost['device']}.")


def summary_markdown(scores: dict) -> str:
    models = scores.get("models", {})
    head = ", ".join(f"{r}: `{m['ref']}` ({m['prompt']} prompt)" for r, m in models.items())
    lines = [f"Models: {head}.", "", "| metric | base | student | teacher | gap closed [95% CI] |",
             "|---|---|---|---|---|"]
    for label, b, s, t, g, bold in summary_rows(scores):
        cells = [label, b, s, t, g]
        if bold:
            cells = [f"**{cells[0]}**", "", "", "", f"**{g}**"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines + ["", summary_note(scores), ""])


def print_summary(scores: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console(width=max(Console().width, 120))
    t = Table(title=f"evaluate {scores.get('name', '')}: how much of the teacher did the student copy? "
                    "(mean; gap closed [95% CI])")
    for col in ("metric", "base", "student", "teacher", "gap closed"):
        t.add_column(col, overflow="fold")
    for label, b, s, te, g, bold in summary_rows(scores):
        style = "bold" if bold else None
        t.add_row(escape(label), b, s, te, escape(g), style=style, end_section=bold)
    con.print(t)
    con.print(escape(summary_note(scores).replace("\\*", "*")))

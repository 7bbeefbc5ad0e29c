"""A report (build.build_report's data) -> Markdown and one self-contained HTML page."""
from __future__ import annotations

import base64
import html

from replicate.report.copy_curve import sweep_html, sweep_md
from replicate.report.copy_risk import card_html, card_md
from replicate.report.copy_risk import headline as risk_headline
from replicate.report.evaluation import eval_html, eval_md, gap_text
from replicate.tables import duration, html_table, markdown, money, num


def _cell(est, meas, ratio, show=num) -> str:
    """`estimated / measured (ratio x)`; a missing side is `-` (the notes under the table say why)."""
    r = f" ({ratio:.2f}x)" if ratio else ""
    return f"{show(est)} / {show(meas)}{r}"


WORK_LABEL = {"output_tokens": "output tokens/s", "trained_tokens": "trained tokens/s"}


def stage_table(rep: dict) -> tuple[list[str], list[list[str]]]:
    head = ["stage", "device", "device-hours", "wall time", "cost (USD)", "work rate (tokens/s)", "measured chunks"]
    body = []
    for s in rep["stages"]:
        e, m, r = s["estimate"], s["measured"], s["ratio"]
        body.append([s["stage"], m.get("device") or e.get("device") or "-",
                     _cell(e.get("device_hours"), m.get("device_hours"), r.get("device_hours")),
                     _cell(e.get("wall_s"), m.get("wall_s"), r.get("wall_s"), duration),
                     _cell(e.get("usd"), m.get("usd"), r.get("usd"), money),
                     _cell(e.get("tokens_per_s"), m.get("tokens_per_s"), r.get("tokens_per_s"))
                     + f" {WORK_LABEL.get(s['work'], s['work'])}",
                     str(m.get("chunks", 0))])
    t = rep["totals"]
    e, m, r = t["estimate"], t["measured"], t["ratio"]
    body.append(["**total**", "", _cell(e["device_hours"], m["device_hours"], r["device_hours"]),
                 _cell(e["wall_s"], m["wall_s"], r["wall_s"], duration),
                 _cell(e["usd"], m["usd"], r["usd"], money), "", ""])
    return head, body


def headline(rep: dict) -> str:
    """What it cost against the estimate, how much was copied (with 95 % intervals and whether
    each gap was measurable at all), and the copy-risk card's summary."""
    t = rep["totals"]
    m, e, r = t["measured"], t["estimate"], t["ratio"]
    estimated = [s["stage"] for s in rep["stages"] if s["estimate"]]
    text = (f"Measured {money(m['usd'])} for {num(m['device_hours'])} device-hours ({duration(m['wall_s'])} of "
            "metered wall time); ")
    if not estimated:
        text += "no stage has an estimate in the ledger."
    else:
        some = "" if len(estimated) == len(rep["stages"]) else f" (for {', '.join(estimated)} only)"
        text += f"the estimate was {money(e['usd'])}{some}" + (
            f" (measured / estimated = {r['usd']:.2f})." if r["usd"] else ".")
    ev = rep.get("evaluation")
    if ev and ev.get("families"):
        fams = ", ".join(f"{k} {gap_text(v['gap_closed'], v['ci'], v.get('gap_measurable'))}"
                         for k, v in ev["families"].items() if v["gap_closed"] is not None)
        text += f" Gap closed [95% CI]: {fams}" if fams else " Gap closed: undefined for every family (see the evaluation)"
        if ev.get("illusion_gap") is not None:
            text += f"; illusion gap {gap_text(ev['illusion_gap'], ev.get('illusion_gap_ci'), ev.get('illusion_gap_measurable'))}"
        text += "."
    if rep.get("copy_risk"):
        text += " " + risk_headline(rep["copy_risk"])
    return text


UNITS = ("Each cell: estimated / measured (ratio = measured / estimated). device-hours: hours of one device "
         "(a GPU, or for `gpu: cpu` the whole CPU) times devices; cost at the run's price table; work rate: "
         "output tokens/s for generate and evaluate, trained tokens/s for finetune.")


def render_md(rep: dict) -> str:
    out = [f"# Replication report: {rep['name']}", ""]
    out.append(f"Run directory `{rep['run_dir']}`; measured on {', '.join(rep['devices']) or 'nothing yet'}.")
    out += ["", headline(rep)]
    if rep.get("copy_risk"):
        out += ["", card_md(rep["copy_risk"])]
    out += ["", "## Cost: estimated vs measured", "", UNITS, ""]
    out.append(markdown(*stage_table(rep)))
    if rep.get("notes"):
        out += ["", "Empty cells (`-`):", ""] + [f"- {n}" for n in rep["notes"]]
    if rep.get("evaluation"):
        out += ["", eval_md(rep["evaluation"])]
    if rep.get("sweep"):
        out += ["", sweep_md(rep["sweep"])]
    return "\n".join(out) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%;
display:block;margin:1em 0}.note{color:#555}ul.warn{color:#8a4b00}"""


def render_html(rep: dict, pngs: dict[str, bytes]) -> str:
    """One file, no external references: CSS inline, PNGs as base64 data URIs."""
    def img(name: str) -> str:
        if name not in pngs:
            return ""
        b64 = base64.b64encode(pngs[name]).decode()
        return f'<img alt="{name}" src="data:image/png;base64,{b64}">'

    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>Replication report: "
              f"{html.escape(rep['name'])}</title><style>{CSS}</style></head><body>"),
             f"<h1>Replication report: {html.escape(rep['name'])}</h1>",
             (f"<p class=note>Run directory <code>{html.escape(rep['run_dir'])}</code>; measured on "
              f"{html.escape(', '.join(rep['devices']) or 'nothing yet')}.</p>"),
             f"<p><b>{html.escape(headline(rep))}</b></p>",
             card_html(rep["copy_risk"]) if rep.get("copy_risk") else "",
             f"<h2>Cost: estimated vs measured</h2><p class=note>{html.escape(UNITS)}</p>",
             html_table(*stage_table(rep))]
    if rep.get("notes"):
        parts.append("<p class=note>Empty cells (-):</p><ul class=note>"
                     + "".join(f"<li>{html.escape(n)}</li>" for n in rep["notes"]) + "</ul>")
    parts += [img("cost_breakdown"), img("estimate_vs_measured")]
    if rep.get("evaluation"):
        parts += [eval_html(rep["evaluation"]), img("gap_closed")]
    if rep.get("sweep"):
        parts += [sweep_html(rep["sweep"]), img("copy_curve")]
    parts.append("</body></html>")
    return "\n".join(parts)

"""A run directory -> report.md, report.html (self-contained) and report.json.

Reads only the ledger (`kind: estimate` and `kind: measured` lines) and eval/scores.json, so a
report can be rebuilt at any time, from a finished run, a stopped one, or a copy of its files.
A sweep directory (runs/<name>-sweep/ with n<N>/ sub-runs) also gets the copy curve.

    replicate report runs/tiny-cpu
"""
from __future__ import annotations

import argparse
import base64
import html
import json
from pathlib import Path

from replicate import meter
from replicate.errors import UserError

STAGES = ("generate", "finetune", "evaluate")
# The token count that measures each stage's work, for tokens/s.
WORK_TOKENS = {"generate": "output_tokens", "finetune": "trained_tokens", "evaluate": "output_tokens"}
FAMILIES = ("style", "fidelity", "capability")


def ledgers(run_dir: Path) -> list[dict]:
    """The run's ledger lines; for a sweep, the root's plus every n<N>/ sub-run's."""
    rows = meter.read_ledger(run_dir)
    for sub in sweep_dirs(run_dir):
        rows += [dict(r, sweep_examples=n) for r in meter.read_ledger(sub) for n in [int(sub.name[1:])]]
    return rows


def sweep_dirs(run_dir: Path) -> list[Path]:
    subs = [p for p in Path(run_dir).glob("n*") if p.is_dir() and p.name[1:].isdigit()]
    return sorted(subs, key=lambda p: int(p.name[1:]))


def _ratio(measured: float | None, estimated: float | None) -> float | None:
    if measured is None or not estimated:
        return None
    return measured / estimated


def stage_rows(rows: list[dict]) -> list[dict]:
    """Per stage: the (last) estimate next to the sum of its measured lines, and their ratio."""
    out = []
    for name in STAGES:
        # A sweep estimates finetune/evaluate once per size: the sum of the estimates is the sweep's.
        ests = [r for r in rows if r.get("stage") == name and r.get("kind") == "estimate"]
        meas = [r for r in rows if r.get("stage") == name and r.get("kind", "measured") == "measured"]
        if not ests and not meas:
            continue
        est = _sum_estimates(ests)
        m = {k: sum(r.get(k) or 0 for r in meas) for k in ("wall_s", "device_hours", "usd")} if meas else {}
        tok = WORK_TOKENS[name]
        if meas:
            m["tokens"] = sum(r.get(tok) or 0 for r in meas)
            m["tokens_per_s"] = m["tokens"] / m["wall_s"] if m["wall_s"] else None
            m["chunks"] = len(meas)
            m["device"] = meas[-1].get("device")
        row = {"stage": name, "work": tok, "estimate": est, "measured": m}
        row["ratio"] = {k: _ratio(m.get(k), est.get(k)) for k in ("device_hours", "wall_s", "usd", "tokens_per_s")}
        out.append(row)
    return out


def _sum_estimates(ests: list[dict]) -> dict:
    if not ests:
        return {}
    # Several sizes of a sweep (one estimate line each, tagged sweep_examples) add up; a plain run
    # has one estimate per stage, the last written wins.
    by_size: dict = {}
    for r in ests:
        by_size[r.get("sweep_examples")] = r
    total = {k: sum(r.get(k) or 0 for r in by_size.values()) for k in ("device_hours", "wall_s", "usd", "usd_low", "usd_high")}
    last = list(by_size.values())[-1]
    total["device"] = last.get("device")
    tps = [r.get("tokens_per_s") for r in by_size.values() if r.get("tokens_per_s")]
    total["tokens_per_s"] = sum(tps) / len(tps) if tps else None
    return total


def totals(stages: list[dict]) -> dict:
    def tot(side: str, k: str) -> float:
        return sum(s[side].get(k) or 0 for s in stages)

    t = {side: {k: tot(side, k) for k in ("device_hours", "wall_s", "usd")} for side in ("estimate", "measured")}
    # A total ratio only means something when every measured stage was also estimated.
    complete = all(s["estimate"] for s in stages if s["measured"])
    t["ratio"] = {k: _ratio(t["measured"][k], t["estimate"][k]) if complete else None
                  for k in ("device_hours", "wall_s", "usd")}
    return t


def read_scores(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "eval" / "scores.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def build_report(run_dir: str | Path) -> dict:
    """Everything the report shows, as plain data (this is report.json)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    rows = ledgers(run_dir)
    if not rows:
        raise UserError(f"{run_dir}: no ledger.jsonl yet (run `replicate run` first)")
    stages = stage_rows(rows)
    rep = {"run_dir": str(run_dir), "name": run_dir.name, "stages": stages, "totals": totals(stages)}
    rep["devices"] = sorted({r["device"] for r in rows if r.get("device") and r.get("kind") == "measured"})
    scores = read_scores(run_dir)
    if scores is not None:
        from replicate.report.evaluation import summarize_scores

        rep["evaluation"] = summarize_scores(scores)
    if sweep_dirs(run_dir):
        from replicate.sweep import copy_curve

        rep["sweep"] = copy_curve(run_dir)
    return rep


# ---- rendering -------------------------------------------------------------------------------


def fmt(x, digits: int = 3) -> str:
    """Numbers for humans: 3 significant digits, '-' for missing."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if x == 0:
        return "0"
    if abs(x) >= 1000 or abs(x) < 0.001:
        return f"{x:.{digits - 1}e}" if abs(x) < 0.001 else f"{x:,.0f}"
    return f"{x:.{digits}g}"


def duration(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _cell(est, meas, ratio, show=fmt) -> str:
    """`estimated / measured (ratio x)`."""
    r = f" ({ratio:.2f}x)" if ratio else ""
    return f"{show(est)} / {show(meas)}{r}"


def stage_table(rep: dict) -> tuple[list[str], list[list[str]]]:
    head = ["stage", "device", "device-hours", "wall", "dollars", "work tokens/s", "measured chunks"]
    body = []
    for s in rep["stages"]:
        e, m, r = s["estimate"], s["measured"], s["ratio"]
        body.append([s["stage"], m.get("device") or e.get("device") or "-",
                     _cell(e.get("device_hours"), m.get("device_hours"), r.get("device_hours")),
                     _cell(e.get("wall_s"), m.get("wall_s"), r.get("wall_s"), duration),
                     _cell(e.get("usd"), m.get("usd"), r.get("usd")),
                     _cell(e.get("tokens_per_s"), m.get("tokens_per_s"), r.get("tokens_per_s")) + f" ({s['work']})",
                     str(m.get("chunks", 0))])
    t = rep["totals"]
    e, m, r = t["estimate"], t["measured"], t["ratio"]
    body.append(["**total**", "", _cell(e["device_hours"], m["device_hours"], r["device_hours"]),
                 _cell(e["wall_s"], m["wall_s"], r["wall_s"], duration), _cell(e["usd"], m["usd"], r["usd"]), "", ""])
    return head, body


def md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def headline(rep: dict) -> str:
    """One sentence: what it cost against the estimate, and how much was copied."""
    t = rep["totals"]
    m, e, r = t["measured"], t["estimate"], t["ratio"]
    text = (f"Measured ${m['usd']:.4g} for {m['device_hours']:.3g} device-hours ({duration(m['wall_s'])} of metered "
            f"wall time); the estimate was ${e['usd']:.4g}" + (f" (measured / estimated = {r['usd']:.2f})." if r["usd"]
                                                               else "."))
    ev = rep.get("evaluation")
    if ev and ev["families"]:
        fams = ", ".join(f"{k} {v['gap_closed']:.2f}" for k, v in ev["families"].items() if v["gap_closed"] is not None)
        text += f" Gap closed: {fams}"
        if ev.get("illusion_gap") is not None:
            text += f"; illusion gap {ev['illusion_gap']:.2f}"
        text += "."
    return text


def render_md(rep: dict) -> str:
    from replicate.report.evaluation import eval_md, sweep_md

    out = [f"# Replication report: {rep['name']}", ""]
    out.append(f"Run directory `{rep['run_dir']}`; measured on {', '.join(rep['devices']) or 'nothing yet'}.")
    out += ["", headline(rep)]
    out += ["", "## Cost: estimated vs measured", "", "Each cell: estimated / measured (ratio = measured / estimated).", ""]
    out.append(md_table(*stage_table(rep)))
    if rep.get("evaluation"):
        out += ["", eval_md(rep["evaluation"])]
    if rep.get("sweep"):
        out += ["", sweep_md(rep["sweep"])]
    return "\n".join(out) + "\n"


def html_table(head: list[str], body: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c)).replace('**', '')}</td>" for c in row) + "</tr>"
                  for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%;
display:block;margin:1em 0}p.note{color:#555}"""


def render_html(rep: dict, pngs: dict[str, bytes]) -> str:
    """One file, no external references: CSS inline, PNGs as base64 data URIs."""
    from replicate.report.evaluation import eval_html, sweep_html

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
             "<h2>Cost: estimated vs measured</h2><p class=note>Each cell: estimated / measured (ratio = measured / estimated).</p>",
             html_table(*stage_table(rep)), img("cost_breakdown"), img("estimate_vs_measured")]
    if rep.get("evaluation"):
        parts.append(eval_html(rep["evaluation"]))
    if rep.get("sweep"):
        parts += [sweep_html(rep["sweep"]), img("copy_curve")]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into the run directory; return their paths."""
    from replicate.report.plots import all_plots

    run_dir = Path(run_dir)
    rep = build_report(run_dir)
    pngs = all_plots(rep)
    paths = {"json": run_dir / "report.json", "md": run_dir / "report.md", "html": run_dir / "report.html"}
    texts = {"json": json.dumps(rep, indent=2, default=str), "md": render_md(rep), "html": render_html(rep, pngs)}
    for k, path in paths.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(texts[k])
        tmp.replace(path)  # a kill mid-write leaves the previous report whole
    return paths


def cli_report(args: argparse.Namespace) -> int:
    paths = write_report(Path(args.run_dir))
    for p in paths.values():
        print(p)
    return 0

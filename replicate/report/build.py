"""A run directory -> report.md, report.html (self-contained) and report.json.

Reads only the ledger (`kind: estimate` and `kind: measured` lines) and eval/scores.json, so a
report can be rebuilt at any time, from a finished run, a stopped one, or a copy of its files.
A sweep directory (runs/<name>-sweep/ with n<N>/ sub-runs) also gets the copy curve; every
report with an evaluation or a sweep gets the copy-risk card (copy_risk.py).

    replicate report runs/tiny-cpu
"""
from __future__ import annotations

from pathlib import Path

from replicate import files, meter
from replicate.errors import UserError
from replicate.report.copy_curve import copy_curve
from replicate.report.copy_risk import card_for
from replicate.report.evaluation import read_scores, summarize_scores, write_summary
from replicate.rundir import STAGES, sweep_dirs
from replicate.tables import ratio

# The token count that measures each stage's work, for tokens/s.
WORK_TOKENS = {"generate": "output_tokens", "finetune": "trained_tokens", "evaluate": "output_tokens"}


def stage_rows(rows: list[dict]) -> list[dict]:
    """Per stage: the (last) estimate next to the sum of its measured lines, and their ratio."""
    out = []
    for name in STAGES:
        # A sweep estimates finetune/evaluate once per size: the sum of the estimates is the sweep's.
        ests, meas = meter.estimates(rows, name), meter.measured(rows, name)
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
        row["ratio"] = {k: ratio(m.get(k), est.get(k)) for k in ("device_hours", "wall_s", "usd", "tokens_per_s")}
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


def null_notes(stages: list[dict], totals_: dict) -> list[str]:
    """Why each empty cell of the cost table is empty, one line per reason (report.json `notes`)."""
    notes = []
    for s in stages:
        name, e, m = s["stage"], s["estimate"], s["measured"]
        if not e:
            notes.append(f"{name}: no estimate recorded in the ledger (it ran before stage commands recorded "
                         "their estimate, or the cost model could not price it: `replicate estimate` says why)")
        elif e.get("tokens_per_s") is None and m:
            notes.append(f"{name}: the estimate has no single tokens/s (evaluation sums the base's, the student's "
                         "and the teacher's generation, each at its own speed)")
        if not m:
            notes.append(f"{name}: not measured yet (the stage has not run, or was stopped before its first "
                         "ledger line)")
        elif not m.get("wall_s"):
            notes.append(f"{name}: no measured wall time, so no tokens/s")
    if totals_["ratio"]["usd"] is None and any(s["measured"] for s in stages):
        notes.append("total: no measured/estimated ratio, because not every measured stage has an estimate")
    return notes


def totals(stages: list[dict]) -> dict:
    def tot(side: str, k: str) -> float:
        return sum(s[side].get(k) or 0 for s in stages)

    t = {side: {k: tot(side, k) for k in ("device_hours", "wall_s", "usd")} for side in ("estimate", "measured")}
    # A total ratio only means something when every measured stage was also estimated.
    complete = all(s["estimate"] for s in stages if s["measured"])
    t["ratio"] = {k: ratio(t["measured"][k], t["estimate"][k]) if complete else None
                  for k in ("device_hours", "wall_s", "usd")}
    return t


def build_report(run_dir: str | Path) -> dict:
    """Everything the report shows, as plain data (this is report.json)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    rows = meter.ledger(run_dir, with_sweep=True)
    if not rows:
        raise UserError(f"{run_dir}: no ledger.jsonl yet (run `replicate run` first)")
    stages = stage_rows(rows)
    tot = totals(stages)
    rep = {"run_dir": str(run_dir), "name": run_dir.name, "stages": stages, "totals": tot,
           "notes": null_notes(stages, tot)}
    rep["devices"] = sorted({r["device"] for r in meter.measured(rows) if r.get("device")})
    scores = read_scores(run_dir)
    if scores is not None:
        rep["evaluation"] = summarize_scores(scores)
    if sweep_dirs(run_dir):
        rep["sweep"] = copy_curve(run_dir)
    rep["copy_risk"] = card_for(run_dir, rep)
    return rep


def rebuild_report(run_dir: Path) -> dict[str, Path]:
    """`replicate report` and api.report: write_report of a finished or stopped run, under the run's
    lock (a stage running there is not read half-way). Refuses a folder that is no run before
    taking the lock, so it leaves no .lock behind."""
    from replicate.rundir import run_lock

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not (run_dir / "ledger.jsonl").is_file():
        raise UserError(f"{run_dir}: no ledger.jsonl yet (run `replicate run` first)")
    with run_lock(run_dir):
        return write_report(run_dir)


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html (and eval/summary.md) into the run directory."""
    from replicate.report.plots import all_plots
    from replicate.report.render import render_html, render_md

    run_dir = Path(run_dir)
    rep = build_report(run_dir)
    if (scores := read_scores(run_dir)) is not None:
        write_summary(run_dir / "eval", scores)
    paths = {"json": run_dir / "report.json", "md": run_dir / "report.md", "html": run_dir / "report.html"}
    files.write_json(paths["json"], rep)
    files.write_atomic(paths["md"], render_md(rep))
    files.write_atomic(paths["html"], render_html(rep, all_plots(rep)))
    return paths

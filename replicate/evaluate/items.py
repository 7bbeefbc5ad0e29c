"""Evaluation items: the team's open instructions and capability probes (replicate/data/eval/),
plus the held-out split of the generated data, cut to the sizes the Evaluate config asks for.

    open item   {"id", "source", "category", "instruction", "input"}
    probe       {"id", "category", "in_distribution", "instruction", "input", "answers", "reject"?}
"""
from __future__ import annotations

import random
from pathlib import Path

from replicate.config import Evaluate
from replicate.errors import UserError
from replicate.files import jsonl_rows

EVAL_DATA = Path(__file__).resolve().parent.parent / "data" / "eval"
INSTRUCTIONS = EVAL_DATA / "instructions.jsonl"
PROBES = EVAL_DATA / "probes.jsonl"


def read_rows(path: Path, required: tuple[str, ...]) -> list[dict]:
    """JSONL rows, each checked for the required keys; errors name the file and line."""
    rows = []
    for no, row in jsonl_rows(path, "no such eval file"):
        missing = [k for k in required if k not in row]
        if missing:
            raise UserError(f"{path}:{no}: missing key(s) {', '.join(missing)}")
        rows.append(row)
    return rows


def stratified(rows: list[dict], n: int, key: str, seed: int) -> list[dict]:
    """n rows spread evenly over the values of `key` (round-robin over shuffled groups), so a small
    subset still covers every category; the order is deterministic for a given seed."""
    if n >= len(rows):
        return list(rows)
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r.get(key)), []).append(r)
    for g in groups.values():
        rng.shuffle(g)
    order = sorted(groups)
    out: list[dict] = []
    while len(out) < n:
        for k in order:
            if groups[k] and len(out) < n:
                out.append(groups[k].pop())
    return out


def open_items(ev: Evaluate, run_dir: Path | None) -> list[dict]:
    """The open instructions every model answers: `examples` team-written ones, then up to
    `held_out_examples` rows of run_dir/data/held_out.jsonl (the teacher's own distribution)."""
    path = Path(ev.instructions_file) if ev.instructions_file else INSTRUCTIONS
    rows = read_rows(path, ("instruction",))
    for i, r in enumerate(rows):
        r.setdefault("id", f"i{i + 1:04d}")
        r.setdefault("input", "")
        r.setdefault("category", "open")
        r["source"] = "team"
    items = stratified(rows, ev.examples, "category", ev.seed)
    held = Path(run_dir) / "data" / "held_out.jsonl" if run_dir else None
    if held and held.is_file() and ev.held_out_examples:
        for i, r in enumerate(read_rows(held, ("instruction",))[: ev.held_out_examples]):
            items.append({"id": f"h{i + 1:04d}", "source": "held_out", "category": "held_out",
                          "instruction": r["instruction"], "input": r.get("input") or ""})
    return items


def probe_items(ev: Evaluate) -> list[dict]:
    """`probes` capability probes, stratified over categories (in- and out-of-distribution)."""
    path = Path(ev.probes_file) if ev.probes_file else PROBES
    rows = read_rows(path, ("instruction", "answers", "category", "in_distribution"))
    for i, r in enumerate(rows):
        r.setdefault("id", f"p{i + 1:04d}")
        r.setdefault("input", "")
        if not r["answers"]:
            raise UserError(f"{path}: probe {r['id']} has no accepted answer")
    return stratified(rows, ev.probes, "category", ev.seed)

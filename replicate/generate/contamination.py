"""Contamination: generated training rows too close to an evaluation item are dropped.

A row is contaminated when the ROUGE-L F-measure between its task (instruction, then input) and
an evaluation item's is > 0.7: the threshold and the exact test of Alpaca's near-duplicate filter
(dedup.py), applied to the evaluation's open instructions and capability probes. Such rows are
counted as `contaminated` in the dataset card and in data/done.json's `dropped`, and never trained on.
The whole task is compared, not the instruction alone: a templated instruction ("Is the following
review positive or negative?") with another input is the same kind of task, not the same item.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from replicate.config import Evaluate
from replicate.files import jsonl_rows
from replicate.generate.dedup import RougeDedup

EVAL_SETS = Path(__file__).resolve().parent.parent / "data" / "eval"
THRESHOLD = 0.7  # Alpaca's near-duplicate threshold (selfinstruct.SIMILARITY_THRESHOLD)


def task_text(row: dict) -> str:
    """The text contamination is measured on: the instruction, then the input."""
    return f"{row['instruction']}\n{row.get('input') or ''}".strip()


def eval_items(ev: Evaluate) -> list[str]:
    """task_text of every evaluation item: evaluate.instructions_file and probes_file, else the package's sets."""
    paths = (Path(ev.instructions_file) if ev.instructions_file else EVAL_SETS / "instructions.jsonl",
             Path(ev.probes_file) if ev.probes_file else EVAL_SETS / "probes.jsonl")
    return [task_text(row) for path in paths for _, row in jsonl_rows(path, "no such eval file")]


class Contamination:
    """The evaluation items, indexed once; `near(row)` is the filter's test."""

    def __init__(self, items: Iterable[str], threshold: float = THRESHOLD):
        self.items = RougeDedup(items, threshold)

    def near(self, row: dict) -> bool:
        return len(self.items) > 0 and self.items.find(task_text(row)) is not None

"""The teacher's reference answers, asked the way its training rows were written.

A student is trained on what the teacher wrote *while generating data*: with self-instruct, the
output of a task the teacher itself listed as item 4 after three seed tasks. Asked the same
instruction as a chat question, the same teacher answers longer and in another register, so a
student scored against chat answers loses fidelity it never had a chance to learn.
`evaluate.teacher_format: training` (the default) therefore asks the teacher for each open item:

    self-instruct   the generate stage's prompt with three seed tasks (chosen by the item's id),
                    ending at "4. Instruction: <item>\\n4. Input:\\n<input>\\n4. Output:", stopped
                    at "###" (prompts.self_instruct_prompt)
    respond         the generate stage's respond prompt: a chat turn, or the Alpaca template for a
                    teacher without a chat template
    none            (no teacher wrote the data) the chat turn

and `teacher_format: chat` always asks the chat turn. Probes are always asked as a chat turn:
capability is the teacher at its best, not in a list.
"""
from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

from replicate.config import Pipeline
from replicate.files import jsonl_rows
from replicate.prompts import (
    SELF_INSTRUCT_STOP,
    alpaca_prompt,
    continue_as_assistant,
    self_instruct_prompt,
    user_message,
)

SEED_TASKS = Path(__file__).resolve().parent.parent / "data" / "seed_tasks.jsonl"
SEEDS_SHOWN = 3  # as the generate stage (Alpaca's 3 seed tasks per prompt)


def training_format(cfg: Pipeline) -> str:
    """'self-instruct', 'respond' or 'chat': how the teacher is asked for its reference answers."""
    if cfg.evaluate.teacher_format == "chat" or cfg.generate.mode == "none":
        return "chat"
    return cfg.generate.mode


def load_seeds(path: str | None) -> list[SimpleNamespace]:
    """The seed tasks the generate stage showed the teacher (instruction, input, output)."""
    seeds = []
    for _, row in jsonl_rows(Path(path) if path else SEED_TASKS, "seed tasks file not found"):
        if isinstance(row.get("instances"), list) and row["instances"]:
            row = {**row, **row["instances"][0]}  # Alpaca's seed format
        seeds.append(SimpleNamespace(instruction=row["instruction"], input=row.get("input") or "",
                                     output=row["output"]))
    return seeds


class ReferencePrompts:
    """prompt(item) and stop for the teacher's open answers in the chosen format."""

    def __init__(self, cfg: Pipeline, chat: bool):
        self.format, self.chat = training_format(cfg), chat
        # the second, sampled answer (the fidelity ceiling) is drawn as the training rows were
        self.sampling = (cfg.generate.temperature, cfg.generate.top_p)
        self.seeds = load_seeds(cfg.generate.seed_tasks_file) if self.format == "self-instruct" else []
        self.stop: tuple[str, ...] = SELF_INSTRUCT_STOP if self.format == "self-instruct" else \
            ("\n###",) if self.format == "respond" and not chat else ()

    def prompt(self, item: dict):
        instruction, inp = item["instruction"], item.get("input") or ""
        if self.format == "self-instruct":
            shown = random.Random(f"eval:{item['id']}").sample(self.seeds, SEEDS_SHOWN)
            text = self_instruct_prompt(shown, answer=(instruction, inp))
            return continue_as_assistant(text) if self.chat else text
        if self.chat:
            return [{"role": "user", "content": user_message(instruction, inp)}]
        return alpaca_prompt(instruction, inp) + ("\n" if self.format == "respond" else "")

    @staticmethod
    def clean(text: str) -> str:
        """The answer alone: an item-4 answer ends where the teacher starts item 5."""
        return text.split("###")[0].strip()

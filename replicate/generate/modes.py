"""What the generate stage asks the teacher, and which rows it keeps, per `generate.mode`.

Both modes answer the same three questions for generate.py:
  request(i)        -> the teacher request with index i (a pure function of the seed and i)
  rows(i, comp)     -> (rows parsed, rows kept, {drop reason: count}) from the completion
  restore(rows)     -> put rows kept by an earlier run back (resume)
and say how many requests exist at most (`limit`; None = as many as the target needs).
The algorithm itself (prompt text, parsing, filters) lives in replicate/selfinstruct.py.
"""
from __future__ import annotations

import random

from replicate.config import Pipeline
from replicate.engines import Completion, Request
from replicate.errors import UserError


def request_seed(seed: int, i: int) -> int:
    """Sampling seed of request i: fixed by (seed, i), so a redone request samples the same way."""
    return (seed * 1_000_003 + i) % 2**31


class SelfInstruct:
    """Alpaca's self-instruct: 3 seed tasks per prompt, the teacher continues the numbered list."""

    def __init__(self, cfg: Pipeline):
        from replicate.generate import selfinstruct as si
        from replicate.generate.contamination import eval_items

        self.si, self.seed = si, cfg.generate.seed
        self.seeds = si.load_seed_tasks(cfg.generate.seed_tasks_file)
        self.filters = si.Filters(self.seeds, eval_items=eval_items(cfg.evaluate))
        self.regex = si.list_regex() if cfg.generate.structured else None
        self.stop = () if self.regex else tuple(si.STOP)  # structured: the regex ends the list
        self.limit = None
        self.chat = False  # set once the teacher is open (its tokenizer decides)

    def request(self, i: int) -> tuple[Request, dict]:
        # The prompt's seed tasks come from an RNG seeded by (seed, i): no RNG state to save.
        text, seed_ids = self.si.sample_prompt(self.seeds, random.Random(f"{self.seed}:{i}"))
        prompt = self.si.chat_prompt(text) if self.chat else text
        return Request(f"si-{i:07d}", prompt, request_seed(self.seed, i)), {"seed_ids": seed_ids}

    def restore(self, rows: list[dict]) -> None:
        for row in rows:
            self.filters.remember(row)

    def rows(self, i: int, c: Completion) -> tuple[int, list[dict], dict]:
        st = self.si.FilterStats()
        parsed = self.si.parse_response(c.text, c.finish_reason, st)
        kept, dropped = self.filters.apply(parsed)
        for reason in ("truncated", "unparsable"):  # counted while parsing, before the filters
            if getattr(st, reason):
                dropped[reason] = getattr(st, reason)
        return len(parsed), kept, dropped


class Respond:
    """The teacher answers each row of `generate.instructions_file` once."""

    def __init__(self, cfg: Pipeline):
        from replicate.generate import selfinstruct as si
        from replicate.generate.contamination import Contamination, eval_items

        if not cfg.generate.instructions_file:
            raise UserError("generate.instructions_file: respond mode needs a JSONL file of instructions")
        self.regex = None  # an answer is free text: nothing to parse
        self.si, self.seed = si, cfg.generate.seed
        self.items = si.load_instructions(cfg.generate.instructions_file)
        self.limit = len(self.items)
        self.chat = False
        self.contamination = Contamination(eval_items(cfg.evaluate))

    @property
    def stop(self) -> tuple[str, ...]:
        return () if self.chat else tuple(self.si.RESPOND_STOP)  # a base teacher goes on with "###"

    def request(self, i: int) -> tuple[Request, dict]:
        prompt = self.si.respond_prompt(self.items[i], chat=self.chat)
        return Request(f"rs-{i:07d}", prompt, request_seed(self.seed, i)), {}

    def restore(self, rows: list[dict]) -> None:
        pass

    def rows(self, i: int, c: Completion) -> tuple[int, list[dict], dict]:
        parsed, kept, dropped = self.si.respond_rows(self.items[i], c.text, c.finish_reason)
        if kept and self.contamination.near(kept[0]):
            return parsed, [], {"contaminated": 1}
        return parsed, kept, dropped


def make_mode(cfg: Pipeline) -> SelfInstruct | Respond:
    """Reads and checks the mode's input files (before any engine starts)."""
    if cfg.generate.mode == "self-instruct":
        return SelfInstruct(cfg)
    elif cfg.generate.mode == "respond":
        return Respond(cfg)
    raise UserError(f"generate.mode: {cfg.generate.mode!r} does not call the teacher")

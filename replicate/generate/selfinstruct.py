"""The Alpaca variant of Self-Instruct: prompt, parse, filters; and the `respond` mode's prompts.

One round, as in Stanford Alpaca's generate_instruction.py (teacher calls live in engines/):

    seeds = load_seed_tasks()
    filters = Filters(seeds)                        # on resume: filters.remember(row) per kept row
    prompt, seed_ids = sample_prompt(seeds, rng)    # 3 random seeds, numbered 1-3
    # base teacher: complete `prompt`; chat teacher: chat_prompt(prompt) (continues the
    # assistant message at "4. Instruction:"). Always stop=STOP.
    rows = parse_response(text, finish_reason, filters.stats)   # items 4..19
    kept, dropped = filters.apply(rows)             # rules, then ROUGE-L F > 0.7 -> dropped

With `generate.structured`, the continuation is constrained to that numbered form
(list_regex: vLLM structured output), so every item parses; docs/generate.md compares the two.

Respond mode: load_instructions(path), respond_prompt(row, chat), respond_rows(row, text, finish).

A completion holds at most 16 new tasks: the list is numbered to 20, the prompt fills 1-3, and
generation stops at "20." (items 4..19).
"""
from __future__ import annotations

import random
import re
import string
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from replicate.errors import UserError
from replicate.files import jsonl_rows
from replicate.generate.contamination import Contamination
from replicate.generate.dedup import RougeDedup
from replicate.prompts import alpaca_prompt, user_message
from replicate.prompts import continue_as_assistant as chat_prompt  # noqa: F401 (modes.py: si.chat_prompt)
from replicate.prompts import self_instruct_prompt as build_prompt

DATA = Path(__file__).resolve().parent.parent / "data"
SEED_TASKS = DATA / "seed_tasks.jsonl"
PACKAGED = "packaged:"
NUM_PROMPT_INSTRUCTIONS = 3  # seed tasks shown per prompt (Alpaca samples 3 seeds, no machine tasks)
NUM_TASKS = 20  # length of the list the teacher is asked to write
SIMILARITY_THRESHOLD = 0.7  # drop when ROUGE-L F > 0.7 against anything kept (0.7 itself is kept)

# Alpaca's keyword blacklist (word boundaries, any case): tasks a text model cannot do.
BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
             "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
_BLACKLIST_RE = re.compile(r"\b(" + "|".join(map(re.escape, BLACKLIST)) + r")\b", re.IGNORECASE)


def stop_strings(num_tasks: int = NUM_TASKS) -> list[str]:
    """Stop before item `num_tasks` starts (Alpaca: ["\\n20", "20."])."""
    return [f"\n{num_tasks}", f"{num_tasks}."]


STOP = stop_strings()

# Structured output (generate.structured): the teacher's continuation is constrained to the list
# form parse_response reads, so no item is lost to a broken format. Fields are plain text without
# "#" (which ends an item); the instruction is one line of at least 8 characters; the input is
# <noinput> or one line; the output is up to OUTPUT_LINES lines. No line may start with digits and a
# dot ("5. Instruction:" would be read as a heading; a number such as "42" or "1990s" is fine). An
# item may end the list, so the teacher writes as many as it likes (1 to NUM_TASKS - 4) and an item
# cut off by max_tokens costs that item only. No stop strings are needed: the regex ends the list.
_LINE = r"([^#\n0-9][^#\n]*|[0-9]+([^#\n.0-9][^#\n]*)?)"
OUTPUT_LINES = 8


def list_regex(first: int = NUM_PROMPT_INSTRUCTIONS + 1, last: int = NUM_TASKS - 1) -> str:
    """A regex of the continuation after the prompt's "N. Instruction:": items first..last,
    each "k. Instruction: ...\nk. Input:\n...\nk. Output:\n...\n###", the first without its
    heading (the prompt holds it), each after the first optional, nested (vLLM structured output)."""
    def item(k: int) -> str:
        return (rf" [^#\n]{{8}}[^#\n]*\n{k}\. Input:\n(<noinput>|{_LINE})\n{k}\. Output:\n"
                rf"{_LINE}(\n{_LINE}){{0,{OUTPUT_LINES - 1}}}\n###")

    regex = ""
    for k in range(last, first, -1):  # from the innermost (last) item outwards
        regex = rf"(\n{k}\. Instruction:{item(k)}{regex})?"
    return item(first) + regex


@dataclass(frozen=True)
class SeedTask:
    id: str
    instruction: str
    input: str
    output: str
    is_classification: bool


def data_file(path: str | Path) -> Path:
    """A user's file, or `packaged:NAME`: the package's own replicate/data/NAME.jsonl (e.g.
    `packaged:demo_instructions`, the demo's list), found wherever the package is installed."""
    text = str(path)
    if not text.startswith(PACKAGED):
        return Path(path)
    name, shipped = text[len(PACKAGED):], sorted(p.stem for p in DATA.glob("*.jsonl"))
    if name not in shipped:
        raise UserError(f"{text}: no such packaged file (packaged: {', '.join(shipped)})")
    return DATA / f"{name}.jsonl"


def load_seed_tasks(path: str | Path | None = None) -> list[SeedTask]:
    """Seed tasks from JSONL (default: the package's own set). One object per line with
    `instruction`, `output`, optional `input` ("" = none), `is_classification`, `id`; Alpaca's
    own format (`instances: [{input, output}]`) is read too. Errors name the file and line."""
    path = data_file(path) if path is not None else SEED_TASKS
    tasks = []
    for lineno, row in jsonl_rows(path, "seed tasks file not found"):
        if "instances" in row and isinstance(row["instances"], list) and row["instances"]:
            row = {**row, **row["instances"][0]}  # Alpaca/Self-Instruct seed format
        instruction = _text_field(row, "instruction", path, lineno, required=True)
        output = _text_field(row, "output", path, lineno, required=True)
        is_classification = row.get("is_classification", False)
        if not isinstance(is_classification, bool):
            raise UserError(f"{path}:{lineno}: is_classification must be true or false")
        task_id = str(row.get("id", f"seed_task_{len(tasks)}"))
        if any(task.id == task_id for task in tasks):
            raise UserError(f"{path}:{lineno}: duplicate seed task id {task_id!r}")
        tasks.append(SeedTask(id=task_id, instruction=instruction, output=output,
                              input=_text_field(row, "input", path, lineno), is_classification=is_classification))
    if len(tasks) < NUM_PROMPT_INSTRUCTIONS:
        raise UserError(f"{path}: {len(tasks)} seed tasks; a prompt needs at least {NUM_PROMPT_INSTRUCTIONS}")
    return tasks


def sample_prompt(seeds: list[SeedTask], rng: random.Random,
                  num_prompt_instructions: int = NUM_PROMPT_INSTRUCTIONS,
                  num_tasks: int = NUM_TASKS) -> tuple[str, list[str]]:
    """(prompt, ids of the seeds shown) for one request; only `rng` decides, so storing
    rng.getstate() is enough to resume the same sequence of prompts."""
    chosen = rng.sample(seeds, num_prompt_instructions)
    return build_prompt(chosen, num_tasks), [task.id for task in chosen]


@dataclass
class FilterStats:
    """What happened to the teacher's output, counted per reason (Alpaca's filters, in order)."""

    responses: int = 0  # completions parsed
    truncated: int = 0  # last item dropped because the completion hit max_tokens
    unparsable: int = 0  # items not in the "N. Instruction/Input/Output" form
    parsed: int = 0  # items parsed into instruction/input/output
    too_short: int = 0  # instruction of <= 3 words
    too_long: int = 0  # instruction of > 150 words
    blacklisted: int = 0  # a BLACKLIST word (images, files, music...)
    write_a_program: int = 0  # starts with "Write a program"
    punctuation_start: int = 0  # starts with punctuation
    non_ascii_start: int = 0  # first character not ASCII
    empty_output: int = 0  # no output after "N. Output:" (not Alpaca's; nothing to train on)
    contaminated: int = 0  # ROUGE-L F > 0.7 against an evaluation item (instruction + input)
    similar: int = 0  # ROUGE-L F > 0.7 against a seed or a kept instruction
    kept: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FilterStats:
        """Restore saved counts (on resume); unknown keys are ignored."""
        return cls(**{f.name: int(data.get(f.name, 0)) for f in fields(cls)})


def parse_response(text: str, finish_reason: str | None,
                   stats: FilterStats | None = None,
                   num_prompt_instructions: int = NUM_PROMPT_INSTRUCTIONS) -> list[dict]:
    """Items of one completion as {"instruction", "input", "output"} rows, exactly Alpaca's
    post-processing: split on ###; item k must split into "k. Instruction:", "k. Input:",
    "k. Output:"; "<noinput>" -> ""; the last item is dropped when finish_reason == "length"."""
    stats = stats if stats is not None else FilterStats()
    stats.responses += 1
    chunks = re.split("###", f"{num_prompt_instructions + 1}. Instruction:" + (text or ""))
    rows = []
    for idx, chunk in enumerate(chunks):
        if idx == len(chunks) - 1 and finish_reason == "length":
            stats.truncated += 1
            continue
        number = idx + num_prompt_instructions + 1
        parts = re.split(rf"{number}\.\s+(Instruction|Input|Output):", chunk)
        if len(parts) != 7:
            if chunk.strip():  # the empty tail after a final "###" is no item
                stats.unparsable += 1
            continue
        task_input = parts[4].strip()
        rows.append({"instruction": parts[2].strip(),
                     "input": "" if task_input.lower() == "<noinput>" else task_input,
                     "output": parts[6].strip()})
    stats.parsed += len(rows)
    return rows


def rule_violation(instruction: str) -> str | None:
    """The first of Alpaca's rule filters that `instruction` fails (a FilterStats field name),
    or None when it passes them all."""
    words = len(instruction.split())
    if words <= 3:
        return "too_short"
    if words > 150:
        return "too_long"
    if _BLACKLIST_RE.search(instruction):
        return "blacklisted"
    # Teachers tend to prefix "Write a program" to ordinary tasks (Alpaca's comment).
    if instruction.startswith("Write a program"):
        return "write_a_program"
    if instruction[0] in string.punctuation:
        return "punctuation_start"
    if not instruction[0].isascii():
        return "non_ascii_start"
    return None


class Filters:
    """Alpaca's filters with their counts: the rules, then ROUGE-L F > 0.7 against everything
    kept so far (seeds + accepted; each accepted row is added at once, so rows of one batch are
    compared with each other too)."""

    def __init__(self, seeds: Iterable[SeedTask | str], kept: Iterable[dict | str] = (), *,
                 threshold: float = SIMILARITY_THRESHOLD, stats: FilterStats | None = None,
                 eval_items: Iterable[str] = ()):
        """seeds: seed tasks (or their instructions); kept: rows accepted by an earlier run;
        eval_items: evaluation items (task_text) that no kept row may come near."""
        self.dedup = RougeDedup([_instruction(x) for x in (*seeds, *kept)], threshold)
        self.contamination = Contamination(eval_items, threshold)
        self.stats = stats if stats is not None else FilterStats()

    def keep(self, row: dict) -> bool:
        """True when row passes every filter; it is then part of 'kept so far'."""
        return self._reason(row) is None

    def apply(self, rows: list[dict]) -> tuple[list[dict], dict[str, int]]:
        """Filter one completion's rows in order: (kept rows, {reason: dropped count})."""
        kept, dropped = [], {}
        for row in rows:
            reason = self._reason(row)
            if reason is None:
                kept.append(row)
            else:
                dropped[reason] = dropped.get(reason, 0) + 1
        return kept, dropped

    def remember(self, row: dict | str) -> None:
        """Add a row kept by an earlier run (resume) to 'kept so far', without counting it."""
        self.dedup.add(_instruction(row))

    def _reason(self, row: dict) -> str | None:
        reason = rule_violation(row["instruction"])
        if reason is None and "output" in row and not row["output"].strip():  # before dedup: not "kept so far"
            reason = "empty_output"
        if reason is None and self.contamination.near(row):
            reason = "contaminated"
        if reason is None and not self.dedup.add_if_novel(row["instruction"]):
            reason = "similar"
        if reason is None:
            self.stats.kept += 1
        else:
            setattr(self.stats, reason, getattr(self.stats, reason) + 1)
        return reason


def _instruction(item: SeedTask | dict | str) -> str:
    if isinstance(item, str):
        return item
    return item.instruction if isinstance(item, SeedTask) else item["instruction"]


# -- respond mode: the teacher answers given instructions ----------------------------------

def load_instructions(path: str | Path, require_output: bool = False) -> list[dict]:
    """Rows from JSONL: `instruction` and optional `input` per line; with require_output (an
    existing Alpaca dataset, mode `none`) also a non-empty `output`. Other keys are ignored.
    Errors name the file and line. `packaged:NAME` = the package's file (data_file)."""
    path = data_file(path)
    rows = []
    for lineno, row in jsonl_rows(path, "instructions file not found"):
        out = {"instruction": _text_field(row, "instruction", path, lineno, required=True),
               "input": _text_field(row, "input", path, lineno)}
        if require_output:
            out["output"] = _text_field(row, "output", path, lineno, required=True)
        rows.append(out)
    if not rows:
        raise UserError(f"{path}: no instructions in the file")
    return rows


# A base teacher completes Alpaca's training template; it tends to go on with a new "###"
# heading after its answer, so that ends the answer (stop string, and cut in respond_rows).
RESPOND_STOP = ["\n###"]


def respond_prompt(row: dict, chat: bool = True) -> str | list[dict]:
    """What the teacher is asked. chat: one user message, the instruction then the input
    (apply the template with add_generation_prompt=True); base: Alpaca's prompt template,
    to be completed after "### Response:" with stop=RESPOND_STOP."""
    if chat:
        return [{"role": "user", "content": user_message(row["instruction"], row.get("input") or "")}]
    return alpaca_prompt(row["instruction"], row.get("input") or "") + "\n"


def respond_rows(row: dict, text: str | None, finish_reason: str | None,
                 stats: FilterStats | None = None) -> tuple[int, list[dict], dict[str, int]]:
    """The teacher's answer as an Alpaca row: (parsed 0 or 1, [row] or [], {reason: 1} or {}).
    An answer cut by max_tokens is dropped ("truncated"), unless it had already ended at a
    "###" heading; an empty one is dropped ("unparsable")."""
    stats = stats if stats is not None else FilterStats()
    stats.responses += 1
    answer, ended, _ = (text or "").partition("\n###")
    answer = answer.strip()
    reason = None
    if finish_reason == "length" and not ended:
        reason = "truncated"
    elif not answer:
        reason = "unparsable"
    if reason is not None:
        setattr(stats, reason, getattr(stats, reason) + 1)
        return 0, [], {reason: 1}
    stats.parsed += 1
    stats.kept += 1
    return 1, [{"instruction": row["instruction"], "input": row.get("input", ""), "output": answer}], {}


# -- file reading ---------------------------------------------------------------------------

def _text_field(row: dict, key: str, path: Path, lineno: int, required: bool = False) -> str:
    value = row.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise UserError(f"{path}:{lineno}: '{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise UserError(f"{path}:{lineno}: missing or empty '{key}'")
    return value

"""The files of the generate stage: the durable request log, resume state, dataset and card.

data/ in a run directory:
  generation.json     settings the data was generated with; a resume must match them
  log.jsonl           one line per finished teacher request, appended with one write + fsync
                      (files.append_jsonl): request id, RNG position, tokens, finish reason,
                      parse/filter counts and the rows it kept. It is the only state a resume
                      needs, and a kill -9 can at worst tear its last line, which is ignored.
  train.jsonl         Alpaca rows (instruction, input, output), rewritten atomically per run
  held_out.jsonl      every 1/f-th kept row (f = generate.held_out_fraction), never trained on
  README.md           dataset card: teacher, sampling, seed, counts, filters, tokens, cost
  done.json           LAST, atomically, when the stage is complete (its stats)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from replicate import cards, files, rundir
from replicate.config import rows_needed  # noqa: F401 - the stage's name for it
from replicate.errors import UserError

LOG = "log.jsonl"
SETTINGS = "generation.json"
DONE = "done.json"
ALPACA_KEYS = ("instruction", "input", "output")


def check_settings(data_dir: Path, settings: dict) -> None:
    """Refuse to resume (or reuse) data made with other settings."""
    rundir.check_settings(data_dir / SETTINGS, settings, "generated data")


def record_settings(data_dir: Path, settings: dict) -> None:
    """The settings the data is made with, written when the stage starts work (once)."""
    if not (data_dir / SETTINGS).exists():
        files.write_json(data_dir / SETTINGS, settings)


class AlpacaRow(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    instruction: str
    input: str
    output: str


class LogLine(BaseModel):
    """One line of data/log.jsonl: a finished request (what a resume rebuilds everything from)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    index: int = Field(ge=0)
    request_id: str
    chunk: str
    empty: bool
    parsed: int = Field(ge=0)
    prompt_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    t: float = Field(ge=0)
    usd_api: float = Field(ge=0)
    dropped: dict[str, int]
    rows: list[AlpacaRow]


def read_log(data_dir: Path) -> list[dict]:
    """The validated request log; a line that is not one this stage wrote is a UserError."""
    path = data_dir / LOG
    if not path.exists():
        return []
    out = []
    for lineno, row in files.jsonl_rows(path, "", torn_ok=True):
        try:
            LogLine.model_validate(row)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "(line)"
            raise UserError(f"{path}:{lineno}: {where}: {err['msg']}; not a line `replicate generate` wrote: "
                            f"fix or delete it (or delete {data_dir} to generate anew)") from None
        out.append(row)
    return out


def is_held_out(position: int, fraction: float) -> bool:
    """Row `position` (0-based, in kept order) is held out when it crosses a multiple of 1/f:
    exactly floor(n*f) of the first n rows, spread evenly, stable when a run is resumed/extended."""
    return math.floor((position + 1) * fraction) > math.floor(position * fraction)


def split(rows: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    train, held = [], []
    for i, row in enumerate(rows):
        (held if is_held_out(i, fraction) else train).append({k: row[k] for k in ALPACA_KEYS})
    return train, held


def add_counts(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


def exact_counts(log: list[dict]) -> Callable[[dict], dict]:
    """For meter.recover: a killed chunk's tokens, requests and API dollars summed from its own
    log lines (exact), its wall time the later of its last heartbeat and its last finished request."""
    def fix(row: dict) -> dict:
        mine = [r for r in log if r.get("chunk") == row.get("chunk_id")]
        row["wall_s"] = max([row["wall_s"]] + [r["t"] for r in mine])
        row["device_hours"] = row["wall_s"] * row["num_devices"] / 3600
        row["usd"] = row["device_hours"] * row["usd_per_device_hour"] + sum(r["usd_api"] for r in mine)
        row["prompt_tokens"] = sum(r["prompt_tokens"] for r in mine)
        row["output_tokens"] = sum(r["output_tokens"] for r in mine)
        row["requests"], row["parsed"] = len(mine), sum(r["parsed"] for r in mine)
        row["kept"] = sum(len(r["rows"]) for r in mine)
        row["dropped"] = {}
        for r in mine:
            row["dropped"] = add_counts(row["dropped"], r["dropped"])
        return row

    return fix


def write_dataset(data_dir: Path, rows: list[dict], fraction: float) -> tuple[int, int]:
    train, held = split(rows, fraction)
    files.write_jsonl(data_dir / "train.jsonl", train)
    files.write_jsonl(data_dir / "held_out.jsonl", held)
    return len(train), len(held)


def write_card(data_dir: Path, stats: dict) -> None:
    """README.md: provenance of the dataset, under the Hub's YAML front matter (cards.py), which lets
    `load_dataset(data_dir)` find the two splits (and skip log.jsonl) under a config name of this run's own."""
    s = stats
    dropped = "\n".join(f"| {k} | {v} |" for k, v in sorted(s["dropped"].items())) or "| (none) | 0 |"
    sampling = ", ".join(f"{k}={v}" for k, v in s["sampling"].items())
    body = f"""# {s['name']}: generated instruction data

Alpaca-format rows (`instruction`, `input`, `output`) written by the teacher with `replicate generate`.

| | |
|---|---|
| teacher | `{s['teacher']}` ({s['backend']}, {'chat template' if s['chat'] else 'raw completion'}) |
| mode | {s['mode']} |
| sampling | {sampling} |
| seed | {s['seed']} |
| complete | {'yes' if s['complete'] else 'no (stopped early; rerun to resume)'} |
| train rows | {s['train_rows']} (`train.jsonl`) |
| held-out rows | {s['held_out_rows']} (`held_out.jsonl`, {s['held_out_fraction']:.0%} of kept rows, never trained on) |
| teacher requests | {s['requests']} |
| rows parsed | {s['parsed']} |
| rows kept | {s['kept']} |
| prompt tokens | {s['prompt_tokens']:,} |
| output tokens | {s['output_tokens']:,} |
| wall time | {s['wall_s']:.1f} s over {s['chunks']} run(s) |
| device | {s['device']} |
| cost | ${s['usd']:.6f} ({s['price']}) |

## Dropped rows, by filter

| filter | rows |
|---|---|
{dropped}

Every request is in `log.jsonl` (request id, RNG position, tokens, finish reason, kept rows).
Load with `datasets.load_dataset("runs/{s['name']}/data")` (the front matter's config name is unique per run
and per content, so the datasets cache never hands back another run's rows) or
`datasets.load_dataset("json", data_files={{"train": "train.jsonl", "held_out": "held_out.jsonl"}})`.
"""
    text = cards.dataset_card(data_dir, s["name"], s["train_rows"] + s["held_out_rows"], s["teacher"], body)
    files.write_atomic(data_dir / "README.md", text)


def write_done(data_dir: Path, stats: dict) -> None:
    files.write_json(data_dir / DONE, stats)


class Done(BaseModel):
    """data/done.json: the stage's stats, written last (the parts a resume and a sweep read)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    train_rows: int = Field(ge=0)
    held_out_rows: int = Field(ge=0)
    requests: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    usd: float = Field(ge=0)
    exhausted: bool = False


def read_done(data_dir: Path) -> dict | None:
    path = data_dir / DONE
    if not path.exists():
        return None
    done = files.read_json_object(path, "")
    files.check_model(str(path), done, Done, "; delete it to let generate rebuild it from data/log.jsonl")
    return done


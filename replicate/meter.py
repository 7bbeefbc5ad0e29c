"""Measured cost: every finished stage (or resumed chunk) appends one line to ledger.jsonl.

    with meter.stage(run_dir, "generate", usd_per_device_hour=0.1, max_usd=0.5) as m:
        ...
        m.add(prompt_tokens=123, output_tokens=456)
        m.set(requests=10)                     # stage-specific fields

The line is appended when the block ends (one write + fsync, so a kill never leaves half a line):
on a clean exit, and on an exception too (Ctrl-C, SIGTERM, an error), marked `interrupted`,
because the device time and tokens were paid for either way. Only kill -9 loses it (the
generate stage's heartbeat covers that case).

`max_usd`: the most this block may spend. A watchdog thread stops the block when its device
time would pass max_usd minus STOP_RESERVE_S of device time (kept back for stopping: closing the
engine, writing the line): it interrupts the main thread as Ctrl-C would, the stage unwinds
(engines closed, everything finished saved) and BudgetExceeded comes out of the block.

Reading: every ledger line is validated (LedgerLine); a line the program did not write, or one
edited by hand into nonsense, is a UserError naming the file, the line and the field.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from replicate import files
from replicate.errors import BudgetExceeded, UserError
from replicate.rundir import sweep_dirs

LEDGER = "ledger.jsonl"
TOKEN_FIELDS = ("prompt_tokens", "output_tokens", "trained_tokens")
STOP_RESERVE_S = 10.0  # device seconds a budget keeps back for stopping (vLLM closes in ~2 s here)
MEASURED = ("usd", "wall_s", "device_hours", *TOKEN_FIELDS)  # what every measured line carries
Amount = float | None


class LedgerLine(BaseModel):
    """One line of ledger.jsonl (docs/runs.md). Stage-specific fields are allowed beside these."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    stage: Literal["generate", "finetune", "evaluate"]
    kind: Literal["measured", "estimate"]
    usd: Amount = Field(None, ge=0)
    wall_s: Amount = Field(None, ge=0)
    device_hours: Amount = Field(None, ge=0)
    prompt_tokens: Amount = Field(None, ge=0)
    output_tokens: Amount = Field(None, ge=0)
    trained_tokens: Amount = Field(None, ge=0)
    usd_per_device_hour: Amount = Field(None, ge=0)
    unsettled_usd: Amount = Field(None, ge=0)
    """Worst case of API requests cancelled in flight (Ctrl-C): the provider may bill them."""
    startup_s: Amount = Field(None, ge=0)
    tokens_per_s: Amount = Field(None, ge=0)
    num_devices: int | None = Field(None, gt=0)
    device: str | None = None
    started_at: str | None = None
    ended_at: str | None = None

    @model_validator(mode="after")
    def _measured_is_complete(self):
        missing = [k for k in MEASURED if getattr(self, k) is None] if self.kind == "measured" else []
        if missing:
            raise ValueError(f"a measured line needs {', '.join(missing)}")
        return self


def read_ledger(path: Path) -> list[dict]:
    """The validated lines of one ledger file (absent: none), as the dicts they are in the file."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for lineno, row in files.jsonl_rows(path, "no such ledger", torn_ok=True):
        try:
            LedgerLine.model_validate(row)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise UserError(f"{path}:{lineno}: {where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}"
                            "; this is not a line `replicate` wrote: fix or delete it (the ledger is the run's "
                            "record of spending)") from None
        rows.append(row)
    return rows


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def device_name() -> tuple[str, int]:
    """(name, count) of the accelerator this process would use: the CUDA card, or the CPU."""
    try:
        import sys

        if "torch" in sys.modules or os.environ.get("REPLICATE_PROBE_CUDA"):
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0), torch.cuda.device_count()
    except Exception:  # noqa: BLE001, S110 - a broken torch must not break metering
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} ({os.cpu_count()} cores)", 1


def ledger(run_dir: str | Path, *, with_sweep: bool = False) -> list[dict]:
    """The run's ledger lines; `with_sweep`: also every sweep size's (n<N>/ledger.jsonl), each
    tagged `sweep_examples: N`."""
    rows = read_ledger(Path(run_dir) / LEDGER)
    if with_sweep:
        for sub in sweep_dirs(run_dir):
            rows += [dict(r, sweep_examples=int(sub.name[1:])) for r in read_ledger(sub / LEDGER)]
    return rows


def measured(rows: list[dict], stage: str | None = None) -> list[dict]:
    """Lines of real spending (kind `measured`), of one stage or all."""
    return [r for r in rows if r["kind"] == "measured" and (stage is None or r["stage"] == stage)]


def estimates(rows: list[dict], stage: str | None = None) -> list[dict]:
    return [r for r in rows if r.get("kind") == "estimate" and (stage is None or r.get("stage") == stage)]


def total(rows: list[dict], key: str = "usd") -> float:
    return sum(r.get(key) or 0 for r in rows)


def spent_usd(run_dir: str | Path, stage: str | None = None, *, with_sweep: bool = False) -> float:
    """Dollars spent so far in a run directory (one stage, or all), as a budget counts them: the
    measured dollars plus the worst case of API requests cancelled in flight (`unsettled_usd`)."""
    lines = measured(ledger(run_dir, with_sweep=with_sweep), stage)
    return total(lines) + total(lines, "unsettled_usd")


@dataclass
class StageMeter:
    stage: str
    device: str
    num_devices: int
    usd_per_device_hour: float
    kind: str = "measured"
    fields: dict[str, Any] = field(default_factory=dict)
    usd_extra: float = 0.0  # per-token API spending, added to the device-hour cost
    started_at: str = field(default_factory=now_iso)
    t0: float = field(default_factory=time.perf_counter)
    budget_hit: bool = False  # the watchdog stopped the block (max_usd)

    def add(self, **counts: float) -> None:
        """Accumulate counters (token counts, requests, ...)."""
        for k, v in counts.items():
            self.fields[k] = self.fields.get(k, 0) + v

    def set(self, **values: Any) -> None:
        self.fields.update(values)

    def add_usd(self, usd: float) -> None:
        """Spending that is not device time (API tokens)."""
        self.usd_extra += usd

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self.t0

    def usd_so_far(self) -> float:
        return self.wall_s * self.num_devices / 3600 * self.usd_per_device_hour + self.usd_extra

    def row(self) -> dict:
        wall = self.wall_s
        device_hours = wall * self.num_devices / 3600
        row = {
            "stage": self.stage,
            "kind": self.kind,
            "device": self.device,
            "num_devices": self.num_devices,
            "wall_s": round(wall, 3),
            "device_hours": device_hours,
            "usd": device_hours * self.usd_per_device_hour + self.usd_extra,
            "usd_per_device_hour": self.usd_per_device_hour,
        }
        for k in TOKEN_FIELDS:
            row[k] = int(self.fields.get(k, 0))
        row["started_at"] = self.started_at
        row["ended_at"] = now_iso()
        row.update({k: v for k, v in self.fields.items() if k not in TOKEN_FIELDS})
        return row


class BudgetStop(KeyboardInterrupt):
    """Raised in the main thread by the budget watchdog: unwinds the stage as Ctrl-C would."""


_ARMED = threading.Event()  # a watchdog asked for a stop that has not been delivered yet


def _budget_stop(signum, frame):
    # A signal that arrives after its stage ended (a race of microseconds) finds nothing armed.
    if _ARMED.is_set():
        _ARMED.clear()
        raise BudgetStop()


class _Watchdog:
    """Interrupts the main thread when the device time of `m` would pass `max_usd` minus
    STOP_RESERVE_S. A real signal (SIGUSR2, whose handler stays installed and acts only when armed),
    so a main thread waiting in select() or a socket read wakes up too, and a process that ignores
    SIGINT (a background job of a script) is stopped all the same. Made and stopped on the main thread."""

    SIGNAL = signal.SIGUSR2

    def __init__(self, m: StageMeter, max_usd: float):
        self.m, self.max_usd = m, max_usd
        self.reserve = STOP_RESERVE_S * m.num_devices / 3600 * m.usd_per_device_hour
        self.lock, self.active, self.done = threading.Lock(), True, threading.Event()
        self.main = threading.main_thread().ident
        signal.signal(self.SIGNAL, _budget_stop)
        threading.Thread(target=self._watch, name="budget-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while not self.done.wait(0.2):
            if self.m.usd_so_far() + self.reserve >= self.max_usd:
                with self.lock:
                    if self.active:
                        self.m.budget_hit, self.active = True, False
                        _ARMED.set()
                        signal.pthread_kill(self.main, self.SIGNAL)
                return

    def stop(self) -> None:
        with self.lock:
            self.active = False
            _ARMED.clear()
        self.done.set()


@contextlib.contextmanager
def stage(
    run_dir: str | Path,
    name: str,
    *,
    usd_per_device_hour: float = 0.0,
    device: str | None = None,
    num_devices: int | None = None,
    max_usd: float | None = None,
) -> Iterator[StageMeter]:
    """Meter one stage (or one resumed chunk of it) and append its ledger line when it ends
    (marked `interrupted` when it ends in an exception). `max_usd`: see the module docstring."""
    dev, count = device_name()
    m = StageMeter(
        stage=name,
        device=device or dev,
        num_devices=num_devices or count,
        usd_per_device_hour=usd_per_device_hour,
    )
    watch = max_usd is not None and usd_per_device_hour > 0 and threading.current_thread() is threading.main_thread()
    dog = _Watchdog(m, max_usd) if watch else None
    try:
        yield m
    except BaseException as e:
        if dog:
            dog.stop()
        m.set(interrupted=True, **({"budget_stopped": True} if m.budget_hit else {}))
        files.append_jsonl(Path(run_dir) / LEDGER, m.row())
        if m.budget_hit and isinstance(e, KeyboardInterrupt):
            raise BudgetExceeded(
                f"{name} stopped on the budget after ${m.usd_so_far():.4g} of the ${max_usd:.4g} it had left "
                f"(${dog.reserve:.2g} kept back for stopping); everything finished is saved: raise --max-usd "
                "and rerun the same command to resume") from None
        raise
    if dog:
        dog.stop()
    files.append_jsonl(Path(run_dir) / LEDGER, m.row())


def write_estimate(run_dir: str | Path, stage_name: str, **fields: Any) -> None:
    """Record the cost model's prediction for a stage as a `kind: estimate` ledger line."""
    row = {"stage": stage_name, "kind": "estimate", "started_at": now_iso(), "ended_at": now_iso()}
    row.update(fields)
    files.append_jsonl(Path(run_dir) / LEDGER, row)

"""Measured cost: every finished stage (or resumed chunk) appends one line to ledger.jsonl.

    with meter.stage(run_dir, "generate", usd_per_device_hour=0.1, max_usd=0.5) as m:
        ...
        m.add(prompt_tokens=123, output_tokens=456)
        m.set(requests=10)                     # stage-specific fields

On a clean exit the line is appended (one write + fsync, so a kill never leaves half a line). On
an exception (Ctrl-C, SIGTERM, an error, the budget) the line is appended too, marked
`interrupted`, and the exception goes on: the device time and tokens were paid for either way.
Against a kill that leaves no time for either, a heartbeat thread rewrites the chunk's line to
.heartbeat-<stage>.json every HEARTBEAT_S seconds from the moment the chunk starts (engine start-up
included); the stage's next run appends it, marked interrupted (`recover`), so a kill at any moment
loses at most HEARTBEAT_S of metered time.

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
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from replicate import files
from replicate.errors import BudgetExceeded, UserError
from replicate.rundir import sweep_dirs

LEDGER = "ledger.jsonl"
TOKEN_FIELDS = ("prompt_tokens", "output_tokens", "trained_tokens")
HEARTBEAT_S = 5.0  # a chunk killed without warning loses at most this much metered wall time
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
        files.check_model(f"{path}:{lineno}", row, LedgerLine, "; this is not a line `replicate` wrote: fix or "
                          "delete it (the ledger is the run's record of spending)")
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
    return f"cpu: {cpu_name()} ({os.cpu_count()} cores)", 1


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo), e.g. `AMD EPYC 9R14`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    chunk_id: str = field(default_factory=lambda: f"{now_iso()}-{random.getrandbits(32):08x}")
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # the heartbeat reads fields
    budget_hit: bool = False  # the watchdog stopped the block (max_usd)

    def add(self, **counts: float) -> None:
        """Accumulate counters (token counts, requests, ...)."""
        with self._lock:
            for k, v in counts.items():
                self.fields[k] = self.fields.get(k, 0) + v

    def set(self, **values: Any) -> None:
        with self._lock:
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
        with self._lock:
            fields = dict(self.fields)
        for k in TOKEN_FIELDS:
            row[k] = int(fields.get(k, 0))
        row["started_at"] = self.started_at
        row["ended_at"] = now_iso()
        row["chunk_id"] = self.chunk_id
        row.update({k: v for k, v in fields.items() if k not in TOKEN_FIELDS})
        return row


def heartbeat_path(run_dir: str | Path, stage_name: str) -> Path:
    return Path(run_dir) / f".heartbeat-{stage_name}.json"


class Heartbeat:
    """Rewrites a running chunk's ledger line to its heartbeat file now and every HEARTBEAT_S
    seconds (a daemon thread: it goes on while the main thread waits on an engine's start-up).
    On exit it stops; the file is removed once the chunk's line is in the ledger, else left for
    `recover`."""

    def __init__(self, run_dir: str | Path, m: StageMeter, interval_s: float = HEARTBEAT_S):
        self.run_dir, self.m, self.interval_s = Path(run_dir), m, interval_s
        self.path = heartbeat_path(run_dir, m.stage)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{m.stage}", daemon=True)

    def _beat(self) -> None:
        try:
            files.write_json(self.path, self.m.row())
        except OSError:
            pass  # a full disk must not stop the work; the ledger line at the end still counts

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat()

    def __enter__(self) -> Self:
        recover(self.run_dir, self.m.stage)  # a killed chunk's heartbeat no stage recovered yet: not overwritten
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        # A chunk whose line is in the ledger needs no heartbeat; nor does one refused for its input
        # or settings (a UserError other than the budget's): seconds of checking, not work to meter.
        refused = exc_type is not None and issubclass(exc_type, UserError) and not issubclass(exc_type, BudgetExceeded)
        if refused or self.m.chunk_id in {r.get("chunk_id") for r in ledger(self.run_dir)}:
            self.path.unlink(missing_ok=True)
        else:
            self._beat()  # the most recent time, for `recover`


def recover_within(run_dir: str | Path, stage_name: str, max_usd: float | None,
                   fix: Callable[[dict], dict] | None = None) -> float | None:
    """`recover`, then what is left of the caller's `max_usd` (computed before the recovered line
    was in the ledger); None = no limit. Nothing left: BudgetExceeded, before any work starts."""
    usd = recover(run_dir, stage_name, fix)
    if max_usd is None:
        return None
    if max_usd - usd <= 0:
        raise BudgetExceeded(f"the budget is spent before {stage_name} could continue (a killed chunk's "
                             f"${usd:.4g} was recovered into the ledger); raise --max-usd and rerun the same "
                             "command to resume")
    return max_usd - usd


def recover(run_dir: str | Path, stage_name: str, fix: Callable[[dict], dict] | None = None) -> float:
    """A chunk killed without warning left its heartbeat: append its line once, marked
    interrupted (`fix` may correct its counts from the stage's own files), and remove the file.
    Returns the dollars appended (0 when there was nothing to recover)."""
    path = heartbeat_path(run_dir, stage_name)
    if not path.exists():
        return 0.0
    try:
        row = files.read_json_object(path, "")
        LedgerLine.model_validate(row)
    except (UserError, ValidationError):  # not a heartbeat the meter wrote: nothing to recover from it
        row = None
    usd = 0.0
    if isinstance(row, dict) and row.get("chunk_id") not in {r.get("chunk_id") for r in ledger(run_dir)}:
        row = fix(row) if fix else row
        row["interrupted"] = True
        files.append_jsonl(Path(run_dir) / LEDGER, row)
        usd = row.get("usd") or 0.0
    path.unlink(missing_ok=True)
    return usd


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
        self.lock, self.active, self.done = threading.Lock(), True, threading.Event()
        self.main = threading.main_thread().ident
        signal.signal(self.SIGNAL, _budget_stop)
        threading.Thread(target=self._watch, name="budget-watchdog", daemon=True).start()

    @property
    def reserve(self) -> float:
        """Dollars kept back for stopping, at the price of now: a stage reprices once its engine
        names the device it really runs on."""
        return STOP_RESERVE_S * self.m.num_devices / 3600 * self.m.usd_per_device_hour

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
    """Meter one stage (or one resumed chunk of it): its ledger line is appended when it ends,
    marked `interrupted` when it ends by an exception; a heartbeat covers a kill. `max_usd`: see
    the module docstring."""
    dev, count = device_name()
    m = StageMeter(
        stage=name,
        device=device or dev,
        num_devices=num_devices or count,
        usd_per_device_hour=usd_per_device_hour,
    )
    watch = max_usd is not None and usd_per_device_hour > 0 and threading.current_thread() is threading.main_thread()
    dog = _Watchdog(m, max_usd) if watch else None
    with Heartbeat(run_dir, m):
        try:
            yield m
        except BaseException as e:
            if dog:
                dog.stop()
            m.set(interrupted=True, stopped_by=type(e).__name__, **({"budget_stopped": True} if m.budget_hit else {}))
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

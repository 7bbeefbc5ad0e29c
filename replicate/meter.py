"""Measured cost: every finished stage (or resumed chunk) appends one line to ledger.jsonl.

    with meter.stage(run_dir, "generate", usd_per_device_hour=0.1) as m:
        ...
        m.add(prompt_tokens=123, output_tokens=456)
        m.set(requests=10)                     # stage-specific fields

On a clean exit the line is appended (one write + fsync, so a kill never leaves half a line). On
an exception (Ctrl-C, SIGTERM, a crash) the line is appended too, marked `interrupted`, and the
exception goes on: the time was paid for. Against a kill that leaves no time for either, a
heartbeat thread rewrites the chunk's line to .heartbeat-<stage>.json every HEARTBEAT_S seconds
from the moment the chunk starts (engine start-up included); the stage's next run appends it,
marked interrupted (`recover`), so a kill at any moment loses at most HEARTBEAT_S of metered time.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from replicate import files
from replicate.rundir import sweep_dirs

LEDGER = "ledger.jsonl"
TOKEN_FIELDS = ("prompt_tokens", "output_tokens", "trained_tokens")
HEARTBEAT_S = 5.0  # a chunk killed without warning loses at most this much metered wall time


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
    rows = files.read_jsonl(Path(run_dir) / LEDGER)
    if with_sweep:
        for sub in sweep_dirs(run_dir):
            rows += [dict(r, sweep_examples=int(sub.name[1:])) for r in files.read_jsonl(sub / LEDGER)]
    return rows


def measured(rows: list[dict], stage: str | None = None) -> list[dict]:
    """Lines of real spending (kind `measured`; a line without a kind counts as spending too, so a
    budget never overlooks it), of one stage or all."""
    return [r for r in rows if r.get("kind", "measured") == "measured" and (stage is None or r.get("stage") == stage)]


def estimates(rows: list[dict], stage: str | None = None) -> list[dict]:
    return [r for r in rows if r.get("kind") == "estimate" and (stage is None or r.get("stage") == stage)]


def total(rows: list[dict], key: str = "usd") -> float:
    return sum(r.get(key) or 0 for r in rows)


def spent_usd(run_dir: str | Path, stage: str | None = None, *, with_sweep: bool = False) -> float:
    """Measured dollars so far in a run directory (one stage, or all)."""
    return total(measured(ledger(run_dir, with_sweep=with_sweep), stage))


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
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.m.chunk_id in {r.get("chunk_id") for r in ledger(self.run_dir)}:
            self.path.unlink(missing_ok=True)
        else:
            self._beat()  # the most recent time, for `recover`


def recover(run_dir: str | Path, stage_name: str, fix: Callable[[dict], dict] | None = None) -> float:
    """A chunk killed without warning left its heartbeat: append its line once, marked
    interrupted (`fix` may correct its counts from the stage's own files), and remove the file.
    Returns the dollars appended (0 when there was nothing to recover)."""
    path = heartbeat_path(run_dir, stage_name)
    if not path.exists():
        return 0.0
    try:
        row = files.read_json(path, "")
    except Exception:  # noqa: BLE001 - torn or garbled: write_atomic makes it near impossible
        row = None
    usd = 0.0
    if isinstance(row, dict) and row.get("chunk_id") not in {r.get("chunk_id") for r in ledger(run_dir)}:
        row = fix(row) if fix else row
        row["interrupted"] = True
        files.append_jsonl(Path(run_dir) / LEDGER, row)
        usd = row.get("usd") or 0.0
    path.unlink(missing_ok=True)
    return usd


@contextlib.contextmanager
def stage(
    run_dir: str | Path,
    name: str,
    *,
    usd_per_device_hour: float = 0.0,
    device: str | None = None,
    num_devices: int | None = None,
) -> Iterator[StageMeter]:
    """Meter one stage (or one resumed chunk of it): its ledger line is appended when it ends,
    marked `interrupted` when it ends by an exception; a heartbeat covers a kill."""
    dev, count = device_name()
    m = StageMeter(
        stage=name,
        device=device or dev,
        num_devices=num_devices or count,
        usd_per_device_hour=usd_per_device_hour,
    )
    with Heartbeat(run_dir, m):
        try:
            yield m
        except BaseException as e:
            m.set(interrupted=True, stopped_by=type(e).__name__)
            files.append_jsonl(Path(run_dir) / LEDGER, m.row())
            raise
        files.append_jsonl(Path(run_dir) / LEDGER, m.row())


def write_estimate(run_dir: str | Path, stage_name: str, **fields: Any) -> None:
    """Record the cost model's prediction for a stage as a `kind: estimate` ledger line."""
    row = {"stage": stage_name, "kind": "estimate", "started_at": now_iso(), "ended_at": now_iso()}
    row.update(fields)
    files.append_jsonl(Path(run_dir) / LEDGER, row)

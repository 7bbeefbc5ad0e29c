"""Measured cost: every finished stage (or resumed chunk) appends one line to ledger.jsonl.

    with meter.stage(run_dir, "generate", usd_per_device_hour=0.1) as m:
        ...
        m.add(prompt_tokens=123, output_tokens=456)
        m.set(requests=10)                     # stage-specific fields

On a clean exit the line is appended (one write + fsync, so a kill never leaves half a line);
on an exception nothing is written for the unfinished work and the exception propagates.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from replicate import files
from replicate.rundir import sweep_dirs

LEDGER = "ledger.jsonl"
TOKEN_FIELDS = ("prompt_tokens", "output_tokens", "trained_tokens")


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


@contextlib.contextmanager
def stage(
    run_dir: str | Path,
    name: str,
    *,
    usd_per_device_hour: float = 0.0,
    device: str | None = None,
    num_devices: int | None = None,
) -> Iterator[StageMeter]:
    """Meter one stage (or one resumed chunk of it) and append its ledger line on success."""
    dev, count = device_name()
    m = StageMeter(
        stage=name,
        device=device or dev,
        num_devices=num_devices or count,
        usd_per_device_hour=usd_per_device_hour,
    )
    yield m
    files.append_jsonl(Path(run_dir) / LEDGER, m.row())


def write_estimate(run_dir: str | Path, stage_name: str, **fields: Any) -> None:
    """Record the cost model's prediction for a stage as a `kind: estimate` ledger line."""
    row = {"stage": stage_name, "kind": "estimate", "started_at": now_iso(), "ended_at": now_iso()}
    row.update(fields)
    files.append_jsonl(Path(run_dir) / LEDGER, row)

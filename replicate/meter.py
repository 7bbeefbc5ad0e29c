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
import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} ({os.cpu_count()} cores)", 1


def append_jsonl(path: Path, row: dict) -> None:
    """Append one JSON line durably: a single write of the whole line, then fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (a kill mid-write elsewhere) is ignored."""
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_ledger(run_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / LEDGER)


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
    append_jsonl(Path(run_dir) / LEDGER, m.row())


def write_estimate(run_dir: str | Path, stage_name: str, **fields: Any) -> None:
    """Record the cost model's prediction for a stage as a `kind: estimate` ledger line."""
    row = {"stage": stage_name, "kind": "estimate", "started_at": now_iso(), "ended_at": now_iso()}
    row.update(fields)
    append_jsonl(Path(run_dir) / LEDGER, row)

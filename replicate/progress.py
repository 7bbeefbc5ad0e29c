"""Progress of a long stage: a live bar on a terminal, one plain line at a steady interval elsewhere.

A progress bar in a log file (nohup, Slurm, CI, `2> log`) prints once, at the end: for minutes
the log shows nothing. So when stderr is not a terminal, the stage logs one plain line every
`REPLICATE_PROGRESS_S` seconds (default 30) and one when it ends:

    generate: 120/400 rows (30%), 812 tok/s, $0.0123 so far, ETA 4.2 min
    finetune: 12/40 steps (30%), loss 1.234, 1,250 tok/s, $0.0012 so far, ETA 3.0 min

`-q` switches both off. The ETA is the work left at the rate of this run so far (a resumed run
counts only what it did itself: the rows a killed run left behind took no time now).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from replicate import log
from replicate.tables import duration, money, num

DEFAULT_INTERVAL_S = 30.0


def interval_s() -> float:
    """Seconds between two plain progress lines: $REPLICATE_PROGRESS_S, else 30."""
    try:
        return max(0.05, float(os.environ.get("REPLICATE_PROGRESS_S", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def line(label: str, done: float, total: float, unit: str, *, rate: float | None, loss: float | None = None,
         tokens_per_s: float | None = None, usd: float | None = None) -> str:
    """One progress line: `label: done/total unit (pct), [loss], tok/s, $ so far, ETA`."""
    parts = [f"{label}: {done:,.0f}/{total:,.0f} {unit}" + (f" ({done / total:.0%})" if total else "")]
    if loss is not None:
        parts.append(f"loss {loss:.3f}")
    if tokens_per_s is not None:
        parts.append(f"{num(tokens_per_s)} tok/s")
    if usd is not None:
        parts.append(f"{money(usd)} so far")
    left = total - done
    if left <= 0:
        parts.append("done")
    elif rate:
        parts.append(f"ETA {duration(left / rate)}")
    else:
        parts.append("ETA unknown")
    return ", ".join(parts)


class Progress:
    """`update(done, ...)` as work finishes; `close()` at the end (also on an exception)."""

    def __init__(self, label: str, total: float, done: float = 0, unit: str = "rows", *, enabled: bool = True,
                 tty: bool | None = None, every_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit, self.clock = label, total, unit, clock
        self.enabled = enabled and not log.quiet()
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.every_s = interval_s() if every_s is None else every_s
        self.t0 = clock()
        self.done0 = self.done = done
        self.fields: dict = {}
        self.bar = None
        self._stop = threading.Event()
        if self.enabled and self.tty:
            self._start_bar(done)
        elif self.enabled:
            # A thread, not update(): the line must come at its interval even while nothing
            # finishes (an engine starting, a long first batch, a slow optimizer step).
            threading.Thread(target=self._tick, name=f"progress-{label}", daemon=True).start()

    def _start_bar(self, done: float) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn(self.unit), TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                            console=Console(stderr=True))
        self.task = self.bar.add_task(self.label, total=self.total, completed=done, status="")
        self.bar.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            log.get().info(self.text())

    def rate(self) -> float | None:
        """Units per second in this run."""
        dt = self.clock() - self.t0
        return (self.done - self.done0) / dt if dt > 0 and self.done > self.done0 else None

    def text(self) -> str:
        return line(self.label, min(self.done, self.total), self.total, self.unit, rate=self.rate(), **self.fields)

    def update(self, done: float, *, loss: float | None = None, tokens_per_s: float | None = None,
               usd: float | None = None) -> None:
        self.done = done
        self.fields = {k: v for k, v in (("loss", loss), ("tokens_per_s", tokens_per_s), ("usd", usd))
                       if v is not None}
        if not self.enabled:
            return
        if self.bar is not None:
            status = self.text().split(", ", 1)[1] if ", " in self.text() else ""
            self.bar.update(self.task, completed=min(done, self.total), status=status.rsplit(", ETA", 1)[0])

    def close(self) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        else:
            log.get().info(self.text())
        self.enabled = False

"""Metering for the fine-tuning stage: tokens, time, FLOPs, MFU, memory, dollars, and progress
(replicate/progress.py: a bar on a terminal, a plain line with loss and tokens/s in a log).

Conventions (docs/finetune.md):
- trained tokens = non-padding tokens (prompt + completion) that went through forward and backward,
  summed over processes and epochs; loss tokens = the supervised (completion + EOS) part of them.
- model FLOPs = k x N x trained tokens, N = all model parameters (a tied embedding counted once),
  k = 6 for full fine-tuning (forward 2N + backward 4N) and k = 4 for LoRA/QLoRA (the frozen
  weights need no weight gradient: forward 2N + input-gradient 2N; the adapter adds < 1 %).
  Attention score FLOPs are not counted, as in the usual 6N convention.
- MFU = model FLOPs / (wall seconds x devices x peak FLOP/s of one device).
- device-hours = wall seconds x devices / 3600; dollars = device-hours x the price table's rate.

The trainer pops each batch's `meter` entry (see finetune_data.Collator) into a `Tally`; the callback
turns the tally into rates, writes `steps.jsonl` (one row per optimizer step: loss, tokens, elapsed
seconds, CRC of the batch's token ids, which tests use to check the data order after a resume)
and stops training cleanly when the next step would pass the budget.
"""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from replicate.files import append_jsonl


@dataclass
class Tally:
    tokens: int = 0
    loss_tokens: int = 0
    positions: int = 0
    """Tokens + padding positions: what the device actually computed on."""
    crcs: list[int] = field(default_factory=list)

    def add(self, m: dict) -> None:
        self.tokens += m["tokens"]
        self.loss_tokens += m["loss_tokens"]
        self.positions += m["positions"]
        self.crcs.append(m["crc"])


def flops_per_token(n_params: int, method: str) -> float:
    return (6 if method == "full" else 4) * n_params


def peak_memory_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _all_reduce(values: list[float]) -> list[float]:
    """Sum over processes (no-op in a single process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def metered_trainer_class():
    """SFTTrainer that counts each micro-batch's tokens before the forward pass."""
    from trl import SFTTrainer

    class MeteredSFTTrainer(SFTTrainer):
        tally: Tally

        def training_step(self, model, inputs, *args, **kwargs):
            m = inputs.pop("meter", None)
            if m is not None:
                self.tally.add(m)
            return super().training_step(model, inputs, *args, **kwargs)

    return MeteredSFTTrainer


def callback(tally: Tally, **kw):
    """A TrainerCallback bound to `tally` (built here so transformers is imported lazily)."""
    from transformers import TrainerCallback

    class TrainMeter(_MeterLogic, TrainerCallback):
        pass

    return TrainMeter(tally, **kw)


class _MeterLogic:
    def __init__(self, tally: Tally, *, flops_per_token: float, peak_flops: float | None,
                 usd_per_device_hour: float, world_size: int, steps_path: Path | None,
                 max_usd: float | None = None, started: float | None = None, progress: bool = True,
                 label: str = "finetune", chunk=None):
        self.tally = tally
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.usd_per_device_hour = usd_per_device_hour
        self.world_size = world_size
        self.steps_path = steps_path
        self.max_usd = max_usd
        self.started = started  # perf_counter when the stage chunk began (setup counts toward the budget)
        self.show = progress
        self.label = label
        self.chunk = chunk  # the stage's meter.StageMeter: its heartbeat shows the tokens so far
        self.budget_stopped = False
        self.last_loss: float | None = None
        self._pending: dict | None = None
        self._bar = None

    # --- clock and money -------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def usd(self, seconds: float) -> float:
        return seconds * self.world_size / 3600 * self.usd_per_device_hour

    def on_train_begin(self, args, state, control, **kw):
        _sync()
        self.t0 = time.perf_counter()
        self.start_step = state.global_step  # > 0 when resumed from a checkpoint
        self.is_main = state.is_world_process_zero
        self._step_t = self.t0
        if self.show and self.is_main:
            from replicate.progress import Progress

            self._bar = Progress(self.label, state.max_steps, state.global_step, "steps")
            # Lines from the start: loading and the first step can take minutes on a CPU.
            self._bar.update(state.global_step, usd=self.usd(self.t0 - (self.started or self.t0)))

    def on_step_end(self, args, state, control, **kw):
        _sync()
        now = time.perf_counter()
        step_s, self._step_t = now - self._step_t, now
        spent = self.usd(now - (self.started if self.started is not None else self.t0))
        self._pending = {"step": state.global_step, "t": round(now - self.t0, 4), "tokens": self.tally.tokens,
                         "loss_tokens": self.tally.loss_tokens, "crc": self.tally.crcs[-1] if self.tally.crcs else None}
        if self.chunk is not None:  # this process's count; the ledger line at the end sums all of them
            self.chunk.set(trained_tokens=self.tally.tokens, global_step=state.global_step)
        # Stop before the step that would cross the budget; every process must agree, or DDP hangs.
        over = self.max_usd is not None and spent + self.usd(step_s) > self.max_usd
        if self.max_usd is not None and _all_reduce([float(over)])[0] > 0:
            self.budget_stopped = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs or self._pending is None:
            return
        self.last_loss = float(logs["loss"])
        row = {**self._pending, "loss": round(self.last_loss, 5)}
        self._pending = None
        if self.is_main and self.steps_path is not None:
            append_jsonl(self.steps_path, row)
        if self._bar is not None:
            el = self.elapsed()
            tok_s = self.tally.tokens * self.world_size / el if el > 0 else 0.0
            spent = self.usd(time.perf_counter() - (self.started if self.started is not None else self.t0))
            self._bar.update(state.global_step, loss=self.last_loss, tokens_per_s=tok_s, usd=spent)

    def on_train_end(self, args, state, control, **kw):
        _sync()
        self.wall_s = self.elapsed()
        self.close_progress()

    def close_progress(self) -> None:
        """End the progress display (also when training stops on an exception)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # --- the numbers that go to the ledger and train_metrics.json ---------------------------
    def summary(self, state, reduce: bool = True) -> dict:
        """Totals of this run (all processes when `reduce`: every rank must call it then)."""
        local = [float(self.tally.tokens), float(self.tally.loss_tokens), float(self.tally.positions)]
        tokens, loss_tokens, positions = _all_reduce(local) if reduce else local
        wall = self.wall_s
        device_s = wall * self.world_size
        flops = self.flops_per_token * tokens
        return {
            "steps_this_run": state.global_step - self.start_step,
            "global_step": state.global_step,
            "max_steps": state.max_steps,
            "train_s": round(wall, 3),
            "trained_tokens": int(tokens),
            "loss_tokens": int(loss_tokens),
            "padding_fraction": round(1 - tokens / positions, 4) if positions else 0.0,
            "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
            "tokens_per_s_per_device": round(tokens / device_s, 1) if device_s > 0 else None,
            "device_hours": device_s / 3600,
            "train_usd": self.usd(wall),
            "model_flops": flops,
            "mfu": round(flops / (device_s * self.peak_flops), 4) if self.peak_flops and device_s > 0 else None,
            "peak_memory_gb": round(peak_memory_bytes() / 1e9, 3),
            "final_loss": self.last_loss,
            "budget_stopped": self.budget_stopped,
            "pid": os.getpid(),
        }

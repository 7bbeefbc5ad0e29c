"""Stage 2: fine-tune the base student on the teacher's Alpaca data with TRL (metered, resumable).

    replicate finetune pipelines/tiny-cpu.yaml           # -> runs/<name>/student/
    replicate finetune pipelines/tiny-cpu.yaml           # again: resumes from the last checkpoint

train.py is one process's loop; with finetune.hardware.count > 1 launch.py starts that loop in
every process under `accelerate launch`. data.py turns Alpaca rows into token batches,
metering.py counts tokens, time and money, checks.py says whether it fits and where to resume,
resume.py what the run directory already holds (a finished student, a killed chunk's time).
"""
from __future__ import annotations

from pathlib import Path

from replicate.config import Pipeline
from replicate.finetune.checks import in_distributed_worker
from replicate.finetune.launch import launch_processes
from replicate.finetune.resume import prepare
from replicate.finetune.train import train

__all__ = ["run_finetune"]


def run_finetune(cfg: Pipeline, run_dir: Path, *, train_file: Path | None = None,
                 out_dir: Path | None = None, max_usd: float | None = None) -> dict:
    """Train (or resume) and return the metrics; a finished stage returns its saved metrics."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "student"
    train_file = Path(train_file) if train_file else run_dir / "data" / "train.jsonl"
    finished, max_usd = prepare(cfg, run_dir, train_file, out_dir, max_usd)
    if finished is not None:
        return finished
    if cfg.finetune.hardware.count > 1 and not in_distributed_worker():
        return launch_processes(cfg, run_dir, train_file, out_dir, max_usd)
    return train(cfg, run_dir, train_file, out_dir, max_usd)

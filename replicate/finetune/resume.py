"""What a run directory already holds before training starts: the settings a student was made
with (a resume must not mix two), a finished student's metrics (nothing to redo), and a killed
chunk's metered time (recovered into the ledger once). Every way into training goes through
`prepare`: run_finetune, and each process a multi-node launcher starts (launch.worker_main)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from replicate import files, meter, rundir
from replicate.config import Pipeline
from replicate.finetune.train import check_method

SETTINGS = "settings.json"  # what the student (and its checkpoints) were trained with
# Keys that do not change what is learned: a resume may change them.
FREE = ("keep_checkpoints", "save_steps", "compile", "attn_implementation",
        # the cost model's own keys: they price a run, they do not change what is trained
        "software", "eval_steps", "eval_examples", "eval_tokens", "overlap_comm", "quantization", "paged_optimizer")


def _settings(cfg: Pipeline, train_file: Path) -> dict:
    """The student model, the fine-tuning settings and the exact training data (its sha256)."""
    digest = hashlib.sha256(train_file.read_bytes()).hexdigest()[:16] if train_file.is_file() else None
    ft = {k: v for k, v in cfg.finetune.model_dump(mode="json").items() if k not in FREE}
    return {"student": cfg.student.model, "finetune": ft, "train_data_sha256": digest}


class TrainMetrics(BaseModel):
    """student/train_metrics.json, the stage's done marker: the parts its readers rely on."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    global_step: int = Field(ge=0)
    trained_tokens: int = Field(ge=0)
    usd: float = Field(0.0, ge=0)


def read_metrics(path: Path) -> dict:
    metrics = files.read_json_object(path, "")
    files.check_model(str(path), metrics, TrainMetrics, f" (not the metrics `replicate finetune` writes: delete "
                      f"{path.parent} to train the student again)")
    return metrics


def _until_last_checkpoint(out_dir: Path):
    """For meter.recover: a killed chunk ran at least until its newest checkpoint was saved (a
    short run may be killed before its heartbeat's first interval has passed)."""
    def fix(row: dict) -> dict:
        import datetime as dt

        saved = [p.stat().st_mtime for p in (out_dir / "checkpoints").glob("checkpoint-*/trainer_state.json")]
        started = dt.datetime.fromisoformat(row["started_at"]).timestamp()
        wall = max([row["wall_s"]] + [t - started for t in saved if t > started])
        row.update(wall_s=round(wall, 3), device_hours=wall * row["num_devices"] / 3600,
                   usd=wall * row["num_devices"] / 3600 * row["usd_per_device_hour"])
        return row

    return fix


def prepare(cfg: Pipeline, run_dir: Path, train_file: Path, out_dir: Path, max_usd: float | None,
            main: bool = True) -> tuple[dict | None, float | None]:
    """What every way into training does first (run_finetune, and each process a multi-node
    launcher starts): refuse a student made otherwise, return a finished one's metrics, and on the
    main process recover a killed chunk's time and record the settings. Returns (the saved metrics
    when done, else None; what is left of max_usd)."""
    done = out_dir / "train_metrics.json"
    settings = _settings(cfg, train_file)
    if done.is_file() or any((out_dir / "checkpoints").glob("checkpoint-*")):  # something would be reused
        rundir.check_settings(out_dir / SETTINGS, settings, "a student")
    if done.is_file():
        return read_metrics(done), max_usd
    check_method(cfg.finetune.method)
    if main:
        max_usd = meter.recover_within(run_dir, "finetune", max_usd, _until_last_checkpoint(out_dir))  # a killed chunk's time
        if settings["train_data_sha256"]:  # what the checkpoints to come are made with (no data: train() says so)
            files.write_json(out_dir / SETTINGS, settings)
    return None, max_usd

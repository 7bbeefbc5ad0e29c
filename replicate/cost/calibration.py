"""Calibration files: efficiency parameters fitted to measured runs, per device.

Format (YAML; written by `replicate calibrate` (calibrate.py), read by `replicate estimate
--calibration FILE` and by `estimate_pipeline(cfg, calibration=load_calibration(path))`):

    devices:
      cpu:                          # a key of budgets/hardware.yaml
        decode_efficiency: 0.81     # any subset of FITTABLE (costmodel.py)
        decode_step_overhead_s: 0.033
        generate_mfu: 0.34
        generate_startup_s: 41
        train_mfu: 0.47
        finetune_startup_s: 22
        fitted_from: [runs/tiny-cpu]  # provenance, ignored by the estimator
    # other top-level keys (version, fit, workload, ...) are informational and ignored

The values replace costmodel.DEFAULTS and the device's hardware.yaml `defaults` for every stage
that runs on that device (evaluation generation uses the generate parameters); a calibrated
stage's low/high range narrows from 1.5x to 1.25x. docs/cost-model.md ("Calibration").
"""
from __future__ import annotations

from pathlib import Path

from replicate.cost.estimate import FITTABLE, check_calibration

__all__ = ["FITTABLE", "load_calibration"]


def load_calibration(path: str | Path) -> dict:
    """Read and validate a calibration YAML; one-line UserError naming the file and key."""
    from replicate.config import read_yaml

    data = read_yaml(path, "no such calibration file (write one with `replicate calibrate RUN_DIR...`)")
    return check_calibration(data, str(path))

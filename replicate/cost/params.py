"""The cost model's constants, and what a device or a calibration file changes of them.

DEFAULTS hold one set of regime constants; they reproduce the published runs in
pipelines/published/ (tests/test_costmodel.py). A device can override the ones named in FITTABLE,
first in its budgets/hardware.yaml `defaults` (the CPU), then in a calibration file fitted to
measured runs by `replicate calibrate` (cost/calibrate.py).

Calibration files (YAML; written by `replicate calibrate`, read by `replicate estimate
--calibration FILE` and by `estimate_pipeline(cfg, calibration=load_calibration(path))`):

        devices:
          cpu:                          # a key of budgets/hardware.yaml
            decode_efficiency: 0.81     # any subset of FITTABLE (below)
            decode_step_overhead_s: 0.033
            generate_mfu: 0.34
            generate_startup_s: 41
            train_mfu: 0.47
            finetune_startup_s: 22
            fitted_from: [runs/tiny-cpu]  # provenance, ignored by the estimator
        # other top-level keys (version, fit, workload, ...) are informational and ignored

The values replace DEFAULTS and the device's hardware.yaml `defaults` for every stage that runs
on that device (evaluation generation uses the generate parameters); a calibrated stage's low/high
range narrows from 1.5x to 1.25x. docs/cost-model.md ("Calibration").
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

from replicate import files
from replicate.cost import catalog
from replicate.errors import UserError

DEFAULTS: dict[str, float] = {
    # --- fine-tuning (training.py); fitted once to the published runs, see docs
    "train_mfu": 0.4,  # large-matmul efficiency; llm-analysis: "up to 0.5" for training
    "tokens_half": 512,  # tokens per device per micro-step at which matmul efficiency halves
    "d_model_half": 512,  # model width at which matmul efficiency halves
    "layer_overhead_s": 0.004,  # per layer per micro-step: kernel launches, hooks (hidden by long kernels)
    "shard_layer_overhead_s": 0.035,  # extra per layer per micro-step under ZeRO-3/FSDP
    "comm_efficiency": 0.7,  # achieved fraction of link bandwidth in NCCL collectives
    "allreduce_overlap": 0.5,  # share of the DDP all-reduce hidden behind the backward
    "offload_efficiency": 0.5,  # achieved fraction of PCIe bandwidth for offload transfers
    "cpu_adam_params_per_s": 1e9,  # host Adam updates per second per node (DeepSpeed CPU-Adam)
    "qlora_slowdown": 1.35,  # 4-bit dequantisation before every matmul
    "checkpoint_gb_per_s": 1.0,  # checkpoint write bandwidth
    "load_gb_per_s": 1.0,  # reading weights at start-up
    "finetune_startup_s": 120,  # process launch, CUDA/NCCL init, tokenizing, wrapping
    # --- generation (generation.py)
    "decode_efficiency": 0.5,  # fraction of HBM bandwidth a decode step reaches
    "generate_mfu": 0.6,  # fraction of peak FLOP/s in prefill / compute-bound decode
    "decode_step_overhead_s": 0.003,  # scheduler, sampling, detokenising per decode step
    "max_num_seqs": 256,  # vLLM's default cap on concurrent sequences
    "gpu_memory_utilization": 0.9,  # vLLM's default share of device memory
    "collective_latency_s": 2e-5,  # one NCCL all-reduce of a small tensor
    "generate_startup_s": 60,  # engine start: process, CUDA graphs/warm-up (weights load apart)
    "api_latency_s": 1.0,  # time to first token of a hosted API
    "api_tokens_per_s": 50,  # output tokens per second per API stream
}

FITTABLE: dict[str, str] = {
    "decode_efficiency": "generate/evaluate: fraction of the memory-bandwidth roofline a decode step reaches",
    "decode_step_overhead_s": "generate/evaluate: fixed seconds per decode step (scheduler, sampling)",
    "generate_mfu": "generate/evaluate: fraction of peak FLOP/s in prefill and compute-bound decode",
    "generate_startup_s": "generate/evaluate: seconds to start one engine (weight loading apart)",
    "train_mfu": "finetune: fraction of peak FLOP/s the matmuls reach at large micro-batches",
    "finetune_startup_s": "finetune: seconds before the first step (weight loading apart)",
}

FRACTIONS = ("decode_efficiency", "generate_mfu", "train_mfu")  # shares of a peak: (0, 1]

# Range of a prediction: device time within the tolerance the published runs are tested at (1.5x),
# narrower once calibrated on the same device; API bills scale with token counts (+-25 %).
DEVICE_RANGE, CALIBRATED_RANGE, API_RANGE = (1 / 1.5, 1.5), (0.8, 1.25), (0.8, 1.25)


def check_calibration(data: dict, source: str = "calibration") -> dict:
    """Validate a calibration mapping ({"devices": {KEY: {PARAM: value}}}); one-line UserErrors."""
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
        raise UserError(f"{source}: expected a mapping with a `devices:` section")
    for dev, params in data["devices"].items():
        with at_key(f"devices.{dev}", source):
            catalog.hardware(dev)
        if not isinstance(params, dict):
            raise UserError(f"{source}: devices.{dev}: expected a mapping of parameters")
        for k, v in params.items():
            if k == "fitted_from":
                continue
            if k not in FITTABLE:
                raise UserError(f"{source}: devices.{dev}.{k}: not a fittable parameter (known: {', '.join(FITTABLE)})")
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise UserError(f"{source}: devices.{dev}.{k}: expected a finite positive number, got {v!r}")
            if k in FRACTIONS and v > 1:  # a share of the device's peak: above 1 the catalog's peak is wrong
                raise UserError(f"{source}: devices.{dev}.{k}: a fraction of the device's peak, at most 1, got {v!r}")
    return data


def params_for(device: catalog.Device, calibration: dict | None) -> tuple[dict, bool]:
    """(parameters, calibrated?) for one device."""
    p = dict(DEFAULTS)
    p.update(device.defaults)
    fitted = ((calibration or {}).get("devices") or {}).get(device.key) or {}
    p.update({k: float(v) for k, v in fitted.items() if k in FITTABLE})
    return p, bool(fitted)


@contextlib.contextmanager
def at_key(key: str, source: str | None = None):
    """Prefix UserErrors raised inside with the YAML path (and file) they belong to."""
    try:
        yield
    except UserError as e:
        raise UserError(f"{source + ': ' if source else ''}{key}: {e}") from None


def usd_range(api_usd: float, device_usd: float, calibrated: bool) -> tuple[float, float]:
    lo, hi = CALIBRATED_RANGE if calibrated else DEVICE_RANGE
    return api_usd * API_RANGE[0] + device_usd * lo, api_usd * API_RANGE[1] + device_usd * hi


def load_calibration(path: str | Path | None) -> dict | None:
    """Read and validate a calibration YAML (None: no file); one-line UserError naming the file and key."""
    if not path:
        return None
    data = files.read_yaml(path, "no such calibration file (write one with `replicate calibrate RUN_DIR...`)")
    return check_calibration(data, str(path))

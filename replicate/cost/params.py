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
import functools
import math
from pathlib import Path

from replicate import files
from replicate.cost import catalog
from replicate.errors import UserError

DEFAULTS: dict[str, float] = {
    # --- fine-tuning (training.py); the fitted ones (FIT below) by cost/fit.py, see docs
    "train_mfu": 0.5,  # fitted: fraction of an SM's peak a full 128x128 tile wave reaches (8192^3 on H200: 0.77)
    "hbm_efficiency": 0.8,  # achieved fraction of memory bandwidth for streaming kernels
    "elementwise_bytes_d": 400,  # bytes per token per layer x d_model: norms, rotary, residuals (fwd + bwd, unfused)
    "elementwise_bytes_ff": 30,  # bytes per token per layer x d_ff: SiLU x up and its backward (unfused)
    "loss_bytes_per_logit": 30,  # bf16 logits, fp32 upcast, log-softmax and their gradients (unfused)
    "tokens_half": 0,  # CPU only (hardware.yaml cpu.defaults): smooth small-matmul penalty; GPUs use SM waves
    "d_model_half": 0,  # CPU only, likewise
    "layer_overhead_s": 0.004,  # per layer per micro-step: kernel launches, hooks (hidden by long kernels)
    "layer_overhead_2023_s": 0.008,  # fitted: the same host floor for the 2023 stacks (older torch, HF, FSDP hooks)
    "shard_layer_overhead_s": 0.0,  # fitted: per layer per gather, the host work a non-prefetching FSDP waits on
    "nf4_dequant_bytes": 2.53,  # per weight per pass: read 0.5 B + 0.03 B of scales, write 2 B of bf16
    "int8_bwd_bytes": 7.0,  # per weight per backward: LLM.int8 CB.to(fp16) * SCB/127 (1 + 2 + 2 + 2 B)
    "dequant_call_s": 0.00027,  # host time of one bitsandbytes dequantise-then-matmul call (LitGPT, A100, 2023-10)
    "int8_call_s": 0.00054,  # host time of one LLM.int8 linear forward (bitsandbytes #347, RTX 3090, 2023-04)
    "comm_efficiency": 0.7,  # achieved fraction of link bandwidth in NCCL collectives
    "allreduce_overlap": 0.5,  # share of the DDP all-reduce hidden behind the backward
    "offload_efficiency": 0.5,  # achieved fraction of PCIe bandwidth for offload transfers
    "cpu_adam_params_per_s": 2.5e8,  # fitted: host Adam updates per second per node (DeepSpeed CPU-Adam, offload)
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

# The training stack of a year (finetune.software, `estimate --software`). Each flag is a mechanism
# in training.py, not a speed factor:
#   fsdp_prefetch  FSDP issues the next layer's all-gather before it is needed (torch FSDP
#                  backward/forward prefetch; HF Trainer's 2023 FSDP integration left it off, so
#                  every gather waited). DeepSpeed ZeRO-3 prefetched in every year (overlap_comm).
#   elementwise    the stack's elementwise memory traffic, in units of the hand count
#                  (elementwise_bytes_d/ff, loss_bytes_per_logit): 2023 and 2025 = 1 (HF's eager
#                  modelling code, fp32 norm upcasts included, what the H100/H200 sweeps measure
#                  with torch 2.11 eager), 2026 = 1/3 (fused: torch.compile, Liger).
#   cpu_floor      the host's per-layer time to issue a micro-step: "measured" = layer_overhead_s
#                  (torch 2.11 on an H200 host), "2023" = layer_overhead_2023_s (fitted: torch
#                  1.13/2.0 dispatch, HF's 2023 code and FSDP/ZeRO hooks on 2023 hosts).
# `--software 2023|2026` also switches the recipe the year's practitioner used (cost/estimate.py):
# 2023 = eager attention and no packing; 2026 = FlashAttention/sdpa, packing, compile.
SOFTWARE: dict[int, dict] = {
    2023: {"fsdp_prefetch": False, "fused_kernels": False, "elementwise": 1.0, "cpu_floor": "2023"},
    2025: {"fsdp_prefetch": True, "fused_kernels": False, "elementwise": 1.0, "cpu_floor": "measured"},
    2026: {"fsdp_prefetch": True, "fused_kernels": True, "elementwise": 1 / 3, "cpu_floor": "measured"},
}


def elementwise_scale(year: int, fused: bool | None, p: dict | None = None) -> float:
    """Elementwise traffic of a stack, in units of the hand count (fused kernels: a third)."""
    scale = stack(year)["elementwise"]
    if fused is True:
        return min(scale, 1 / 3)
    if fused is False:
        return max(scale, 1.0)
    return scale


# `--software YEAR`: the same copy with that year's typical recipe, not only its stack. 2023 = HF
# Trainer with eager attention and batches padded to their longest row; 2026 = FlashAttention/sdpa,
# packing and compiled (fused) kernels. Each is an assumption stated in the estimate's notes.
RECIPES = {2023: {"attention": "eager", "packing": False, "fused": False},
           2026: {"attention": "flash", "packing": True, "fused": True}}


@functools.lru_cache(maxsize=64)
def stack(year: int) -> dict:
    """The SOFTWARE profile in force in `year` (the latest one not after it; 2023 before that)."""
    keys = [y for y in sorted(SOFTWARE) if y <= year]
    return SOFTWARE[keys[-1] if keys else min(SOFTWARE)]


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

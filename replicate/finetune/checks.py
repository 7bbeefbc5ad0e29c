"""Before and around the training loop: will it fit, and which checkpoint to resume from."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from replicate.errors import UserError

FUSED_HEAD_VOCAB_CHUNK = 32768  # TRL's chunked log-prob head holds at most this many logits per token


def in_distributed_worker() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def available_bytes() -> tuple[float, str]:
    """Memory one training process can use: the GPU's, or what the host has free."""
    import torch

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return float(p.total_memory), p.name
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) * 1024, "this machine's free RAM"
    return float("inf"), "unknown"


def check_memory(cfg, hf_config_dict: dict, longest_row: int, world: int) -> dict:
    """Raise a one-line UserError before any weight is loaded when the run cannot fit.

    Uses the cost model's arithmetic (replicate/memory.py), with the logits term replaced by what
    TRL's chunked LM head really holds (<= 32768 vocabulary entries per token, not the full vocab).
    Peak memory follows the longest micro-batch, so the sequence length is the longest row."""
    from replicate.cost import catalog, memory

    ft = cfg.finetune
    shape = catalog.shape_from_hf_config(hf_config_dict, cfg.student.model)
    setup = memory.TrainSetup(ft.method, ft.batch_size, float(longest_row), ft.gradient_checkpointing,
                              ft.zero_stage if world > 1 else 0, ft.cpu_offload, world, ft.lora_r,
                              tuple(ft.lora_targets))
    parts = memory.training_breakdown(shape, setup)
    parts["logits"] = ft.batch_size * longest_row * min(shape.vocab, FUSED_HEAD_VOCAB_CHUNK) * memory.LOGIT_BYTES
    need = sum(parts.values())
    have, where = available_bytes()
    import torch

    if not torch.cuda.is_available():
        need *= world  # CPU processes share the host: one full replica each
    if need > have * memory.USABLE_FRACTION:
        big = max(parts, key=parts.get)
        raise UserError(
            f"student {cfg.student.model} ({shape.params / 1e9:.2f}B params) needs ~{need / 1e9:.1f} GB for "
            f"{ft.method} fine-tuning (largest part: {big} {parts[big] / 1e9:.1f} GB) but {where} has "
            f"{have / 1e9:.1f} GB; use finetune.method: lora, a smaller batch_size, gradient_checkpointing, "
            "or more devices with zero_stage: 3")
    return {"need_gb": round(need / 1e9, 2), "have_gb": round(have / 1e9, 2)}


def last_good_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint-N whose trainer_state.json (written last by the Trainer) parses.

    A newer, incomplete one (killed while saving) is removed by rank 0 so the Trainer never sees it."""
    if not ckpt_dir.is_dir():
        return None
    found = sorted((p for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for p in found:
        try:
            json.loads((p / "trainer_state.json").read_text())
            return p
        except (OSError, ValueError):
            if int(os.environ.get("RANK", "0")) == 0:
                shutil.rmtree(p, ignore_errors=True)
    return None

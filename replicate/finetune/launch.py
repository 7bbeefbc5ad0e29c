"""Around the training loop: will it fit, which checkpoint to resume, and several processes.

Multi-process (finetune.hardware.count > 1): the stage writes student/launch/job.json and
student/launch/accelerate.yaml and runs

    python -m accelerate.commands.launch --config_file accelerate.yaml -m replicate.finetune.train job.json

accelerate starts one process per device through torchrun; each runs `finetune.train` (DDP; on a
CPU the gloo backend). zero_stage > 0 writes an FSDP config instead (stage 3 = FULL_SHARD, 1-2 =
SHARD_GRAD_OP: FSDP has no optimizer-only sharding). Exit code 3 = budget stop, 2 = user error.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from replicate.errors import BudgetExceeded, UserError

FUSED_HEAD_VOCAB_CHUNK = 32768  # TRL's chunked log-prob head holds at most this many logits per token


def in_distributed_worker() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


# ---- memory --------------------------------------------------------------------------------------


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
    from replicate.cost import catalog
    from replicate.cost import memory

    ft = cfg.finetune
    shape = catalog.shape_from_hf_config(hf_config_dict, cfg.student.model)
    setup = memory.TrainSetup(ft.method, ft.batch_size, float(longest_row), ft.gradient_checkpointing,
                              ft.zero_stage if world > 1 else 0, ft.cpu_offload, world, ft.lora_r,
                              len(ft.lora_target_modules or ["q_proj", "v_proj"]))
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


# ---- checkpoints ---------------------------------------------------------------------------------


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


# ---- several processes ---------------------------------------------------------------------------


def accelerate_config(ft, num_processes: int, port: int) -> dict:
    """accelerate's launch config. MULTI_GPU is accelerate's name for "torchrun starts the
    processes"; on a CPU each process then picks gloo itself (SFTConfig(use_cpu=True))."""
    acc = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "num_processes": num_processes,
           "num_machines": 1, "machine_rank": 0, "main_process_port": port, "mixed_precision": "no",
           "rdzv_backend": "static", "same_network": True, "use_cpu": False, "dynamo_config": {}}
    if ft.zero_stage > 0 and ft.method == "full":
        acc["distributed_type"] = "FSDP"
        acc["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": ft.zero_stage == 3,  # True = FULL_SHARD (ZeRO-3)
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_offload_params": ft.cpu_offload,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": False,
        }
    return acc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_processes(cfg, run_dir: Path, train_file: Path, out_dir: Path, max_usd: float | None) -> dict:
    import torch

    n = cfg.finetune.hardware.count
    if torch.cuda.is_available() and torch.cuda.device_count() < n:
        raise UserError(f"finetune.hardware.count: {n} processes asked for, {torch.cuda.device_count()} GPUs visible")
    launch = out_dir / "launch"
    launch.mkdir(parents=True, exist_ok=True)
    job = {"pipeline": cfg.model_dump(mode="json"), "run_dir": str(run_dir), "train_file": str(train_file),
           "out_dir": str(out_dir), "max_usd": max_usd}
    (launch / "job.json").write_text(json.dumps(job, indent=1))
    (launch / "accelerate.yaml").write_text(yaml.safe_dump(accelerate_config(cfg.finetune, n, _free_port())))
    env = dict(os.environ)
    if not torch.cuda.is_available():  # n processes share the cores; oversubscription slows all of them
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch / "accelerate.yaml"),
           "-m", "replicate.finetune.train", str(launch / "job.json")]
    rc = subprocess.run(cmd, env=env, check=False).returncode
    if rc == 3:
        raise BudgetExceeded("finetune stopped on the budget; the checkpoint is saved: raise the budget and rerun")
    if rc != 0:
        raise UserError(f"multi-process fine-tuning failed (exit code {rc}); the processes' messages are above")
    return json.loads((out_dir / "train_metrics.json").read_text())


def worker_main(argv: list[str]) -> int:
    """One process under accelerate: the same `train` as a single-process run."""
    from replicate.config import Pipeline
    from replicate.finetune.train import train

    job = json.loads(Path(argv[0]).read_text())
    cfg = Pipeline.model_validate(job["pipeline"])
    try:
        train(cfg, Path(job["run_dir"]), Path(job["train_file"]), Path(job["out_dir"]), job["max_usd"])
    except BudgetExceeded as e:
        print(f"replicate: {e}", file=sys.stderr)
        return 3
    except UserError as e:
        print(f"replicate: error: {e}", file=sys.stderr)
        return 2
    return 0

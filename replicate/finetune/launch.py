"""Several training processes: accelerate starts them, each runs train.train.

Multi-process (finetune.hardware.count > 1): the stage writes student/launch/job.json and
student/launch/accelerate.yaml and runs

    python -m accelerate.commands.launch --config_file accelerate.yaml -m replicate.finetune.launch job.json

accelerate starts one process per device through torchrun; each runs `finetune.train` (DDP; on a
CPU the gloo backend). zero_stage > 0 shards full fine-tuning with `finetune.sharding`: FSDP (stage
3 = FULL_SHARD, 1-2 = SHARD_GRAD_OP: FSDP has no optimizer-only sharding) or DeepSpeed ZeRO at
exactly that stage. Several nodes: nodes.py writes one launcher per node. Exit code 3 = budget
stop, 2 = user error.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from replicate import files
from replicate.config import Pipeline
from replicate.errors import BudgetExceeded, UserError
from replicate.finetune.train import train


def accelerate_config(ft, num_processes: int, port: int, *, num_machines: int = 1, machine_rank: int = 0,
                      main_process_ip: str | None = None) -> dict:
    """accelerate's launch config. MULTI_GPU is accelerate's name for "torchrun starts the
    processes"; on a CPU each process then picks gloo itself (SFTConfig(use_cpu=True)).
    `num_processes` counts every process of every machine (accelerate's convention)."""
    acc = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "num_processes": num_processes,
           "num_machines": num_machines, "machine_rank": machine_rank, "main_process_port": port,
           "mixed_precision": "no", "rdzv_backend": "static", "same_network": True, "use_cpu": False,
           "dynamo_config": {}}
    if main_process_ip:
        acc["main_process_ip"] = main_process_ip
    if ft.zero_stage > 0 and ft.method == "full" and ft.sharding == "deepspeed":
        acc["distributed_type"] = "DEEPSPEED"
        acc["deepspeed_config"] = {
            "zero_stage": ft.zero_stage,  # 1 optimizer state, 2 + gradients, 3 + parameters
            "offload_optimizer_device": "cpu" if ft.cpu_offload else "none",
            "offload_param_device": "cpu" if ft.cpu_offload and ft.zero_stage == 3 else "none",
            "zero3_init_flag": ft.zero_stage == 3,
            "zero3_save_16bit_model": True,  # save_model gathers full weights, as FSDP's FULL_STATE_DICT
            "gradient_accumulation_steps": ft.gradient_accumulation,
        }
    elif ft.zero_stage > 0 and ft.method == "full":
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


def check_sharding(ft) -> None:
    """DeepSpeed is an optional extra: say so before any process starts."""
    import importlib.util

    if ft.sharding == "deepspeed" and ft.zero_stage > 0 and ft.method == "full" and \
            importlib.util.find_spec("deepspeed") is None:
        raise UserError("finetune.sharding: deepspeed is not installed: run  pip install -e '.[deepspeed]'  "
                        "(or use sharding: fsdp, built into torch)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_processes(cfg, run_dir: Path, train_file: Path, out_dir: Path, max_usd: float | None) -> dict:
    import torch

    n = cfg.finetune.hardware.count
    check_sharding(cfg.finetune)
    if torch.cuda.is_available() and torch.cuda.device_count() < n:
        raise UserError(f"finetune.hardware.count: {n} processes asked for, {torch.cuda.device_count()} GPUs visible")
    launch = out_dir / "launch"
    launch.mkdir(parents=True, exist_ok=True)
    job = {"pipeline": cfg.model_dump(mode="json"), "run_dir": str(run_dir), "train_file": str(train_file),
           "out_dir": str(out_dir), "max_usd": max_usd}
    files.write_json(launch / "job.json", job)
    files.write_yaml(launch / "accelerate.yaml", accelerate_config(cfg.finetune, n, _free_port()))
    env = dict(os.environ)
    if not torch.cuda.is_available():  # n processes share the cores; oversubscription slows all of them
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch / "accelerate.yaml"),
           "-m", "replicate.finetune.launch", str(launch / "job.json")]
    rc = subprocess.run(cmd, env=env, check=False).returncode
    if rc == 3:
        raise BudgetExceeded("finetune stopped on the budget; the checkpoint is saved: raise the budget and rerun")
    if rc != 0:
        raise UserError(f"multi-process fine-tuning failed (exit code {rc}); the processes' messages are above")
    return files.read_json(out_dir / "train_metrics.json", "the processes finished without train_metrics.json")


def worker_main(argv: list[str]) -> int:
    """One process under accelerate: the same `train` as a single-process run."""
    job = files.read_json(argv[0], "no such job file")
    cfg = Pipeline.model_validate(job["pipeline"])
    run_dir, train_file, out_dir, max_usd = Path(job["run_dir"]), Path(job["train_file"]), Path(job["out_dir"]), job["max_usd"]
    try:
        if job.get("prepare"):  # a node launcher's job: no `replicate finetune` ran the checks before it
            from replicate.finetune.resume import prepare

            finished, max_usd = prepare(cfg, run_dir, train_file, out_dir, max_usd,
                                        main=os.environ.get("RANK", "0") == "0")
            if finished is not None:
                return 0  # done earlier: a rerun of the node scripts trains nothing
        train(cfg, run_dir, train_file, out_dir, max_usd)
    except BudgetExceeded as e:
        print(f"replicate: {e}", file=sys.stderr)
        return 3
    except UserError as e:
        print(f"replicate: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # one process under accelerate: python -m replicate.finetune.launch JOB.json
    sys.exit(worker_main(sys.argv[1:]))

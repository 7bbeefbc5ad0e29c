"""Multi-node fine-tuning through accelerate: a launcher per node and a Slurm script, and two
"nodes" on loopback (two `accelerate launch` processes, machine_rank 0 and 1, gloo) that train the
same tokens as one process."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from replicate.config import parse_pipeline
from replicate.files import read_jsonl
from replicate.finetune.nodes import node_count, write_launchers

DATA = Path(__file__).parent / "data"


def pipeline(student: str, count: int = 2, gpu: str = "cpu") -> object:
    return parse_pipeline({
        "name": "nodes", "teacher": {"model": "packaged:smollm2-135m-instruct"}, "student": {"model": student},
        "finetune": {"method": "lora", "epochs": 1, "max_length": 128, "batch_size": 4, "bf16": False,
                     "save_steps": 100, "learning_rate": 1e-3, "hardware": {"gpu": gpu, "count": count}}})


def test_launchers_per_node_and_a_slurm_script(tmp_path):
    cfg = pipeline("packaged:gemma-3-270m", count=16, gpu="h100-sxm")
    assert node_count(cfg) == (2, 8)  # 16 H100s, 8 per node (budgets/hardware.yaml)
    paths = write_launchers(cfg, tmp_path / "run", main_ip="10.0.0.1", port=29600)
    assert sorted(paths) == ["job", "node-0", "node-1", "slurm"]
    for rank in (0, 1):
        acc = yaml.safe_load((tmp_path / "run/student/launch" / f"node-{rank}.yaml").read_text())
        assert acc["num_machines"] == 2 and acc["machine_rank"] == rank and acc["num_processes"] == 16
        assert acc["main_process_ip"] == "10.0.0.1" and acc["main_process_port"] == 29600
        assert f"node-{rank}.yaml" in paths[f"node-{rank}"].read_text() and os.access(paths[f"node-{rank}"], os.X_OK)
    slurm = paths["slurm"].read_text()
    assert "#SBATCH --nodes=2" in slurm and "#SBATCH --gres=gpu:8" in slurm and '--machine_rank "$SLURM_NODEID"' in slurm
    assert subprocess.run(["bash", "-n", str(paths["slurm"])], check=False).returncode == 0
    job = json.loads(paths["job"].read_text())
    assert job["pipeline"]["finetune"]["hardware"]["count"] == 16 and Path(job["run_dir"]).is_absolute()
    with pytest.raises(Exception, match="do not split evenly"):
        node_count(pipeline("packaged:gemma-3-270m", count=3), nodes=2)


@pytest.mark.slow
def test_two_nodes_on_loopback_train_like_one_process(tmp_path, tiny_dir):
    from replicate.finetune import run_finetune

    def run_dir(name: str) -> Path:
        d = tmp_path / name
        (d / "data").mkdir(parents=True)
        shutil.copy(DATA / "alpaca_small.jsonl", d / "data" / "train.jsonl")
        return d

    one = run_finetune(pipeline(str(tiny_dir), count=1), run_dir("one"))
    cfg = pipeline(str(tiny_dir), count=2)  # cpu: 1 device per node -> 2 nodes of 1 process
    two = run_dir("two")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    paths = write_launchers(cfg, two, main_ip="127.0.0.1", port=port)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(["bash", str(paths[f"node-{r}"])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(x[-3000:] for x in logs)
    metrics = json.loads((two / "student" / "train_metrics.json").read_text())
    assert metrics["num_devices"] == 2 and metrics["trained_tokens"] == one["trained_tokens"]
    assert metrics["global_step"] == one["global_step"] // 2  # 48 rows: 12 steps of 4 alone, 6 of 2 x 4
    (line,) = [r for r in read_jsonl(two / "ledger.jsonl") if r["stage"] == "finetune"]
    assert line["num_devices"] == 2
    assert (two / "student" / "settings.json").is_file()  # the launcher's job ran the stage's checks first
    # the node scripts again, once done: they check, find the student finished and train nothing
    mtime = (two / "student" / "train_metrics.json").stat().st_mtime
    procs = [subprocess.Popen(["bash", str(paths[f"node-{r}"])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(x[-3000:] for x in logs)
    assert (two / "student" / "train_metrics.json").stat().st_mtime == mtime
    assert len([r for r in read_jsonl(two / "ledger.jsonl") if r["stage"] == "finetune"]) == 1

"""Open configs (vLLM engine arguments, SFTConfig and LoraConfig fields, checked against the
installed libraries), DeepSpeed beside FSDP, and the generation layout: the run starts the
replicas x tensor-parallel engines that the estimate priced."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from replicate import options
from replicate.config import parse_pipeline
from replicate.cost import catalog
from replicate.cost.estimate import estimate_pipeline, teacher_layout
from replicate.errors import UserError
from replicate.files import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"


def pipeline(**parts) -> object:
    spec = {"name": "open", "teacher": {"model": "packaged:smollm2-135m-instruct"},
            "student": {"model": "packaged:gemma-3-270m"}}
    for k, v in parts.items():
        spec[k] = {**spec.get(k, {}), **v}
    return parse_pipeline(spec)


def test_pass_through_keys_and_values_are_checked_against_the_installed_libraries():
    ok = {"enable_prefix_caching": True, "quantization": "fp8", "gpu_memory_utilization": 0.8, "max_num_seqs": 8}
    assert options.engine_args(ok) == ok
    with pytest.raises(UserError, match=r"teacher.engine_args.enable_prefix_cachng: unknown key; did you mean "
                                        r"enable_prefix_caching\b.*\(valid vllm EngineArgs keys: "):
        options.engine_args({"enable_prefix_cachng": True})
    with pytest.raises(UserError, match=r"tensor_parallel_size: set teacher.hardware.count"):
        options.engine_args({"tensor_parallel_size": 2})
    sft = {"optim": "adamw_torch", "lr_scheduler_type": "linear", "weight_decay": 0.01, "neftune_noise_alpha": 5}
    assert options.sft_args(sft) == sft
    with pytest.raises(UserError, match=r"finetune.sft_args: adamw_nope is not a valid OptimizerNames"):
        options.sft_args({"optim": "adamw_nope"})
    with pytest.raises(UserError, match=r"finetune.sft_args.learning_rate: set finetune.learning_rate instead"):
        options.sft_args({"learning_rate": 1e-4})
    from transformers.integrations import get_available_reporting_integrations

    if "tensorboard" not in get_available_reporting_integrations():
        with pytest.raises(UserError, match=r"report_to: 'tensorboard' is not installed here"):
            options.sft_args({"report_to": ["tensorboard"]})
    assert options.lora_args({"use_rslora": True}) == {"use_rslora": True}
    with pytest.raises(UserError, match=r"finetune.lora_args.r: set finetune.lora_r instead"):
        options.lora_args({"r": 4})
    # an empty dict imports nothing (estimate stays fast) and `run` checks all of them up front
    assert options.engine_args({}) == {} and options.sft_args({}) == {}
    with pytest.raises(UserError, match="finetune.sft_args.nefttune_noise_alpha: unknown key; did you mean "
                                        "neftune_noise_alpha"):
        options.check_pipeline(pipeline(finetune={"sft_args": {"nefttune_noise_alpha": 5}}))


def test_engine_args_the_cost_model_has_a_term_for_change_the_estimate():
    base = estimate_pipeline(pipeline(teacher={"hardware": {"gpu": "h100-sxm", "count": 1}, "model": "llama-3-8b"}))
    capped = estimate_pipeline(pipeline(teacher={"hardware": {"gpu": "h100-sxm", "count": 1}, "model": "llama-3-8b",
                                                 "engine_args": {"max_num_seqs": 4}}))
    assert capped.stage("generate").detail["batch"] == 4 < base.stage("generate").detail["batch"]
    assert capped.stage("generate").wall_hours > base.stage("generate").wall_hours


def test_deepspeed_beside_fsdp_and_zero_stage_says_what_it_does():
    from replicate.finetune.launch import accelerate_config, check_sharding

    ft = pipeline(finetune={"method": "full", "zero_stage": 2, "cpu_offload": True}).finetune
    fsdp = accelerate_config(ft, 8, 29500)
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_reshard_after_forward"] is False
    ds_ft = ft.model_copy(update={"sharding": "deepspeed"})
    ds = accelerate_config(ds_ft, 8, 29500)
    assert ds["distributed_type"] == "DEEPSPEED"
    assert ds["deepspeed_config"]["zero_stage"] == 2 and ds["deepspeed_config"]["offload_optimizer_device"] == "cpu"
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(UserError, match=r"deepspeed is not installed: run  pip install -e '.\[deepspeed\]'"):
            check_sharding(ds_ft)
    check_sharding(ft)  # fsdp is built into torch


@pytest.mark.parametrize("model, gpu, count", [
    ("llama-2-70b", "a100-80gb", 8), ("llama-7b", "a100-80gb", 8), ("llama-3.1-405b", "h100-sxm", 16),
    ("qwen2.5-7b", "l4", 2), ("packaged:smollm2-135m-instruct", "cpu", 2),
])
def test_the_run_starts_the_layout_the_estimate_priced(model, gpu, count):
    """Up to the engine boundary: the estimate's (tensor parallel, replicas) is the layout the
    stages hand open_engine, and every replica gets its own devices."""
    cfg = pipeline(teacher={"model": model, "hardware": {"gpu": gpu, "count": count}})
    gen = estimate_pipeline(cfg).stage("generate").detail
    tp, replicas = teacher_layout(cfg.teacher)
    assert (tp, replicas) == (gen["tensor_parallel"], gen["replicas"])
    assert tp * replicas <= count and tp & (tp - 1) == 0
    shard = catalog.model_shape(model).params * 2 / tp  # bf16 weights per device
    assert shard < catalog.hardware(gpu).memory_bytes


def test_cpu_replicas_get_disjoint_cores():
    import os

    from replicate.engines.replicas import device_groups

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one core: nothing to split")
    groups = [set(map(int, g["VLLM_CPU_OMP_THREADS_BIND"].split(","))) for g in device_groups(1, 2)]
    assert groups[0] and groups[1] and not groups[0] & groups[1] and groups[0] | groups[1] <= set(cpus)


@pytest.mark.slow
def test_two_cpu_replicas_serve_requests_as_the_estimate_priced(teacher_dir):
    """hardware {gpu: cpu, count: 2}: the estimate prices 2 replicas of TP 1; open_engine starts
    two real vLLM engines, one per core, and the requests are spread over both."""
    from replicate.engines import Sampling, open_engine

    cfg = pipeline(teacher={"hardware": {"gpu": "cpu", "count": 2}, "max_model_len": 512})
    gen = estimate_pipeline(cfg).stage("generate").detail
    assert (gen["tensor_parallel"], gen["replicas"]) == (1, 2)
    with open_engine(cfg.teacher, max_in_flight=8, layout=teacher_layout(cfg.teacher)) as engine:
        assert engine.layout == (1, 2)
        outs = engine.complete([f"Count to {i}:" for i in range(12)], Sampling(max_tokens=8, temperature=0.0))
    assert len(outs) == 12 and all(o.output_tokens > 0 for o in outs)
    served = {o.server for o in outs}
    assert served == {"replica-0", "replica-1"}, served



@pytest.mark.slow
def test_sft_and_lora_args_reach_the_trainer(tmp_path, tiny_dir):
    """A real LoRA run with a constant schedule, weight decay and rsLoRA from the pass-through dicts."""
    from replicate.finetune import run_finetune

    run_dir = tmp_path / "run"
    (run_dir / "data").mkdir(parents=True)
    shutil.copy(DATA / "alpaca_small.jsonl", run_dir / "data" / "train.jsonl")
    cfg = pipeline(student={"model": str(tiny_dir)}, finetune={
        "method": "lora", "epochs": 1, "max_length": 128, "batch_size": 8, "bf16": False, "learning_rate": 1e-3,
        "warmup_ratio": 0, "keep_checkpoints": True, "save_steps": 100,
        "sft_args": {"lr_scheduler_type": "constant", "weight_decay": 0.1, "optim": "adamw_torch"},
        "lora_args": {"use_rslora": True}})
    run_finetune(cfg, run_dir)
    adapter = json.loads((run_dir / "student" / "adapter" / "adapter_config.json").read_text())
    assert adapter["use_rslora"] is True and adapter["r"] == cfg.finetune.lora_r
    assert adapter["base_model_name_or_path"] == tiny_dir.name  # portable: not this machine's path
    from huggingface_hub import ModelCard

    for folder in ("merged", "adapter"):
        card = ModelCard.load(run_dir / "student" / folder / "README.md")
        assert card.data.base_model == tiny_dir.name and "lora" in card.data.tags
    (ckpt,) = (run_dir / "student" / "checkpoints").glob("checkpoint-*")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    lrs = {round(h["learning_rate"], 9) for h in state["log_history"] if "learning_rate" in h}
    assert lrs == {1e-3}  # constant, not the project's cosine
    import torch

    args = torch.load(ckpt / "training_args.bin", weights_only=False)  # the TrainingArguments TRL used
    assert args.weight_decay == 0.1 and args.optim == "adamw_torch" and args.lr_scheduler_type == "constant"
    assert len(read_jsonl(run_dir / "student" / "steps.jsonl")) == state["global_step"]

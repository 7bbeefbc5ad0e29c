"""Open configs: vLLM's, TRL's and peft's own arguments, passed through and checked.

    teacher.engine_args   -> vllm.LLM(**engine_args)            (EngineArgs fields)
    finetune.sft_args     -> trl.SFTConfig(**sft_args)          (its dataclass fields)
    finetune.lora_args    -> peft.LoraConfig(**lora_args)       (its dataclass fields)

A key is checked against the INSTALLED library's signature, so whatever version a user has, its
own arguments work and a typo is one line with the nearest names. A key that the pipeline already
sets through its own YAML key is refused with that key's name (one place per setting: otherwise
the estimate and the run could read two different values). Values are checked by constructing
the library's own config object once, so its own validation speaks (an unknown `optim`, a
`report_to` integration that is not installed).

The libraries are imported only when their dict is not empty: `estimate` never pays for them.
"""
from __future__ import annotations

import dataclasses
import tempfile

from replicate.config import Pipeline, unknown_key_message
from replicate.errors import UserError, missing_extra

# engine argument -> the YAML key that sets it
ENGINE_OWNED = {
    "model": "teacher.model", "tokenizer": "teacher.model", "dtype": "teacher.dtype",
    "max_model_len": "teacher.max_model_len", "trust_remote_code": "teacher.trust_remote_code",
    "seed": "generate.seed", "tensor_parallel_size": "teacher.hardware.count (the layout, docs/scale.md)",
    "data_parallel_size": "teacher.hardware.count (the layout, docs/scale.md)",
}
SFT_OWNED = {
    "num_train_epochs": "finetune.epochs", "per_device_train_batch_size": "finetune.batch_size",
    "gradient_accumulation_steps": "finetune.gradient_accumulation", "learning_rate": "finetune.learning_rate",
    "bf16": "finetune.bf16", "gradient_checkpointing": "finetune.gradient_checkpointing",
    "max_length": "finetune.max_length", "packing": "finetune.packing", "save_steps": "finetune.save_steps",
    "seed": "finetune.seed", "data_seed": "finetune.seed", "warmup_steps": "finetune.warmup_ratio",
    "warmup_ratio": "finetune.warmup_ratio", "output_dir": "--run-dir", "use_cpu": "finetune.hardware.gpu",
    "fsdp": "finetune.zero_stage and finetune.sharding", "deepspeed": "finetune.zero_stage and finetune.sharding",
    "torch_compile": "finetune.compile", "train_sampling_strategy": "finetune.padding (grouped)",
}
LORA_OWNED = {"r": "finetune.lora_r", "lora_alpha": "finetune.lora_alpha", "lora_dropout": "finetune.lora_dropout",
              "target_modules": "finetune.lora_target_modules", "task_type": "(always CAUSAL_LM)"}


def check_keys(given: dict, valid, owned: dict[str, str], where: str, library: str) -> None:
    """One UserError for the first key that is the pipeline's own or unknown to the library."""
    for key in given:
        if key in owned:
            raise UserError(f"{where}.{key}: set {owned[key]} instead (the pipeline's own key for it)")
        if key not in valid:
            raise UserError(f"{where}.{key}: {unknown_key_message(key, valid)} [{library}]"
                            .replace("(valid keys: ", f"(valid {library} keys: "))


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]


def engine_args(args: dict, where: str = "teacher.engine_args") -> dict:
    """The vLLM engine arguments, checked against the installed vLLM's EngineArgs."""
    if not args:
        return {}
    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:
        raise missing_extra("vllm", "cpu") from None
    check_keys(args, _fields(EngineArgs), ENGINE_OWNED, where, "vllm EngineArgs")
    return dict(args)


def sft_args(args: dict, where: str = "finetune.sft_args") -> dict:
    """SFTConfig fields, checked against the installed TRL (names, values, report_to integrations)."""
    if not args:
        return {}
    try:
        from trl import SFTConfig
    except ImportError:
        raise missing_extra("trl", "train") from None
    check_keys(args, _fields(SFTConfig), SFT_OWNED, where, "trl SFTConfig")
    report_to = args.get("report_to")
    if report_to not in (None, "none", "all", []):
        from transformers.integrations import get_available_reporting_integrations

        have = get_available_reporting_integrations()
        for name in [report_to] if isinstance(report_to, str) else report_to:
            if name not in have:
                raise UserError(f"{where}.report_to: {name!r} is not installed here (installed: "
                                f"{', '.join(have) or 'none'}); pip install it or drop it")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            SFTConfig(output_dir=tmp, use_cpu=True, **args)
        except (ValueError, TypeError) as e:
            raise UserError(f"{where}: {str(e).splitlines()[0]}") from None
    return dict(args)


def lora_args(args: dict, where: str = "finetune.lora_args") -> dict:
    """LoraConfig fields, checked against the installed peft."""
    if not args:
        return {}
    try:
        from peft import LoraConfig
    except ImportError:
        raise missing_extra("peft", "train") from None
    check_keys(args, _fields(LoraConfig), LORA_OWNED, where, "peft LoraConfig")
    try:
        LoraConfig(r=8, target_modules=["q_proj"], **args)
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: {str(e).splitlines()[0]}") from None
    return dict(args)


def check_pipeline(cfg: Pipeline) -> None:
    """Every pass-through dict of a pipeline, before a run spends anything (a typo in
    finetune.sft_args must not wait for generation to finish)."""
    engine_args(cfg.teacher.engine_args)
    if cfg.evaluate.judge is not None:
        engine_args(cfg.evaluate.judge.engine_args, "evaluate.judge.engine_args")
    sft_args(cfg.finetune.sft_args)
    if cfg.finetune.method != "full":
        lora_args(cfg.finetune.lora_args)

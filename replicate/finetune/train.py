"""The training loop of one process: data, model, TRL trainer, metered and resumable.

Reads run_dir/data/train.jsonl; writes student/checkpoints/ while training, then student/adapter/
(LoRA), student/merged/ (an HF folder vLLM serves) and LAST student/train_metrics.json (its
presence = stage done). Every run or resumed chunk appends one ledger line. Under `accelerate
launch` (launch.py) every rank runs this same function.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from replicate import files, log, meter, options
from replicate.config import Pipeline
from replicate.errors import BudgetExceeded, UserError, missing_extra
from replicate.finetune.checks import check_memory, last_good_checkpoint
from replicate.finetune.cpu_lm_head import release_workspace, use_cpu_lm_head
from replicate.finetune.data import Collator, pack_examples, read_alpaca, tokenize_examples
from replicate.precision import Precision, announce
from replicate.precision import resolve as resolve_precision

PACKABLE_ATTENTION = {"sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"}


def check_method(method: str) -> None:
    try:
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError as e:
        raise missing_extra(e.name or "trl", "train") from None
    if method == "qlora":
        import importlib.util

        import torch

        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise UserError("finetune.method: qlora needs bitsandbytes and a CUDA GPU (4-bit NF4 base weights); "
                            "use method: lora on this machine")


def device_info(cfg: Pipeline) -> tuple[float, float | None]:
    """(dollars per device-hour, peak FLOP/s of one device) of the device this process really runs
    on (a `gpu: cpu` pipeline on an H200 is priced as an H200, with a one-line warning)."""
    from replicate.cost import catalog

    hw = cfg.finetune.hardware
    key, price, warning = catalog.priced_device(hw.gpu, meter.device_name()[0], cfg.prices, hw.spot)
    if warning and int(os.environ.get("RANK", "0")) == 0:
        log.get().warning(f"finetune: {warning}")
    return price, catalog.hardware(key).peak_flops


def training_precision(ft) -> Precision:
    """bf16 autocast or fp32: the user's `finetune.bf16`, else bf16 on a GPU that has it and on a
    CPU only where the probe found bf16 faster (on one without AVX-512 BF16 a LoRA step of the
    demo's student took ~175 s in bf16: docs/benchmarks.md, "Precision")."""
    import torch

    if ft.bf16 is not None:
        return Precision("bfloat16" if ft.bf16 else "float32", "set by finetune.bf16")
    p = resolve_precision("auto", cuda=torch.cuda.is_available())
    return p if p.dtype != "float16" else Precision("float32", "GPU without bf16: fp32 master weights, no autocast")


@dataclass
class TrainData:
    """The tokenized rows one process trains on, and how they are batched."""

    tokenizer: object
    rows: list[dict]
    stats: object  # finetune.data.DataStats: examples, too long, tokens
    packed: bool
    pad_to: int | None  # fixed batch width, or None (pad to the longest row of each batch)
    hf_config: dict  # the student's config.json


def prepare_data(cfg: Pipeline, model_dir: Path, train_file: Path) -> TrainData:
    """Template, masks, EOS, length policy, packing (packed examples never attend to each other)."""
    from transformers import AutoTokenizer

    ft = cfg.finetune
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.student.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked out of attention and loss, so any id works
    examples, stats = tokenize_examples(read_alpaca(train_file), tok, max_length=ft.max_length, too_long=ft.too_long)
    packed = ft.packing and ft.attn_implementation in PACKABLE_ATTENTION
    rows = pack_examples(examples, ft.max_length) if packed else examples
    # Fixed-width batches where asked, and for compiled layers (a new width would mean a recompile).
    pad_to = ft.max_length if (ft.padding == "max_length" and not packed) or ft.compile else None
    hf_cfg = files.read_json(Path(model_dir) / "config.json", "the student folder has no config.json")
    return TrainData(tok, rows, stats, packed, pad_to, hf_cfg)


def load_model(cfg: Pipeline, model_dir: Path, bf16: bool):
    """(model, peft LoraConfig or None, parameter count). fp32 master weights for full fine-tuning
    (bf16 autocast on top); a frozen base in bf16 for LoRA (halves its memory; adapters stay fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    ft = cfg.finetune
    dtype = torch.float32 if (ft.method == "full" or not bf16) else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=ft.attn_implementation,
                                                 trust_remote_code=cfg.student.trust_remote_code)
    model.config.use_cache = False  # a KV cache would also switch off the packed-sequence mask detection
    if ft.compile:
        compile_layers(model)
    peft_config = None
    if ft.method != "full":
        from peft import LoraConfig

        peft_config = LoraConfig(r=ft.lora_r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout,
                                 target_modules=ft.lora_targets, task_type="CAUSAL_LM",
                                 **options.lora_args(ft.lora_args))
    return model, peft_config, sum(p.numel() for p in model.parameters())


def sft_config(cfg: Pipeline, out_dir: Path, bf16: bool, world: int):
    """TRL's SFTConfig with everything explicit (TRL's defaults turn bf16 and gradient checkpointing on);
    finetune.sft_args (checked against the installed TRL) replace the project's own choices."""
    import torch
    from trl import SFTConfig

    ft = cfg.finetune
    kw = dict(  # noqa: C408 - keyword form: these are SFTConfig's own argument names
        output_dir=str(out_dir / "checkpoints"), num_train_epochs=ft.epochs, per_device_train_batch_size=ft.batch_size,
        gradient_accumulation_steps=ft.gradient_accumulation, learning_rate=learning_rate(cfg),
        lr_scheduler_type="cosine", warmup_steps=ft.warmup_ratio, weight_decay=0.0, bf16=bf16,
        gradient_checkpointing=ft.gradient_checkpointing, max_length=ft.max_length, packing=False,
        dataset_kwargs={"skip_prepare_dataset": True}, logging_steps=1, save_strategy="steps",
        save_steps=ft.save_steps, save_total_limit=2, seed=ft.seed, data_seed=ft.seed, report_to=[],
        disable_tqdm=True, use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        ddp_find_unused_parameters=False if world > 1 else None,
    )
    if ft.padding == "grouped" and not ft.packing:  # random megabatches, each sorted by length
        kw["train_sampling_strategy"] = "group_by_length"
    kw.update(options.sft_args(ft.sft_args))
    if kw.get("report_to") and "logging_dir" not in ft.sft_args:
        kw["logging_dir"] = str(out_dir / "logs")  # TensorBoard & co. write beside the student
    return SFTConfig(**kw)


def learning_rate(cfg: Pipeline) -> float:
    return cfg.finetune.learning_rate or (2e-5 if cfg.finetune.method == "full" else 2e-4)


def train(cfg: Pipeline, run_dir: Path, train_file: Path, out_dir: Path, max_usd: float | None) -> dict:
    """One process's part of the training (all of it, or one rank under accelerate)."""
    import torch  # noqa: F401 - imported first, so meter.device_name() can see a CUDA device

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    price, peak = device_info(cfg)
    # The chunk's clock starts now: loading, tokenizing and saving are paid device time too, and
    # the main process's heartbeat covers them should the process be killed.
    chunk = meter.StageMeter("finetune", meter.device_name()[0], world, price)
    with meter.Heartbeat(run_dir, chunk) if rank == 0 else contextlib.nullcontext():
        return _train(cfg, run_dir, train_file, out_dir, max_usd, chunk, peak)


def _train(cfg: Pipeline, run_dir: Path, train_file: Path, out_dir: Path, max_usd: float | None,
           chunk: meter.StageMeter, peak: float | None) -> dict:
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.logging import disable_progress_bar

    from replicate import weights
    from replicate.finetune import metering

    ft = cfg.finetune
    world, rank, price = chunk.num_devices, int(os.environ.get("RANK", "0")), chunk.usd_per_device_hour
    model_dir = weights.resolve(cfg.student.model, trust_remote_code=cfg.student.trust_remote_code)
    if not log.verbose():  # -v: transformers' loading bars and TRL's step logs as well
        disable_progress_bar()  # transformers' loading bars; the stage draws one bar of its own
    use_cpu_lm_head()  # on a CPU, TRL's LM head took two thirds of each step (cpu_lm_head.py)

    # 1. Data, then 2. will it fit? (checked before any weight is loaded), then 3. the model.
    data = prepare_data(cfg, model_dir, train_file)
    precision = training_precision(ft)
    announce(precision, "fine-tuning")
    bf16 = precision.bf16
    longest = max(len(r["input_ids"]) for r in data.rows) if data.pad_to is None else ft.max_length
    check_memory(cfg, data.hf_config, longest, world)
    model, peft_config, n_params = load_model(cfg, model_dir, bf16)

    # 4. Trainer: TRL's SFTTrainer, metered (tokens, time, money, budget stop, progress bar).
    tally = metering.Tally()
    fpt = metering.flops_per_token(n_params, ft.method)
    meter_cb = metering.callback(
        tally, flops_per_token=fpt, peak_flops=peak, usd_per_device_hour=price, world_size=world,
        steps_path=out_dir / "steps.jsonl", max_usd=max_usd, started=chunk.t0, progress=rank == 0, chunk=chunk)
    trainer = metering.metered_trainer_class()(
        model=model, args=sft_config(cfg, out_dir, bf16, world), train_dataset=Dataset.from_list(data.rows),
        processing_class=data.tokenizer,
        data_collator=Collator(data.tokenizer.pad_token_id, packed=data.packed, pad_to_multiple_of=data.pad_to),
        peft_config=peft_config, callbacks=[meter_cb])
    trainer.tally = tally
    for cb in (PrinterCallback, ProgressCallback):  # our progress replaces theirs (-v: their step logs stay)
        if not (log.verbose() and cb is PrinterCallback):
            trainer.remove_callback(cb)

    # 5. Train, resuming from the last complete checkpoint; one ledger line per run or chunk.
    chunk.set(precision=precision.as_ledger())
    try:
        resume = run_trainer(trainer, meter_cb, run_dir, chunk, data.stats, out_dir / "checkpoints", rank)
    finally:
        release_workspace()  # the LM head's buffers (cpu_lm_head.py): not needed by what follows
    summary = meter_cb.summary(trainer.state)  # every rank: the totals are summed across processes
    result = {**summary, "resumed_from_step": _step_of(resume)}
    if meter_cb.budget_stopped:
        if rank == 0:
            _ledger(run_dir, chunk, summary, data.stats)
        raise BudgetExceeded(f"finetune stopped at step {trainer.state.global_step}/{trainer.state.max_steps} "
                             f"on the budget (${max_usd:.4f}); the checkpoint is saved: raise the budget and rerun")

    # 6. Outputs, then the chunk's ledger line, LAST the metrics (their presence marks the stage done).
    fsdp = ft.method == "full" and world > 1 and ft.zero_stage > 0  # sharded: FSDP or DeepSpeed
    if fsdp:  # every rank joins the full-state-dict gather; the main process writes
        trainer.save_model(str(out_dir / "merged.tmp"))
    if rank != 0:
        return result
    if fsdp:
        data.tokenizer.save_pretrained(out_dir / "merged.tmp")
        shutil.rmtree(out_dir / "merged", ignore_errors=True)
        os.replace(out_dir / "merged.tmp", out_dir / "merged")
        result["merged"] = str(out_dir / "merged")
    else:
        result.update(save_outputs(trainer, data.tokenizer, out_dir, ft.method, data.hf_config,
                                   weights.portable_ref(cfg.student.model)))
    line = _ledger(run_dir, chunk, summary, data.stats)  # loading and saving included
    result.update(data=data.stats.__dict__ | {"packed_rows": len(data.rows) if data.packed else None},
                  method=ft.method, params=n_params, model=cfg.student.model, packing=data.packed, bf16=bf16,
                  learning_rate=learning_rate(cfg), flops_per_token=fpt, num_devices=world, device=chunk.device,
                  usd_per_device_hour=price)
    lead = {"trained_tokens": result["trained_tokens"], "tokens_per_s": result["tokens_per_s"], "mfu": result["mfu"],
            "usd": line["usd"], "wall_s": line["wall_s"], "final_loss": result["final_loss"]}
    result = lead | result  # the pipeline's status line shows the first numbers
    write_model_cards(cfg, out_dir, result)
    files.write_json(out_dir / "train_metrics.json", result)
    if not ft.keep_checkpoints:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return result


def run_trainer(trainer, meter_cb, run_dir: Path, chunk: meter.StageMeter, stats, ckpt_dir: Path,
                rank: int) -> Path | None:
    """trainer.train() from the last good checkpoint. Ctrl-C or SIGTERM: the chunk's ledger line
    (local counts) is written, then the interrupt goes on. Returns the checkpoint resumed from."""
    resume = last_good_checkpoint(ckpt_dir)
    previous = _sigterm_as_interrupt()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except KeyboardInterrupt:
        if rank == 0 and hasattr(meter_cb, "t0"):
            meter_cb.wall_s = meter_cb.elapsed()
            _ledger(run_dir, chunk, meter_cb.summary(trainer.state, reduce=False), stats, interrupted=True)
        raise
    finally:
        meter_cb.close_progress()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return resume


def compile_layers(model) -> int:
    """Regional compilation: torch.compile every decoder layer (the classes in `_no_split_modules`).
    The layers share one compiled graph, so compile time is one layer's, not the model's; the
    mask building, embedding and LM head stay eager. Lazy: it compiles at the first step, after
    PEFT has wrapped the layers."""
    kinds = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in kinds]
    for layer in layers:
        layer.compile()  # static first; a later shape change (a short last batch) recompiles once
    return len(layers)


def _step_of(ckpt: Path | None) -> int:
    return int(ckpt.name.rsplit("-", 1)[1]) if ckpt else 0


def _sigterm_as_interrupt():
    """`kill PID` (SIGTERM) ends training like Ctrl-C: the chunk's ledger line is written first.
    Returns the handler to restore afterwards (None off the main thread, where none can be set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, signal.default_int_handler)


def _ledger(run_dir: Path, chunk: meter.StageMeter, s: dict, stats, interrupted: bool = False) -> dict:
    chunk.set(trained_tokens=s["trained_tokens"])
    chunk.set(**{k: s[k] for k in ("loss_tokens", "steps_this_run", "global_step", "max_steps", "tokens_per_s",
                                   "model_flops", "mfu", "peak_memory_gb", "padding_fraction", "final_loss",
                                   "budget_stopped")},
              examples=stats.examples, too_long=stats.too_long, interrupted=interrupted)
    row = chunk.row()
    files.append_jsonl(Path(run_dir) / meter.LEDGER, row)
    return row


def write_model_cards(cfg: Pipeline, out_dir: Path, metrics: dict) -> None:
    """README.md model cards for merged/ (transformers) and adapter/ (peft), portable base model named."""
    from replicate import cards, weights

    base = weights.portable_ref(cfg.student.model)
    note = ""
    if cfg.student.model.startswith(weights.PACKAGED_PREFIX):
        note = (f"\nThe base was `{cfg.student.model}`, this project's offline copy of `{base}` (a dequantized "
                "GGUF): applied to the upstream weights the adapter is close, not identical.\n")
    for folder, library in (("merged", "transformers"), ("adapter", "peft")):
        if (out_dir / folder).is_dir():
            files.write_atomic(out_dir / folder / "README.md", cards.model_card(
                run_name=cfg.name, base_model=base, method=cfg.finetune.method, metrics=metrics, library=library,
                body_extra=note))


def save_outputs(trainer, tok, out_dir: Path, method: str, hf_cfg: dict, base_ref: str | None = None) -> dict:
    """adapter/ (LoRA) and merged/ (full weights in the base's dtype), each written whole then renamed.
    `base_ref`: the adapter's base_model_name_or_path (a portable reference, not this machine's cache path)."""
    import torch

    model = trainer.model
    paths = {}
    if method != "full":
        for peft_cfg in getattr(model, "peft_config", {}).values():
            peft_cfg.base_model_name_or_path = base_ref or peft_cfg.base_model_name_or_path
        files.replace_dir(out_dir / "adapter", lambda d: (model.save_pretrained(d), tok.save_pretrained(d)))
        paths["adapter"] = str(out_dir / "adapter")
        model = model.merge_and_unload()
    text_cfg = hf_cfg.get("text_config") or hf_cfg
    dtype = getattr(torch, text_cfg.get("torch_dtype") or text_cfg.get("dtype") or hf_cfg.get("torch_dtype")
                    or hf_cfg.get("dtype") or "float32")
    model = model.to(dtype)  # vLLM serves the base's dtype (bf16 for the packaged models)
    model.config.use_cache = True  # switched off for training only
    files.replace_dir(out_dir / "merged", lambda d: (model.save_pretrained(d, safe_serialization=True),
                                                     tok.save_pretrained(d)))
    paths["merged"] = str(out_dir / "merged")
    return paths

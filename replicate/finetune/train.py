"""Stage 2: fine-tune the base student on the teacher's Alpaca data with TRL (metered, resumable).

    replicate finetune pipelines/tiny-cpu.yaml           # -> runs/<name>/student/
    replicate finetune pipelines/tiny-cpu.yaml           # again: resumes from the last checkpoint

Reads run_dir/data/train.jsonl; writes student/checkpoints/ while training, then student/adapter/
(LoRA), student/merged/ (an HF folder vLLM serves) and LAST student/train_metrics.json (its
presence = stage done). Every run or resumed chunk appends one ledger line. With
finetune.hardware.count > 1 the same code runs under `accelerate launch` (finetune_launch.py).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from replicate import meter
from replicate.config import Pipeline
from replicate.errors import BudgetExceeded, UserError, missing_extra
from replicate.finetune.data import Collator, pack_examples, read_alpaca, tokenize_examples
from replicate.finetune.launch import (
    check_memory,
    in_distributed_worker,
    last_good_checkpoint,
    launch_processes,
)

DEFAULT_LORA_TARGETS = ["q_proj", "v_proj"]  # Alpaca-LoRA's choice
PACKABLE_ATTENTION = {"sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"}


def run_finetune(cfg: Pipeline, run_dir: Path, *, train_file: Path | None = None,
                 out_dir: Path | None = None, max_usd: float | None = None) -> dict:
    """Train (or resume) and return the metrics; a finished stage returns its saved metrics."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / "student"
    train_file = Path(train_file) if train_file else run_dir / "data" / "train.jsonl"
    done = out_dir / "train_metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    check_method(cfg.finetune.method)
    if cfg.finetune.hardware.count > 1 and not in_distributed_worker():
        return launch_processes(cfg, run_dir, train_file, out_dir, max_usd)
    return train(cfg, run_dir, train_file, out_dir, max_usd)


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
    """(dollars per device-hour, peak FLOP/s of one device) from the catalog; None peak = unknown."""
    from replicate.cost import catalog

    hw = cfg.finetune.hardware
    price = catalog.usd_per_device_hour(hw.gpu, cfg.prices, spot=hw.spot)
    return price, catalog.hardware(hw.gpu).peak_flops


def _bf16(ft) -> bool:
    import torch

    if ft.bf16 is not None:
        return ft.bf16
    # None: bf16 autocast where the device has it; CPUs with AVX-512 BF16 (this one) measured fastest too.
    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True


def _score_loss_positions_only_on_cpu() -> None:
    """TRL's fused LM head projects only the supervised positions through the vocabulary on GPUs
    (`compact`), but every position elsewhere, to keep shapes static for compilers. Eager CPU
    training has no compiler, so the prompt and padding positions can skip the vocabulary
    projection: same loss; for gemma-3-270m (262K vocab, 63 % of its weights) on short-answer rows
    (~85 % prompt tokens) a step took 3-5 s instead of 11 s. Alpaca-length outputs gain less."""
    import torch
    import trl.trainer.utils as trl_utils

    if not torch.cuda.is_available() and hasattr(trl_utils, "_use_triton"):
        trl_utils._use_triton = lambda device: True  # only the `compact` decision reads this name there


def train(cfg: Pipeline, run_dir: Path, train_file: Path, out_dir: Path, max_usd: float | None) -> dict:
    """One process's part of the training (all of it, or one rank under accelerate)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.utils.logging import disable_progress_bar
    from trl import SFTConfig

    from replicate import weights
    from replicate.finetune import metering

    ft = cfg.finetune
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    price, peak = device_info(cfg)
    model_dir = weights.resolve(cfg.student.model, trust_remote_code=cfg.student.trust_remote_code)
    # The chunk's clock starts now: loading, tokenizing and saving are paid device time too.
    chunk = meter.StageMeter("finetune", meter.device_name()[0], world, price)
    disable_progress_bar()  # transformers' loading bars; the stage draws one bar of its own
    _score_loss_positions_only_on_cpu()

    # 1. Data: template, masks, EOS, length policy, packing (examples never attend to each other).
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.student.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked out of attention and loss, so any id works
    examples, stats = tokenize_examples(read_alpaca(train_file), tok, max_length=ft.max_length,
                                        too_long=ft.too_long)
    hf_cfg = json.loads((Path(model_dir) / "config.json").read_text())
    packed = ft.packing and ft.attn_implementation in PACKABLE_ATTENTION
    rows = pack_examples(examples, ft.max_length) if packed else examples
    # Fixed-width batches where asked, and for compiled layers (a new width would mean a recompile).
    pad_to = ft.max_length if (ft.padding == "max_length" and not packed) or ft.compile else None

    # 2. Will it fit? Checked before any weight is loaded (the cost model's memory arithmetic).
    bf16 = _bf16(ft)
    longest = max(len(r["input_ids"]) for r in rows) if pad_to is None else ft.max_length
    check_memory(cfg, hf_cfg, longest, world)

    # 3. Model: fp32 master weights for full fine-tuning (bf16 autocast on top); a frozen base in
    #    bf16 for LoRA (halves its memory; the adapters stay fp32).
    dtype = torch.float32 if (ft.method == "full" or not bf16) else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=ft.attn_implementation,
                                                 trust_remote_code=cfg.student.trust_remote_code)
    model.config.use_cache = False  # a KV cache would also switch off the packed-sequence mask detection
    if ft.compile:
        compile_layers(model)
    n_params = sum(p.numel() for p in model.parameters())
    peft_config = None
    if ft.method != "full":
        from peft import LoraConfig

        peft_config = LoraConfig(r=ft.lora_r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout,
                                 target_modules=ft.lora_target_modules or DEFAULT_LORA_TARGETS, task_type="CAUSAL_LM")

    # 4. Trainer: everything explicit (TRL's defaults turn bf16 and gradient checkpointing on).
    lr = ft.learning_rate or (2e-5 if ft.method == "full" else 2e-4)
    ckpt_dir = out_dir / "checkpoints"
    args = SFTConfig(
        output_dir=str(ckpt_dir), num_train_epochs=ft.epochs, per_device_train_batch_size=ft.batch_size,
        gradient_accumulation_steps=ft.gradient_accumulation, learning_rate=lr, lr_scheduler_type="cosine",
        warmup_steps=ft.warmup_ratio, weight_decay=0.0, bf16=bf16, gradient_checkpointing=ft.gradient_checkpointing,
        max_length=ft.max_length, packing=False, dataset_kwargs={"skip_prepare_dataset": True},
        logging_steps=1, save_strategy="steps", save_steps=ft.save_steps, save_total_limit=2,
        seed=ft.seed, data_seed=ft.seed, report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, ddp_find_unused_parameters=False if world > 1 else None,
    )
    tally = metering.Tally()
    meter_cb = metering.callback(
        tally, flops_per_token=metering.flops_per_token(n_params, ft.method), peak_flops=peak,
        usd_per_device_hour=price, world_size=world, steps_path=out_dir / "steps.jsonl", max_usd=max_usd,
        started=chunk.t0, progress=rank == 0)
    trainer = metering.metered_trainer_class()(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
        data_collator=Collator(tok.pad_token_id, packed=packed, pad_to_multiple_of=pad_to),
        peft_config=peft_config, callbacks=[meter_cb])
    trainer.tally = tally
    for cb in (PrinterCallback, ProgressCallback):  # our bar replaces theirs
        trainer.remove_callback(cb)

    # 5. Train, resuming from the last complete checkpoint; one ledger line per run or chunk.
    resume = last_good_checkpoint(ckpt_dir)
    previous = _sigterm_as_interrupt()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except KeyboardInterrupt:  # a stop request: record what this chunk spent (local counts), then stop
        if rank == 0 and hasattr(meter_cb, "t0"):
            meter_cb.wall_s = meter_cb.elapsed()
            _ledger(run_dir, chunk, meter_cb.summary(trainer.state, reduce=False), stats, interrupted=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    summary = meter_cb.summary(trainer.state)  # every rank: the totals are summed across processes
    result = {**summary, "resumed_from_step": _step_of(resume)}
    if meter_cb.budget_stopped:
        if rank == 0:
            _ledger(run_dir, chunk, summary, stats)
        raise BudgetExceeded(f"finetune stopped at step {trainer.state.global_step}/{trainer.state.max_steps} "
                             f"on the budget (${max_usd:.4f}); the checkpoint is saved: raise the budget and rerun")

    # 6. Outputs, then the chunk's ledger line, LAST the metrics (their presence marks the stage done).
    fsdp = ft.method == "full" and world > 1 and ft.zero_stage > 0
    if fsdp:  # every rank joins the full-state-dict gather; the main process writes
        trainer.save_model(str(out_dir / "merged.tmp"))
    if rank == 0:
        if fsdp:
            tok.save_pretrained(out_dir / "merged.tmp")
            shutil.rmtree(out_dir / "merged", ignore_errors=True)
            os.replace(out_dir / "merged.tmp", out_dir / "merged")
            result["merged"] = str(out_dir / "merged")
        else:
            result.update(save_outputs(trainer, tok, out_dir, ft.method, hf_cfg))
        line = _ledger(run_dir, chunk, summary, stats)  # loading and saving included
        result.update(data=stats.__dict__ | {"packed_rows": len(rows) if packed else None}, method=ft.method,
                      params=n_params, model=cfg.student.model, packing=packed, bf16=bf16, learning_rate=lr,
                      flops_per_token=metering.flops_per_token(n_params, ft.method),
                      num_devices=world, device=chunk.device, usd_per_device_hour=price)
        lead = {"trained_tokens": result["trained_tokens"], "tokens_per_s": result["tokens_per_s"], "mfu": result["mfu"],
                "usd": line["usd"], "wall_s": line["wall_s"], "final_loss": result["final_loss"]}
        result = lead | result  # the pipeline's status line shows the first numbers
        tmp = out_dir / "train_metrics.json.tmp"
        tmp.write_text(json.dumps(result, indent=2, default=str))
        os.replace(tmp, out_dir / "train_metrics.json")
        if not ft.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    return result


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
    chunk.add(trained_tokens=s["trained_tokens"])
    chunk.set(**{k: s[k] for k in ("loss_tokens", "steps_this_run", "global_step", "max_steps", "tokens_per_s",
                                   "model_flops", "mfu", "peak_memory_gb", "padding_fraction", "final_loss",
                                   "budget_stopped")},
              examples=stats.examples, too_long=stats.too_long, interrupted=interrupted)
    row = chunk.row()
    meter.append_jsonl(Path(run_dir) / meter.LEDGER, row)
    return row


def save_outputs(trainer, tok, out_dir: Path, method: str, hf_cfg: dict) -> dict:
    """adapter/ (LoRA) and merged/ (full weights in the base's dtype), each written whole then renamed."""
    import torch

    model = trainer.model
    paths = {}
    if method != "full":
        _atomic_save(out_dir / "adapter", lambda d: (model.save_pretrained(d), tok.save_pretrained(d)))
        paths["adapter"] = str(out_dir / "adapter")
        model = model.merge_and_unload()
    text_cfg = hf_cfg.get("text_config") or hf_cfg
    dtype = getattr(torch, text_cfg.get("torch_dtype") or text_cfg.get("dtype") or hf_cfg.get("torch_dtype")
                    or hf_cfg.get("dtype") or "float32")
    model = model.to(dtype)  # vLLM serves the base's dtype (bf16 for the packaged models)
    model.config.use_cache = True  # switched off for training only
    _atomic_save(out_dir / "merged", lambda d: (model.save_pretrained(d, safe_serialization=True),
                                               tok.save_pretrained(d)))
    paths["merged"] = str(out_dir / "merged")
    return paths


def _atomic_save(final: Path, write) -> None:
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def cli_finetune(args) -> int:
    from replicate.config import load_pipeline

    cfg = load_pipeline(args.pipeline, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / cfg.name
    m = run_finetune(cfg, run_dir, max_usd=getattr(args, "max_usd", None))
    print(f"finetune: {m.get('global_step')} steps, {m.get('trained_tokens'):,} tokens, "
          f"{m.get('tokens_per_s')} tok/s, MFU {m.get('mfu')}, ${m.get('usd', 0):.4f} this run -> {m.get('merged')}")
    return 0


if __name__ == "__main__":  # the multi-process worker: accelerate launch -m replicate.finetune.train JOB.json
    import sys

    from replicate.finetune.launch import worker_main

    sys.exit(worker_main(sys.argv[1:]))

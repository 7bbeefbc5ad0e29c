"""GPU: the stage's training loop (`run_finetune`) on a random-init Qwen2.5-0.5B-shaped model
(SmolLM2 tokenizer, vocab 49152, 402M params) on Alpaca-length synthetic rows, against plain TRL
defaults in the same process. One JSON line per config, then a table. MFU = 6N x non-padding
tokens/s / peak, N = all 402M parameters (as the reference measurements on the same H200,
2026-11-26, made with scripts outside this repository: a plain PyTorch loop 31 % of the measured
peak, TRL defaults 4.9 %), against the bf16 matmul peak measured at start.

Prepare here, once (the image has torch, transformers, accelerate, peft, pyarrow, xxhash, rich, yaml;
not trl, datasets, dill, multiprocess, pydantic; 4.5 MB of wheels):

    echo /.whl/ >> .git/info/exclude; echo /.gpu_tok/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
      pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
    mkdir -p .gpu_tok && cp ~/.cache/replicate/models/smollm2-135m-instruct/tokenizer* .gpu_tok/   # 3.5 MB

Run there (carry [".whl", ".gpu_tok"]; all configs in one process, < 6 min on an H100):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; PYTHONUNBUFFERED=1 python3 \
      benchmarks/gpu_finetune.py 2>&1 | tee $OUT/gpu_finetune.log

Here, on the CPU (tiny model, few steps, same code path): GPU_FINETUNE_SMALL=1 .venv/bin/python benchmarks/gpu_finetune.py
"""
from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from alpaca_synth import synthetic_alpaca

SMALL = os.environ.get("GPU_FINETUNE_SMALL") == "1"
CUDA = torch.cuda.is_available()
DEADLINE_S = float(os.environ.get("GPU_FINETUNE_DEADLINE_S", "300"))  # skip configs that would not fit
TOK_DIR = os.environ.get("TOK_DIR") or (".gpu_tok" if Path(".gpu_tok").is_dir() else
                                        str(Path.home() / ".cache/replicate/models/smollm2-135m-instruct"))
T0 = time.perf_counter()


def measured_peak_flops() -> float | None:
    """bf16 matmul 8192^3 (the reference's 762 TFLOP/s on the H200 came from the same measurement)."""
    if not CUDA:
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (time.perf_counter() - t)


def gpu_key() -> str:
    name = torch.cuda.get_device_name(0).lower() if CUDA else "cpu"
    return "h200" if "h200" in name else "h100-sxm" if "h100" in name else "cpu"


def make_model(folder: Path) -> int:
    """Random-init model of the published shape, saved in bf16 (the stage loads fp32 master weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    tok = AutoTokenizer.from_pretrained(TOK_DIR)
    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2}
    qwen25_05b = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                  "num_key_value_heads": 2}
    shape = tiny if SMALL else qwen25_05b
    cfg = Qwen2Config(vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=4096, **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def rates(steps: list[dict], warm: int) -> tuple[float, int]:
    """Non-padding tokens/s over the steps after `warm` (warm-up, compilation)."""
    warm = min(warm, len(steps) - 2)
    a, b = steps[warm], steps[-1]
    return (b["tokens"] - a["tokens"]) / (b["t"] - a["t"]), len(steps) - 1 - warm


def stage(label: str, model_dir: Path, pool: list[dict], work: Path, *, steps: int, batch: int, packing: bool,
          warm: int = 3, **extra) -> dict:
    from replicate.config import parse_pipeline
    from replicate.files import read_jsonl
    from replicate.finetune import run_finetune

    # Rows for `steps` optimizer steps: packed rows of 512 hold ~2.6 Alpaca examples (~195 tokens).
    n = steps * batch * (3 if packing else 1)
    run_dir = work / label.replace(" ", "_")
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool[:n]))
    cfg = parse_pipeline({"name": "gpu-bench", "teacher": {"model": "packaged:smollm2-135m-instruct"},
                          "student": {"model": str(model_dir)},
                          "finetune": {"method": "full", "epochs": 0.95, "max_length": 512, "batch_size": batch,
                                       "packing": packing, "bf16": CUDA, "save_steps": 10**6, "learning_rate": 2e-5,
                                       "hardware": {"gpu": gpu_key()}, **extra}})
    m = run_finetune(cfg, run_dir)
    tok_s, timed = rates(read_jsonl(run_dir / "student" / "steps.jsonl"), warm)
    return {"label": label, "steps_timed": timed, "nonpad_tokens_per_s": tok_s, "peak_gib": m["peak_memory_gb"] / 1.074,
            "padding_fraction": m["padding_fraction"], "loss": m["final_loss"], "params": m["params"]}


def trl_defaults(model_dir: Path, pool: list[dict], *, steps: int, batch: int) -> dict:
    """TRL as a user runs it (the reference's setting): padding to the longest, bf16, no grad-ckpt."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from replicate.prompts import prompt_completion

    times, tokens = [], {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if CUDA:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                tokens[state.global_step] = logs["num_tokens"]

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    ds = Dataset.from_list([dict(zip(("prompt", "completion"), prompt_completion(r))) for r in pool[:steps * batch]])
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, logging_steps=1,
                         save_strategy="no", report_to=[], max_length=512, learning_rate=2e-5, bf16=CUDA,
                         gradient_checkpointing=False, use_cpu=not CUDA, dataloader_num_workers=0, disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    warm = min(5, len(times) - 2)
    tok_s = (tokens[len(times)] - tokens[warm + 1]) / (times[-1] - times[warm])
    return {"label": "TRL defaults (padding)", "steps_timed": len(times) - 1 - warm, "nonpad_tokens_per_s": tok_s,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if CUDA else None, "padding_fraction": None}


def main() -> None:
    import datasets
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bar()
    datasets.disable_progress_bars()
    import transformers
    import trl

    peak = measured_peak_flops()
    print(json.dumps({"what": "env", "device": torch.cuda.get_device_name(0) if CUDA else "cpu", "torch": torch.__version__,
                      "transformers": transformers.__version__, "trl": trl.__version__,
                      "measured_bf16_tflops": peak and round(peak / 1e12)}), flush=True)
    pool = synthetic_alpaca(200 if SMALL else 12_000)
    s = 4 if SMALL else 30  # optimizer steps per config
    b32, b64 = (2, 4) if SMALL else (32, 64)

    def packed(label: str, batch: int, **kw):
        return label, lambda d: stage(label, d, pool, work, steps=s + (6 if kw.get("compile") else 0), batch=batch,
                                      packing=True, warm=6 if kw.get("compile") else 3, **kw)

    configs = [  # most informative first: a config that would start after the deadline is skipped
        packed("stage packed b32", b32),
        ("TRL defaults", lambda d: trl_defaults(d, pool, steps=s if SMALL else 25, batch=b32)),
        packed("stage packed b32 compile", b32, compile=True),
        packed("stage packed b64", b64),
        packed("stage packed b64 compile", b64, compile=True),
        ("stage padded b32", lambda d: stage("stage padded b32", d, pool, work, steps=s, batch=b32, packing=False)),
    ]
    if SMALL and os.environ.get("GPU_FINETUNE_COMPILE") != "1":
        configs = [c for c in configs if "compile" not in c[0]]  # inductor on this CPU takes minutes
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n_params = make_model(work / "model")
        for label, run in configs:
            if time.perf_counter() - T0 > DEADLINE_S:
                print(json.dumps({"what": "gpu_finetune", "label": label, "skipped": "deadline"}), flush=True)
                continue
            try:
                r = run(work / "model")
                r["mfu_6N_pct"] = 100 * 6 * n_params * r["nonpad_tokens_per_s"] / peak if peak else None
                r["elapsed_s"] = round(time.perf_counter() - T0)
                results.append(r)
                print(json.dumps({"what": "gpu_finetune", **r}, default=lambda x: round(x, 4)), flush=True)
            except Exception as e:  # noqa: BLE001 - one failing config must not cost the others
                print(json.dumps({"what": "gpu_finetune", "label": label, "error": repr(e)[:500]}), flush=True)
            gc.collect()
            if CUDA:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    base = next((r["nonpad_tokens_per_s"] for r in results if r["label"].startswith("TRL")), None)
    peak_s = f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown"
    print(f"\n{n_params / 1e6:.0f}M params, bf16 matmul peak {peak_s} measured, {time.perf_counter() - T0:.0f} s in all")
    print("| config | non-padding tok/s | MFU at 6N | vs TRL defaults | peak GiB | padding |")
    print("|---|---|---|---|---|---|")
    for r in results:
        mfu = f"{r['mfu_6N_pct']:.1f} %" if r.get("mfu_6N_pct") is not None else "-"
        ratio = f"{r['nonpad_tokens_per_s'] / base:.2f}" if base else "-"
        pad = "-" if r.get("padding_fraction") is None else f"{r['padding_fraction']:.2f}"
        gib = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}"
        print(f"| {r['label']} | {r['nonpad_tokens_per_s']:,.0f} | {mfu} | {ratio} | {gib} | {pad} |")


if __name__ == "__main__":
    main()

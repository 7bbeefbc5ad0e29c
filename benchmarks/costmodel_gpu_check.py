"""GPU check of the cost model's fine-tuning regime curve (run on a lent GPU machine).

    python3 benchmarks/costmodel_gpu_check.py OUT_DIR        # on the GPU machine (torch + transformers)
    CHECK_SMALL=1 python3 benchmarks/costmodel_gpu_check.py /tmp/x   # CPU dry run, tiny shapes
    .venv/bin/python benchmarks/costmodel_gpu_check.py --compare OUT_DIR/gpu_check.json   # here

Measures full fine-tuning step throughput (fp32 master weights + bf16 autocast, fused AdamW, sdpa,
no gradient checkpointing: a plain PyTorch loop, the 2025 stack of cost/params.py SOFTWARE) on
random-init models with published shapes, sweeping the tokens per device per micro-step
(T = batch x 256) and the model width, plus one padded batch (lengths 64..256 padded to 256 with an
attention mask) against the same real tokens unpadded. `--compare` prints measured vs predicted
(training.finetune_time with software=2025) side by side. What it checks (docs/cost-model.md, "The
mechanisms behind the efficiency"): the GEMM waves of 128x128 tiles per SM (cost/layer.py gemm_s:
efficiency from tokens per micro-step AND width), the elementwise bytes per token, the host floor
per layer (layer_overhead_s) that small micro-batches wait on, and the memory model's peak. The
fitted train_mfu is constrained to keep every point within 1.5x (cost/fit.py), so the sweeps are
a check of the curve's shape, not what sets it.
"""
from __future__ import annotations

import json
import os
import sys
import time

SMALL = os.environ.get("CHECK_SMALL") == "1"
SHAPES = {  # published shapes (budgets/models.yaml); "tiny" for the CPU dry run
    "qwen2.5-0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                         "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
    "qwen2.5-1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                         "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
    "llama-3.2-3b": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28, "num_attention_heads": 24,
                         "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": True},
}
SEQ = 32 if SMALL else 256
PLAN = ([("tiny", [1, 4])] if SMALL else
        [("qwen2.5-0.5b", [1, 2, 4, 8, 16, 32, 64]), ("qwen2.5-1.5b", [1, 4, 16, 64]), ("llama-3.2-3b", [1, 4, 16])])


def measure(torch, name: str, batch: int, seq: int, padded: bool = False) -> dict:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":  # here, not after the steps: a config that ran out of memory never got there
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cls = LlamaConfig if name.startswith("llama") else Qwen2Config
    cfg = cls(**SHAPES[name], max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev == "cuda")
    n = sum(p.numel() for p in model.parameters())
    gen = torch.Generator(device="cpu").manual_seed(0)
    lengths = (torch.randint(seq // 4, seq + 1, (batch,), generator=gen) if padded
               else torch.full((batch,), seq))
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long().to(dev)
    warm, steps = (1, 2) if SMALL else (2, 4)
    for i in range(warm + steps):
        if i == warm:
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x = torch.randint(0, cfg.vocab_size, (batch, seq), device=dev)
        labels = x.masked_fill(mask == 0, -100)
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = model(input_ids=x, attention_mask=mask if padded else None, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    row = {"model": name, "params": n, "batch": batch, "seq": seq, "padded": padded,
           "tokens": int(batch * seq), "real_tokens": int(lengths.sum()), "step_s": dt,
           "tokens_per_s": batch * seq / dt, "real_tokens_per_s": float(lengths.sum()) / dt,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None}
    return row


def run(out_dir: str) -> None:
    import torch

    os.makedirs(out_dir, exist_ok=True)
    rows = [{"env": True, "torch": torch.__version__,
             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}]
    todo = [(m, b, SEQ, False) for m, bs in PLAN for b in bs]
    todo += [(PLAN[0][0], 4 if SMALL else 32, SEQ, True)]  # padded vs the same unpadded batch above
    for m, b, s, padded in todo:
        try:
            rows.append(measure(torch, m, b, s, padded))
        except Exception as e:  # noqa: BLE001 - one failed shape must not lose the others
            rows.append({"model": m, "batch": b, "seq": s, "padded": padded, "error": repr(e)[:300]})
        print(json.dumps(rows[-1]), flush=True)
        with open(os.path.join(out_dir, "gpu_check.json"), "w") as fh:
            json.dump(rows, fh, indent=1)


def compare(path: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from replicate.cost import catalog
    from replicate.cost.memory import TrainSetup, fits, training_bytes
    from replicate.cost.params import DEFAULTS
    from replicate.cost.training import TrainJob, finetune_time

    with open(path) as fh:
        rows = json.load(fh)
    env = rows[0]
    dev = catalog.hardware("h200" if "H200" in env["gpu"] else "h100-sxm")
    print(f"{env['gpu']} (torch {env['torch']}); predicted with {dev.key}, DEFAULTS")
    print(f"{'model':14s} {'batch':>5s} {'T':>6s} {'padded':>6s} {'measured tok/s':>15s} {'predicted':>10s} {'ratio':>6s}"
          f" {'peak GiB':>9s} {'predicted':>9s} {'ratio':>6s}")
    for r in rows[1:]:
        shape = catalog.model_shape(r["model"])
        need = training_bytes(shape, TrainSetup("full", r["batch"], r["seq"], False, 0, False, 1))
        if "error" in r:
            print(f"{r['model']:14s} {r['batch']:>5d} failed: {r['error'][:60]}; predicted {need / 2**30:.1f} GiB, "
                  f"fits {dev.key}: {fits(dev, need)}")
            continue
        job = TrainJob(method="full", examples=r["batch"] * 100, epochs=1, tokens_per_example=r["seq"],
                       max_length=r["seq"], padding="max_length", length_sigma=0.0, micro_batch=r["batch"],
                       software=2025)  # torch eager, unfused, sdpa: the 2025 stack
        t = finetune_time(shape, dev, 1, job, dict(DEFAULTS))
        predicted = t.padded_tokens / t.steps_s
        measured = r["tokens_per_s"]
        print(f"{r['model']:14s} {r['batch']:>5d} {r['tokens']:>6d} {r['padded']!s:>6s} {measured:>15,.0f} "
              f"{predicted:>10,.0f} {predicted / measured:>6.2f} {r['peak_gib']:>9.1f} {need / 2**30:>9.1f} "
              f"{need / 2**30 / r['peak_gib']:>6.2f}")


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        compare(sys.argv[2])
    else:
        run(sys.argv[1])

"""Benchmark: the fine-tune's LM head on a CPU, TRL's ChunkedLogProbFunction vs cpu_lm_head.py.

    .venv/bin/python benchmarks/cpu_lm_head.py                  # gemma-3-270m's head (~1 min)
    .venv/bin/python benchmarks/cpu_lm_head.py --vocab 49152 --hidden 576   # SmolLM2-135M's

Workload: what one LoRA step of the demo asks of the head: `--tokens` supervised positions
(hidden states in bf16, under bf16 autocast as the trainer runs), the frozen tied embedding as
the weight, outputs log_probs, entropy and is_top1 (what SFTTrainer requests), forward and
backward (the gradient of the loss into the hidden states). Baseline: TRL's own function, same
inputs, same process, timed alternately; the outputs of the two are compared as well.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def step(fn, hidden, weight, targets):
    import torch

    h = hidden.clone().requires_grad_()
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs, entropy, *_ = fn.apply(h, weight, None, targets, 1.0, 32768, None, 1.0,
                                          ("log_probs", "entropy", "is_top1"))
    (-log_probs.sum()).backward()
    return time.perf_counter() - t, log_probs.detach(), entropy.detach()


def main() -> None:
    import torch
    from trl.kernels import ChunkedLogProbFunction

    from replicate.finetune.cpu_lm_head import cpu_log_prob_function
    from replicate.meter import device_name

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=480, help="supervised positions per step (demo: ~480)")
    ap.add_argument("--hidden", type=int, default=640)
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=gen).to(torch.bfloat16)
    weight = (torch.randn(args.vocab, args.hidden, generator=gen) * 0.05).to(torch.bfloat16)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=gen)
    ours_fn = cpu_log_prob_function()
    step(ours_fn, hidden, weight, targets)  # warm-up: oneDNN picks its kernels
    step(ChunkedLogProbFunction, hidden, weight, targets)
    trl_s, ours_s = [], []
    for _ in range(args.repeats):
        s, lp_trl, ent_trl = step(ChunkedLogProbFunction, hidden, weight, targets)
        trl_s.append(s)
        s, lp_ours, ent_ours = step(ours_fn, hidden, weight, targets)
        ours_s.append(s)
    print(f"processor: {device_name()[0]}; torch threads {torch.get_num_threads()}")
    print(f"{args.tokens} positions x vocabulary {args.vocab} x hidden {args.hidden}, bf16 autocast, forward + backward")
    print(f"TRL ChunkedLogProbFunction: {min(trl_s):.3f} s (best of {args.repeats})")
    print(f"cpu_lm_head:                {min(ours_s):.3f} s  ({min(trl_s) / min(ours_s):.2f}x)")
    print(f"max |log_prob difference| {float((lp_trl - lp_ours).abs().max()):.4f}, "
          f"max |entropy difference| {float((ent_trl - ent_ours).abs().max()):.4f}")


if __name__ == "__main__":
    main()

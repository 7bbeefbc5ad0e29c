"""One decoder layer's compute: GEMM waves, elementwise bytes, attention, quantised bases.

Pure arithmetic (no torch); training.py assembles a whole run from it. docs/cost-model.md
("The mechanisms behind the efficiency") has every formula with its source.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from replicate.cost.catalog import ModelShape
from replicate.cost.memory import layer_linears

TILE = 128  # output tile of a tensor-core GEMM kernel (cuBLAS/CUTLASS default 128x128)


@dataclass(frozen=True)
class Chip:
    """What the compute model needs of a Device (hashable, for the cache below)."""

    peak_flops: float
    sm_count: int
    hbm_bytes_per_s: float


def gemm_s(m: float, n: int, k: float, device: Chip, p: dict) -> float:
    """Seconds of one (m x k) @ (k x n) bf16 matmul.

    On a GPU the output is cut into 128x128 tiles, one per SM at a time: ceil(tiles / SMs) waves,
    each as long as one tile's 2 x 128 x 128 x k FLOPs at the SM's share of peak x train_mfu. A
    matmul that reads more bytes than it computes is memory-bound instead. E.g. A100 (108 SMs),
    380 tokens x 8192 -> 22016 (65B MLP): 3 x 172 = 516 tiles = 4.8 -> 5 waves, 96 % busy;
    380 tokens x 896 -> 896 (0.5B): 3 x 7 = 21 tiles; split-K cuts k = 896 into 3 chunks, so 63 of
    132 SMs work (48 %); a LoRA rank-16 matmul (3 tiles) splits k 28 ways. On a CPU (no SMs) the
    old smooth penalties tokens_half / d_model_half apply instead."""
    flops = 2 * m * n * k
    if device.sm_count:  # too few tiles: split k across idle SMs (cuBLAS split-K), k chunks >= 256
        tiles = math.ceil(m / TILE) * math.ceil(n / TILE)
        split = max(1, min(device.sm_count // tiles, int(k // 256)))
        waves = math.ceil(tiles * split / device.sm_count)
        t = waves * 2 * TILE * TILE * (k / split) / (device.peak_flops / device.sm_count * p["train_mfu"])
    else:
        eff = p["train_mfu"]
        if p.get("tokens_half"):
            eff *= m / (m + p["tokens_half"])
        if p.get("d_model_half"):
            eff *= min(n, k) / (min(n, k) + p["d_model_half"])
        t = flops / (device.peak_flops * eff)
    return max(t, 2 * (m * k + k * n + m * n) / (device.hbm_bytes_per_s * p["hbm_efficiency"]))


@dataclass(frozen=True)
class LayerCost:
    """Seconds and FLOPs of one decoder layer (fwd, bwd) and of the LM head + loss (head_*)."""

    fwd: float
    bwd: float
    flops: float
    head_fwd: float
    head_bwd: float
    head_flops: float


@functools.lru_cache(maxsize=65536)
def layer_cost(shape: ModelShape, device: Chip, tokens: float, seq_len: float, batch: int, method: str,
               recompute: bool, lora_r: int, lora_targets: tuple, flash: bool, elem_scale: float, quant: str,
               pkey: tuple) -> LayerCost:
    """One decoder layer for `tokens` tokens (forward, backward), plus the LM head.

    Backward: dX for every linear, dW only when the base trains (full); LoRA adds its two thin
    matmuls per target (rank-r: few tiles, so inefficient). Recompute runs the forward again.
    Attention: flash/sdpa at train_mfu (2 x seq x attn_dim FLOPs per token forward, causal, 2.5x
    that backward); without flash (2023 eager) the s^2 scores also cross memory. Elementwise
    (norms, rotary, SiLU x up, residuals) moves elementwise_bytes_d x d + elementwise_bytes_ff x
    d_ff bytes per token per layer, forward and backward together, times the stack's scale
    (params.elementwise_scale: fused kernels move a third). A quantised frozen base (`quant`):
    nf4 dequantises every weight to bf16 before each matmul, forward and backward
    (nf4_dequant_bytes per weight, measured); int8 (LLM.int8) quantises the activations and runs
    an int8 matmul forward, then dequantises the int8 weight to fp16 for the backward
    (int8_bwd_bytes per weight). Its fixed per-call cost is CPU-side (training.py, the floor)."""
    p = dict(pkey)
    t = tokens
    full = method == "full"
    targets = {x.lower() for x in lora_targets}
    all_lin = bool(targets & {"all", "all-linear", "all_linear"})
    hbm = device.hbm_bytes_per_s * p["hbm_efficiency"]
    fwd = bwd = flops = 0.0
    linears = layer_linears(shape)
    for name, d_in, d_out in linears:
        fwd += gemm_s(t, d_out, d_in, device, p)
        bwd += gemm_s(t, d_in, d_out, device, p) + (gemm_s(d_in, d_out, t, device, p) if full else 0.0)
        flops += 2 * t * d_in * d_out * (3 if full else 2)
        if not full and (all_lin or name in targets):  # x A (d_in -> r), then B (r -> d_out)
            a, b = gemm_s(t, lora_r, d_in, device, p), gemm_s(t, d_out, lora_r, device, p)
            # PEFT's adapter path is elementwise too: dropout copies x, the output is scaled and
            # added: ~4 d_in + 6 d_out bytes per token forward, twice that backward.
            lora_elem = t * (4 * d_in + 6 * d_out) / hbm
            fwd += a + b + lora_elem
            bwd += 2 * (a + b + lora_elem)
            flops += 6 * t * lora_r * (d_in + d_out)
        if quant == "int8":  # activations: fp16 read, int8 row+col copies, col32 layout, int32 out, fp16 out
            fwd += t * (6 * d_in + 10 * d_out) / hbm
    n_layer = sum(i * o for _, i, o in linears)
    if quant == "nf4":
        deq = p["nf4_dequant_bytes"] * n_layer / hbm
        fwd, bwd = fwd + deq, bwd + deq
    elif quant == "int8":  # backward: CB.to(fp16) (1 B read, 2 B write), *= SCB/127 (2 + 2): 7 B per weight
        bwd += p["int8_bwd_bytes"] * n_layer / hbm
    attn_f = 2 * t * seq_len * shape.attn_dim  # causal: half of 4 x T x seq x attn_dim
    attn = attn_f / (device.peak_flops * p["train_mfu"])
    flops += 3.5 * attn_f
    if not flash:  # materialised scores: write, softmax read/write, backward x2 (bf16)
        attn += 36 * batch * shape.heads * seq_len * seq_len / hbm / 3.5
    fwd += attn
    bwd += 2.5 * attn
    elem = elem_scale * t * (p["elementwise_bytes_d"] * shape.d_model + p["elementwise_bytes_ff"] * shape.d_ff) / hbm
    fwd += elem / 3
    bwd += 2 * elem / 3
    if recompute:
        bwd += fwd
        flops += flops / (3 if full else 2)
    # LM head (the same for every layer count): d -> vocab, then the loss over the logits.
    loss = elem_scale * t * shape.vocab * p["loss_bytes_per_logit"] / hbm
    head_f = gemm_s(t, shape.vocab, shape.d_model, device, p) + loss / 3
    head_b = gemm_s(t, shape.d_model, shape.vocab, device, p) + (gemm_s(shape.d_model, shape.vocab, t, device, p)
                                                                  if full else 0.0) + 2 * loss / 3
    flops_head = 2 * t * shape.d_model * shape.vocab * (3 if full else 2)
    return LayerCost(fwd, bwd, flops, head_f, head_b, flops_head)

"""Device memory: does a training or inference setup fit, and which feasible setup to use.

Pure arithmetic on a ModelShape (no torch). Bytes, decimal (1 GB = 1e9). Formulas and sources
are in docs/cost-model.md ("Memory").

Training, per device:
    weights + gradients + optimizer state (sharded by ZeRO/FSDP stage, or offloaded to the host)
  + activations of one micro-batch (all layers, or only layer inputs with recomputation)
  + logits of one micro-batch (the vocabulary can dominate small models)
  + a fixed framework overhead (CUDA context, NCCL buffers, allocator slack)
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

from replicate.cost.catalog import Device, ModelShape

FRAMEWORK_OVERHEAD_BYTES = 1.5e9  # CUDA context + cuBLAS/NCCL workspaces [R] (PyTorch memory notes)
USABLE_FRACTION = 0.95  # allocator fragmentation headroom
# Mixed-precision AdamW, bytes per trainable parameter (Transformer Math 101, [R]; 16-20 B/param):
WEIGHT_BYTES, GRAD_BYTES, OPTIMIZER_BYTES = 2, 2, 12  # bf16 weight, bf16 grad, fp32 master + m + v
# Frozen base weights of LoRA / QLoRA: bf16 = 2 B/param; NF4 = 0.5 B + ~6 % quantisation constants
# (blocks of 64 with double-quantised fp8 scales, QLoRA paper §3: 0.127 bits more per parameter);
# int8 (LLM.int8, load_in_8bit) = 1 B + an fp32 scale per output row (SCB: negligible).
FROZEN_BYTES = {"": 2.0, "nf4": 0.53, "int8": 1.0}
# Per vocab entry per token: bf16 logits 2 + the fp32 copy the loss takes 4 + fp32 log-softmax kept
# for backward 4 + its fp32 gradient 4 + the bf16 gradient 2. Was 8 until the H100/H200 micro-batch
# sweeps (tests/data/costmodel_gpu_check_*.json): Qwen2.5-0.5B's peak grows 3.42 MB per token, the
# activation term explains 1.02 MB of it and 8 B/entry only 1.22 MB more; 16 B gives 3.45 MB.
LOGIT_BYTES = 16


@dataclass(frozen=True)
class TrainSetup:
    """The memory-relevant knobs of a fine-tuning run (a subset of config.Finetune)."""

    method: str  # full | lora | qlora
    micro_batch: int
    seq_len: float  # padded tokens per sequence
    recompute: bool
    zero_stage: int
    offload: bool
    devices: int
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # adapted modules of every layer
    paged: bool = False  # paged optimizer: its state may live in host memory (bitsandbytes paged AdamW)
    quant: str = ""  # qlora frozen base format: nf4 (the default, "") or int8 (LLM.int8); ignored otherwise


# LoRA target module -> (input width, output width) in terms of the shape. Llama/Qwen/Mistral names,
# GPT-J's (out_proj, fc_in, fc_out) and GPT-NeoX's (query_key_value, dense, dense_h_to_4h, dense_4h_to_h).
_MODULE_DIMS = {
    "q_proj": lambda s: (s.d_model, s.attn_dim),
    "k_proj": lambda s: (s.d_model, s.kv_heads * s.head_dim),
    "v_proj": lambda s: (s.d_model, s.kv_heads * s.head_dim),
    "o_proj": lambda s: (s.attn_dim, s.d_model),
    "out_proj": lambda s: (s.attn_dim, s.d_model),
    "dense": lambda s: (s.attn_dim, s.d_model),
    "query_key_value": lambda s: (s.d_model, s.attn_dim + 2 * s.kv_heads * s.head_dim),
    "gate_proj": lambda s: (s.d_model, s.d_ff),
    "up_proj": lambda s: (s.d_model, s.d_ff),
    "fc_in": lambda s: (s.d_model, s.d_ff),
    "dense_h_to_4h": lambda s: (s.d_model, s.d_ff),
    "down_proj": lambda s: (s.d_ff, s.d_model),
    "fc_out": lambda s: (s.d_ff, s.d_model),
    "dense_4h_to_h": lambda s: (s.d_ff, s.d_model),
}
ALL_LINEAR = ("all", "all-linear", "all_linear")


@functools.lru_cache(maxsize=1024)
def layer_linears(shape: ModelShape) -> tuple[tuple[str, int, int], ...]:
    """The linear layers of one decoder layer: (name, d_in, d_out). Gated MLPs have three."""
    mods = ["q_proj", "k_proj", "v_proj", "o_proj"]
    mods += ["gate_proj", "up_proj", "down_proj"] if shape.mlp == "gated" else ["up_proj", "down_proj"]
    return tuple((m, *_MODULE_DIMS[m](shape)) for m in mods)


@functools.lru_cache(maxsize=4096)  # targets: a tuple (hashable) or an int
def lora_params(shape: ModelShape, r: int, targets) -> int:
    """Adapter parameters: r x (d_in + d_out) for every targeted module of every layer.

    E.g. Guanaco-65B (LLaMA-65B, r=64, all linear layers): per layer 4 x 64 x (8192 + 8192)
    attention + 3 x 64 x (8192 + 22016) MLP = 10.0M, x 80 layers = 800M. A name this table does
    not know counts as a d_model x d_model matrix."""
    names = [t.lower() for t in targets]
    if any(n in ALL_LINEAR for n in names):
        dims = [(i, o) for _, i, o in layer_linears(shape)]
    else:
        dims = [_MODULE_DIMS[n](shape) if n in _MODULE_DIMS else (shape.d_model, shape.d_model) for n in names]
    return shape.layers * r * sum(i + o for i, o in dims)


def activation_bytes_per_token(shape: ModelShape, recompute: bool) -> float:
    """Activation memory kept for backward, per token, all layers (bf16).

    Without recomputation, per layer: ~15 d (attention block with a fused/flash kernel, norms,
    residuals) + 6 d_ff gated or 4 d_ff plain MLP; Korthikanti et al. 2022 give 34 d for
    d_ff = 4 d (no flash attention term). With full recomputation only each layer's input (2 d)
    is kept, plus one layer's full activations during its backward.
    """
    full_layer = 15 * shape.d_model + (6 if shape.mlp == "gated" else 4) * shape.d_ff
    if recompute:
        return 2 * shape.d_model * shape.layers + full_layer
    return full_layer * shape.layers


def training_breakdown(shape: ModelShape, s: TrainSetup) -> dict[str, float]:
    """Bytes per device by component."""
    n = shape.params
    shards = max(1, s.devices)
    sharded = s.zero_stage >= 3 and shards > 1
    if s.method == "full":
        weights = WEIGHT_BYTES * n / (shards if sharded else 1)
        grads = GRAD_BYTES * n / (shards if s.zero_stage >= 2 else 1)
        optim = OPTIMIZER_BYTES * n / (shards if s.zero_stage >= 1 else 1)
        if s.offload:  # ZeRO-Offload: gradients stream to the host, optimizer state lives there,
            optim, grads = 0.0, 0.0  # and at stage 3 the parameters too
            if s.zero_stage >= 3:
                weights = WEIGHT_BYTES * n / shape.layers * 2  # two gathered layers in flight
    else:  # LoRA / QLoRA: a frozen base (sharded under FSDP/ZeRO-3: its shard + two gathered layers)
        frozen = FROZEN_BYTES[(s.quant or "nf4") if s.method == "qlora" else ""] * n
        weights = frozen / shards + 2 * frozen / shape.layers if sharded else frozen
        adapter = lora_params(shape, s.lora_r, s.lora_targets)
        grads = GRAD_BYTES * adapter
        optim = OPTIMIZER_BYTES * adapter
    if s.paged:  # paged AdamW: the state pages out to host memory under pressure (QLoRA paper)
        optim = 0.0
    tokens = s.micro_batch * s.seq_len
    return {
        "weights": weights,
        "gradients": grads,
        "optimizer": optim,
        "activations": tokens * activation_bytes_per_token(shape, s.recompute),
        "logits": tokens * shape.vocab * LOGIT_BYTES,
        "overhead": FRAMEWORK_OVERHEAD_BYTES,
    }


def training_bytes(shape: ModelShape, s: TrainSetup) -> float:
    return sum(training_breakdown(shape, s).values())


def fits(device: Device, need_bytes: float) -> bool:
    return need_bytes <= device.memory_bytes * USABLE_FRACTION


def setup_variants(s: TrainSetup) -> Iterator[tuple[TrainSetup, list[str]]]:
    """Every setup the feasibility search may try instead of `s`, with what changed (lazily: the
    search stops at the first micro-batch size where something fits).

    The knobs that cost memory but not (much) speed come first in the product: gradient
    checkpointing, ZeRO-3/FSDP sharding (several devices; full fine-tuning or a sharded LoRA base),
    a paged optimizer (LoRA/QLoRA), optimizer (and parameter) offload (full), and only then smaller
    micro-batches. The caller times each one that fits and keeps the fastest (training.py)."""
    recomputes = [s.recompute] if s.recompute else [False, True]
    zeros = [s.zero_stage] + ([3] if s.devices > 1 and s.zero_stage < 3 else [])
    offloads = [s.offload] + ([True] if s.method == "full" and not s.offload else [])
    pageds = [s.paged] + ([True] if s.method != "full" and not s.paged else [])
    batches, b = [], s.micro_batch
    while True:
        batches.append(b)
        if b == 1:
            break
        b = max(1, b // 2)
    for mb in batches:
        for rc in recomputes:
            for z in zeros:
                for off in offloads:
                    for pg in pageds:
                        zz = max(z, 2 if s.devices == 1 else 3) if off and not s.offload else z
                        v = TrainSetup(s.method, mb, s.seq_len, rc, zz, off, s.devices, s.lora_r, s.lora_targets, pg,
                                       s.quant)
                        notes = []
                        if rc != s.recompute:
                            notes.append("gradient checkpointing on")
                        if zz >= 3 > s.zero_stage and s.devices > 1:
                            notes.append("ZeRO-3 sharding" + (" of the frozen base" if s.method != "full" else ""))
                        if off != s.offload:
                            notes.append("CPU offload of the optimizer" + (" and parameters" if zz >= 3 else ""))
                        if pg != s.paged:
                            notes.append("paged optimizer")
                        if mb != s.micro_batch:
                            notes.append(f"micro-batch {s.micro_batch} -> {mb}")
                        if notes:
                            yield v, notes


def inference_weight_bytes(shape: ModelShape, bytes_per_param: float = 2.0) -> float:
    return shape.params * bytes_per_param


def tensor_parallel_for(shape: ModelShape, device: Device, count: int, kv_reserve: float = 0.2) -> int:
    """Smallest power-of-two tensor-parallel degree (<= count) whose weight shard leaves at least
    `kv_reserve` of usable memory for the KV cache; 0 when even `count` devices are not enough."""
    usable = device.memory_bytes * USABLE_FRACTION - FRAMEWORK_OVERHEAD_BYTES
    tp = 1
    while tp <= count:
        if inference_weight_bytes(shape, device.bytes_per_value) / tp <= usable * (1 - kv_reserve):
            return tp
        tp *= 2
    return 0

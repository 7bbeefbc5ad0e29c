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

from dataclasses import dataclass, replace

from replicate.cost.catalog import Device, ModelShape

FRAMEWORK_OVERHEAD_BYTES = 1.5e9  # CUDA context + cuBLAS/NCCL workspaces [R] (PyTorch memory notes)
USABLE_FRACTION = 0.95  # allocator fragmentation headroom
# Mixed-precision AdamW, bytes per trainable parameter (Transformer Math 101, [R]; 16-20 B/param):
WEIGHT_BYTES, GRAD_BYTES, OPTIMIZER_BYTES = 2, 2, 12  # bf16 weight, bf16 grad, fp32 master + m + v
# Frozen base weights of LoRA / QLoRA: bf16 = 2 B/param; NF4 = 0.5 B + ~6 % quantisation constants.
FROZEN_BYTES = {"lora": 2.0, "qlora": 0.53}
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
    lora_modules: int = 2  # adapted matrices per layer (q_proj, v_proj)


def lora_params(shape: ModelShape, r: int, modules: int) -> int:
    """r x (d_in + d_out) per adapted matrix; q/v-sized matrices: d_model -> attention width."""
    return shape.layers * modules * r * (shape.d_model + shape.attn_dim)


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
    if s.method == "full":
        weights = WEIGHT_BYTES * n / (shards if s.zero_stage >= 3 else 1)
        grads = GRAD_BYTES * n / (shards if s.zero_stage >= 2 else 1)
        optim = OPTIMIZER_BYTES * n / (shards if s.zero_stage >= 1 else 1)
        if s.offload:  # ZeRO-Offload: gradients stream to the host, optimizer state lives there,
            optim, grads = 0.0, 0.0  # and at stage 3 the parameters too
            if s.zero_stage >= 3:
                weights = WEIGHT_BYTES * n / shape.layers * 2  # two gathered layers in flight
    else:
        weights = FROZEN_BYTES[s.method] * n
        adapter = lora_params(shape, s.lora_r, s.lora_modules)
        grads = GRAD_BYTES * adapter
        optim = OPTIMIZER_BYTES * adapter
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


def feasible_training_setup(shape: ModelShape, device: Device, s: TrainSetup) -> tuple[TrainSetup, list[str]]:
    """The configured setup if it fits, else the first adjustment that does, and what changed.

    Order of adjustments (cheapest in speed first): activation recomputation, smaller micro-batch
    (the caller keeps the global batch with more accumulation), ZeRO-3 sharding (several devices,
    full fine-tuning), optimizer/parameter offload. Returns (setup, []) when it fits as configured;
    raises ValueError with the smallest requirement when nothing fits.
    """
    if fits(device, training_bytes(shape, s)):
        return s, []
    tries: list[tuple[TrainSetup, str]] = []
    cur, notes = s, []
    if not cur.recompute:
        cur = replace(cur, recompute=True)
        notes = notes + ["gradient checkpointing on"]
        tries.append((cur, ", ".join(notes)))
    while cur.micro_batch > 1:
        cur = replace(cur, micro_batch=max(1, cur.micro_batch // 2))
        tries.append((cur, ", ".join(notes + [f"micro-batch {s.micro_batch} -> {cur.micro_batch}"])))
    if cur.micro_batch != s.micro_batch:
        notes = notes + [f"micro-batch {s.micro_batch} -> {cur.micro_batch}"]
    if s.method == "full" and s.devices > 1 and cur.zero_stage < 3:
        cur = replace(cur, zero_stage=3)
        notes = notes + ["ZeRO-3 sharding"]
        tries.append((cur, ", ".join(notes)))
    if s.method == "full" and not cur.offload:
        cur = replace(cur, offload=True, zero_stage=max(cur.zero_stage, 2 if s.devices == 1 else 3))
        notes = notes + ["CPU offload of the optimizer" + (" and parameters" if cur.zero_stage >= 3 else "")]
        tries.append((cur, ", ".join(notes)))
    for setup, note in tries:
        if fits(device, training_bytes(shape, setup)):
            return setup, note.split(", ")
    raise ValueError(training_bytes(shape, cur))


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

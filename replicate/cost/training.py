"""Fine-tuning time: work (tokens, FLOPs, bytes) -> seconds, for one regime of one run.

Pure arithmetic (no torch). The efficiency is not one constant: it comes out of the regime,
    padding      unpacked batches are padded to their longest example (or to max_length),
    micro-batch  few tokens per device per micro-step leave the matmuls small,
    sharding     ZeRO-3/FSDP gathers every layer's weights twice per micro-step and
                 reduce-scatters its gradients, with a fixed cost per layer,
    offload      optimizer state (and parameters) cross PCIe; Adam runs on the host CPU,
    recompute    activation checkpointing adds a forward pass (8N instead of 6N per token),
    fixed costs  start-up (load weights, tokenize, wrap) and checkpoint writes.
`p` holds the regime constants (costmodel.DEFAULTS, overridden per device by calibration).
Every formula is in docs/cost-model.md ("Fine-tuning").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist

from replicate.cost.catalog import Device, ModelShape
from replicate.cost.memory import TrainSetup, feasible_training_setup, lora_params, training_bytes

_NORMAL = NormalDist()


def padded_length(mean: float, sigma: float, batch: int, max_len: float) -> float:
    """Expected longest of `batch` lognormal lengths (mean `mean`, log-sd `sigma`), capped.

    E[max of B] ~ exp(mu + sigma * z_B) with z_B the expected max of B standard normals (Blom's
    approximation) and mu = ln(mean) - sigma^2/2. E.g. sigma 0.6: B=4 -> 1.55x, B=32 -> 2.9x.
    """
    mean = min(mean, max_len)
    if batch <= 1 or sigma <= 0:
        return mean
    z = _NORMAL.inv_cdf((batch - 0.375) / (batch + 0.25))
    return min(max_len, max(mean, mean * math.exp(sigma * z - sigma * sigma / 2)))


@dataclass
class TrainTime:
    wall_s: float
    startup_s: float
    steps_s: float  # all micro-steps + optimizer steps
    checkpoint_s: float
    micro_steps: int  # per device
    optimizer_steps: int
    real_tokens: float  # non-padding tokens, all epochs, all devices
    padded_tokens: float
    flops: float  # hardware FLOPs incl. padding, recompute and attention
    seq_len: float  # padded tokens per sequence
    matmul_efficiency: float  # fraction of peak the matmuls reach at this micro-batch size
    step_parts_s: dict = field(default_factory=dict)  # one micro-step: compute, comm, layers, offload
    setup: TrainSetup | None = None
    adjusted: list[str] = field(default_factory=list)
    memory_gb: float = 0.0  # per device


def collective_s(size_bytes: float, count: int, device: Device, p: dict) -> float:
    """Seconds for one all-gather (or reduce-scatter) of `size_bytes` over `count` devices.

    Inside a node each device moves size x (g-1)/g over its link (ring). Across nodes NCCL uses
    every NIC: a node receives the other nodes' share, size x (nodes-1)/nodes, spread over its g
    NICs. Both at comm_efficiency of the datasheet bandwidth."""
    g = min(count, device.gpus_per_node)
    nodes = math.ceil(count / device.gpus_per_node)
    intra = size_bytes * (g - 1) / g / (device.link_gb_per_s * 1e9)
    inter = size_bytes * (nodes - 1) / nodes / g / (device.inter_node_gb_per_s * 1e9)
    return (intra + inter) / p["comm_efficiency"]


def flops_per_token(shape: ModelShape, method: str, recompute: bool, seq_len: float, adapter: int) -> float:
    """Hardware FLOPs per trained token. Dense part: 6N full (2N forward + 4N backward), 4N
    LoRA/QLoRA (no weight gradients of the frozen base) + 6 per adapter weight; +2N with full
    recomputation. Causal attention (flash): 2 * attn_dim * seq_len per layer forward, 3x that
    with the backward, 4x with recomputation."""
    n = shape.params
    dense = 6 * n if method == "full" else 4 * n + 6 * adapter
    attn_fwd = 2 * shape.layers * shape.attn_dim * seq_len
    if recompute:
        return dense + 2 * n + 4 * attn_fwd
    return dense + 3 * attn_fwd


@dataclass(frozen=True)
class TrainJob:
    """What one fine-tuning run does, in the cost model's terms (the defaults are config.Finetune's)."""

    method: str = "lora"  # full | lora | qlora
    examples: float = 52000  # trained rows (held-out rows apart)
    tokens_per_example: float = 190  # prompt + completion, before padding
    epochs: float = 3
    max_length: int = 512
    packing: bool = False
    padding: str = "longest"  # longest | max_length (without packing)
    length_sigma: float = 0.6  # spread of example lengths (lognormal sigma): padding waste
    micro_batch: int = 8
    grad_accum: int = 1
    recompute: bool = False  # activation (gradient) checkpointing
    zero_stage: int = 0
    offload: bool = False
    save_steps: int = 10**9  # optimizer steps between checkpoints
    lora_r: int = 8
    lora_modules: int = 2  # adapted matrices per layer


def finetune_time(shape: ModelShape, device: Device, count: int, job: TrainJob, p: dict) -> TrainTime:
    """Seconds (and the regime behind them) of `job` on `count` x `device`; raises NoFit."""
    method, examples, epochs, max_length = job.method, job.examples, job.epochs, job.max_length
    packing, padding, micro_batch, grad_accum = job.packing, job.padding, job.micro_batch, job.grad_accum
    length_sigma, save_steps, lora_r, lora_modules = job.length_sigma, job.save_steps, job.lora_r, job.lora_modules
    recompute, zero_stage, offload = job.recompute, job.zero_stage, job.offload
    mean_len = min(job.tokens_per_example, max_length)
    if packing:  # rows of max_length filled end to end: no padding
        sequences, seq_len = math.ceil(examples * mean_len / max_length), float(max_length)
    else:
        sequences = examples
        seq_len = float(max_length) if padding == "max_length" else padded_length(
            mean_len, length_sigma, micro_batch, max_length)
    configured = TrainSetup(method, micro_batch, seq_len, recompute, zero_stage if count > 1 else 0,
                            offload, count, lora_r, lora_modules)
    try:
        setup, adjusted = feasible_training_setup(shape, device, configured)
    except ValueError as e:
        raise NoFit(e.args[0]) from None
    if setup.micro_batch != micro_batch and not packing and padding == "longest":
        setup = replace(setup, seq_len=padded_length(mean_len, length_sigma, setup.micro_batch, max_length))
    accum = grad_accum * max(1, micro_batch // setup.micro_batch)  # same global batch

    micro_steps = math.ceil(sequences * epochs / (setup.micro_batch * count))
    opt_steps = math.ceil(micro_steps / accum)
    tokens = setup.micro_batch * setup.seq_len  # per device per micro-step
    n = shape.params
    adapter = lora_params(shape, lora_r, lora_modules) if method != "full" else 0
    fpt = flops_per_token(shape, method, setup.recompute, setup.seq_len, adapter)

    # Matmul efficiency falls with few tokens per micro-step and with narrow models (small GEMMs):
    # train_mfu x T / (T + tokens_half) x d / (d + d_model_half).
    eff = (p["train_mfu"] * tokens / (tokens + p["tokens_half"])
           * shape.d_model / (shape.d_model + p["d_model_half"]))
    compute = tokens * fpt / (device.peak_flops * eff)
    if method == "qlora":
        compute *= p["qlora_slowdown"]  # 4-bit weights are dequantised for every matmul

    sharded = method == "full" and setup.zero_stage >= 3 and count > 1
    # ZeRO-3/FSDP: all-gather bf16 weights for forward and for backward, reduce-scatter gradients,
    # every micro-step (3 collectives of 2N bytes), overlapped with compute (prefetch).
    comm = 3 * collective_s(2 * n, count, device, p) if sharded else 0.0
    # Fixed costs per layer per micro-step. Kernel launches and Python hooks: the GPU waits on the
    # CPU unless the kernels take longer than their launches (max below). Under ZeRO-3/FSDP the
    # per-layer gather/free/synchronise comes on top and is not hidden.
    launch = shape.layers * p["layer_overhead_s"]
    shard = shape.layers * p["shard_layer_overhead_s"] if sharded else 0.0
    host = device.host_link_gb_per_s * 1e9 * p["offload_efficiency"]
    offload_s = 0.0
    if method == "full" and setup.offload:  # gradients out every micro-step; at ZeRO-3 weights in twice
        offload_s = (2 * n + (2 * 2 * n if setup.zero_stage >= 3 else 0)) / max(1, count) / host
    micro = max(compute, comm, launch) + shard + offload_s

    # Per optimizer step: gradient all-reduce (plain DDP / ZeRO-1/2; adapters only for LoRA),
    # half hidden behind the last backward; the Adam update on the GPU (memory-bound, ~30 B per
    # trainable parameter) or on the host CPU with offload.
    trainable = n if method == "full" else adapter
    allreduce = 0.0
    if count > 1 and not sharded:  # all-reduce = reduce-scatter + all-gather
        allreduce = 2 * collective_s(2 * trainable, count, device, p) * (1 - p["allreduce_overlap"])
    if method == "full" and setup.offload:
        nodes = math.ceil(count / device.gpus_per_node)
        optimizer = n / (p["cpu_adam_params_per_s"] * nodes)
    else:
        shards = count if (method == "full" and setup.zero_stage >= 1) else 1
        optimizer = 30 * trainable / shards / (device.hbm_bytes_per_s * 0.8)
    steps_s = micro_steps * micro + opt_steps * (allreduce + optimizer)

    # Checkpoints: intermediate ones hold weights + optimizer state (full: 2 + 12 B/param), the
    # final one the weights (LoRA: the adapter, then a merged bf16 copy).
    write = p["checkpoint_gb_per_s"] * 1e9
    saves = opt_steps // save_steps if save_steps else 0
    per_save = 14 * n if method == "full" else 14 * adapter
    checkpoint_s = (saves * per_save + 2 * n) / write
    startup_s = p["finetune_startup_s"] + 2 * n / (p["load_gb_per_s"] * 1e9)

    real = examples * epochs * mean_len
    padded = micro_steps * count * tokens
    return TrainTime(
        wall_s=startup_s + steps_s + checkpoint_s, startup_s=startup_s, steps_s=steps_s,
        checkpoint_s=checkpoint_s, micro_steps=micro_steps, optimizer_steps=opt_steps, real_tokens=real,
        padded_tokens=padded, flops=padded * fpt, seq_len=setup.seq_len, matmul_efficiency=eff,
        step_parts_s={"compute": compute, "comm": comm, "launch": launch, "shard": shard, "offload": offload_s,
                      "allreduce_per_opt_step": allreduce, "optimizer_per_opt_step": optimizer},
        setup=setup, adjusted=adjusted, memory_gb=training_bytes(shape, setup) / 1e9,
    )


class NoFit(Exception):
    """No setup fits in device memory; args[0] = bytes per device of the smallest one tried."""

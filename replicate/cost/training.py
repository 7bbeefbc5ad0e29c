"""Fine-tuning time: work (tokens, GEMM shapes, bytes) -> seconds, for one regime of one run.

Pure arithmetic (no torch). The efficiency is not one constant: it comes out of the regime,
    lengths      long rows are truncated, dropped or split at max_length (lengths.py); unpacked
                 batches are padded to their longest row (or to max_length),
    GEMM shapes  a matmul runs in waves of 128x128 output tiles, one per SM (layer.py),
    elementwise  norms, rotary, activations, residuals and the loss move bytes, not FLOPs,
    sharding     ZeRO-3/FSDP gathers every layer's weights twice per micro-step and
                 reduce-scatters its gradients; prefetch hides them under the layer's compute
                 unless the link is too slow for it (or the stack does not prefetch),
    multi-node   a ring that leaves the node runs at the per-GPU NIC bandwidth,
    offload      optimizer state (and parameters) cross PCIe; Adam runs on each node's CPUs,
    quantised    a 4-bit (nf4) or 8-bit (LLM.int8) frozen base is dequantised around every matmul,
    recompute    activation checkpointing runs every forward twice,
    CPU floor    the host issues every kernel: a small micro-step waits for the CPU (a floor per
                 layer, higher for the 2023 stacks, plus LLM.int8's per-call work),
    fixed costs  start-up, checkpoint writes, periodic evaluation.
`p` holds the regime constants (params.DEFAULTS, overridden per device by calibration), and
the training stack's year (params.SOFTWARE). Every formula is in docs/cost-model.md.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from replicate.cost import lengths
from replicate.cost.catalog import Device, ModelShape
from replicate.cost.layer import Chip, layer_cost
from replicate.cost.memory import TrainSetup, fits, layer_linears, lora_params, setup_variants, training_bytes
from replicate.cost.params import elementwise_scale, stack

padded_length = lengths.padded_length  # the padding model lives in lengths.py (tests import it from here too)


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
    matmul_efficiency: float  # fraction of peak the micro-step's compute reaches (GEMMs + elementwise)
    step_parts_s: dict = field(default_factory=dict)  # one micro-step: compute, comm, layers, offload
    micro_step_s: float = 0.0  # one micro-step, all parts
    opt_step_s: float = 0.0  # what each optimizer step adds (all-reduce, Adam)
    accum: int = 1  # micro-steps per optimizer step
    setup: TrainSetup | None = None
    adjusted: list[str] = field(default_factory=list)
    memory_gb: float = 0.0  # per device
    eval_s: float = 0.0  # all periodic evaluations
    sequences: float = 0.0  # trained sequences per epoch (after truncation, dropping or splitting)


def collective_s(size_bytes: float, count: int, device: Device, p: dict) -> float:
    """Seconds for one all-gather (or reduce-scatter) of `size_bytes` over `count` devices.

    NCCL runs these as a ring: every device moves size x (n-1)/n bytes, at the speed of the
    slowest hop. Inside one node that is the GPU link (NVLink/PCIe); a ring that leaves the node
    crosses the network on every node boundary, so it runs at the per-GPU NIC bandwidth
    (nccl-tests bus bandwidth across DGX nodes ~ the NIC's, not NVLink's). At comm_efficiency."""
    if count <= 1:
        return 0.0
    bw = device.link_gb_per_s if count <= device.gpus_per_node else min(device.link_gb_per_s,
                                                                        device.inter_node_gb_per_s)
    return size_bytes * (count - 1) / count / (bw * 1e9 * p["comm_efficiency"])


@dataclass(frozen=True)
class TrainJob:
    """What one fine-tuning run does, in the cost model's terms (the defaults are config.Finetune's)."""

    method: str = "lora"  # full | lora | qlora
    examples: float = 52000  # trained rows (held-out rows apart)
    tokens_per_example: float = 190  # prompt + completion, before padding or truncation (the dataset's mean)
    epochs: float = 3
    max_length: int = 512
    packing: bool = False
    padding: str = "longest"  # longest | max_length | grouped (without packing)
    length_sigma: float = 0.6  # spread of example lengths (lognormal sigma): padding waste, truncation
    too_long: str = "truncate"  # truncate | drop: rows longer than max_length (finetune.too_long)
    split_long: bool = False  # long rows cut into max_length pieces instead (data.split_long, FastChat)
    micro_batch: int = 8
    grad_accum: int = 1
    recompute: bool = False  # activation (gradient) checkpointing
    zero_stage: int = 0
    offload: bool = False
    save_steps: int = 10**9  # optimizer steps between checkpoints
    lora_r: int = 8
    lora_targets: tuple = ("q_proj", "v_proj")  # adapted modules of each layer
    paged: bool = False  # paged optimizer (QLoRA)
    quantization: str = "nf4"  # qlora's frozen base: nf4 (bitsandbytes 4-bit) | int8 (LLM.int8, load_in_8bit)
    sharding: str = "fsdp"  # fsdp | deepspeed: who runs ZeRO-3 (prefetch behaviour differs in 2023)
    overlap_comm: bool = True  # DeepSpeed overlap_comm: false puts ZeRO-3's collectives on the compute stream
    software: int = 2026  # the training stack's year (params.SOFTWARE): FSDP prefetch, fused kernels, CPU floor
    attention: str = "flash"  # flash (FlashAttention / sdpa) | eager (materialised scores)
    fused: bool | None = None  # fused elementwise kernels + loss (compile, Liger); None = the stack's
    eval_steps: int = 0  # optimizer steps between evaluations (0 = none)
    eval_examples: float = 0  # rows each evaluation runs forward
    eval_tokens: float = 0  # mean tokens of an evaluated row (0 = the training rows')

    @property
    def quant(self) -> str:
        return self.quantization if self.method == "qlora" else ""


def _rows(job: TrainJob) -> tuple[float, float]:
    """(rows per epoch, mean trained tokens per row) after truncation, dropping or splitting."""
    return _rows_cached(job.examples, job.tokens_per_example, job.length_sigma, job.max_length, job.too_long,
                        job.split_long)


@functools.lru_cache(maxsize=4096)
def _rows_cached(examples: float, mean: float, sigma: float, max_len: int, too_long: str, split: bool):
    return lengths.sequences(examples, mean, sigma, max_len, too_long, split)


def params_key(p: dict) -> tuple:
    """The numeric constants of `p` as a hashable key (layer.layer_cost caches on it)."""
    return tuple(sorted((k, v) for k, v in p.items() if isinstance(v, (int, float))))


def _seq(job: TrainJob, micro_batch: int) -> tuple[float, float, float]:
    """(sequences per epoch, padded length, real tokens per epoch) for a micro-batch size."""
    rows, mean = _rows(job)
    if job.packing:  # rows of max_length filled end to end: no padding
        return math.ceil(rows * mean / job.max_length), float(job.max_length), rows * mean
    if job.padding == "max_length":
        return rows, float(job.max_length), rows * mean
    if job.padding == "grouped":  # length-sorted neighbours: the waste left is taken as none
        return rows, mean, rows * mean
    return rows, padded_length(mean, job.length_sigma, micro_batch, job.max_length), rows * mean


def finetune_time(shape: ModelShape, device: Device, count: int, job: TrainJob, p: dict,
                  pkey: tuple | None = None) -> TrainTime:
    """Seconds (and the regime behind them) of `job` on `count` x `device`; raises NoFit.

    When the configured setup does not fit in memory, the variants of memory.setup_variants that
    fit at the largest micro-batch are timed and the fastest is used: gradient checkpointing,
    sharding, offload and a paged optimizer are all tried (whichever costs least time) before the
    micro-batch shrinks, and it shrinks only as far as memory needs. `pkey` = params_key(p), when
    the caller times many setups with the same constants (plan)."""
    _, seq_len, _ = _seq(job, job.micro_batch)
    configured = TrainSetup(job.method, job.micro_batch, seq_len, job.recompute, job.zero_stage if count > 1 else 0,
                            job.offload, count, job.lora_r, tuple(job.lora_targets), job.paged, job.quant)
    pkey = pkey or params_key(p)
    if fits(device, training_bytes(shape, configured)):
        return _time(shape, device, count, job, p, configured, [], pkey)
    best, smallest, level = None, math.inf, None
    for v, notes in setup_variants(configured):  # micro-batch descending: the largest that fits wins
        if best is not None and v.micro_batch < level:
            break
        v = TrainSetup(v.method, v.micro_batch, _seq(job, v.micro_batch)[1], v.recompute, v.zero_stage, v.offload,
                       v.devices, v.lora_r, v.lora_targets, v.paged, v.quant)
        need = training_bytes(shape, v)
        smallest = min(smallest, need)
        if not fits(device, need):
            continue
        t = _time(shape, device, count, job, p, v, notes, pkey)
        if best is None or t.wall_s < best.wall_s:
            best, level = t, v.micro_batch
    if best is None:
        raise NoFit(smallest)
    return best


def cpu_floor_s(shape: ModelShape, job: TrainJob, recompute: bool, p: dict, passes: float = 3.0) -> float:
    """Seconds the host needs to issue one micro-step's kernels (the GPU cannot finish earlier).

    layer_overhead_s per layer for forward + backward (measured: torch 2.11 on an H200 host), the
    2023 stacks' layer_overhead_2023_s instead (older dispatcher, HF 2023 modelling code and FSDP
    hooks on 2023 hosts; fitted). A quantised base adds bitsandbytes' Python and ctypes work to
    every linear of every pass: dequant_call_s per nf4 dequantise-then-matmul (LitGPT's resource
    table, A100, bitsandbytes 0.41.1: nf4 adds 79 ms per step to Llama-2-7B and 192 ms to 13B at
    micro-batch 1, 448 and 560 calls: 0.18-0.34 ms each) and int8_call_s per LLM.int8 forward
    (bitsandbytes #347: LLaMA-7B decode 154.6 ms against 32.9 ms in fp16, 224 int8 linears: 0.54 ms
    each; its backward dequantises like nf4). `passes`: 3 = forward + backward, 1 = forward only."""
    per_layer = p["layer_overhead_s"] if stack(job.software)["cpu_floor"] == "measured" else \
        max(p["layer_overhead_s"], p["layer_overhead_2023_s"])
    floor = shape.layers * per_layer * passes / 3
    if job.quant:
        forwards, backwards = ((1 + recompute), 1) if passes >= 3 else (1, 0)
        fwd_call = p["int8_call_s"] if job.quant == "int8" else p["dequant_call_s"]
        floor += shape.layers * len(layer_linears(shape)) * (forwards * fwd_call + backwards * p["dequant_call_s"])
    return floor


def _time(shape: ModelShape, device: Device, count: int, job: TrainJob, p: dict, setup: TrainSetup,
          adjusted: list[str], pkey: tuple) -> TrainTime:
    method, n, st = job.method, shape.params, stack(job.software)
    sequences, _, real_per_epoch = _seq(job, setup.micro_batch)
    accum = job.grad_accum * max(1, job.micro_batch // setup.micro_batch)  # same global batch
    micro_steps = math.ceil(sequences * job.epochs / (setup.micro_batch * count))
    opt_steps = math.ceil(micro_steps / accum)
    tokens = setup.micro_batch * setup.seq_len  # per device per micro-step
    chip = Chip(device.peak_flops, device.sm_count, device.hbm_bytes_per_s)
    scale = elementwise_scale(job.software, job.fused, p)
    flash = job.attention != "eager"
    lc = layer_cost(shape, chip, tokens, setup.seq_len, setup.micro_batch, method, setup.recompute, setup.lora_r,
                    tuple(setup.lora_targets), flash, scale, job.quant, pkey)
    compute = shape.layers * (lc.fwd + lc.bwd) + lc.head_fwd + lc.head_bwd
    flops = shape.layers * lc.flops + lc.head_flops

    # ZeRO-3 / FSDP: per layer, all-gather its bf16 weights for the forward and again for the
    # backward; full fine-tuning also reduce-scatters its gradients. With prefetch the next
    # layer's gather runs under this layer's compute: only what the compute cannot cover shows.
    # Without it (HF Trainer's FSDP in 2023) every gather waits, and so does the host's per-layer
    # hook work before it (shard_layer_overhead_s per gather, fitted). DeepSpeed with overlap_comm
    # false (LLaMA-Factory's ds_z3_offload_config.json) runs gathers and reduce-scatters on the
    # compute stream: all of them show.
    sharded = setup.zero_stage >= 3 and count > 1
    comm = shard = 0.0
    if sharded:
        layer_bytes = 2 * (n - shape.vocab * shape.d_model * (1 if shape.tied else 2)) / shape.layers
        gather = collective_s(layer_bytes, count, device, p)
        rs = gather if method == "full" else 0.0
        if job.sharding == "deepspeed" and not job.overlap_comm:  # every collective on the compute stream
            exposed = 2 * gather + rs
        elif job.sharding == "deepspeed" or st["fsdp_prefetch"]:
            exposed = max(0.0, gather - lc.fwd) + max(0.0, gather + rs - lc.bwd)
        else:  # the gather waits for the layer that needs it; the reduce-scatter still overlaps
            exposed = 2 * gather + max(0.0, rs - lc.bwd)
            shard = shape.layers * 2 * p["shard_layer_overhead_s"]
        embed = 2 * shape.vocab * shape.d_model * (1 if shape.tied else 2)
        comm = shape.layers * exposed + (2 + (method == "full")) * collective_s(embed, count, device, p)
    launch = cpu_floor_s(shape, job, setup.recompute, p)
    host = device.host_link_gb_per_s * 1e9 * p["offload_efficiency"]
    offload_s = 0.0
    if method == "full" and setup.offload:  # gradients out every micro-step; at ZeRO-3 weights in twice
        offload_s = (2 * n + (2 * 2 * n if setup.zero_stage >= 3 else 0)) / max(1, count) / host
    micro = max(compute, launch) + comm + shard + offload_s

    # Per optimizer step: gradient all-reduce (plain DDP / ZeRO-1/2, or a sharded LoRA's adapter),
    # half hidden behind the last backward; the Adam update on the GPU (memory-bound, ~30 B per
    # trainable parameter) or on each node's host CPUs with offload.
    adapter = lora_params(shape, setup.lora_r, setup.lora_targets) if method != "full" else 0
    trainable = n if method == "full" else adapter
    allreduce = 0.0
    if count > 1 and not (sharded and method == "full"):  # all-reduce = reduce-scatter + all-gather
        allreduce = 2 * collective_s(2 * trainable, count, device, p) * (1 - p["allreduce_overlap"])
    if method == "full" and setup.offload:
        nodes = math.ceil(count / device.gpus_per_node)
        optimizer = n / (p["cpu_adam_params_per_s"] * nodes)
    else:
        shards = count if (method == "full" and setup.zero_stage >= 1) else 1
        optimizer = 30 * trainable / shards / (device.hbm_bytes_per_s * 0.8)
    steps_s = micro_steps * micro + opt_steps * (allreduce + optimizer)

    # Periodic evaluation (HF Trainer evaluation_strategy=steps): every eval_steps optimizer steps,
    # eval_examples rows forward only, at the training micro-batch, each padded like training rows.
    eval_s = 0.0
    if job.eval_steps and job.eval_examples:
        e_len = padded_length(job.eval_tokens or _rows(job)[1], job.length_sigma, setup.micro_batch, job.max_length)
        e = layer_cost(shape, chip, setup.micro_batch * e_len, e_len, setup.micro_batch, method, False, setup.lora_r,
                       tuple(setup.lora_targets), flash, scale, job.quant, pkey)
        per_step = max(shape.layers * e.fwd + e.head_fwd, cpu_floor_s(shape, job, False, p, passes=1))
        per_eval = math.ceil(job.eval_examples / (setup.micro_batch * count)) * per_step
        eval_s = opt_steps // job.eval_steps * per_eval

    # Checkpoints: intermediate ones hold weights + optimizer state (full: 2 + 12 B/param), the
    # final one the weights (LoRA: the adapter, then a merged bf16 copy).
    write = p["checkpoint_gb_per_s"] * 1e9
    saves = opt_steps // job.save_steps if job.save_steps else 0
    per_save = 14 * n if method == "full" else 14 * adapter
    checkpoint_s = (saves * per_save + 2 * n) / write
    startup_s = p["finetune_startup_s"] + 2 * n / (p["load_gb_per_s"] * 1e9)

    real = real_per_epoch * job.epochs
    padded = micro_steps * count * tokens
    return TrainTime(
        wall_s=startup_s + steps_s + eval_s + checkpoint_s, startup_s=startup_s, steps_s=steps_s,
        checkpoint_s=checkpoint_s, micro_steps=micro_steps, optimizer_steps=opt_steps, real_tokens=real,
        padded_tokens=padded, flops=micro_steps * count * flops, seq_len=setup.seq_len,
        matmul_efficiency=flops / (compute * device.peak_flops) if compute else 0.0,
        step_parts_s={"compute": compute, "comm": comm, "launch": launch, "shard": shard, "offload": offload_s,
                      "allreduce_per_opt_step": allreduce, "optimizer_per_opt_step": optimizer},
        setup=setup, adjusted=adjusted, memory_gb=training_bytes(shape, setup) / 1e9,
        micro_step_s=micro, opt_step_s=allreduce + optimizer, accum=accum, eval_s=eval_s, sequences=sequences,
    )


def scaled_wall_s(t: TrainTime, job: TrainJob, examples: float, count: int) -> float:
    """Wall-clock of the same setup on `examples` rows (plan: one timing per setup, then per size).
    Exact for what grows with the data (micro-steps, optimizer steps); start-up and the final save
    do not grow; no intermediate checkpoints and no evaluation (the plan's jobs have neither)."""
    seqs = t.sequences * examples / job.examples
    micro = math.ceil(seqs * job.epochs / (t.setup.micro_batch * count))
    return t.startup_s + t.checkpoint_s + micro * t.micro_step_s + math.ceil(micro / t.accum) * t.opt_step_s


class NoFit(Exception):
    """No setup fits in device memory; args[0] = bytes per device of the smallest one tried."""

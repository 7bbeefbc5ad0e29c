"""Fine-tuning time: work (tokens, GEMM shapes, bytes) -> seconds, for one regime of one run.

Pure arithmetic (no torch). The efficiency is not one constant: it comes out of the regime,
    padding      unpacked batches are padded to their longest example (or to max_length),
    GEMM shapes  a matmul runs in waves of 128x128 output tiles, one per SM: few tokens per
                 micro-step or a narrow layer leave SMs idle, a wide layer fills them (gemm_s),
    elementwise  norms, rotary, activations, residuals and the loss move bytes, not FLOPs:
                 they scale with tokens x width, the GEMMs with tokens x width^2,
    sharding     ZeRO-3/FSDP gathers every layer's weights twice per micro-step and
                 reduce-scatters its gradients; prefetch hides them under the layer's compute
                 unless the link is too slow for it (or the stack does not prefetch),
    multi-node   a ring that leaves the node runs at the per-GPU NIC bandwidth,
    offload      optimizer state (and parameters) cross PCIe; Adam runs on each node's CPUs,
    4-bit bases  QLoRA dequantises every weight to bf16 before each matmul (memory traffic),
    recompute    activation checkpointing runs every forward twice,
    fixed costs  kernel launches (a floor per layer), start-up, checkpoint writes.
`p` holds the regime constants (params.DEFAULTS, overridden per device by calibration), and
the training stack's year (params.SOFTWARE). Every formula is in docs/cost-model.md.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist

from replicate.cost.catalog import Device, ModelShape
from replicate.cost.memory import TrainSetup, fits, layer_linears, lora_params, setup_variants, training_bytes
from replicate.cost.params import elementwise_scale, stack

_NORMAL = NormalDist()
TILE = 128  # output tile of a tensor-core GEMM kernel (cuBLAS/CUTLASS default 128x128)


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
    matmul_efficiency: float  # fraction of peak the micro-step's compute reaches (GEMMs + elementwise)
    step_parts_s: dict = field(default_factory=dict)  # one micro-step: compute, comm, layers, offload
    micro_step_s: float = 0.0  # one micro-step, all parts
    opt_step_s: float = 0.0  # what each optimizer step adds (all-reduce, Adam)
    accum: int = 1  # micro-steps per optimizer step
    setup: TrainSetup | None = None
    adjusted: list[str] = field(default_factory=list)
    memory_gb: float = 0.0  # per device


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
class Chip:
    """What the compute model needs of a Device (hashable, for the cache below)."""

    peak_flops: float
    sm_count: int
    hbm_bytes_per_s: float


@functools.lru_cache(maxsize=65536)
def _layer_compute(shape: ModelShape, device: Chip, tokens: float, seq_len: float, batch: int, method: str,
                   recompute: bool, lora_r: int, lora_targets: tuple, flash: bool, elem_scale: float,
                   pkey: tuple) -> tuple:
    """(forward s, backward s, FLOPs) of ONE decoder layer for `tokens` tokens, plus the LM head.

    Backward: dX for every linear, dW only when the base trains (full); LoRA adds its two thin
    matmuls per target (rank-r: few tiles, so inefficient). Recompute runs the forward again.
    Attention: flash/sdpa at train_mfu (2 x seq x attn_dim FLOPs per token forward, causal, 2.5x
    that backward); without flash (2023 eager) the s^2 scores also cross memory. Elementwise
    (norms, rotary, SiLU x up, residuals) moves elementwise_bytes_d x d + elementwise_bytes_ff x
    d_ff bytes per token per layer, forward and backward together, times the stack's scale
    (params.elementwise_scale: 2023 unfused fp32 upcasts, 2025 the hand count, fused a third)."""
    p = dict(pkey)
    t = tokens
    full = method == "full"
    targets = {x.lower() for x in lora_targets}
    all_lin = bool(targets & {"all", "all-linear", "all_linear"})
    fwd = bwd = flops = 0.0
    for name, d_in, d_out in layer_linears(shape):
        f = gemm_s(t, d_out, d_in, device, p)
        fwd += f
        bwd += gemm_s(t, d_in, d_out, device, p) + (gemm_s(d_in, d_out, t, device, p) if full else 0.0)
        flops += 2 * t * d_in * d_out * (3 if full else 2)
        if not full and (all_lin or name in targets):  # x A (d_in -> r), then B (r -> d_out)
            a, b = gemm_s(t, lora_r, d_in, device, p), gemm_s(t, d_out, lora_r, device, p)
            # PEFT's adapter path is elementwise too: dropout copies x, the output is scaled and
            # added: ~4 d_in + 6 d_out bytes per token forward, twice that backward.
            lora_elem = t * (4 * d_in + 6 * d_out) / (device.hbm_bytes_per_s * p["hbm_efficiency"])
            fwd += a + b + lora_elem
            bwd += 2 * (a + b + lora_elem)
            flops += 6 * t * lora_r * (d_in + d_out)
    if method == "qlora":  # NF4 -> bf16 before every matmul: read 0.53 B + write 2 B per weight, per pass
        n_layer = sum(i * o for _, i, o in layer_linears(shape))
        deq = 2.53 * n_layer / (device.hbm_bytes_per_s * p["hbm_efficiency"])
        fwd, bwd = fwd + deq, bwd + deq
    attn_f = 2 * t * seq_len * shape.attn_dim  # causal: half of 4 x T x seq x attn_dim
    attn = attn_f / (device.peak_flops * p["train_mfu"])
    flops += 3.5 * attn_f
    hbm = device.hbm_bytes_per_s * p["hbm_efficiency"]
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
    head_f = gemm_s(t, shape.vocab, shape.d_model, device, p)
    head_b = gemm_s(t, shape.d_model, shape.vocab, device, p) + (gemm_s(shape.d_model, shape.vocab, t, device, p)
                                                                  if full else 0.0)
    loss = elem_scale * t * shape.vocab * p["loss_bytes_per_logit"] / hbm
    head = head_f + head_b + loss
    flops_head = 2 * t * shape.d_model * shape.vocab * (3 if full else 2)
    return fwd, bwd, flops, head, flops_head


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
    lora_targets: tuple = ("q_proj", "v_proj")  # adapted modules of each layer
    paged: bool = False  # paged optimizer (QLoRA)
    sharding: str = "fsdp"  # fsdp | deepspeed: who runs ZeRO-3 (prefetch behaviour differs in 2023)
    software: int = 2026  # the training stack's year (params.SOFTWARE): FSDP prefetch, fused kernels
    attention: str = "flash"  # flash (FlashAttention / sdpa) | eager (materialised scores)
    fused: bool | None = None  # fused elementwise kernels + loss (compile, Liger); None = the stack's


def _seq(job: TrainJob, micro_batch: int) -> tuple[float, float]:
    """(sequences, padded length) for a micro-batch size."""
    mean_len = min(job.tokens_per_example, job.max_length)
    if job.packing:  # rows of max_length filled end to end: no padding
        return math.ceil(job.examples * mean_len / job.max_length), float(job.max_length)
    if job.padding == "max_length":
        return job.examples, float(job.max_length)
    return job.examples, padded_length(mean_len, job.length_sigma, micro_batch, job.max_length)


def finetune_time(shape: ModelShape, device: Device, count: int, job: TrainJob, p: dict) -> TrainTime:
    """Seconds (and the regime behind them) of `job` on `count` x `device`; raises NoFit.

    When the configured setup does not fit in memory, the variants of memory.setup_variants that
    fit at the largest micro-batch are timed and the fastest is used: gradient checkpointing,
    sharding, offload and a paged optimizer are all tried (whichever costs least time) before the
    micro-batch shrinks, and it shrinks only as far as memory needs."""
    sequences, seq_len = _seq(job, job.micro_batch)
    configured = TrainSetup(job.method, job.micro_batch, seq_len, job.recompute, job.zero_stage if count > 1 else 0,
                            job.offload, count, job.lora_r, tuple(job.lora_targets), job.paged)
    pkey = tuple(sorted((k, v) for k, v in p.items() if isinstance(v, (int, float))))
    if fits(device, training_bytes(shape, configured)):
        return _time(shape, device, count, job, p, configured, sequences, [], pkey)
    best, smallest, level = None, math.inf, None
    for v, notes in setup_variants(configured):  # micro-batch descending: the largest that fits wins
        if best is not None and v.micro_batch < level:
            break
        seqs, sl = _seq(job, v.micro_batch)
        v = replace(v, seq_len=sl)
        need = training_bytes(shape, v)
        smallest = min(smallest, need)
        if not fits(device, need):
            continue
        t = _time(shape, device, count, job, p, v, seqs, notes, pkey)
        if best is None or t.wall_s < best.wall_s:
            best, level = t, v.micro_batch
    if best is None:
        raise NoFit(smallest)
    return best


def _time(shape: ModelShape, device: Device, count: int, job: TrainJob, p: dict, setup: TrainSetup,
          sequences: float, adjusted: list[str], pkey: tuple) -> TrainTime:
    method, n, st = job.method, shape.params, stack(job.software)
    accum = job.grad_accum * max(1, job.micro_batch // setup.micro_batch)  # same global batch
    micro_steps = math.ceil(sequences * job.epochs / (setup.micro_batch * count))
    opt_steps = math.ceil(micro_steps / accum)
    tokens = setup.micro_batch * setup.seq_len  # per device per micro-step
    chip = Chip(device.peak_flops, device.sm_count, device.hbm_bytes_per_s)
    scale = elementwise_scale(job.software, job.fused, p)
    fwd, bwd, lflops, head, hflops = _layer_compute(shape, chip, tokens, setup.seq_len, setup.micro_batch, method,
                                                    setup.recompute, setup.lora_r, tuple(setup.lora_targets),
                                                    job.attention != "eager", scale, pkey)
    compute = shape.layers * (fwd + bwd) + head
    flops = shape.layers * lflops + hflops

    # ZeRO-3 / FSDP: per layer, all-gather its bf16 weights for the forward and again for the
    # backward; full fine-tuning also reduce-scatters its gradients. With prefetch the next
    # layer's gather runs under this layer's compute: only what the compute cannot cover shows.
    sharded = setup.zero_stage >= 3 and count > 1
    comm = shard = 0.0
    if sharded:
        layer_bytes = 2 * (n - shape.vocab * shape.d_model * (1 if shape.tied else 2)) / shape.layers
        gather = collective_s(layer_bytes, count, device, p)
        rs = gather if method == "full" else 0.0
        prefetch = job.sharding == "deepspeed" or st["fsdp_prefetch"]
        if prefetch:
            exposed = max(0.0, gather - fwd) + max(0.0, gather + rs - bwd)
        else:  # the gather waits for the layer that needs it; the reduce-scatter still overlaps
            exposed = 2 * gather + max(0.0, rs - bwd)
        embed = 2 * shape.vocab * shape.d_model * (1 if shape.tied else 2)
        comm = shape.layers * exposed + (2 + (method == "full")) * collective_s(embed, count, device, p)
        shard = shape.layers * p["shard_layer_overhead_s"]
    launch = shape.layers * p["layer_overhead_s"]
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

    # Checkpoints: intermediate ones hold weights + optimizer state (full: 2 + 12 B/param), the
    # final one the weights (LoRA: the adapter, then a merged bf16 copy).
    write = p["checkpoint_gb_per_s"] * 1e9
    saves = opt_steps // job.save_steps if job.save_steps else 0
    per_save = 14 * n if method == "full" else 14 * adapter
    checkpoint_s = (saves * per_save + 2 * n) / write
    startup_s = p["finetune_startup_s"] + 2 * n / (p["load_gb_per_s"] * 1e9)

    real = job.examples * job.epochs * min(job.tokens_per_example, job.max_length)
    padded = micro_steps * count * tokens
    return TrainTime(
        wall_s=startup_s + steps_s + checkpoint_s, startup_s=startup_s, steps_s=steps_s,
        checkpoint_s=checkpoint_s, micro_steps=micro_steps, optimizer_steps=opt_steps, real_tokens=real,
        padded_tokens=padded, flops=micro_steps * count * flops, seq_len=setup.seq_len,
        matmul_efficiency=flops / (compute * device.peak_flops) if compute else 0.0,
        step_parts_s={"compute": compute, "comm": comm, "launch": launch, "shard": shard, "offload": offload_s,
                      "allreduce_per_opt_step": allreduce, "optimizer_per_opt_step": optimizer},
        setup=setup, adjusted=adjusted, memory_gb=training_bytes(shape, setup) / 1e9,
        micro_step_s=micro, opt_step_s=allreduce + optimizer, accum=accum,
    )


def scaled_wall_s(t: TrainTime, job: TrainJob, examples: float, count: int) -> float:
    """Wall-clock of the same setup on `examples` rows (plan: one timing per setup, then per size).
    Exact for what grows with the data (micro-steps, optimizer steps); start-up and the final save
    do not grow; no intermediate checkpoints (the plan's jobs save once)."""
    seqs = math.ceil(examples * min(job.tokens_per_example, job.max_length) / job.max_length) if job.packing \
        else examples
    micro = math.ceil(seqs * job.epochs / (t.setup.micro_batch * count))
    return t.startup_s + t.checkpoint_s + micro * t.micro_step_s + math.ceil(micro / t.accum) * t.opt_step_s


class NoFit(Exception):
    """No setup fits in device memory; args[0] = bytes per device of the smallest one tried."""

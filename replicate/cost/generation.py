"""Generation time and price: teacher data and evaluation outputs. Pure arithmetic (no torch).

Self-hosted (vLLM-style continuous batching), per engine replica of `tp` devices:
    prefill   compute-bound:  prompt tokens x (2N + attention) / (devices x peak x generate_mfu)
    decode    one step emits one token for each of `batch` sequences; it reads every weight once
              and the KV cache of every sequence:
                  t_mem = (2N + batch x context x kv_bytes) / (tp x HBM x decode_efficiency)
                  t_cmp = batch x (2N + attention) / (tp x peak x generate_mfu)
                  t_step = max(t_mem, t_cmp) + tensor-parallel all-reduces + decode_step_overhead_s
    batch     limited by max_num_seqs, by the requests the caller keeps in flight (the generate
              stage's requests_per_batch) and by the KV cache that fits next to the weights
    replicas  count / tp engines share the requests (data parallel)
API: billed prompt + output tokens x the year's price; wall = requests / concurrency x latency.
Formulas: docs/cost-model.md ("Generation").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from replicate.cost.catalog import Device, ModelShape
from replicate.cost.memory import FRAMEWORK_OVERHEAD_BYTES, inference_weight_bytes, tensor_parallel_for


@dataclass
class GenTime:
    wall_s: float
    startup_s: float
    prefill_s: float
    decode_s: float
    tp: int
    replicas: int
    batch: float  # concurrent sequences per replica
    output_tokens_per_s: float  # all replicas, while decoding
    step_s: float
    bound: str  # memory | compute: what limits a decode step


class NoFitInference(Exception):
    """The weights do not fit on the devices; args[0] = bytes of bf16 weights."""


def generation_layout(shape: ModelShape, device: Device, count: int) -> tuple[int, int]:
    """(tensor parallel, replicas) of a self-hosted engine on `count` devices: the smallest
    power-of-two TP whose weight shard leaves room for a KV cache, and count // tp data-parallel
    engines. The run starts exactly this (engines/replicas.py); e.g. a 70B bf16 model (141 GB) on
    8x A100-80GB: TP 4 (35 GB a shard) x 2 replicas. Raises NoFitInference when even `count` is not enough."""
    tp = tensor_parallel_for(shape, device, count)
    if tp == 0:
        raise NoFitInference(inference_weight_bytes(shape, device.bytes_per_value))
    return tp, count // tp


def selfhosted_time(shape: ModelShape, device: Device, count: int, *, requests: float, prompt_tokens: float,
                    output_tokens: float, p: dict, in_flight: float | None = None) -> GenTime:
    """`prompt_tokens`, `output_tokens`: means per request; `in_flight`: the most requests the caller
    hands the engine(s) at once (None: all of them)."""
    tp, replicas = generation_layout(shape, device, count)
    n = shape.params
    weights = inference_weight_bytes(shape, device.bytes_per_value)  # fp32 on a CPU without bf16
    kv_token = shape.kv_bytes_per_token(device.bytes_per_value)
    # vLLM reserves gpu_memory_utilization of each device; what the weights leave is KV cache.
    kv_space = tp * (device.memory_bytes * p["gpu_memory_utilization"] - FRAMEWORK_OVERHEAD_BYTES) - weights
    if p.get("kv_cache_gb"):  # a fixed KV budget (vLLM on CPU: VLLM_CPU_KVCACHE_SPACE)
        kv_space = p["kv_cache_gb"] * 1e9 * tp
    context = prompt_tokens + output_tokens  # a sequence's KV at its end
    offered = min(requests, in_flight or requests) / replicas  # sequences a replica can be given at once
    batch = min(p["max_num_seqs"], max(1.0, kv_space / (kv_token * context)), max(1.0, offered))
    attn_per_token = 4 * shape.layers * shape.attn_dim * (prompt_tokens + output_tokens / 2)

    mean_ctx = prompt_tokens + output_tokens / 2  # average KV length read per decode step
    t_mem = (weights + batch * mean_ctx * kv_token) / (tp * device.hbm_bytes_per_s * p["decode_efficiency"])
    t_cmp = batch * (2 * n + attn_per_token) / (tp * device.peak_flops * p["generate_mfu"])
    t_tp = 0.0
    if tp > 1:  # two all-reduces of the hidden state per layer (Megatron TP)
        link = (device.link_gb_per_s if tp <= device.gpus_per_node else device.inter_node_gb_per_s) * 1e9
        t_tp = 2 * shape.layers * (batch * shape.d_model * 2 * 2 * (tp - 1) / tp / (link * p["comm_efficiency"])
                                   + p["collective_latency_s"])
    step = max(t_mem, t_cmp) + t_tp + p["decode_step_overhead_s"]
    out_tps = replicas * batch / step

    total_prompt = requests * prompt_tokens
    prefill_s = total_prompt * (2 * n + 2 * shape.layers * shape.attn_dim * prompt_tokens) / (
        count * device.peak_flops * p["generate_mfu"])
    decode_s = requests * output_tokens / out_tps
    startup_s = p["generate_startup_s"] + weights / tp / (p["load_gb_per_s"] * 1e9)
    return GenTime(
        wall_s=startup_s + prefill_s + decode_s, startup_s=startup_s, prefill_s=prefill_s, decode_s=decode_s,
        tp=tp, replicas=replicas, batch=batch, output_tokens_per_s=out_tps, step_s=step,
        bound="memory" if t_mem >= t_cmp else "compute",
    )


def api_wall_s(requests: float, output_tokens: float, concurrency: int, p: dict) -> float:
    """Wall-clock of `requests` API calls, `concurrency` in flight: each takes a fixed latency plus
    its output streamed at api_tokens_per_s."""
    per_request = p["api_latency_s"] + output_tokens / p["api_tokens_per_s"]
    return math.ceil(requests / max(1, concurrency)) * per_request

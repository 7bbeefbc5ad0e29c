"""Text generation backends, shared by the generate and evaluate stages (teacher, base, student, judge).

    from replicate.engines import Sampling, open_engine
    with open_engine(cfg.teacher) as engine:
        outs = engine.complete(prompts, Sampling(max_tokens=256, temperature=0.0))

base.py holds the shapes every backend shares (Sampling, Request, Completion, Backend); vllm.py,
hf.py and openai.py are the backends, imported only when picked (vllm and torch are heavy).
"""
from __future__ import annotations

from replicate import config
from replicate.engines.base import Backend, Completion, Request, Sampling
from replicate.errors import UserError

__all__ = ["Backend", "Completion", "Request", "Sampling", "open_engine"]


def open_engine(cfg: config.Teacher, *, max_in_flight: int | None = None, layout: tuple[int, int] | None = None,
                **engine_kwargs) -> Backend:
    """The one place a backend is picked. `max_in_flight`: requests kept in the engine at once.
    `layout`: (tensor parallel, replicas) of a vLLM teacher, the cost model's choice for its
    hardware (cost.generation.generation_layout); None = one engine over all hardware.count devices."""
    if cfg.backend == "vllm":
        from replicate.engines.replicas import open_vllm
        from replicate.options import engine_args
        from replicate.weights import resolve

        tp, replicas = layout or (cfg.hardware.count, 1)
        return open_vllm(
            resolve(cfg.model, trust_remote_code=cfg.trust_remote_code), tp, replicas, chat=cfg.chat,
            dtype=cfg.dtype, max_model_len=cfg.max_model_len, trust_remote_code=cfg.trust_remote_code,
            max_in_flight=max_in_flight or 256, **{**engine_args(cfg.engine_args), **engine_kwargs},
        )
    elif cfg.backend == "openai":
        from replicate.engines.openai import OpenAIEngine

        return OpenAIEngine(
            cfg.model, base_urls=cfg.base_urls, api_key_env=cfg.api_key_env, chat=cfg.chat,
            max_concurrency=cfg.max_concurrency, max_retries=cfg.max_retries, timeout_s=cfg.request_timeout_s,
        )
    elif cfg.backend == "transformers":
        from replicate.engines.hf import HFEngine
        from replicate.weights import resolve

        return HFEngine(
            resolve(cfg.model, trust_remote_code=cfg.trust_remote_code), chat=cfg.chat, dtype=cfg.dtype,
            trust_remote_code=cfg.trust_remote_code, max_in_flight=max_in_flight or 16,
        )
    raise UserError(f"teacher.backend: unknown backend {cfg.backend!r}")

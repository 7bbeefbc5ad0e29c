"""Offline batch generation at cluster scale: Ray Data over replicas of the teacher's engine.

    pip install -e '.[ray]'            # ray[data]; the engines as for the `vllm` backend
    from replicate.engines.ray_data import generate_with_ray
    outs = generate_with_ray(cfg.teacher, prompts, Sampling(max_tokens=256), replicas=8, tensor_parallel=1)

A fixed list of prompts (the `respond` mode's instructions, an evaluation set) becomes a Ray
Dataset; `map_batches` runs `GenerateBatch` in `replicas` actors, each holding one engine of
`tensor_parallel` devices (Ray gives each actor its GPUs), and the completions come back in the
prompts' order with exact token counts. The streaming generate stage (self-instruct decides what to
ask from what it kept) stays on engines/replicas.py; this path is for work that is known up front.

GenerateBatch is plain Python over open_engine: tests/test_scale.py runs it on a real engine
without Ray; the Ray part needs `ray`, which the project's default install does not carry
(docs/scale.md says what was and was not run here).
"""
from __future__ import annotations

import json
from collections.abc import Sequence

from replicate.engines.base import Completion, Prompt, Sampling
from replicate.errors import missing_extra


class GenerateBatch:
    """One Ray actor: an engine for the teacher, called on batches of {"index", "prompt"} rows."""

    def __init__(self, teacher_json: str, sampling_json: str, tensor_parallel: int = 1):
        from replicate.config import Teacher
        from replicate.engines import open_engine

        s = json.loads(sampling_json)
        self.sampling = Sampling(**{**s, "stop": tuple(s["stop"])})
        self.engine = open_engine(Teacher.model_validate_json(teacher_json), layout=(tensor_parallel, 1))

    def __call__(self, batch: dict) -> dict:
        prompts = [json.loads(p) for p in batch["prompt"]]  # text or chat messages, as JSON
        seeds = [self.sampling.seed + int(i) for i in batch["index"]]  # request i's seed, wherever it runs
        outs = self.engine.complete(prompts, self.sampling, seeds=seeds)
        return {"index": list(batch["index"]), "text": [o.text for o in outs],
                "finish_reason": [o.finish_reason for o in outs], "prompt_tokens": [o.prompt_tokens for o in outs],
                "output_tokens": [o.output_tokens for o in outs], "latency_s": [o.latency_s for o in outs]}


def rows(prompts: Sequence[Prompt]) -> list[dict]:
    """The Dataset's rows: the position (for order and seed) and the prompt as JSON (a chat prompt
    is a list of messages, which Arrow would otherwise turn into a struct column)."""
    return [{"index": i, "prompt": json.dumps(p)} for i, p in enumerate(prompts)]


def completions(result_rows: Sequence[dict]) -> list[Completion]:
    """Rows back from the actors -> Completions in the prompts' order."""
    ordered = sorted(result_rows, key=lambda r: int(r["index"]))
    return [Completion(request_id=f"req-{int(r['index'])}", text=r["text"], finish_reason=r["finish_reason"],
                       prompt_tokens=int(r["prompt_tokens"]), output_tokens=int(r["output_tokens"]),
                       latency_s=float(r["latency_s"]), server="ray") for r in ordered]


def generate_with_ray(teacher, prompts: Sequence[Prompt], sampling: Sampling, *, replicas: int,
                      tensor_parallel: int = 1, batch_size: int = 64) -> list[Completion]:
    """Completions of `prompts` by `replicas` engine actors of `tensor_parallel` GPUs each."""
    try:
        import ray
    except ImportError:
        raise missing_extra("ray", "ray") from None
    import torch

    gpus = tensor_parallel if torch.cuda.is_available() else 0
    s = json.dumps({"max_tokens": sampling.max_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p,
                    "stop": list(sampling.stop), "seed": sampling.seed})
    ds = ray.data.from_items(rows(prompts)).map_batches(
        GenerateBatch, fn_constructor_args=(teacher.model_dump_json(), s, tensor_parallel),
        concurrency=replicas, batch_size=batch_size, num_gpus=gpus)
    return completions(ds.take_all())

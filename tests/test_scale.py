"""Scale-out pieces that run here: Ray Data's per-batch generation on a real engine (the Ray
cluster itself only where `ray` is installed: it is an optional extra), and the order and seeds
of its rows."""
from __future__ import annotations

import json

import pytest

from replicate.config import Teacher
from replicate.engines import Sampling
from replicate.engines.ray_data import GenerateBatch, completions, rows

PROMPTS = ["Count: one, two,", [{"role": "user", "content": "Name a colour."}], "The capital of France is"]
SAMPLING = Sampling(max_tokens=6, temperature=0.0, stop=("\n",))


def _teacher() -> Teacher:
    return Teacher(model="packaged:smollm2-135m-instruct", backend="transformers", dtype="float32")


def _sampling_json() -> str:
    return json.dumps({"max_tokens": 6, "temperature": 0.0, "top_p": 1.0, "stop": ["\n"], "seed": 0})


def test_rows_keep_chat_prompts_and_come_back_in_order():
    r = rows(PROMPTS)
    assert [x["index"] for x in r] == [0, 1, 2] and json.loads(r[1]["prompt"]) == PROMPTS[1]
    back = completions([{"index": 2, "text": "c", "finish_reason": "stop", "prompt_tokens": 3, "output_tokens": 1,
                         "latency_s": 0.1},
                        {"index": 0, "text": "a", "finish_reason": "length", "prompt_tokens": 5, "output_tokens": 6,
                         "latency_s": 0.2}])
    assert [c.text for c in back] == ["a", "c"] and back[0].request_id == "req-0" and back[0].output_tokens == 6


@pytest.mark.slow
def test_one_actors_batch_on_a_real_engine_matches_the_engine_itself():
    """What each Ray actor does, without Ray: the batch's completions equal the engine's own for
    the same prompts and seeds (so where a row runs does not change what it gets)."""
    from replicate.engines import open_engine

    actor = GenerateBatch(_teacher().model_dump_json(), _sampling_json())
    out = actor({"index": [0, 1, 2], "prompt": [r["prompt"] for r in rows(PROMPTS)]})
    assert out["index"] == [0, 1, 2] and all(n > 0 for n in out["output_tokens"])
    with open_engine(_teacher()) as engine:
        direct = engine.complete(PROMPTS, SAMPLING, seeds=[0, 1, 2])
    assert out["text"] == [c.text for c in direct]
    assert out["prompt_tokens"] == [c.prompt_tokens for c in direct]


@pytest.mark.slow
def test_a_local_ray_cluster_generates_in_order():
    ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (docs/scale.md)")
    from replicate.engines.ray_data import generate_with_ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        outs = generate_with_ray(_teacher(), PROMPTS, SAMPLING, replicas=2, batch_size=2)
    finally:
        ray.shutdown()
    assert [c.request_id for c in outs] == ["req-0", "req-1", "req-2"] and all(c.output_tokens for c in outs)

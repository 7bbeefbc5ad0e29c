"""What a pipeline asks for, in tokens: teacher requests, trained examples, evaluation outputs.

When the YAML's `data:` section leaves a shape open, an Alpaca-like self-instruct row fills it
(ALPACA): ~60 prompt + ~130 completion tokens per trained example, ~510-token teacher prompts
(the instructions + 3 seed tasks) that yield ~16 list items each, of which ~30 % survive the
parsing and filters. The same defaults serve `estimate`, `plan` and the evaluation estimate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the schema (pydantic) is only needed by whoever builds a Pipeline; plan never does
    from replicate.config import Pipeline


@dataclass(frozen=True)
class RowShape:
    prompt_tokens: float = 60.0  # template + instruction + input, as trained
    completion_tokens: float = 130.0  # the output
    request_prompt_tokens: float = 510.0  # one self-instruct prompt: the instructions + 3 seed tasks
    examples_per_request: float = 16.0  # list items one self-instruct response holds (Alpaca: 4-19)
    keep_rate: float = 0.3  # share of the items that survive parsing and filters


ALPACA = RowShape()


@dataclass(frozen=True)
class Workload:
    requests: float  # teacher requests
    prompt_per_request: float
    output_per_request: float
    kept: float  # examples kept (train + held-out)
    trained: float  # examples the student trains on
    tokens_per_example: float  # prompt + completion as trained


def workload(cfg: Pipeline) -> Workload:
    d, g = cfg.data, cfg.generate
    prompt = d.prompt_tokens or ALPACA.prompt_tokens
    completion = d.completion_tokens or ALPACA.completion_tokens
    trained = g.examples * (1 - g.held_out_fraction)
    if g.mode == "none":
        return Workload(0, 0, 0, g.examples, trained, prompt + completion)
    if g.mode == "self-instruct":
        per_request = d.examples_per_request or ALPACA.examples_per_request
        keep = d.keep_rate or ALPACA.keep_rate
        req_prompt = d.request_prompt_tokens or ALPACA.request_prompt_tokens
        generated = d.generated_tokens_per_example or (prompt + completion)
    else:  # respond: one instruction in, one answer out
        per_request, keep = d.examples_per_request or 1.0, d.keep_rate or 1.0
        req_prompt = d.request_prompt_tokens or prompt
        generated = d.generated_tokens_per_example or completion
    # A response stops at generate.max_tokens: fewer candidates per response, or shorter answers.
    per_request = min(per_request, max(1.0, g.max_tokens / generated))
    candidates = g.examples / keep
    requests = candidates / per_request
    output = min(per_request * generated, g.max_tokens)
    return Workload(requests, req_prompt, output, g.examples, trained, prompt + completion)

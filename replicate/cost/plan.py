"""`replicate plan`: the best replications a budget buys, ranked, with what limits each.

Candidates = students x example counts x fine-tuning methods x GPUs x device counts (> 10,000).
Each is costed with the same functions `estimate` uses (cost_generate, cost_finetune) on plain
numbers, not pydantic objects, so the whole search takes well under a second. Generation is
costed once per example count (the teacher does not depend on the student).

Ranking is a stated heuristic, not a measured copy curve: copy quality grows with the student's
size and, with diminishing returns, with the number of teacher examples (LIMA: 1K curated
examples teach the format; Alpaca used 52K), and full fine-tuning edges out LoRA/QLoRA:
    score = log10(params) + 0.5 log10(examples) + {full: 0.05, lora: 0, qlora: -0.02}
For each (student, examples) the cheapest feasible setup is kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from replicate.cost import catalog
from replicate.cost.generation import NoFitInference, api_wall_s, selfhosted_time
from replicate.cost.params import DEFAULTS, params_for
from replicate.cost.training import NoFit, TrainJob, finetune_time
from replicate.cost.workload import ALPACA
from replicate.errors import UserError

STUDENTS = ("smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "llama-3.2-1b", "qwen2.5-1.5b", "smollm2-1.7b",
            "qwen2.5-3b", "llama-3.2-3b", "qwen2.5-7b", "mistral-7b", "llama-3.1-8b", "qwen2.5-14b",
            "qwen2.5-32b", "llama-3.1-70b", "qwen2.5-72b")
EXAMPLES = (1_000, 2_000, 5_000, 10_000, 20_000, 52_000, 100_000, 200_000, 500_000)
METHODS = ("full", "lora", "qlora")
COUNTS = (1, 2, 4, 8, 16)
METHOD_BONUS = {"full": 0.05, "lora": 0.0, "qlora": -0.02}
# Every candidate trains on Alpaca-like self-instruct rows (cost/workload.py ALPACA), 3 epochs,
# max_length 512, micro-batch 8: the TrainJob defaults.


@dataclass
class Option:
    student: str
    params: int
    examples: int
    method: str
    gpu: str
    count: int
    usd: float
    generate_usd: float
    finetune_usd: float
    wall_hours: float
    score: float
    limit: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _generation_costs(teacher: str, year: int) -> dict[int, tuple[float, float]]:
    """examples -> (usd, wall_hours) of generating them with `teacher` (API, or the cheapest GPU setup)."""
    out = {}
    api = catalog.has_api_price(teacher, year)
    if not api:
        shape = catalog.model_shape(teacher)  # UserError names the unknown teacher
    for n in EXAMPLES:
        requests = n / ALPACA.keep_rate / ALPACA.examples_per_request
        tokens_out = ALPACA.examples_per_request * (ALPACA.prompt_tokens + ALPACA.completion_tokens)
        if api:
            price = catalog.api_price(teacher, year)
            out[n] = (price.usd(requests * ALPACA.request_prompt_tokens, requests * tokens_out),
                      api_wall_s(requests, tokens_out, 16, DEFAULTS) / 3600)
            continue
        best = None
        for gpu in _priced_gpus(year):
            device = catalog.hardware(gpu)
            p, _ = params_for(device, None)
            for count in (1, 2, 4, 8):
                try:
                    t = selfhosted_time(shape, device, count, requests=requests, prompt_tokens=ALPACA.request_prompt_tokens,
                                        output_tokens=tokens_out, p=p)
                except NoFitInference:
                    continue
                usd = t.wall_s * count / 3600 * catalog.usd_per_device_hour(gpu, year)
                if best is None or usd < best[0]:
                    best = (usd, t.wall_s / 3600)
        if best is None:
            raise UserError(f"--teacher: {teacher} does not fit on any GPU priced in {year}")
        out[n] = best
    return out


def _priced_gpus(year: int) -> list[str]:
    return [g for g in catalog.prices(year).get("gpu", {}) if g != "cpu"]


def candidates(budget: float, year: int, teacher: str) -> tuple[list[Option], int]:
    """Every feasible candidate within `budget` (cheapest setup per student/examples/method), and
    how many candidate setups were costed."""
    gen = _generation_costs(teacher, year)
    gpus = [(g, catalog.hardware(g), catalog.usd_per_device_hour(g, year)) for g in _priced_gpus(year)]
    params = {g: params_for(dev, None)[0] for g, dev, _ in gpus}
    best: dict[tuple, Option] = {}
    cheapest: dict[tuple, float] = {}  # (student, examples) -> lowest cost at any budget
    costed = 0
    for name in STUDENTS:
        shape = catalog.model_shape(name)
        for n in EXAMPLES:
            gen_usd, gen_h = gen[n]
            for method in METHODS:
                for gpu, dev, rate in gpus:
                    for count in COUNTS:
                        costed += 1
                        try:
                            job = TrainJob(method=method, examples=n, zero_stage=3, lora_r=16,
                                           tokens_per_example=ALPACA.prompt_tokens + ALPACA.completion_tokens)
                            t = finetune_time(shape, dev, count, job, params[gpu])
                        except NoFit:
                            continue
                        ft_usd = t.wall_s * count / 3600 * rate
                        usd = gen_usd + ft_usd
                        key = (name, n)
                        cheapest[key] = min(usd, cheapest.get(key, math.inf))
                        if usd > budget:
                            continue
                        if key in best and best[key].usd <= usd:
                            continue
                        score = math.log10(shape.params) + 0.5 * math.log10(n) + METHOD_BONUS[method]
                        best[key] = Option(name, shape.params, n, method, gpu, count, usd, gen_usd, ft_usd,
                                           gen_h + t.wall_s / 3600, score)
    return list(best.values()), costed, cheapest


def plan(budget: float, year: int, teacher: str, top: int = 10) -> dict:
    if budget <= 0:
        raise UserError(f"--budget: must be positive, got {budget}")
    catalog.prices(year)
    options, costed, cheapest = candidates(budget, year, teacher)
    options.sort(key=lambda o: (-o.score, o.usd))
    shown = options[:top]
    for o in shown:
        o.limit = _limit(o, cheapest, budget)
    return {"budget_usd": budget, "prices": year, "teacher": teacher, "candidates": costed,
            "feasible": len(options), "options": [o.to_dict() for o in shown]}


def _limit(o: Option, cheapest: dict, budget: float) -> str:
    """What stops this option from being bigger: the next student size, or more examples."""
    i = STUDENTS.index(o.student)
    bigger = next((s for s in STUDENTS[i + 1:] if catalog.model_shape(s).params > o.params * 1.2), None)
    more = next((n for n in EXAMPLES if n > o.examples), None)
    parts = []
    for what, key in ((bigger, (bigger, o.examples)), (f"{more:,} examples" if more else None, (o.student, more))):
        if what is None:
            continue
        usd = cheapest.get(key, math.inf)
        if usd == math.inf:
            parts.append(f"{what}: fits no listed GPU setup")
        elif usd > budget:
            parts.append(f"{what}: ${usd:,.0f}")
    return "; ".join(parts) or "not the budget (a larger option also fits)"

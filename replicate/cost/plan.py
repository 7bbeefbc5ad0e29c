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
from dataclasses import dataclass, field, replace

from replicate.cost import catalog
from replicate.cost.generation import NoFitInference, api_wall_s, selfhosted_time
from replicate.cost.params import DEFAULTS, RECIPES, params_for
from replicate.cost.training import NoFit, TrainJob, finetune_time, params_key, scaled_wall_s
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
    pareto: list = field(default_factory=list)  # [(usd, hours, gpu, count)] of this copy, cheapest first

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["pareto"] = [{"usd": u, "wall_hours": h, "gpu": g, "count": c} for u, h, g, c in self.pareto]
        return d


OBJECTIVES = ("quality", "cost", "time")


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


def candidates(budget: float, year: int, teacher: str, max_hours: float = math.inf,
               software: int = 2026) -> tuple[list[Option], int, dict]:
    """Every copy (student, examples, method) that some setup makes within `budget` and
    `max_hours`, each with the Pareto front of its setups (no other setup is both cheaper and
    faster) and, as its recommended setup, the cheapest on that front; how many setups were
    costed; and the cheapest cost of every (student, examples) at any budget."""
    gen = _generation_costs(teacher, year)
    gpus = [(g, catalog.hardware(g), catalog.usd_per_device_hour(g, year)) for g in _priced_gpus(year)]
    params = {g: params_for(dev, None)[0] for g, dev, _ in gpus}
    pkeys = {g: params_key(p) for g, p in params.items()}
    recipe = RECIPES[2023 if software < 2025 else 2026]
    fronts: dict[tuple, list] = {}
    cheapest: dict[tuple, float] = {}  # (student, examples) -> lowest cost at any budget
    costed = 0
    base = TrainJob(zero_stage=3, lora_r=16, software=software,
                    tokens_per_example=ALPACA.prompt_tokens + ALPACA.completion_tokens, **recipe)
    for name in STUDENTS:
        shape = catalog.model_shape(name)
        for method in METHODS:
            job = replace(base, method=method, examples=EXAMPLES[0])
            for gpu, dev, rate in gpus:
                for count in COUNTS:
                    costed += len(EXAMPLES)
                    try:  # one timing per setup; the example counts only scale its steps
                        t = finetune_time(shape, dev, count, job, params[gpu], pkeys[gpu])
                    except NoFit:
                        continue
                    for n in EXAMPLES:
                        wall = scaled_wall_s(t, job, n, count)
                        ft_usd = wall * count / 3600 * rate
                        usd, hours = gen[n][0] + ft_usd, gen[n][1] + wall / 3600
                        cheapest[(name, n)] = min(usd, cheapest.get((name, n), math.inf))
                        if usd <= budget and hours <= max_hours:
                            fronts.setdefault((name, n, method), []).append((usd, hours, gpu, count, ft_usd))
    options = []
    for (name, n, method), pts in fronts.items():
        pts.sort()
        front, best_h = [], math.inf
        for u, h, g, c, f in pts:  # cheapest first: keep a point only if it is faster than all cheaper ones
            if h < best_h:
                front.append((u, h, g, c, f))
                best_h = h
        u, h, g, c, f = front[0]
        score = math.log10(catalog.model_shape(name).params) + 0.5 * math.log10(n) + METHOD_BONUS[method]
        options.append(Option(name, catalog.model_shape(name).params, n, method, g, c, u, gen[n][0], f, h, score,
                              pareto=[(round(a, 2), round(b, 2), gg, cc) for a, b, gg, cc, _ in front]))
    return options, costed, cheapest


def plan(budget: float, year: int, teacher: str, top: int = 10, max_hours: float = 24.0,
         objective: str = "quality", software: int = 2026) -> dict:
    """The best copies within `budget` dollars and `max_hours` of wall-clock (data + fine-tuning).

    objective: quality = the stated heuristic score (bigger student, more examples, full > LoRA >
    QLoRA), ties to the cheaper; cost = the cheapest copies first; time = the fastest first. Each
    option carries its Pareto front of dollars vs hours over GPU types and counts."""
    if budget <= 0:
        raise UserError(f"--budget: must be positive, got {budget}")
    if max_hours <= 0:
        raise UserError(f"--max-hours: must be positive, got {max_hours}")
    if objective not in OBJECTIVES:
        raise UserError(f"--objective: one of {', '.join(OBJECTIVES)}, got {objective!r}")
    catalog.prices(year)
    options, costed, cheapest = candidates(budget, year, teacher, max_hours, software)
    key = {"quality": lambda o: (-o.score, o.usd), "cost": lambda o: (o.usd, -o.score),
           "time": lambda o: (o.wall_hours, o.usd)}[objective]
    options.sort(key=key)
    shown = options[:top]
    for o in shown:
        o.limit = _limit(o, cheapest, budget)
    return {"budget_usd": budget, "prices": year, "teacher": teacher, "candidates": costed,
            "max_hours": max_hours, "objective": objective, "software": software,
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

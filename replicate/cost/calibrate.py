"""Fit the cost model's efficiency parameters for a device to measured runs.

    replicate calibrate runs/tiny-cpu runs/tiny-cpu-sweep/n100 -o calibration.yaml
    replicate estimate pipelines/tiny-cpu.yaml --calibration calibration.yaml

For each run directory: the resolved pipeline.yaml says what was asked, the ledger what it really
did (requests, prompt/output tokens, trained tokens, examples) and how long it took. The cost model
is re-run on the MEASURED workload (so a wrong keep-rate guess in the YAML is not blamed on the
device), and two numbers per stage family are fitted so that it reproduces the measured wall time:

    speed factor f   generation: decode_efficiency x f, generate_mfu x f, decode_step_overhead_s / f
                     training:   train_mfu x f
                     (the time of the work itself scales as 1/f; physics and shapes stay)
    startup S        generate_startup_s / finetune_startup_s: fitted when the runs have at least two
                     different workloads; with one size, taken from the ledger's own split
                     (generate: the line's startup_s, opening the engine inside the meter;
                     finetune: wall - trained_tokens / tokens_per_s of the training loop).

The fit minimises sum (log predicted - log measured)^2: a golden-section search over log f inside
a grid over S. The output follows params.check_calibration: {"devices": {KEY: {PARAM: value,
"fitted_from": [...]}}}, plus an informational `fit:` section (before/after per run) and a
`workload:` section with the measured data shape to copy under `data:` in a pipeline YAML.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from replicate import meter
from replicate.config import Pipeline
from replicate.cost import catalog
from replicate.cost.estimate import finetune_stage, generate_stage
from replicate.cost.params import FITTABLE, params_for
from replicate.errors import UserError
from replicate.rundir import read_resolved

FAMILY = {
    "generate": {"faster": ("decode_efficiency", "generate_mfu"), "slower": ("decode_step_overhead_s",),
                 "startup": "generate_startup_s"},
    "finetune": {"faster": ("train_mfu",), "slower": (), "startup": "finetune_startup_s"},
}
F_RANGE = (1e-3, 1e3)
MAX_EFFICIENCY = 1.0  # an MFU or bandwidth fraction above 1 would mean the catalog's peak is wrong


@dataclass
class Observation:
    run: str
    stage: str
    device: str  # catalog key (budgets/hardware.yaml)
    cfg: Pipeline  # the run's pipeline with the measured workload written into `data:`
    measured_s: float
    size: float  # a workload size, to tell whether startup and speed can be separated
    startup_s: float  # the part of measured_s that does not grow with the workload, as metered


def observations(run_dir: Path) -> list[Observation]:
    """What a run directory tells about its devices: one observation per metered stage."""
    cfg = read_resolved(run_dir)
    if cfg is None:
        raise UserError(f"{run_dir}: no pipeline.yaml (not a `replicate run` directory)")
    rows = meter.ledger(run_dir)
    out = []
    gen = meter.measured(rows, "generate")
    requests = sum(r.get("requests") or 0 for r in gen)
    if gen and requests and cfg.teacher.backend != "openai":
        p_tok, o_tok = sum(r["prompt_tokens"] for r in gen), sum(r["output_tokens"] for r in gen)
        kept = max(1, sum(r.get("kept") or 0 for r in gen))
        # The cost model's workload: requests = examples / keep / per_request. With keep = 1 and
        # per_request = kept / requests it issues exactly the measured requests, and
        # output per request = per_request x generated_tokens_per_example = measured output / requests.
        data = cfg.data.model_copy(update={"keep_rate": 1.0, "examples_per_request": kept / requests,
                                           "request_prompt_tokens": p_tok / requests,
                                           "generated_tokens_per_example": max(o_tok / kept, 1e-3)})
        g = cfg.generate.model_copy(update={"examples": kept, "held_out_fraction": 0.0})
        c = cfg.model_copy(update={"data": data, "generate": g})
        out.append(Observation(str(run_dir), "generate", cfg.teacher.hardware.gpu, c,
                               sum(r["wall_s"] for r in gen), o_tok, sum(r.get("startup_s") or 0 for r in gen)))
    ft = meter.measured(rows, "finetune")
    trained = sum(r.get("trained_tokens") or 0 for r in ft)
    examples = max((r.get("examples") or 0 for r in ft), default=0)
    if ft and trained and examples:
        per_example = trained / (examples * cfg.finetune.epochs)  # non-padding tokens per example
        data = cfg.data.model_copy(update={"prompt_tokens": per_example / 2, "completion_tokens": per_example / 2})
        g = cfg.generate.model_copy(update={"examples": examples, "held_out_fraction": 0.0})
        c = cfg.model_copy(update={"data": data, "generate": g})
        # Trainer set-up inside the meter: wall minus the training loop (tokens / loop tokens/s).
        setup = sum(max(0.0, r["wall_s"] - r["trained_tokens"] / r["tokens_per_s"]) if r.get("tokens_per_s")
                    else 0.0 for r in ft)
        out.append(Observation(str(run_dir), "finetune", cfg.finetune.hardware.gpu, c,
                               sum(r["wall_s"] for r in ft), trained, setup))
    return out


def predict_s(obs: Observation, params: dict | None) -> float:
    cal = {"devices": {obs.device: params}} if params else None
    stage = generate_stage if obs.stage == "generate" else finetune_stage
    return stage(obs.cfg, obs.cfg.prices, cal).wall_hours * 3600


def _params(base: dict, family: dict, f: float, startup: float) -> dict:
    p = {k: base[k] * f for k in family["faster"]}
    p.update({k: base[k] / f for k in family["slower"]})
    p[family["startup"]] = max(startup, 1e-3)  # calibration files hold positive numbers only
    return p


def _fit_f(obs: list[Observation], base: dict, family: dict, startup: float) -> tuple[float, float]:
    """Best speed factor for a fixed startup: golden-section search on log f (the loss is unimodal:
    every prediction falls monotonically as f grows)."""
    f_hi = min(F_RANGE[1], *(MAX_EFFICIENCY / base[k] for k in family["faster"]))

    def loss(u: float) -> float:
        p = _params(base, family, math.exp(u), startup)
        return sum((math.log(predict_s(o, p)) - math.log(o.measured_s)) ** 2 for o in obs)

    lo, hi = math.log(F_RANGE[0]), math.log(f_hi)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    la, lb = loss(a), loss(b)
    for _ in range(60):
        if la < lb:
            hi, b, lb = b, a, la
            a = hi - g * (hi - lo)
            la = loss(a)
        else:
            lo, a, la = a, b, lb
            b = lo + g * (hi - lo)
            lb = loss(b)
    u = (lo + hi) / 2
    return math.exp(u), loss(u)


def fit_family(obs: list[Observation], device: str, stage: str) -> tuple[dict, dict]:
    """(fitted parameters, report) for one device and one stage family."""
    family = {k: v for k, v in FAMILY[stage].items()}
    family["faster"] = tuple(k for k in family["faster"] if k in FITTABLE)
    family["slower"] = tuple(k for k in family["slower"] if k in FITTABLE)
    base, _ = params_for(catalog.hardware(device), None)
    default_s = base[family["startup"]]
    sizes = {round(o.size, -1) for o in obs}
    if len(sizes) >= 2:  # two workloads separate what grows with the work from what does not
        candidates = [default_s, 0.0, *np.geomspace(0.1, max(o.measured_s for o in obs), 40)]
    else:  # one workload: the metered split (see the module docstring)
        candidates = [sum(o.startup_s for o in obs) / len(obs)]
    best = None
    for s in candidates:
        f, err = _fit_f(obs, base, family, float(s))
        if best is None or err < best[2] - 1e-12:
            best = (f, float(s), err)
    f, startup, err = best
    params = _params(base, family, f, startup)
    report = [{"run": o.run, "stage": o.stage, "measured_s": round(o.measured_s, 2),
               "default_s": round(predict_s(o, None), 2), "calibrated_s": round(predict_s(o, params), 2)}
              for o in obs]
    return params, {"speed_factor": f, "startup_s": startup, "rms_log_error": math.sqrt(err / len(obs)),
                    "runs": report}


def calibrate(run_dirs: list[Path]) -> dict:
    obs = [o for d in run_dirs for o in observations(Path(d))]
    if not obs:
        raise UserError("calibrate: no measured generate or finetune stage in " + ", ".join(map(str, run_dirs)))
    devices: dict[str, dict] = {}
    fit: dict[str, dict] = {}
    for dev in sorted({o.device for o in obs}):
        for stage in ("generate", "finetune"):
            group = [o for o in obs if o.device == dev and o.stage == stage]
            if not group:
                continue
            params, report = fit_family(group, dev, stage)
            d = devices.setdefault(dev, {"fitted_from": []})
            d.update({k: float(f"{v:.6g}") for k, v in params.items()})
            d["fitted_from"] += [f"{o.run} ({stage})" for o in group]
            fit[f"{dev}/{stage}"] = report
    return {"devices": devices, "fit": fit, "workload": workload_hints(obs)}


def workload_hints(obs: list[Observation]) -> dict:
    """The measured data shape per pipeline, as `data:` keys (estimates use the YAML's `data:`)."""
    out: dict[str, dict] = {}
    for o in obs:
        d = out.setdefault(o.cfg.name, {})
        if o.stage == "generate":  # keep_rate 1: examples_per_request already counts kept rows only
            d.update(keep_rate=1.0, request_prompt_tokens=round(o.cfg.data.request_prompt_tokens, 1),
                     examples_per_request=round(o.cfg.data.examples_per_request, 4),
                     generated_tokens_per_example=round(o.cfg.data.generated_tokens_per_example, 1))
        else:  # informational: prompt_tokens + completion_tokens of a trained example
            d["trained_tokens_per_example"] = round(o.cfg.data.prompt_tokens * 2, 1)
    return out

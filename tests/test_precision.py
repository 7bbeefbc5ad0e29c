"""One precision decision for CPU work (replicate/precision.py): a user's setting wins, else a
probe decides, cached per machine; each branch is forced here, so the suite holds on any processor."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from replicate import precision
from replicate.cost import catalog
from replicate.errors import UserError

EMULATE_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A machine with no cached decision and no forced dtype."""
    monkeypatch.setenv("REPLICATE_CACHE", str(tmp_path))
    monkeypatch.delenv("REPLICATE_CPU_DTYPE", raising=False)
    precision.cpu_precision.cache_clear()
    yield tmp_path
    precision.cpu_precision.cache_clear()


def test_bf16_only_when_the_probe_finds_it_faster():
    assert precision._decide({"bfloat16": 300.0, "float32": 85.0}, "x").dtype == "bfloat16"  # AVX-512 BF16 / AMX
    slow = precision._decide({"bfloat16": 0.6, "float32": 32.0}, "x")  # the AVX2 EPYC of the issue
    assert slow.dtype == "float32" and "0.6" in slow.reason and "32.0" in slow.reason


def test_a_users_setting_always_wins(fresh, monkeypatch):
    assert precision.resolve("float32", cuda=False).dtype == "float32"
    assert precision.resolve("bfloat16", cuda=False).reason == "set by the pipeline"
    monkeypatch.setenv("REPLICATE_CPU_DTYPE", "float32")
    assert precision.resolve("auto", cuda=False).dtype == "float32"
    assert precision.planned_dtype("auto").dtype == "float32"
    assert precision.planned_dtype("bfloat16").dtype == "bfloat16"  # the pipeline's own setting beats the env
    with pytest.raises(UserError, match="expected auto"):
        precision.resolve("float8", cuda=False)


def test_the_probe_is_measured_once_then_read_from_the_cache(fresh, monkeypatch):
    calls = []

    def probe():
        calls.append(1)
        return {"float32": 40.0, "bfloat16": 2.0}

    monkeypatch.setattr(precision, "probe_gflops", probe)
    first = precision.cpu_precision()
    assert first.dtype == "float32" and "just now" in first.reason
    precision.cpu_precision.cache_clear()  # a new process on the same machine
    second = precision.cpu_precision()
    assert second.dtype == "float32" and "cached" in second.reason and len(calls) == 1
    cache = json.loads((fresh / "precision.json").read_text())
    assert list(cache) == [precision.machine_key()] and cache[precision.machine_key()]["float32"] == 40.0
    # Estimates never import torch: they read the same cached decision.
    assert precision.planned_dtype().dtype == "float32"


def test_without_a_cached_probe_the_estimate_reads_the_flags(fresh, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert precision.planned_dtype().dtype == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert precision.planned_dtype().dtype == "bfloat16"


def test_the_real_probe_under_avx2_emulation_chooses_fp32(tmp_path):
    """On any x86 processor: with torch and oneDNN limited to AVX2, bf16 is emulated and the probe
    must pick fp32 (the feature flags would still say avx512_bf16 where the silicon has it)."""
    env = {**os.environ, **EMULATE_AVX2, "REPLICATE_CACHE": str(tmp_path)}
    env.pop("REPLICATE_CPU_DTYPE", None)
    code = "from replicate import precision; p = precision.cpu_precision(); print(p.dtype); print(p.reason)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    dtype, reason = out.stdout.splitlines()
    assert dtype == "float32", reason
    gflops = json.loads((tmp_path / "precision.json").read_text())
    (entry,) = gflops.values()
    assert entry["bfloat16"] < entry["float32"]
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in next(iter(gflops))  # the limits are part of the cache key


def test_the_cost_model_knows_both_kinds_of_cpu(fresh, monkeypatch):
    from replicate.config import load_pipeline
    from replicate.cost import estimate_pipeline

    cpu = catalog.hardware("cpu")
    fp32 = cpu.in_precision("float32")
    assert cpu.peak_fp32_tflops and fp32.peak_flops == cpu.peak_fp32_tflops * 1e12 < cpu.peak_flops
    assert fp32.bytes_per_value == 4 and cpu.bytes_per_value == 2
    assert catalog.hardware("h100-sxm").in_precision("float32").peak_flops == catalog.hardware("h100-sxm").peak_flops
    est = {}
    for dtype in ("bfloat16", "float32"):
        monkeypatch.setenv("REPLICATE_CPU_DTYPE", dtype)
        est[dtype] = estimate_pipeline(load_pipeline("pipelines/tiny-cpu.yaml"))
        assert any(f"computes in {dtype}" in n for n in est[dtype].notes)
    for stage in ("generate", "finetune", "evaluate"):  # a processor without native bf16 is slower at everything
        assert est["float32"].stage(stage).wall_hours > est["bfloat16"].stage(stage).wall_hours

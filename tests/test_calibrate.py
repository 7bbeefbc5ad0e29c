"""Calibration's fitting logic on ledgers whose times come from known parameters (fast; the test on
real runs is in test_reliability.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from replicate import files, meter
from replicate.config import parse_pipeline
from replicate.cost.calibrate import calibrate, observations, predict_s
from replicate.cost.params import load_calibration

# A device that is 3x slower than the CPU defaults in every respect, with 5 s of metered start-up.
TRUTH = {"decode_efficiency": 0.1, "generate_mfu": 0.1, "decode_step_overhead_s": 0.09, "generate_startup_s": 5.0,
         "train_mfu": 0.12, "finetune_startup_s": 5.0}
PIPE = {"name": "cal", "teacher": {"model": "packaged:smollm2-135m-instruct", "hardware": {"gpu": "cpu"}},
        "student": {"model": "packaged:gemma-3-270m"}, "finetune": {"epochs": 1, "hardware": {"gpu": "cpu"}}}


def _line(stage: str, **fields) -> dict:
    """A measured ledger line: the fields every stage writes (zero here), then the test's own."""
    base = {"usd": 0.0, "wall_s": 1.0, "device_hours": 0.0, "prompt_tokens": 0, "output_tokens": 0, "trained_tokens": 0}
    return {"stage": stage, "kind": "measured", **base, **fields}


def _run(tmp: Path, n: int) -> Path:
    """A run directory of n examples whose ledger times are what TRUTH predicts."""
    d = tmp / f"n{n}"
    d.mkdir(parents=True)
    (d / "pipeline.yaml").write_text(yaml.safe_dump({**PIPE, "generate": {"examples": n}}))
    files.append_jsonl(d / meter.LEDGER, _line("generate", requests=n // 2, prompt_tokens=n * 250,
                                               output_tokens=n * 190, kept=n))
    files.append_jsonl(d / meter.LEDGER, _line("finetune", trained_tokens=n * 200, examples=n))
    rows = meter.ledger(d)
    for o, r in zip(observations(d), rows, strict=True):
        r["wall_s"] = predict_s(o, TRUTH)
        if r["stage"] == "finetune":  # the training loop's own rate, as finetune logs it
            setup = r["wall_s"] - predict_s(o, {**TRUTH, "finetune_startup_s": 1e-9})  # the 5 s of set-up
            r["tokens_per_s"] = r["trained_tokens"] / (r["wall_s"] - setup)
    (d / meter.LEDGER).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_two_sizes_recover_start_up_and_predict_a_third(tmp_path):
    cal = calibrate([_run(tmp_path, 100), _run(tmp_path, 400)])
    params = {k: v for k, v in cal["devices"]["cpu"].items() if k != "fitted_from"}
    assert params["finetune_startup_s"] == pytest.approx(5.0, rel=0.15)
    big = observations(_run(tmp_path, 1600))
    for o in big:  # 4x beyond the largest calibration run
        assert predict_s(o, params) == pytest.approx(o.measured_s, rel=0.05), o.stage


def test_one_size_reproduces_its_own_time_and_the_file_loads(tmp_path):
    run = _run(tmp_path, 200)
    out = tmp_path / "cal.yaml"
    res = subprocess.run([sys.executable, "-m", "replicate", "calibrate", str(run), "-o", str(out)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    cal = load_calibration(out)  # the estimator's own validation accepts it
    assert set(cal["devices"]["cpu"]) >= {"train_mfu", "decode_efficiency", "generate_startup_s"}
    for rep in cal["fit"].values():
        (r,) = rep["runs"]
        assert r["calibrated_s"] == pytest.approx(r["measured_s"], rel=0.01)
        assert r["default_s"] != pytest.approx(r["measured_s"], rel=0.2)  # the defaults were off
    assert cal["workload"]["cal"]["examples_per_request"] == pytest.approx(2.0)
    parse_pipeline({**PIPE, "data": {k: v for k, v in cal["workload"]["cal"].items() if k != "trained_tokens_per_example"}})


def test_nothing_measured_is_a_one_line_error(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "pipeline.yaml").write_text(yaml.safe_dump(PIPE))
    res = subprocess.run([sys.executable, "-m", "replicate", "calibrate", str(d)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 2 and "no measured generate or finetune stage" in res.stderr

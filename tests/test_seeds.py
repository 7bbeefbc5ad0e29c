"""Several fine-tuning seeds: where each student lives and what the recorded estimate pays."""
from __future__ import annotations

from pathlib import Path

import pytest

from replicate.config import load_pipeline
from replicate.pipeline import estimate, student_dirs

DEMO = Path(__file__).parent.parent / "pipelines" / "tiny-cpu.yaml"


def test_each_seed_has_its_own_student_folder(tmp_path):
    cfg = load_pipeline(DEMO, ["finetune.seeds=3", "finetune.seed=7"])
    assert student_dirs(cfg, tmp_path) == [tmp_path / "student", tmp_path / "student-seed8",
                                           tmp_path / "student-seed9"]
    assert student_dirs(load_pipeline(DEMO), tmp_path) == [tmp_path / "student"]


def test_the_estimate_pays_the_fine_tune_once_per_seed():
    one, three = estimate(load_pipeline(DEMO)), estimate(load_pipeline(DEMO, ["finetune.seeds=3"]))
    ft1, ft3 = (next(s for s in e["stages"] if s["name"] == "finetune") for e in (one, three))
    assert ft3["usd"] == pytest.approx(3 * ft1["usd"]) and ft3["gpu_hours"] == pytest.approx(3 * ft1["gpu_hours"])
    assert three["total"]["usd"] == pytest.approx(one["total"]["usd"] + 2 * ft1["usd"])
    gen1, gen3 = (next(s for s in e["stages"] if s["name"] == "generate") for e in (one, three))
    assert gen3["usd"] == pytest.approx(gen1["usd"])  # one generation serves every seed

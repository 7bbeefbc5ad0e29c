"""The built wheel, installed into a fresh venv, works from any directory: it carries budgets/ and
pipelines/ (pyproject.toml maps them into the package), so `estimate` finds its price tables."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(ROOT)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("replicate_costsim-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(tmp / "venv" / "bin" / "python"), "install",
                    "--no-deps", "--ignore-installed", "-q", str(wheel)], check=True, capture_output=True)
    # The wheel's own dependencies (numpy, pydantic, ...) from this environment's site-packages; a
    # PYTHONPATH entry runs no .pth file, so the editable checkout of `replicate` stays out of it.
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    env.pop("REPLICATE_BUDGETS", None)
    return tmp / "venv" / "bin" / "replicate", env


def test_wheel_estimates_from_another_directory(installed, tmp_path):
    exe, env = installed
    pipeline = tmp_path / "copy.yaml"  # a user's own file, outside the repository
    pipeline.write_text((ROOT / "pipelines" / "published" / "alpaca-2023.yaml").read_text())
    out = subprocess.run([str(exe), "estimate", str(pipeline), "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    est = json.loads(out.stdout)
    assert est["prices"] == 2023 and 300 < est["total"]["usd"] < 1500
    where = subprocess.run([str(exe.parent / "python"), "-c", "import replicate; print(replicate.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=False).stdout
    assert str(ROOT) not in where and "site-packages" in where  # the wheel's copy, not the checkout


def test_wheel_plans_and_lists_models(installed, tmp_path):
    exe, env = installed
    plan = subprocess.run([str(exe), "plan", "--budget", "100", "--top", "2", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False)
    assert plan.returncode == 0, plan.stderr
    assert len(json.loads(plan.stdout)["options"]) == 2
    models = subprocess.run([str(exe), "models", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert models.returncode == 0, models.stderr
    assert {m["ref"] for m in json.loads(models.stdout)} == {"packaged:smollm2-135m-instruct", "packaged:gemma-3-270m"}


def test_wheel_reports_a_run_from_another_directory(installed, tmp_path):
    exe, env = installed
    run = tmp_path / "elsewhere" / "run"
    run.mkdir(parents=True)
    lines = [{"stage": "generate", "kind": "estimate", "device_hours": 0.01, "wall_s": 36, "usd": 0.001},
             {"stage": "generate", "kind": "measured", "device": "cpu", "num_devices": 1, "wall_s": 40,
              "device_hours": 40 / 3600, "usd": 0.0011, "prompt_tokens": 0, "output_tokens": 4000,
              "trained_tokens": 0}]
    (run / "ledger.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = subprocess.run([str(exe), "report", "run", "--json"], cwd=run.parent, env=env, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["totals"]["measured"]["usd"] == pytest.approx(0.0011) and (run / "report.html").is_file()

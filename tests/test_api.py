"""The Python API: docs/api.md's example runs as written, and the results are typed and agree with the CLI."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from replicate import api
from replicate.cli import main
from replicate.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.DOTALL)


def run_block(code: str) -> dict:
    cwd = os.getcwd()
    os.chdir(ROOT)  # the example names pipelines/ as a reader in the checkout would
    try:
        scope: dict = {}
        exec(compile(code, "docs/api.md", "exec"), scope)  # noqa: S102 - the documented example, run as written
        return scope
    finally:
        os.chdir(cwd)


def test_the_documented_estimate_and_plan_example_runs(capsys):
    assert len(BLOCKS) == 2
    scope = run_block(BLOCKS[0])
    est, best = scope["est"], scope["best"]
    assert isinstance(est, api.Estimate) and isinstance(best, api.PlanOption)
    assert [s.name for s in est.stages] == ["generate", "finetune", "evaluate"]
    assert "Alpaca at 2026 prices: $" in capsys.readouterr().out
    # the same numbers as the CLI's --json
    assert main(["estimate", str(ROOT / "pipelines/published/alpaca-2023.yaml"), "--prices", "2026", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert est.usd == pytest.approx(cli["total"]["usd"]) and est.data["stages"] == cli["stages"]


def test_api_errors_are_the_cli_one_liners():
    with pytest.raises(UserError, match=r"finetune.lr: unknown key; did you mean learning_rate"):
        api.estimate(str(ROOT / "pipelines/tiny-cpu.yaml"), overrides=["finetune.lr=1"])
    with pytest.raises(UserError, match="teacher"):
        api.estimate({"name": "x", "student": {"model": "packaged:gemma-3-270m"}})


def test_plan_takes_the_clis_limits_and_objective(capsys):
    best = api.plan(50, prices=2026, max_hours=2, objective="cost", software=2023, top=3)
    assert main(["plan", "--budget", "50", "--prices", "2026", "--max-hours", "2", "--objective", "cost",
                 "--software", "2023", "--top", "3", "--json"]) == 0
    assert best.data == json.loads(capsys.readouterr().out)
    assert all(o.wall_hours <= 2 for o in best.options)
    assert [o.usd for o in best.options] == sorted(o.usd for o in best.options)  # cheapest first


def test_run_takes_a_budget_and_refuses_a_bad_one_before_creating_anything(tmp_path):
    tiny = str(ROOT / "pipelines/tiny-cpu.yaml")
    for bad in (float("nan"), -1, "1", True):
        with pytest.raises(UserError, match=r"^max_usd: expected a finite amount of dollars"):
            api.run(tiny, run_dir=tmp_path / "x", max_usd=bad)
    with pytest.raises(UserError, match=r"over the budget \(--max-usd / budget.max_usd = \$0.0001\)"):
        api.run(tiny, run_dir=tmp_path / "x", max_usd=0.0001)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_documented_run_example_runs():
    scope = run_block(BLOCKS[1])
    rep = scope["rep"]
    assert isinstance(rep, api.Report) and rep.usd > 0 and rep.estimated_usd > 0
    assert set(rep.gap_closed) >= {"fidelity", "capability"}

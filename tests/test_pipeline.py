"""The pipeline's own machinery: the run-directory lock, the resolved config, the budget guard."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from replicate import files, meter
from replicate.config import parse_pipeline
from replicate.errors import BudgetExceeded, UserError
from replicate.pipeline import budget_left, run_stage
from replicate.rundir import run_lock, write_resolved

TRY_LOCK = """
import sys
from replicate.rundir import run_lock
from replicate.errors import UserError
try:
    with run_lock(__import__('pathlib').Path(sys.argv[1])):
        print('got it')
except UserError as e:
    print('refused:', e)
"""


def spend(run_dir: Path, stage: str, usd: float) -> None:
    """A measured ledger line as a stage writes it (every field the ledger's reader requires)."""
    files.append_jsonl(run_dir / meter.LEDGER, {"stage": stage, "kind": "measured", "usd": usd, "wall_s": 1.0,
                                               "device_hours": 1 / 3600, "prompt_tokens": 0, "output_tokens": 0,
                                               "trained_tokens": 0})


def _cfg(**budget):
    return parse_pipeline({"name": "t", "teacher": {"model": "packaged:smollm2-135m-instruct"},
                           "student": {"model": "packaged:gemma-3-270m"}, "budget": budget})


def test_second_process_is_refused_while_the_lock_is_held_and_admitted_after(tmp_path):
    def other() -> str:
        return subprocess.run([sys.executable, "-c", TRY_LOCK, str(tmp_path)], capture_output=True, text=True,
                              timeout=60, check=False).stdout

    with run_lock(tmp_path):
        out = other()
        assert out.startswith("refused:") and f"pid {__import__('os').getpid()}" in out
        assert "rerun then resumes" in out
    assert other().strip() == "got it"


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    hold = ("import sys, time\nfrom pathlib import Path\nfrom replicate.pipeline import run_lock\n"
            "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="in use by"), run_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path):  # the OS dropped the dead holder's lock
        pass


def test_resume_refuses_changed_settings_but_accepts_a_new_budget(tmp_path):
    write_resolved(_cfg(max_usd=1.0), tmp_path)
    write_resolved(_cfg(max_usd=5.0), tmp_path)  # raising the budget to continue is the point
    changed = _cfg(max_usd=5.0).model_copy(update={"name": "other"})
    with pytest.raises(UserError, match=r"different pipeline \(name: 't' -> 'other'\)"):
        write_resolved(changed, tmp_path)


def test_budget_guard_counts_measured_lines_only_and_stops_before_a_stage(tmp_path):
    meter.write_estimate(tmp_path, "generate", usd=100.0)  # an estimate is not spending
    spend(tmp_path, "generate", 0.6)
    spend(tmp_path / "n50", "finetune", 0.3)
    assert meter.spent_usd(tmp_path, with_sweep=True) == pytest.approx(0.9)
    cfg = _cfg(max_usd=1.0)
    assert budget_left(cfg, tmp_path, "finetune") == pytest.approx(0.1)
    seen = []
    run_stage("finetune", 2, tmp_path, lambda left: seen.append(left) or {}, budget=(cfg, tmp_path))
    assert seen == [pytest.approx(0.1)]  # the stage is handed what is left
    spend(tmp_path, "finetune", 0.2)
    with pytest.raises(BudgetExceeded, match=r"is spent before evaluate.*raise --max-usd"):
        run_stage("evaluate", 3, tmp_path, lambda left: seen.append(left), budget=(cfg, tmp_path))
    assert len(seen) == 1


def test_a_finished_stage_is_skipped(tmp_path: Path):
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "train_metrics.json").write_text("{}")
    run_stage("finetune", 2, tmp_path, lambda left: pytest.fail("a finished stage ran again"))


REPO = Path(__file__).resolve().parent.parent
MY_PIPELINES = ("tiny-cpu.yaml", "qwen7b-to-qwen0.5b.yaml", "llama8b-to-llama1b.yaml")


@pytest.mark.parametrize("name", MY_PIPELINES)
def test_shipped_pipelines_estimate_within_their_budget_and_show_their_command(name):
    from replicate.config import load_pipeline
    from replicate.cost.estimate import estimate_pipeline

    path = REPO / "pipelines" / name
    cfg = load_pipeline(path)
    est = estimate_pipeline(cfg).to_dict()
    assert [s["name"] for s in est["stages"]] == ["generate", "finetune", "evaluate"]
    assert 0 < est["total"]["usd"] <= cfg.budget.max_usd  # `run` would start
    assert f"replicate run pipelines/{name}" in path.read_text().split("\nname:")[0]  # the header shows it


def test_run_refuses_before_creating_anything_when_the_estimate_is_over_budget(tmp_path):
    run_dir = tmp_path / "never"
    out = subprocess.run([sys.executable, "-m", "replicate", "run", str(REPO / "pipelines" / "tiny-cpu.yaml"),
                          "--set", "budget.max_usd=0.0001", "--run-dir", str(run_dir)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2
    assert "over the budget (--max-usd / budget.max_usd = $0.0001)" in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2
    assert not run_dir.exists()

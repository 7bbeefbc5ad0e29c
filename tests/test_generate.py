"""replicate/generate.py: the stage end to end. The teacher is real everywhere: the vLLM CPU
engine (shared `teacher_vllm`), the packaged teacher under the transformers backend in a killed
CLI subprocess, and for the stage's bookkeeping (budget, retries, garbage, resume) a scripted
OpenAI-compatible HTTP server on 127.0.0.1 that answers instantly with known token counts."""
from __future__ import annotations

import json
import os
import random
import re
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
from replicate.errors import BudgetExceeded, UserError
from replicate.generate import dataset
from replicate.generate.stage import GIVE_UP_AFTER, run_generate

WORDS = ["river", "bakery", "ladder", "comet", "violin", "harbor", "tulip", "glacier", "pepper", "lantern",
         "museum", "cactus", "orbit", "falcon", "meadow", "pencil", "castle", "marble", "summit", "canyon",
         "walnut", "anchor", "velvet", "trumpet", "island", "compass", "blanket", "rocket", "garden", "pirate",
         "thunder", "saddle", "kettle", "ribbon", "dragon", "mirror"]
USAGE = (1000, 500)  # prompt, output tokens the scripted server reports per request


def alpaca_reply(body: dict) -> str:
    """A self-instruct continuation (items 4-9): 4 good tasks, one blacklisted, one too short."""
    rng = random.Random(body["seed"])  # 8 random words: ROUGE-L between two such tasks stays far below 0.7
    items = [f"Describe {' '.join(rng.sample(WORDS, 8))}." for _ in range(4)]
    items += ["Draw a picture of a cat.", "Say hi."]
    blocks = []
    for n, instruction in enumerate(items, start=4):
        blocks.append(f"{n}. Instruction: {instruction}\n{n}. Input:\n<noinput>\n{n}. Output:\nAn answer.\n")
    return " " + "###\n".join(blocks)[len("4. Instruction: "):]


def pipeline(base_url: str, **generate) -> object:
    return parse_pipeline({
        "name": "t", "student": {"model": "packaged:gemma-3-270m"},
        "teacher": {"model": "gpt-4o-mini", "backend": "openai", "base_urls": [base_url], "chat": False,
                    "max_concurrency": 1, "max_retries": 1},
        "generate": {"mode": "self-instruct", "examples": 10, "max_tokens": 512, "seed": 3, "held_out_fraction": 0.1,
                     **generate},
    })


def log_indices(run_dir: Path) -> list[int]:
    return [r["index"] for r in dataset.read_log(run_dir / "data")]


def test_self_instruct_over_http_writes_dataset_card_ledger_then_done(tmp_path):
    from datasets import load_dataset

    with ScriptedServer(reply=alpaca_reply, usage=USAGE) as srv:
        cfg = pipeline(srv.base_url)
        stats = run_generate(cfg, tmp_path, progress=False)
        n_requests = len(srv.requests)
        assert run_generate(cfg, tmp_path)["train_rows"] == 10 and len(srv.requests) == n_requests  # done: no work
    data = tmp_path / "data"
    # 10 train rows + floor(11 * 0.1) = 1 held out; 4 kept per request -> 3 requests.
    assert (stats["train_rows"], stats["held_out_rows"], stats["requests"]) == (10, 1, 3)
    assert stats["dropped"] == {"blacklisted": 3, "too_short": 3} and stats["parsed"] == 18
    body = srv.requests[0]["body"]
    assert body["prompt"].endswith("###\n4. Instruction:") and body["stop"] == ["\n20", "20."]
    assert body["max_tokens"] == 512 and len({r["body"]["seed"] for r in srv.requests}) == 3
    ds = load_dataset("json", data_files={"train": str(data / "train.jsonl"), "held_out": str(data / "held_out.jsonl")})
    assert ds["train"].num_rows == 10 and ds["held_out"].num_rows == 1
    assert set(ds["train"].column_names) == {"instruction", "input", "output"}
    assert load_dataset(str(data))["held_out"].num_rows == 1  # the card's header names the splits
    card = (data / "README.md").read_text()
    for fact in ("gpt-4o-mini", "temperature=1.0", "| seed | 3 |", "| blacklisted | 3 |", "3,000", "$0.00"):
        assert fact in card
    [line] = [r for r in meter.ledger(tmp_path) if r["stage"] == "generate"]
    price = catalog.api_price("gpt-4o-mini", 2026)
    assert (line["prompt_tokens"], line["output_tokens"], line["requests"], line["kept"]) == (3000, 1500, 3, 12)
    assert line["usd"] == pytest.approx(price.usd(3000, 1500)) and line["device"] == "api: gpt-4o-mini"
    assert line["dropped"] == {"blacklisted": 3, "too_short": 3}
    done = json.loads((data / "done.json").read_text())
    assert done["usd"] == pytest.approx(line["usd"]) and done["complete"]
    assert (data / "done.json").stat().st_mtime_ns >= (data / "README.md").stat().st_mtime_ns
    rec = dataset.read_log(data)[0]
    assert rec["request_id"] == "si-0000000" and rec["rng"] == {"seed": 3, "index": 0} and len(rec["seed_ids"]) == 3


def test_max_usd_stops_cleanly_then_resumes_without_duplicates(tmp_path):
    per_request = catalog.api_price("gpt-4o-mini", 2026).usd(*USAGE)
    with ScriptedServer(reply=alpaca_reply, usage=USAGE) as srv:
        cfg = pipeline(srv.base_url, examples=20)
        with pytest.raises(BudgetExceeded, match="rerun with a higher --max-usd"):
            run_generate(cfg, tmp_path, max_usd=3.5 * per_request, progress=False)
        data = tmp_path / "data"
        assert log_indices(tmp_path) == [0, 1, 2] and not (data / "done.json").exists()
        assert len(dataset.read_log(data)) == 3 and "no (stopped early" in (data / "README.md").read_text()
        first = (data / dataset.LOG).read_text()
        with pytest.raises(UserError, match=r"other settings \(seed: 3 -> 4\)"):  # they would mix two datasets
            run_generate(pipeline(srv.base_url, examples=20, seed=4), tmp_path, progress=False)
        stats = run_generate(cfg, tmp_path, progress=False)
    assert stats["complete"] and stats["train_rows"] == 20
    assert (data / dataset.LOG).read_text().startswith(first)  # nothing finished was redone or lost
    indices = log_indices(tmp_path)
    assert sorted(indices) == list(range(len(indices)))
    usd = [r["usd"] for r in meter.ledger(tmp_path)]
    assert usd[0] <= 3.5 * per_request and sum(usd) == pytest.approx(per_request * len(indices))


def test_cli_max_usd_caps_the_run_directory_total(tmp_path, capsys):
    from replicate.cli import main

    per_request = catalog.api_price("gpt-4o-mini", 2026).usd(*USAGE)
    with ScriptedServer(reply=alpaca_reply, usage=USAGE) as srv:
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(pipeline(srv.base_url, examples=20).model_dump(exclude_none=True)))
        args = ["generate", str(path), "--run-dir", str(tmp_path / "run"), "--max-usd", str(3.5 * per_request)]
        assert main(args) == 2 and "rerun with a higher --max-usd" in capsys.readouterr().err
        n = len(srv.requests)
        assert main(args) == 2 and len(srv.requests) == n  # the same limit buys nothing more
        assert main(args[:-1] + [str(10 * per_request)]) == 0
    assert "generate: 20 train + 2 held-out rows" in capsys.readouterr().out


def test_garbage_or_empty_teacher_is_counted_then_stops(tmp_path):
    replies = ["", "%%% ### 12. Output: ?!", "   "] * 11  # sent in order: one request at a time
    blank = sum(not r.strip() for r in replies[:GIVE_UP_AFTER])
    answers = iter(replies)
    with (ScriptedServer(reply=lambda body: next(answers), usage=(10, 0)) as srv,
          pytest.raises(UserError, match=f"no usable rows in {GIVE_UP_AFTER} requests.*empty {blank}")):
        run_generate(pipeline(srv.base_url), tmp_path, progress=False)
    log = dataset.read_log(tmp_path / "data")
    assert len(log) == GIVE_UP_AFTER and sum(r["empty"] for r in log) == blank
    assert all(r["parsed"] == 0 and r["dropped"]["unparsable"] >= 1 for r in log)
    assert meter.ledger(tmp_path)[-1]["requests"] == GIVE_UP_AFTER  # the chunk is still metered


def test_server_going_down_is_a_clear_error_and_resumable(tmp_path):
    srv = ScriptedServer(reply=alpaca_reply, usage=USAGE, fail_after=2)
    with srv, pytest.raises(UserError, match=rf"127\.0\.0\.1:{srv.port}.*HTTP 503.*rerun the same command"):
        run_generate(pipeline(srv.base_url, examples=12), tmp_path, progress=False)
    assert log_indices(tmp_path) == [0, 1] and not (tmp_path / "data" / "done.json").exists()
    with ScriptedServer(reply=alpaca_reply, usage=USAGE) as srv:  # back up (on another port)
        stats = run_generate(pipeline(srv.base_url, examples=12), tmp_path, progress=False)
    assert stats["complete"] and sorted(log_indices(tmp_path)) == list(range(stats["requests"]))
    lines = meter.ledger(tmp_path)
    assert lines[0]["interrupted"] and lines[0]["requests"] == 2  # the failed chunk's ledger line
    assert "interrupted" not in lines[1] and lines[1]["resumed"]


def test_bad_input_files_name_file_and_line(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Name a fruit that is red.", "output": "Apple"}\n{"instruction": oops}\n')
    with pytest.raises(UserError, match=r"seeds\.jsonl:2: not valid JSON"):
        run_generate(pipeline("http://127.0.0.1:9/v1", seed_tasks_file=str(seeds)), tmp_path / "a", progress=False)
    instr = tmp_path / "instr.jsonl"
    instr.write_text('{"instruction": "Name a color."}\n\n{"input": "no instruction"}\n')
    with pytest.raises(UserError, match=r"instr\.jsonl:3: missing or empty 'instruction'"):
        run_generate(pipeline("http://127.0.0.1:9/v1", mode="respond", instructions_file=str(instr)),
                     tmp_path / "b", progress=False)
    with pytest.raises(UserError, match="instructions_file"):
        run_generate(pipeline("http://127.0.0.1:9/v1", mode="respond"), tmp_path / "c", progress=False)


def test_respond_mode_with_a_chat_teacher_answers_every_instruction(tmp_path):
    instr = tmp_path / "instr.jsonl"
    instr.write_text("".join(json.dumps({"instruction": f"Name {n} colors.", "input": ""}) + "\n" for n in range(5)))
    with ScriptedServer(reply=lambda body: f"Colors: {body['messages'][0]['content']}") as srv:
        cfg = pipeline(srv.base_url, mode="respond", instructions_file=str(instr), examples=100, held_out_fraction=0)
        cfg.teacher.chat = True
        stats = run_generate(cfg, tmp_path / "run", progress=False)
    assert stats["complete"] and stats["exhausted"] and stats["train_rows"] == 5
    assert {r["path"] for r in srv.requests} == {"/v1/chat/completions"}
    rows = files.read_jsonl(tmp_path / "run" / "data" / "train.jsonl")
    assert sorted(r["output"] for r in rows) == sorted(f"Colors: Name {n} colors." for n in range(5))


def test_mode_none_reuses_an_alpaca_file(tmp_path):
    src = tmp_path / "alpaca.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Task {n} here please.", "input": "", "output": "ok"}) + "\n"
                           for n in range(30)))
    stats = run_generate(pipeline("http://127.0.0.1:9/v1", mode="none", instructions_file=str(src), examples=18),
                         tmp_path / "run")
    assert (stats["train_rows"], stats["held_out_rows"]) == (18, 1)  # 19 rows: the 10th is held out
    assert (tmp_path / "run" / "data" / "done.json").exists()


@pytest.mark.slow
def test_self_instruct_on_the_vllm_teacher(teacher_vllm, tmp_path):
    cfg = parse_pipeline({
        "name": "t", "student": {"model": "packaged:gemma-3-270m"},
        "teacher": {"model": "packaged:smollm2-135m-instruct", "backend": "vllm"},
        "generate": {"examples": 4, "max_tokens": 320, "temperature": 0.7, "top_p": 0.9, "held_out_fraction": 0},
    })
    stats = run_generate(cfg, tmp_path, teacher=teacher_vllm, progress=False)
    log = dataset.read_log(tmp_path / "data")
    [line] = meter.ledger(tmp_path)
    assert stats["train_rows"] == 4 and stats["kept"] >= 4
    assert line["prompt_tokens"] == sum(r["prompt_tokens"] for r in log) > 300 * len(log)
    assert line["output_tokens"] == sum(r["output_tokens"] for r in log)
    assert line["device"].startswith("cpu") and line["usd"] == pytest.approx(
        line["device_hours"] * catalog.usd_per_device_hour("cpu", 2026))
    for row in files.read_jsonl(tmp_path / "data" / "train.jsonl"):
        assert len(row["instruction"].split()) > 3 and row["output"]


def _wait_for(predicate, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"generate exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("generate made no progress")
        time.sleep(0.1)


@pytest.mark.slow
def test_cli_killed_with_sigkill_resumes_with_every_finished_row(tmp_path):
    """`replicate generate` (packaged teacher, transformers backend) killed mid-run, then rerun."""
    instr = tmp_path / "instr.jsonl"
    instr.write_text("".join(json.dumps({"instruction": f"Give one word that rhymes with {w}."}) + "\n"
                             for w in WORDS[:12]))
    yaml_path = tmp_path / "p.yaml"
    yaml_path.write_text(yaml.safe_dump({
        "name": "kill", "student": {"model": "packaged:gemma-3-270m"},
        "teacher": {"model": "packaged:smollm2-135m-instruct", "backend": "transformers", "dtype": "float32"},
        "generate": {"mode": "respond", "instructions_file": str(instr), "examples": 12, "max_tokens": 16,
                     "temperature": 0.7, "requests_per_batch": 4, "held_out_fraction": 0.125},
    }))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "replicate", "generate", str(yaml_path), "--run-dir", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 threads on a busy 2-core machine spin-wait: ~15x slower
    log_path = run_dir / "data" / dataset.LOG
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _wait_for(lambda: log_path.exists() and log_path.read_bytes().count(b"\n") >= 4, 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = log_path.read_bytes()
    assert before.endswith(b"\n") and all(json.loads(x) for x in before.splitlines())  # no partial line
    assert not (run_dir / "data" / "done.json").exists()
    done = subprocess.run(cmd, capture_output=True, env=env, timeout=180, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert re.search(r"generate: \d+ train \+ \d+ held-out rows from 12 requests", done.stdout.decode())
    after = log_path.read_bytes()
    assert after.startswith(before)  # every row finished before the kill is kept as it was
    log = dataset.read_log(run_dir / "data")
    assert sorted(r["index"] for r in log) == list(range(12))  # no duplicate, none missing
    train = files.read_jsonl(run_dir / "data" / "train.jsonl")
    kept = [row for r in log for row in r["rows"]]
    assert len(train) + len(files.read_jsonl(run_dir / "data" / "held_out.jsonl")) == len(kept) > 0
    ledger = meter.measured(meter.ledger(run_dir))  # `replicate generate` also records its estimate
    assert ledger[0].get("interrupted") and ledger[-1]["resumed"]
    assert sum(r["output_tokens"] for r in ledger) == sum(r["output_tokens"] for r in log)

"""One set of option names and behaviours across every command: --json wherever a command has a
result, --help with defaults and an example, one --prices default, --set errors that suggest the
key meant, -v/-q, and a non-TTY log that shows steady progress (a real process, a real HTTP teacher)."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from replicate import files, meter
from replicate.cli import build_parser, main
from replicate.config import Pipeline, nearest
from replicate.cost.catalog import newest_price_year
from replicate.progress import Progress, line

sys.path.insert(0, str(Path(__file__).parent))
from scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "pipelines" / "tiny-cpu.yaml")
RESULT_COMMANDS = ("models", "estimate", "plan", "generate", "finetune", "evaluate", "run", "sweep", "report", "launchers",
                   "calibrate", "demo")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    ap = build_parser()
    return next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_has_json_verbosity_and_an_example_in_its_help():
    subs = _subparsers()
    assert set(subs) == set(RESULT_COMMANDS)
    for name, p in subs.items():
        opts = {o for a in p._actions for o in a.option_strings}
        assert {"--json", "-v", "-q"} <= opts, name
        text = p.format_help()
        assert f"example:\n  replicate {name}" in text, name
    plan = " ".join(subs["plan"].format_help().split())
    assert "options shown (default: 10)" in plan and "(default: gpt-4o-mini)" in plan
    assert "(default: None)" not in plan  # an option without a default says so in words
    # the same option reads the same on every command that has it
    helps = {n: {a.dest: a.help for a in p._actions} for n, p in subs.items()}
    for dest in ("prices", "overrides", "calibration"):
        texts = {h[dest] for h in helps.values() if dest in h}
        assert len(texts) == 1, (dest, texts)


def test_prices_has_one_default_the_newest_table(capsys):
    assert Pipeline.model_fields["prices"].default == newest_price_year()
    assert main(["plan", "--budget", "50", "--top", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prices"] == newest_price_year()
    assert main(["estimate", TINY, "--prices", "2024", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prices"] == 2024


def test_set_error_suggests_the_key_meant_and_lists_the_valid_ones(capsys):
    assert nearest("lr", ["learning_rate", "lora_r", "epochs"])[0] == "learning_rate"
    assert nearest("exampels", ["examples", "seed"]) == ["examples"]
    assert main(["estimate", TINY, "--set", "finetune.lr=1e-4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.match(r"replicate: error: .*tiny-cpu.yaml: finetune.lr: unknown key; did you mean learning_rate\b", err)
    assert "(valid keys: attn_implementation, batch_size," in err and "warmup_ratio" in err
    assert main(["estimate", TINY, "--set", "teacher.hardwre.gpu=cpu"]) == 2
    assert "teacher.hardwre: unknown key; did you mean hardware?" in capsys.readouterr().err


def test_demo_takes_set_and_checks_it_before_anything_runs(tmp_path, capsys):
    args = build_parser().parse_args(["demo", "--set", "generate.examples=5", "--json"])
    assert args.overrides == ["generate.examples=5"] and args.json
    assert main(["demo", "--run-dir", str(tmp_path / "d"), "--set", "generate.exampels=5"]) == 2
    assert "did you mean examples?" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_estimate_says_device_hours_and_prints_published_source_and_notes(capsys):
    assert main(["estimate", str(ROOT / "pipelines" / "published" / "alpaca-2023.yaml")]) == 0
    out = capsys.readouterr().out
    assert "device-hours" in out and "GPU-h" not in out
    assert "source: crfm.stanford.edu/2023/03/13/alpaca.html (2023-03-13); github.com/tatsu-lab" in out
    assert "notes: Both dollar figures are upper bounds" in out


def test_report_and_calibrate_print_json(tmp_path, capsys):
    run = tmp_path / "r"
    meter.write_estimate(run, "finetune", device_hours=0.01, wall_s=36, usd=0.001)
    files.append_jsonl(run / meter.LEDGER, {"stage": "finetune", "kind": "measured", "device": "cpu", "num_devices": 1,
                                            "wall_s": 40, "device_hours": 40 / 3600, "usd": 0.0011,
                                            "prompt_tokens": 0, "output_tokens": 0, "trained_tokens": 4000})
    assert main(["report", str(run), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["totals"]["measured"]["usd"] == pytest.approx(0.0011)
    assert Path(rep["files"]["html"]).is_file()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.split()[0].endswith("report.json")


def test_a_stage_command_records_its_estimate(tmp_path, capsys):
    """`replicate generate` on its own writes the stage's estimate too (mode none: no engine needed)."""
    rows = tmp_path / "alpaca.jsonl"
    files.write_jsonl(rows, [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(12)])
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"name": "reuse", "teacher": {"model": "packaged:smollm2-135m-instruct"},
                                 "student": {"model": "packaged:gemma-3-270m"},
                                 "generate": {"mode": "none", "instructions_file": str(rows), "examples": 10}}))
    assert main(["-q", "generate", str(p), "--run-dir", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train_rows"] == 10
    ests = meter.estimates(meter.ledger(tmp_path / "run"))
    assert [e["stage"] for e in ests] == ["generate"] and ests[0]["usd"] >= 0


def test_progress_line_and_its_steady_interval(capsys):
    text = line("generate", 120, 400, "rows", rate=2.0, tokens_per_s=812.4, usd=0.0123)
    assert text == "generate: 120/400 rows (30%), 812 tok/s, $0.0123 so far, ETA 2.3 min"
    assert line("finetune", 12, 40, "steps", rate=None, loss=1.2345) == \
        "finetune: 12/40 steps (30%), loss 1.234, ETA unknown"
    from replicate import log

    log.setup(log.NORMAL)
    capsys.readouterr()
    p = Progress("generate", 100, unit="rows", tty=False, every_s=0.2)
    for i in range(12):  # 1.2 s of work: ~6 lines at 0.2 s, whatever the updates do
        p.update(i * 5, tokens_per_s=100.0, usd=0.001 * i)
        time.sleep(0.1)
    p.close()
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("generate:")]
    assert 4 <= len(lines) <= 9, lines
    assert lines[-1].startswith("generate: 55/100 rows (55%), 100 tok/s, $0.011 so far, ETA")
    log.setup(log.QUIET)  # -q: no progress at all
    Progress("generate", 100, tty=False, every_s=0.05).close()
    assert capsys.readouterr().err == ""
    log.setup(log.NORMAL)


def test_a_log_file_shows_steady_progress_from_a_real_run(tmp_path):
    """`replicate generate` with stderr in a file (not a terminal): plain progress lines arrive while
    it runs, not one bar at the end. The teacher is a real HTTP server on loopback, answering slowly."""
    instr = tmp_path / "instr.jsonl"
    files.write_jsonl(instr, [{"instruction": f"Name a colour, number {i}."} for i in range(30)])
    p = tmp_path / "p.yaml"
    with ScriptedServer(reply=lambda body: (time.sleep(0.08), " Blue.")[1]) as srv:
        p.write_text(yaml.safe_dump({
            "name": "steady", "student": {"model": "packaged:gemma-3-270m"},
            "teacher": {"model": "gpt-4o-mini", "backend": "openai", "base_urls": [srv.base_url], "chat": False,
                        "max_concurrency": 1},
            "generate": {"mode": "respond", "instructions_file": str(instr), "examples": 30, "max_tokens": 8,
                         "held_out_fraction": 0}}))
        log_file = tmp_path / "log.txt"
        with open(log_file, "w") as err:
            proc = subprocess.run([sys.executable, "-m", "replicate", "generate", str(p), "--run-dir",
                                   str(tmp_path / "run")], stderr=err, stdout=subprocess.PIPE, timeout=120,
                                  env={**os.environ, "REPLICATE_PROGRESS_S": "0.5"}, check=False)
    text = log_file.read_text()
    assert proc.returncode == 0, text[-2000:]
    progress = re.findall(r"^generate: (\d+)/30 rows kept \(\d+%\), [\d.,]+ tok/s, \$[\d.e-]+ so far, (ETA [^\n]+|done)$",
                          text, re.MULTILINE)
    assert len(progress) >= 3, text  # ~3 s of work at one line per 0.5 s
    counts = [int(n) for n, _ in progress]
    assert counts == sorted(counts) and counts[-1] == 30
    assert "\x1b[" not in text and "━" not in text  # no terminal bar, no escape codes in a log

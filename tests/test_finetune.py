"""The fine-tuning stage end to end on the CPU: outputs, ledger, resume after a kill, two processes,
budget stop, bad input, and the packaged Gemma student learning the response format.

A tiny random-init Qwen2 (2 layers, hidden 64) with the SmolLM2 tokenizer keeps the training tests
fast; only the last test trains the real packaged student."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from replicate.config import parse_pipeline
from replicate.errors import BudgetExceeded, UserError
from replicate.files import read_jsonl

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.slow


def make_run(root: Path, name: str, student: str, data: str = "alpaca_small.jsonl", **finetune) -> tuple[Path, Path]:
    """A run directory with data/train.jsonl and its pipeline YAML (what `replicate finetune` reads)."""
    ft = {"method": "full", "epochs": 2, "max_length": 128, "batch_size": 4, "packing": True, "bf16": False,
          "save_steps": 3, "learning_rate": 1e-3, **finetune}
    spec = {"name": name, "teacher": {"model": "packaged:smollm2-135m-instruct"}, "student": {"model": str(student)},
            "finetune": ft}
    run_dir = root / name
    (run_dir / "data").mkdir(parents=True)
    shutil.copy(DATA / data, run_dir / "data" / "train.jsonl")
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, run_dir


def steps_by_number(run_dir: Path) -> dict[int, dict]:
    """steps.jsonl, last row per step (a resumed run logs the steps after its checkpoint again)."""
    return {r["step"]: r for r in read_jsonl(run_dir / "student" / "steps.jsonl")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_dir):
    """One uninterrupted single-process run: the baseline the other tests compare with."""
    from replicate.finetune import run_finetune

    path, run_dir = make_run(tmp_path_factory.mktemp("ref"), "ref", tiny_dir)
    cfg = parse_pipeline(yaml.safe_load(path.read_text()))
    return run_finetune(cfg, run_dir), run_dir, cfg


def test_run_writes_outputs_ledger_and_metrics(reference):
    from transformers import AutoModelForCausalLM

    metrics, run_dir, cfg = reference
    data = metrics["data"]
    # Every non-padding token of every example, once per epoch (packing changes rows, not tokens).
    assert metrics["trained_tokens"] == (data["prompt_tokens"] + data["completion_tokens"]) * 2
    assert metrics["loss_tokens"] <= data["completion_tokens"] * 2
    assert metrics["global_step"] == metrics["max_steps"] == len(steps_by_number(run_dir))
    assert metrics["packing"] and 0 <= metrics["padding_fraction"] < 0.3
    assert metrics["mfu"] > 0 and metrics["usd"] > 0 and metrics["peak_memory_gb"] > 0
    assert metrics["flops_per_token"] == 6 * metrics["params"]
    student = run_dir / "student"
    assert not (student / "checkpoints").exists()  # removed once the merged model is written
    model = AutoModelForCausalLM.from_pretrained(student / "merged")
    assert sum(p.numel() for p in model.parameters()) == metrics["params"]
    (line,) = read_jsonl(run_dir / "ledger.jsonl")
    assert line["stage"] == "finetune" and line["kind"] == "measured"
    assert line["trained_tokens"] == metrics["trained_tokens"] and line["usd"] > 0 and line["device_hours"] > 0
    # Done means done: a rerun returns the saved metrics and trains nothing.
    from replicate.finetune import run_finetune

    assert run_finetune(cfg, run_dir) == json.loads((student / "train_metrics.json").read_text())
    assert len(read_jsonl(run_dir / "ledger.jsonl")) == 1


def complete(state: Path) -> bool:
    try:
        return bool(json.loads(state.read_text()))
    except (OSError, ValueError):
        return False


def test_killed_run_resumes_to_the_same_steps_and_data_order(tmp_path, tiny_dir, reference):
    ref_metrics, ref_dir, _ = reference
    path, run_dir = make_run(tmp_path, "ref", tiny_dir)  # same name and YAML as the reference
    cmd = [sys.executable, "-m", "replicate", "finetune", str(path), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = run_dir / "student" / "checkpoints" / "checkpoint-3" / "trainer_state.json"
    while proc.poll() is None and not complete(first):
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # a crash: nothing gets to clean up
    proc.wait()
    assert not (run_dir / "student" / "train_metrics.json").exists()

    from replicate.cli import main

    assert main(cmd[3:]) == 0  # the same command, again
    metrics = json.loads((run_dir / "student" / "train_metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 3
    assert metrics["global_step"] == ref_metrics["global_step"]
    ref_steps, steps = steps_by_number(ref_dir), steps_by_number(run_dir)
    assert [s["crc"] for s in steps.values()] == [s["crc"] for s in ref_steps.values()]  # same batches, same order
    assert steps[metrics["global_step"]]["loss"] == pytest.approx(ref_steps[metrics["global_step"]]["loss"], rel=1e-4)
    # The killed chunk's line comes from its heartbeat, marked interrupted, with the seconds it ran
    # at least until its last checkpoint; then the resumed chunk's own line.
    killed, line = [r for r in read_jsonl(run_dir / "ledger.jsonl") if r["kind"] == "measured"]
    assert killed["interrupted"] and killed["wall_s"] > 0 and killed["usd"] > 0
    assert line["steps_this_run"] == metrics["global_step"] - metrics["resumed_from_step"]


def test_two_processes_train_the_same_tokens_as_one(tmp_path, tiny_dir, reference):
    ref_metrics, _, _ = reference
    # 48 examples, 4 per process, 2 processes: 6 steps per epoch, no uneven last batch to pad.
    path, run_dir = make_run(tmp_path, "ddp", tiny_dir, method="lora", packing=False,
                             hardware={"gpu": "cpu", "count": 2}, save_steps=100)
    from replicate.cli import main

    assert main(["finetune", str(path), "--run-dir", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "student" / "train_metrics.json").read_text())
    assert metrics["num_devices"] == 2 and metrics["global_step"] == 12  # 2 epochs x 48 / (4 x 2)
    assert metrics["trained_tokens"] == ref_metrics["trained_tokens"]
    assert (run_dir / "student" / "adapter" / "adapter_config.json").is_file()
    line, est = sorted(read_jsonl(run_dir / "ledger.jsonl"), key=lambda r: r["kind"] == "estimate")
    assert est["kind"] == "estimate" and est["stage"] == "finetune"  # the stage command records its estimate
    assert line["num_devices"] == 2 and line["trained_tokens"] == ref_metrics["trained_tokens"]


def test_grouped_padding_trains_the_same_tokens_with_far_less_padding(tmp_path, tiny_dir, reference):
    """padding: grouped = transformers' length-grouped sampler: every example once per epoch, in
    batches of similar lengths, so the padded tokens shrink (the cost model counts them as none)."""
    from replicate.finetune import run_finetune

    metrics = {}
    for padding in ("longest", "grouped"):
        path, run_dir = make_run(tmp_path, padding, tiny_dir, method="lora", packing=False, padding=padding,
                                 save_steps=100)
        metrics[padding] = run_finetune(parse_pipeline(yaml.safe_load(path.read_text())), run_dir)
    assert metrics["grouped"]["trained_tokens"] == metrics["longest"]["trained_tokens"] == \
        reference[0]["trained_tokens"]
    assert metrics["grouped"]["padding_fraction"] < metrics["longest"]["padding_fraction"] / 2


def test_budget_stop_saves_a_checkpoint_then_resumes(tmp_path, tiny_dir):
    from replicate.finetune import run_finetune

    path, run_dir = make_run(tmp_path, "budget", tiny_dir, epochs=1, save_steps=100)
    cfg = parse_pipeline(yaml.safe_load(path.read_text()))
    with pytest.raises(BudgetExceeded, match="checkpoint is saved"):
        run_finetune(cfg, run_dir, max_usd=2e-5)  # the CPU costs ~$0.10/h: 0.7 s, spent on setup + 1 step
    (line,) = read_jsonl(run_dir / "ledger.jsonl")
    assert line["budget_stopped"] and 0 < line["global_step"] < line["max_steps"] and line["usd"] > 0
    assert not (run_dir / "student" / "train_metrics.json").exists()
    metrics = run_finetune(cfg, run_dir)
    assert metrics["resumed_from_step"] == line["global_step"] and metrics["global_step"] == line["max_steps"]


def test_bad_input_fails_before_training(tmp_path, tiny_dir):
    from replicate.finetune import run_finetune

    path, run_dir = make_run(tmp_path, "bad", tiny_dir)
    cfg = parse_pipeline(yaml.safe_load(path.read_text()))
    with (run_dir / "data" / "train.jsonl").open("a") as fh:
        fh.write('{"instruction": "broken"\n')
    with pytest.raises(UserError, match=r"train.jsonl:49: not valid JSON"):
        run_finetune(cfg, run_dir)
    # A 70B-shaped student (config only, no weights): refused by the memory estimate, before loading.
    huge = tmp_path / "huge"
    huge.mkdir()
    for f in tiny_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
            shutil.copy(f, huge / f.name)
    (huge / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 8192,
        "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8}))
    shutil.copy(DATA / "alpaca_small.jsonl", run_dir / "data" / "train.jsonl")
    cfg = cfg.model_copy(update={"student": cfg.student.model_copy(update={"model": str(huge)})})
    with pytest.raises(UserError, match=r"needs ~\d+.* GB for full fine-tuning .* has"):
        run_finetune(cfg, run_dir)
    qlora = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"method": "qlora"})})
    with pytest.raises(UserError, match="qlora needs bitsandbytes"):
        run_finetune(qlora, run_dir)
    assert not (run_dir / "ledger.jsonl").exists()


def answers(model_dir: Path, rows: list[dict], max_new_tokens: int = 20) -> list[tuple[str, bool]]:
    """Greedy answers to the Alpaca prompts, and whether each ended with EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replicate.precision import cpu_precision
    from replicate.prompts import alpaca_prompt

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, cpu_precision().dtype)).eval()
    enc = tok([alpaca_prompt(r["instruction"], r["input"]) for r in rows], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, enc["input_ids"].shape[1]:]
    return [(tok.decode(ids, skip_special_tokens=True), tok.eos_token_id in ids.tolist()) for ids in new]


def in_format(answer: str, stopped: bool) -> bool:
    """An answer: it stops by itself, says something, and does not continue the template."""
    return stopped and answer.strip() != "" and "###" not in answer and "Instruction" not in answer


def test_lora_student_learns_to_answer_and_stop(tmp_path, base_dir):
    from replicate.finetune import run_finetune

    held_out = read_jsonl(DATA / "alpaca_held_out.jsonl")
    before = answers(base_dir, held_out[:2])
    assert not any(in_format(*a) for a in before), before  # the base model rambles on
    # bf16 left to the stage: native bf16 only where the processor has it (~175 s a step otherwise)
    path, run_dir = make_run(tmp_path, "gemma", "packaged:gemma-3-270m", method="lora", bf16=None, epochs=0.7,
                             max_length=160, batch_size=2, save_steps=100, learning_rate=2e-3)
    metrics = run_finetune(parse_pipeline(yaml.safe_load(path.read_text())), run_dir)
    assert metrics["method"] == "lora" and metrics["flops_per_token"] == 4 * metrics["params"]
    assert (run_dir / "student" / "adapter" / "adapter_config.json").is_file()
    after = answers(run_dir / "student" / "merged", held_out)
    assert sum(in_format(*a) for a in after) >= 3, after

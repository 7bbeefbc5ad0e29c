"""The ecosystem's formats: a dataset card with the Hub's front matter whose config name tells runs
apart in one datasets cache, save_to_disk, push_to_hub up to the network call, portable model
references, AlpacaEval generator names that say which run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from replicate import cards, files
from replicate.config import parse_pipeline
from replicate.errors import UserError
from replicate.weights import portable_ref

sys.path.insert(0, str(Path(__file__).parent))
from scripted_server import ScriptedServer

LOAD = "import sys; from datasets import load_dataset; d = load_dataset(sys.argv[1]); print(len(d['train']), " \
       "len(d['held_out']), d['train'][0]['instruction'])"


def generate(run_dir: Path, name: str, examples: int, srv, instr: Path) -> dict:
    from replicate.generate import run_generate

    cfg = parse_pipeline({
        "name": name, "student": {"model": "packaged:gemma-3-270m"},
        "teacher": {"model": "gpt-4o-mini", "backend": "openai", "base_urls": [srv.base_url], "chat": False},
        "generate": {"mode": "respond", "instructions_file": str(instr), "examples": examples, "max_tokens": 8,
                     "held_out_fraction": 0.2}})
    return run_generate(cfg, run_dir, progress=False)


def load_in_one_cache(data_dir: Path, cache: Path) -> tuple[int, int, str]:
    out = subprocess.run([sys.executable, "-c", LOAD, str(data_dir)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}, check=False)
    assert out.returncode == 0, out.stderr[-1500:]
    a, b, first = out.stdout.strip().split(" ", 2)
    return int(a), int(b), first


def test_two_runs_in_one_datasets_cache_load_their_own_rows(tmp_path):
    instr = tmp_path / "instr.jsonl"
    files.write_jsonl(instr, [{"instruction": f"Name colour {i}."} for i in range(60)])
    cache = tmp_path / "hf-datasets"
    with ScriptedServer(reply=lambda body: " Blue.") as srv:
        big, small = tmp_path / "big", tmp_path / "small"
        b = generate(big, "big", 40, srv, instr)
        s = generate(small, "small", 5, srv, instr)
        # both folders are named data/: before, the second load returned the first one's 40 rows
        assert load_in_one_cache(big / "data", cache)[:2] == (40, b["held_out_rows"])
        assert load_in_one_cache(small / "data", cache)[:2] == (5, s["held_out_rows"])
        s = generate(small, "small", 8, srv, instr)  # the same run, more rows: a rewritten train.jsonl
        assert load_in_one_cache(small / "data", cache)[:2] == (8, s["held_out_rows"])
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(small / "data" / "README.md")
    (config,) = card.data.configs
    assert config["config_name"] == cards.config_name("small", small / "data") and config["config_name"].startswith(
        "small-")
    assert {f["split"] for f in config["data_files"]} == {"train", "held_out"}
    assert card.data.task_categories == ["text-generation"] and card.data.size_categories == ["n<1K"]
    assert "| train rows | 8 (`train.jsonl`) |" in card.text  # the provenance table under the front matter


def test_save_to_disk_and_push_to_hub_up_to_the_network_call(tmp_path, monkeypatch):
    instr = tmp_path / "instr.jsonl"
    files.write_jsonl(instr, [{"instruction": f"Name colour {i}."} for i in range(20)])
    with ScriptedServer(reply=lambda body: " Red.") as srv:
        generate(tmp_path / "run", "export", 8, srv, instr)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    out = cards.export_dataset(tmp_path / "run" / "data", save_to_disk=str(tmp_path / "arrow"))
    from datasets import load_from_disk

    saved = load_from_disk(str(tmp_path / "arrow"))
    assert out["rows"] == {"train": 8, "held_out": 1} and len(saved["train"]) == 8
    assert saved["train"][0]["output"] == "Red."
    # No hub here: everything up to the upload runs, and the upload's failure is one clear line.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"^--push-to-hub me/copy: .*\(needs hub access and a token"):
        cards.export_dataset(tmp_path / "run" / "data", push_to_hub="me/copy")
    with pytest.raises(UserError, match="no train.jsonl to export"):
        cards.export_dataset(tmp_path / "nothing")


def test_portable_references_and_alpaca_eval_generator_names(tmp_path):
    assert portable_ref("packaged:gemma-3-270m") == "google/gemma-3-270m"
    assert portable_ref("packaged:smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_ref("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    local = tmp_path / "cache" / "my-base"
    local.mkdir(parents=True)
    assert portable_ref(str(local)) == "my-base"  # never this machine's absolute path
    from replicate.evaluate.stage import generator_names

    cfg = parse_pipeline({"name": "tiny-cpu", "teacher": {"model": "packaged:smollm2-135m-instruct"},
                          "student": {"model": "packaged:gemma-3-270m"}})
    names = generator_names(cfg, [])
    assert names == {"student": "tiny-cpu/student: gemma-3-270m + lora",
                     "teacher": "tiny-cpu/teacher: smollm2-135m-instruct", "base": "tiny-cpu/base: gemma-3-270m"}
    other = generator_names(cfg.model_copy(update={"name": "tiny-cpu-2"}), [])
    assert other["student"] != names["student"]


def test_model_card_front_matter():
    from huggingface_hub import ModelCard

    text = cards.model_card(run_name="r", base_model="google/gemma-3-270m", method="lora", library="peft",
                            metrics={"trained_tokens": 51_300, "global_step": 38, "final_loss": 1.2345, "usd": 0.00306,
                                     "usd_per_device_hour": 0.1, "device": "cpu", "num_devices": 1,
                                     "learning_rate": 2e-4})
    card = ModelCard(text)
    assert card.data.base_model == "google/gemma-3-270m" and card.data.library_name == "peft"
    assert "| trained tokens | 51,300 over 38 optimizer steps |" in card.text
    assert "| fine-tuning cost | $0.00306 at $0.10/device-hour |" in card.text
    json.dumps(card.data.to_dict())  # plain data, as the Hub stores it

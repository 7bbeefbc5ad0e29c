"""Packaged offline models: resolution, real greedy generation, atomic and concurrent conversion."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replicate import weights
from replicate.errors import UserError

CONVERT = "from replicate.weights import ensure_packaged; print(ensure_packaged('smollm2-135m-instruct'))"


def _greedy(folder: Path, prompts: list[str], chat: bool) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from replicate.precision import cpu_precision

    tok = AutoTokenizer.from_pretrained(folder)
    # The dtype this processor is fast at, as the stages use it (bf16 only with native bf16).
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, cpu_precision().dtype))
    outs = []
    for p in prompts:
        if chat:
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        else:
            text = p
        ids = tok(text, return_tensors="pt", add_special_tokens=not chat)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=16, do_sample=False)
        outs.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return outs


@pytest.mark.slow  # converts a packaged model (minutes on a fresh machine)
def test_teacher_resolves_and_answers_deterministically(teacher_dir):
    info = json.loads((teacher_dir / weights.MARKER).read_text())
    assert info["params"] == weights.PACKAGED["smollm2-135m-instruct"].params
    assert info["has_chat_template"]
    q = ["What is the capital of France?"]
    first, second = _greedy(teacher_dir, q, chat=True), _greedy(teacher_dir, q, chat=True)
    assert first == second
    assert "Paris" in first[0]


@pytest.mark.slow  # converts a packaged model (minutes on a fresh machine)
def test_base_student_resolves_and_continues_text_deterministically(base_dir):
    info = json.loads((base_dir / weights.MARKER).read_text())
    assert info["params"] == weights.PACKAGED["gemma-3-270m"].params
    assert not info["has_chat_template"]  # a base model: prompted with the Alpaca template, not chat
    prompt = ["Question: What is the capital of Japan?\nAnswer: Tokyo\n\nQuestion: What is the capital of France?\nAnswer:"]
    first, second = _greedy(base_dir, prompt, chat=False), _greedy(base_dir, prompt, chat=False)
    assert first == second
    assert "Paris" in first[0]


def test_local_folder_passes_through_and_bad_refs_fail_in_one_line(teacher_dir, tmp_path):
    assert weights.resolve(str(teacher_dir)) == teacher_dir
    with pytest.raises(UserError, match="config.json"):
        weights.resolve(str(tmp_path))
    with pytest.raises(UserError, match="cannot resolve"):
        weights.resolve("llama-7b")
    with pytest.raises(UserError, match="unknown packaged model"):
        weights.resolve("packaged:nope")


def test_hub_id_offline_names_the_download(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UserError, match="hf download Qwen/Qwen2.5-0.5B"):
        weights.resolve("Qwen/Qwen2.5-0.5B")


def _env(cache: Path) -> dict:
    return {**os.environ, "REPLICATE_CACHE": str(cache)}


def test_one_gguf_parse_reads_the_same_fields_and_tensors_once(tmp_path):
    import gguf
    import numpy as np

    path = weights._gguf_source(weights.PACKAGED["smollm2-135m-instruct"], tmp_path)
    own = gguf.GGUFReader(path)
    with weights.one_gguf_parse():
        shared = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is shared, "a second parse of the same file inside the block"
    assert gguf.GGUFReader is type(own), "the block must restore gguf's reader"
    assert list(shared.fields) == list(own.fields)
    for name, a in own.fields.items():
        b = shared.fields[name]
        assert (a.data, a.types, a.offset) == (b.data, b.types, b.offset), name
        assert len(a.parts) == len(b.parts) and all(np.array_equal(x, y) for x, y in zip(a.parts, b.parts)), name
    assert [(t.name, t.tensor_type, t.data_offset) for t in own.tensors] == \
        [(t.name, t.tensor_type, t.data_offset) for t in shared.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(own.tensors, shared.tensors))


@pytest.mark.slow  # converts a packaged model (minutes on a fresh machine)
def test_killed_conversion_leaves_nothing_counted_and_resolve_recovers(tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", CONVERT], env=_env(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    mdir = cache / "models"
    deadline = time.time() + 120
    # Kill as soon as the half-written output folder exists: the worst moment.
    while time.time() < deadline and not list(mdir.glob("smollm2-135m-instruct.tmp-*/*")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(mdir.glob("smollm2-135m-instruct.tmp-*")), "the kill should have left a temp folder"
    assert not (mdir / "smollm2-135m-instruct").exists()

    out = subprocess.run([sys.executable, "-c", CONVERT], env=_env(cache), capture_output=True, text=True, check=False,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    final = Path(out.stdout.strip().splitlines()[-1])
    assert (final / weights.MARKER).is_file() and (final / "model.safetensors").is_file()
    assert not list(mdir.glob("smollm2-135m-instruct.tmp-*")), "stale temp folders must be cleaned"


@pytest.mark.slow  # converts a packaged model (minutes on a fresh machine)
def test_two_processes_converting_at_once_convert_once(tmp_path):
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT], env=_env(cache), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-1000:] for r in results]
    paths = {r[0].strip().splitlines()[-1] for r in results}
    assert len(paths) == 1
    assert sum("converting packaged:" in r[1] for r in results) == 1


@pytest.mark.slow  # converts a packaged model (minutes on a fresh machine)
def test_models_command_shows_both_converted(teacher_dir, base_dir):
    out = subprocess.run([sys.executable, "-m", "replicate", "models", "--json"], capture_output=True, text=True, check=False,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {r["ref"]: r for r in json.loads(out.stdout)}
    assert rows["packaged:smollm2-135m-instruct"]["converted"] and rows["packaged:gemma-3-270m"]["converted"]
    assert rows["packaged:gemma-3-270m"]["path"] == str(base_dir)
    assert rows["packaged:gemma-3-270m"]["bytes"] > 400e6  # 268M params in bf16


def test_cli_version_help_and_one_line_errors():
    run = lambda *a: subprocess.run([sys.executable, "-m", "replicate", *a], capture_output=True, text=True, check=False,
                                    timeout=60)
    v = run("--version")
    assert v.returncode == 0 and v.stdout.startswith("replicate ")
    h = run("--help")
    assert h.returncode == 0 and "estimate" in h.stdout and "models" in h.stdout
    bad = run("generate", "does-not-exist.yaml")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no such pipeline file" in bad.stderr


@pytest.mark.slow
def test_teacher_answers_through_the_real_vllm_cpu_engine(teacher_vllm):
    from replicate.engines.base import Sampling

    q = [[{"role": "user", "content": "What is the capital of France?"}]]
    out = teacher_vllm.complete(q, Sampling(max_tokens=24, temperature=0.0))[0]
    # What the answer says depends on the processor: greedy decoding of this 135M model says Paris
    # in fp32, but not in bf16 on vllm-cpu's AMX kernels (Intel Xeon, 2026-12-02; two identical
    # prompts in one batch even diverge there). What holds on every processor: an answer, and
    # token counts that are the engine's own.
    assert out.text.strip()
    rendered = teacher_vllm.tokenizer.apply_chat_template(q[0], tokenize=True, add_generation_prompt=True,
                                                          return_dict=True)["input_ids"]
    assert out.prompt_tokens == len(rendered)  # counted from the engine's token ids, no second BOS
    assert 0 < out.output_tokens <= 24
    assert abs(out.output_tokens - len(teacher_vllm.tokenizer(out.text, add_special_tokens=False)["input_ids"])) <= 1

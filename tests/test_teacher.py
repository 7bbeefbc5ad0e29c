"""replicate/teacher.py: the vLLM CPU engine, two real OpenAI-compatible servers on loopback
(`transformers serve`), retries against a scripted loopback server, the transformers fallback."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from scripted_server import ScriptedServer

from replicate.engines.base import Request, Sampling, render_chat
from replicate.engines.openai import OpenAIEngine, Unreachable
from replicate.errors import UserError

RAW = "Here is a list of fruits:\n1. apple\n2. banana\n3."
CHAT = [{"role": "user", "content": "Name three colors."}]
CONTINUE = [{"role": "user", "content": "List animals."}, {"role": "assistant", "content": "1. cat\n2."}]


def _tok(teacher_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teacher_dir)


@pytest.mark.slow
def test_vllm_exact_counts_finish_reasons_and_chat(teacher_vllm, teacher_dir):
    tok = _tok(teacher_dir)
    outs = teacher_vllm.complete([RAW, CHAT, CONTINUE], Sampling(max_tokens=12, temperature=0.0))
    # Prompt tokens are the engine's: raw text with the tokenizer's special tokens, chat through the
    # template without a second BOS; a conversation ending with the assistant is continued.
    assert outs[0].prompt_tokens == len(tok(RAW)["input_ids"])
    assert outs[1].prompt_tokens == len(tok.encode(render_chat(tok, CHAT), add_special_tokens=False))
    assert render_chat(tok, CONTINUE).endswith("<|im_start|>assistant\n1. cat\n2.")
    for o in outs:
        assert 1 <= o.output_tokens <= 12 and o.latency_s > 0
        assert o.finish_reason in ("stop", "length")
        assert o.finish_reason == "stop" or o.output_tokens == 12  # length = max_tokens reached
    # A stop string ends the completion and is cut from the text (never counted past it).
    full = teacher_vllm.complete([RAW], Sampling(max_tokens=24, temperature=0.0))[0]
    stop = full.text.strip()[:3]
    cut = teacher_vllm.complete([RAW], Sampling(max_tokens=24, temperature=0.0, stop=(stop,)))[0]
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert cut.output_tokens < full.output_tokens


@pytest.mark.slow
def test_vllm_stream_keeps_engine_fed_and_seeds_reproduce(teacher_vllm):
    asked: list[int] = []
    todo = [Request(f"r{i}", f"Write one sentence about the number {i}.", seed=100 + i) for i in range(10)]

    def feed(n):
        asked.append(n)
        batch = todo[:3]  # hand out at most 3 at a time: the stream must come back for more
        del todo[:3]
        return batch

    got = list(teacher_vllm.stream(feed, Sampling(max_tokens=8, temperature=1.0)))
    assert sorted(c.request_id for c in got) == sorted(f"r{i}" for i in range(10))
    assert len(asked) >= 4 and all(n <= teacher_vllm.max_in_flight for n in asked)
    # Same per-request seeds -> same samples, whatever else is in the batch.
    again = teacher_vllm.complete(["Write one sentence about the number 4."], Sampling(max_tokens=8), seeds=[104])
    assert again[0].text == next(c.text for c in got if c.request_id == "r4")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_servers(teacher_dir):
    """Two real OpenAI-compatible servers (`transformers serve`) with the packaged teacher."""
    exe = Path(sys.executable).with_name("transformers")
    procs, urls = [], []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        port = _free_port()
        procs.append(subprocess.Popen(
            [str(exe), "serve", str(teacher_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
             "--dtype", "float32"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        deadline = time.time() + 120
        for url in urls:
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=2)
                    break
                except OSError:
                    if time.time() > deadline:
                        pytest.fail(f"transformers serve at {url} did not come up in 120 s")
                    time.sleep(0.5)
        yield [u + "/v1" for u in urls]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


@pytest.mark.slow
def test_openai_backend_spreads_load_over_two_real_servers(two_servers, teacher_dir):
    tok = _tok(teacher_dir)
    teacher = OpenAIEngine(str(teacher_dir), base_urls=two_servers, chat=False, max_concurrency=2)
    prompts = [f"{i} + {i} =" for i in range(6)]
    outs = teacher.complete(prompts, Sampling(max_tokens=4, temperature=1.0))
    assert {o.server for o in outs} == set(two_servers)  # both servers answered
    for p, o in zip(prompts, outs):
        assert o.prompt_tokens == len(tok(p)["input_ids"])  # the server's usage, exact
        assert 1 <= o.output_tokens <= 4
        assert o.finish_reason in ("stop", "length")
    # Chat prompts go to /v1/chat/completions and are counted through the server's template.
    chat = OpenAIEngine(str(teacher_dir), base_urls=two_servers[:1], chat=True)
    out = chat.complete([CHAT], Sampling(max_tokens=4, temperature=0.0))[0]
    assert out.prompt_tokens == len(tok.encode(render_chat(tok, CHAT), add_special_tokens=False))
    assert out.text


def test_openai_retries_429_and_500_then_succeeds_and_never_logs_key(monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-very-secret")
    with ScriptedServer(script=[(429, None), (500, None)], reply=lambda b: " four") as srv:
        t = OpenAIEngine("m", base_urls=[srv.base_url], api_key_env="TEACHER_KEY", chat=False)
        out = t.complete(["two plus two is"], Sampling(max_tokens=5, stop=("\n",)))[0]
        assert out.text == " four" and out.output_tokens == 1 and out.prompt_tokens == 4
        assert len(srv.requests) == 3  # 429, 500, then the answer
        assert srv.requests[0]["headers"]["authorization"] == "Bearer sk-very-secret"
        body = srv.requests[-1]["body"]
        assert body["max_tokens"] == 5 and body["stop"] == ["\n"] and "seed" in body
        assert "secret" not in repr(t)
    # A client error is not retried, and the message carries the server's words but not the key.
    with ScriptedServer(script=[(400, "bad request: key sk-very-secret rejected")]) as srv:
        t = OpenAIEngine("m", base_urls=[srv.base_url], api_key_env="TEACHER_KEY", chat=False)
        with pytest.raises(UserError, match="HTTP 400") as e:
            t.complete(["x"], Sampling(max_tokens=5))
        assert "sk-very-secret" not in str(e.value) and len(srv.requests) == 1


def test_openai_unreachable_server_is_a_clear_error():
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    t = OpenAIEngine("m", base_urls=[url], chat=False, max_retries=2)
    t0 = time.perf_counter()
    with pytest.raises(Unreachable, match=r"127\.0\.0\.1.*after 2 retries.*rerun the same command"):
        t.complete(["x"], Sampling(max_tokens=5))
    assert time.perf_counter() - t0 < 5


def test_openai_needs_a_base_url():
    with pytest.raises(UserError, match="base_urls"):
        OpenAIEngine("m", base_urls=[])


@pytest.mark.slow
def test_transformers_backend_counts_and_stops(teacher_dir):
    from replicate.engines.hf import HFEngine

    tok = _tok(teacher_dir)
    t = HFEngine(teacher_dir, dtype="float32", max_in_flight=4)
    assert t.chat  # SmolLM2 has a chat template
    outs = t.complete([RAW, CHAT], Sampling(max_tokens=6, temperature=0.0))
    assert outs[0].prompt_tokens == len(tok(RAW)["input_ids"])
    assert outs[1].prompt_tokens == len(tok.encode(render_chat(tok, CHAT), add_special_tokens=False))
    assert all(o.finish_reason == "length" and o.output_tokens == 6 for o in outs)
    stop = outs[0].text.strip()[:2]
    cut = t.complete([RAW], Sampling(max_tokens=6, temperature=0.0, stop=(stop,)))[0]
    assert cut.finish_reason == "stop" and stop not in cut.text and cut.output_tokens < 6


def test_a_loaded_machine_is_named_before_the_cpu_engine_starts(monkeypatch, caplog):
    from replicate.engines import vllm as engine

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 1.5, 0.0, 0.0))
    with caplog.at_level("WARNING", logger="replicate"):
        engine.warn_if_loaded()
    assert f"load average {cores + 1.5:.1f} on {cores} cores" in caplog.text
    caplog.clear()
    monkeypatch.setattr(os, "getloadavg", lambda: (cores - 0.5, 0.0, 0.0))
    engine.warn_if_loaded()
    assert caplog.text == ""


TRACKER_SCRIPT = """
import json, multiprocessing as mp, time
from multiprocessing import resource_tracker
from replicate.engines.vllm import _descendants, started_since, stop_processes
if __name__ == "__main__":
    before = {p.pid for p in _descendants()}
    child = mp.get_context("spawn").Process(target=time.sleep, args=(60,))
    child.start()  # spawn starts multiprocessing's resource tracker, as vLLM's engine start does
    tracker = resource_tracker._resource_tracker._pid
    procs = started_since(before)
    child.terminate()
    stop_processes(procs)
    print(json.dumps({"tracker": tracker, "child": child.pid, "procs": [p.pid for p in procs],
                      "new": sorted({p.pid for p in _descendants()} - before)}))
"""


def test_an_engines_processes_leave_out_this_processs_resource_tracker():
    """What close waits for is what the engine started, not multiprocessing's resource tracker,
    which never exits before its parent: waiting for it cost every engine close 10 s."""
    out = subprocess.run([sys.executable, "-c", TRACKER_SCRIPT], capture_output=True, text=True, timeout=60, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["tracker"] and r["tracker"] != r["child"]
    assert r["procs"] == [r["child"]]
    assert r["new"] == [r["tracker"]], "the tracker must stay up for the next engine; the child must be gone"

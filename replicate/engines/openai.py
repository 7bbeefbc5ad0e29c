"""The `openai` teacher backend: any OpenAI-compatible HTTP server (`vllm serve`, hosted APIs).

- Concurrency: `max_concurrency` requests in flight per base URL; several base URLs spread the
  load (each new request goes to the URL with the fewest in flight, so a faster server takes more).
- Retries: 429, 5xx, timeouts and dropped connections are retried with exponential backoff
  (`backoff_s` x 2^attempt, capped at 60 s, +-50% jitter; a server's Retry-After wins).
- Token counts come from the response's `usage` (the server's tokenizer, exact).
- The API key is read from the environment variable the YAML names; it is sent in the
  Authorization header and never logged (error messages are scrubbed of it).
Only the standard library is used (urllib + threads), so this backend needs no extra.
"""
from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from replicate.engines.base import Backend, Completion, Feed, Request, Sampling, cut_at_stop
from replicate.errors import UserError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 60.0


class Unreachable(UserError):
    """The server could not be reached (or kept failing) after every retry."""


class OpenAIEngine(Backend):
    name = "openai"

    def __init__(self, model: str, *, base_urls: list[str], api_key_env: str = "OPENAI_API_KEY",
                 chat: bool | None = None, max_concurrency: int = 16, max_retries: int = 5,
                 timeout_s: float = 600.0, backoff_s: float = 1.0) -> None:
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
        self.backoff_s = backoff_s

    def __repr__(self) -> str:  # the key never appears, not even in a debugger's repr
        return f"OpenAIEngine(model={self.model!r}, base_urls={self.base_urls!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _body(self, req: Request, sampling: Sampling) -> tuple[str, dict]:
        body = {
            "model": self.model, "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "seed": sampling.seed if req.seed is None else req.seed,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.regex:  # vLLM server's structured outputs (hosted APIs reject it)
            body["structured_outputs"] = {"regex": sampling.regex}
        if isinstance(req.prompt, str):
            return "/completions", {**body, "prompt": req.prompt}
        body["messages"] = req.prompt
        if req.prompt[-1]["role"] == "assistant":
            # Continue the assistant's prefix (vLLM server extension; hosted APIs reject it).
            body.update(add_generation_prompt=False, continue_final_message=True)
        return "/chat/completions", body

    def _post(self, url: str, body: dict) -> dict:
        """One request with retries; returns the parsed JSON response."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = self._scrub(e.read().decode(errors="replace")[:300])
                if e.code not in RETRY_STATUS:
                    hint = f" (is ${self.api_key_env} set?)" if e.code in (401, 403) else ""
                    raise UserError(f"teacher {url} answered HTTP {e.code}{hint}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
                retry_after = e.headers.get("Retry-After")
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}"
            except json.JSONDecodeError:
                last = "the response was not JSON"
            if attempt == self.max_retries:
                break
            delay = min(self.backoff_s * 2**attempt, MAX_BACKOFF_S) * random.uniform(0.5, 1.5)
            if retry_after and retry_after.replace(".", "", 1).isdigit():
                delay = float(retry_after)
            time.sleep(delay)
        raise Unreachable(
            f"teacher {url} failed after {self.max_retries} retries ({last}); "
            "start the server or fix teacher.base_urls, then rerun the same command to resume"
        )

    def _one(self, base: str, req: Request, sampling: Sampling) -> Completion:
        path, body = self._body(req, sampling)
        t0 = time.perf_counter()
        resp = self._post(base + path, body)
        try:
            choice = resp["choices"][0]
            text = choice.get("text") if path == "/completions" else (choice.get("message") or {}).get("content")
            usage = resp["usage"]
            prompt_tokens, output_tokens = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise UserError(f"teacher {base + path} returned no choices/usage: {self._scrub(str(resp)[:200])}") from None
        text, _ = cut_at_stop(text or "", sampling.stop)  # some servers keep the stop string
        return Completion(
            request_id=req.request_id, text=text, finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=prompt_tokens, output_tokens=output_tokens,
            latency_s=time.perf_counter() - t0, server=base,
        )

    def stream(self, feed: Feed, sampling: Sampling) -> Iterator[Completion]:
        in_flight = {u: 0 for u in self.base_urls}
        running: dict[Future, str] = {}
        ask = True
        failed: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="teacher-http") as pool:
            try:
                while True:
                    if ask and len(running) < self.max_in_flight:
                        for req in feed(self.max_in_flight - len(running)):
                            base = min(self.base_urls, key=lambda u: in_flight[u])  # least loaded first
                            in_flight[base] += 1
                            running[pool.submit(self._one, base, req, sampling)] = base
                    if not running:
                        break
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        in_flight[running.pop(fut)] -= 1
                        if fut.exception() is not None:  # retries exhausted: stop asking, drain the rest
                            failed = failed or fut.exception()
                            continue
                        yield fut.result()
                    ask = failed is None
                if failed is not None:
                    raise failed
            finally:
                for fut in running:  # stop early: drop what has not started, finish the rest
                    fut.cancel()

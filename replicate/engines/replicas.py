"""The estimate's generation layout, run: `replicas` vLLM engines of `tp` devices each.

The cost model prices a self-hosted teacher on `count` devices as count // tp data-parallel
replicas of the smallest tensor-parallel degree that fits the model (cost/generation.py,
generation_layout). vLLM's offline `LLM` refuses data_parallel_size > 1 in one process, so the run
starts that many engines itself, each on its own devices (CUDA_VISIBLE_DEVICES on GPUs, its share
of the cores on a CPU), and keeps each fed: new requests go to the replica with the fewest in
flight, as the OpenAI backend balances its servers.

    engine = open_vllm(model_dir, tp=2, replicas=4, max_in_flight=256)   # 8 GPUs: 4 x TP2
    for c in engine.stream(feed, sampling): c.server                     # "replica-0" ... "replica-3"

Each vLLM engine core runs in its own process, so one thread per replica only waits on its
engine's outputs; the caller's `feed` and every completion stay on the caller's thread.
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from replicate.engines.base import Backend, Completion, Feed, Request, Sampling


def device_groups(tp: int, replicas: int) -> list[dict[str, str]]:
    """Per replica, the environment that gives it its own devices: GPUs `tp` at a time from the
    visible ones, or on a CPU an equal share of this process's cores."""
    import torch

    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        if len(ids) < tp * replicas:
            from replicate.errors import UserError

            raise UserError(f"teacher.hardware.count: {replicas} replicas x {tp} GPUs asked for, {len(ids)} visible")
        return [{"CUDA_VISIBLE_DEVICES": ",".join(ids[r * tp:(r + 1) * tp])} for r in range(replicas)]
    cpus = sorted(os.sched_getaffinity(0))
    share = max(1, len(cpus) // replicas)
    groups = []
    for r in range(replicas):
        mine = cpus[r * share:(r + 1) * share] or cpus[-share:]
        per_rank = max(1, len(mine) // tp)  # vLLM's CPU backend: one core list per TP rank, split by |
        ranks = [mine[i * per_rank:(i + 1) * per_rank] or mine for i in range(tp)]
        groups.append({"VLLM_CPU_OMP_THREADS_BIND": "|".join(",".join(map(str, g)) for g in ranks),
                       "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    return groups


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables while an engine starts (its core process inherits them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def open_vllm(model_dir: Path, tp: int, replicas: int, **kw) -> Backend:
    """One VLLMEngine (replicas == 1) or a Replicas of them."""
    from replicate.engines.vllm import VLLMEngine

    if replicas <= 1:
        engine = VLLMEngine(model_dir, tensor_parallel_size=tp, **kw)
        engine.layout = (tp, 1)
        return engine
    per = max(1, kw.pop("max_in_flight", 256) // replicas)
    engines = []
    try:
        for env in device_groups(tp, replicas):
            with _env(env):
                engines.append(VLLMEngine(model_dir, tensor_parallel_size=tp, max_in_flight=per, **kw))
            engines[-1].layout = (tp, 1)
    except BaseException:
        for e in engines:
            e.close()
        raise
    return Replicas(engines)


class Replicas(Backend):
    """Several engines behind one `stream`: requests go to the replica with the fewest in flight."""

    name = "vllm"

    def __init__(self, engines: list[Backend]):
        self.engines = engines
        self.chat = engines[0].chat
        self.tokenizer = getattr(engines[0], "tokenizer", None)
        self.precision = getattr(engines[0], "precision", None)  # every replica decides alike
        self.max_in_flight = sum(e.max_in_flight for e in engines)

    @property
    def layout(self) -> tuple[int, int]:
        """(tensor parallel, replicas) as started."""
        return self.engines[0].layout[0], len(self.engines)

    def stream(self, feed: Feed, sampling: Sampling) -> Iterator[Completion]:
        inboxes = [queue.Queue() for _ in self.engines]
        out: queue.Queue = queue.Queue()
        in_flight = [0] * len(self.engines)
        stop = threading.Event()  # set when the caller leaves early: every replica aborts what it runs
        workers = [threading.Thread(target=self._serve, args=(i, e, inboxes[i], out, sampling, stop), daemon=True)
                   for i, e in enumerate(self.engines)]
        for w in workers:
            w.start()
        try:
            ask = True
            while True:
                if ask:
                    free = sum(e.max_in_flight - n for e, n in zip(self.engines, in_flight))
                    for req in list(feed(free)) if free > 0 else []:
                        i = min(range(len(in_flight)),
                                key=lambda k: in_flight[k] / self.engines[k].max_in_flight)
                        in_flight[i] += 1
                        inboxes[i].put(req)
                if not any(in_flight):
                    break
                i, item = out.get()
                if isinstance(item, BaseException):
                    raise item
                in_flight[i] -= 1
                ask = True
                item.server = f"replica-{i}"
                yield item
        finally:
            if any(in_flight):  # Ctrl-C, a budget stop, an error, or the caller closed the stream
                stop.set()
            for box in inboxes:
                box.put(None)  # the workers end once their engine has nothing left
            for w in workers:
                w.join(timeout=60)

    @staticmethod
    def _serve(i: int, engine: Backend, inbox: queue.Queue, out: queue.Queue, sampling: Sampling,
               stop: threading.Event) -> None:
        """One replica: stream whatever arrives in its inbox; end on None, or at once on `stop`."""
        closed, pending = False, 0  # pending: handed to this engine, not finished yet

        def feed(n: int) -> list[Request]:
            nonlocal closed, pending
            got = []
            while len(got) < n and not closed:
                try:  # wait only when the engine would otherwise be idle
                    req = inbox.get(block=not got and pending == 0)
                except queue.Empty:
                    break
                if req is None:
                    closed = True
                    break
                got.append(req)
            pending += len(got)
            return got

        try:
            while not closed and not stop.is_set():
                for c in engine.stream(feed, sampling, stop=stop):
                    pending -= 1
                    out.put((i, c))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
            out.put((i, e))

    def close(self) -> None:
        for e in self.engines:
            e.close()

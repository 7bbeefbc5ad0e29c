"""Stage 1: instruction data from the teacher, resumable and metered.

    replicate generate pipelines/tiny-cpu.yaml [--max-usd 0.50]   # kill it any time; rerun resumes

Modes (modes.py): `self-instruct` (Alpaca's algorithm: parse, filters, ROUGE-L
dedup), `respond` (the teacher answers a given instruction file) and `none` (an existing Alpaca
file becomes the dataset, no teacher).

How a run goes: the teacher streams (engines/): it asks `feed(n)` for requests whenever the
engine has room, and each finished completion is parsed, filtered and appended to data/log.jsonl
(one write + fsync) before it counts. Request i is a pure function of (seed, i), so the log's
set of finished indices is all the RNG state a resume needs: a rerun redoes the holes a kill
left (requests that were in flight), then goes on. Files: see dataset.py.

Resume checks the settings first (data/generation.json, dataset.check_settings): data made with
another teacher, temperature, seed... is never reused or extended, even when it is complete.

Budget (`max_usd`, what this call may spend), a hard ceiling, two ways:
- an API teacher is priced per token: every request reserves its worst case before it is sent
  (prompt-token bound + max_tokens, engines.base.prompt_token_bound) and settles to its real
  usage when it finishes; a request whose worst case does not fit beside those in flight is
  not sent. E.g. $0.01 left, gpt-4o-mini ($0.15/M in, $0.60/M out), 2,000-byte prompts and
  max_tokens 1024: (2,128 x 0.15 + 1,024 x 0.60) / 1e6 = $0.00093 each -> at most 10 in flight.
- a self-hosted teacher is priced per device-hour: the meter's watchdog stops the chunk before
  its device time would pass the budget (meter.stage, max_usd).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from replicate import files, meter
from replicate.config import Pipeline
from replicate.engines import Backend, Completion, Request, Sampling
from replicate.engines.base import prompt_token_bound
from replicate.errors import BudgetExceeded, UserError
from replicate.generate import dataset
from replicate.generate.modes import make_mode
from replicate.progress import Progress

GIVE_UP_AFTER = 32  # finished requests without one kept row: the teacher is not producing data


@dataclass
class Tally:
    """Counts over every finished request of this run directory (all chunks)."""

    requests: int = 0
    parsed: int = 0
    empty: int = 0  # responses with no text at all
    prompt_tokens: int = 0
    output_tokens: int = 0
    dropped: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)  # kept rows, in the order they were kept
    done: set = field(default_factory=set)  # finished request indices

    def add(self, rec: dict) -> None:
        self.requests += 1
        self.parsed += rec["parsed"]
        self.empty += rec["empty"]
        self.prompt_tokens += rec["prompt_tokens"]
        self.output_tokens += rec["output_tokens"]
        self.dropped = dataset.add_counts(self.dropped, rec["dropped"])
        self.rows.extend(rec["rows"])
        self.done.add(rec["index"])


def run_generate(cfg: Pipeline, run_dir: Path, *, max_usd: float | None = None,
                 limit_examples: int | None = None, teacher: Backend | None = None,
                 progress: bool = True) -> dict:
    """Generate until `examples` training rows (plus the held-out share) are kept; resumable.
    `max_usd`: the most this call may spend (the pipeline passes what is left of the budget).
    `teacher`: an open backend to use instead of starting one (tests, benchmarks)."""
    run_dir = Path(run_dir)
    data_dir = run_dir / "data"
    g = cfg.generate
    examples = min(g.examples, limit_examples or g.examples)
    dataset.check_settings(data_dir, _settings(cfg))  # first: finished data made otherwise is not reused either
    done = dataset.read_done(data_dir)
    log = dataset.read_log(data_dir)  # validated before anything starts, even when the stage is done
    if done and (done["train_rows"] >= examples or done.get("exhausted")):
        return done  # finished earlier: nothing to redo
    if g.mode == "none":
        return _reuse(cfg, data_dir, examples)
    mode = make_mode(cfg)  # reads and checks the input files before any engine starts
    dataset.record_settings(data_dir, _settings(cfg))
    # a killed chunk's line, once; the caller's allowance was computed without it
    max_usd = meter.recover_within(run_dir, "generate", max_usd, dataset.exact_counts(log))
    tally = Tally()
    for rec in log:
        tally.add(rec)
    (data_dir / dataset.DONE).unlink(missing_ok=True)  # the target grew: the stage is open again
    mode.restore(tally.rows)
    run = _Run(cfg, run_dir, mode, tally, dataset.rows_needed(examples, g.held_out_fraction), max_usd)
    stop = run.go(teacher, progress)
    stats = _finish(cfg, run_dir, tally, examples, run, run.price_note)
    if stop == "budget" and not run.complete:
        raise BudgetExceeded(
            f"generate stopped at ${stats['usd']:.4f} (budget left for it: ${max_usd:.4g}) with {stats['kept']} of "
            f"{run.needed} rows kept; everything finished is saved: rerun with a higher --max-usd to continue")
    if stop == "no-rows":
        raise UserError(
            f"the teacher produced no usable rows in {tally.requests} requests (parsed {tally.parsed}, empty "
            f"{tally.empty}, dropped {tally.dropped}); check teacher.model / teacher.chat (see data/log.jsonl)")
    return stats


class _Run:
    """One chunk of generation: feeds the teacher, records completions, meters, obeys the budget."""

    def __init__(self, cfg, run_dir, mode, tally, needed, max_usd):
        self.cfg, self.run_dir, self.mode, self.tally = cfg, run_dir, mode, tally
        self.needed, self.max_usd = needed, max_usd
        self.limit = mode.limit if mode.limit is not None else math.inf
        top = max(tally.done, default=-1) + 1
        self.holes = [i for i in range(top) if i not in tally.done]  # in flight when a run was killed
        self.next = top
        self.in_flight: dict[str, tuple[int, dict]] = {}  # request id -> (index, prompt metadata)
        self.reserved: dict[str, float] = {}  # request id -> worst-case dollars held for it (API)
        self.stop: str | None = None
        self.prior_usd, self.prior_requests = _spent(run_dir), tally.requests
        self.usd_h, self.api, self.price_note = _pricing(cfg)

    @property
    def exhausted(self) -> bool:
        return self.next >= self.limit and not self.holes

    @property
    def complete(self) -> bool:
        return len(self.tally.rows) >= self.needed or self.exhausted

    def spent(self) -> float:
        """Dollars of this call (what `max_usd` limits)."""
        return self.m.usd_so_far()

    def worst_case_usd(self, req: Request) -> float:
        """What an API request can cost at most: its prompt-token bound and every output token."""
        return self.api.usd(prompt_token_bound(req.prompt), self.cfg.generate.max_tokens)

    def feed(self, free: int) -> list[Request]:
        """Up to `free` more requests, while the target, the budget and the input allow."""
        kept, t = len(self.tally.rows), self.tally
        if self.stop or kept >= self.needed:
            return []
        if t.requests >= GIVE_UP_AFTER and kept == 0:
            self.stop = "no-rows"
            return []
        # Requests still useful at the yield so far (kept rows per request; 1 before any), +10%.
        per_request = kept / t.requests if t.requests else 1.0
        n = min(free, max(math.ceil((self.needed - kept) / max(per_request, 0.05) * 1.1) - len(self.in_flight), 0))
        out = []
        while len(out) < n and (self.holes or self.next < self.limit):
            i = self.holes[0] if self.holes else self.next
            req, meta = self.mode.request(i)
            if self.api is not None:  # reserve-then-settle: spent + every reservation, this one included, must fit
                worst = self.worst_case_usd(req)
                if self.max_usd is not None and self.spent() + sum(self.reserved.values()) + worst > self.max_usd:
                    if not self.in_flight:
                        self.stop = "budget"  # not even one more request fits
                    break
                self.reserved[req.request_id] = worst  # also what a cancelled request may have cost
            if self.holes:
                self.holes.pop(0)
            else:
                self.next += 1
            self.in_flight[req.request_id] = (i, meta)
            out.append(req)
        return out

    def record(self, c: Completion) -> None:
        """Parse and filter one completion; its log line is durable before anything counts it."""
        i, meta = self.in_flight.pop(c.request_id)
        self.reserved.pop(c.request_id, None)  # settled below at its real usage
        parsed, kept, dropped = self.mode.rows(i, c)
        usd_api = self.api.usd(c.prompt_tokens, c.output_tokens) if self.api else 0.0
        rec = {"index": i, "request_id": c.request_id, "rng": {"seed": self.cfg.generate.seed, "index": i}, **meta,
               "finish_reason": c.finish_reason, "empty": not c.text.strip(), "prompt_tokens": c.prompt_tokens,
               "output_tokens": c.output_tokens, "latency_s": round(c.latency_s, 3), "parsed": parsed,
               "dropped": dropped, "rows": kept, "chunk": self.m.chunk_id, "t": round(self.m.wall_s, 3),
               "usd_api": usd_api}
        files.append_jsonl(self.run_dir / "data" / dataset.LOG, rec)
        self.tally.add(rec)
        self.m.add_usd(usd_api)
        self.m.add(prompt_tokens=c.prompt_tokens, output_tokens=c.output_tokens, requests=1, parsed=parsed,
                   kept=len(kept))
        self.m.set(dropped=dataset.add_counts(self.m.fields["dropped"], dropped))

    def go(self, teacher: Backend | None, progress: bool) -> str | None:
        """The chunk under the budget; returns why it stopped (None: target reached or input exhausted)."""
        try:
            self._go(teacher, progress)
        except BudgetExceeded:  # the meter's watchdog: device time would pass max_usd
            self.stop = "budget"
        return self.stop

    def _go(self, teacher: Backend | None, progress: bool) -> None:
        """Meter the chunk, engine start-up and shutdown included (device time paid for)."""
        g, t = self.cfg.generate, self.cfg.teacher
        api = t.backend == "openai"
        with meter.stage(self.run_dir, "generate", usd_per_device_hour=self.usd_h, max_usd=self.max_usd,
                         device=f"api: {t.model}" if api else None, num_devices=1 if api else t.hardware.count) as self.m:
            self.m.set(mode=g.mode, teacher=t.model, backend=t.backend, resumed=self.tally.requests > 0,
                       requests=0, parsed=0, kept=0, dropped={}, startup_s=0.0)
            own = teacher is None
            if own:
                from replicate.cost.estimate import teacher_layout
                from replicate.engines import open_engine

                # the estimate's layout (replicas x tensor parallel), so the run is what was priced
                teacher = open_engine(t, max_in_flight=g.requests_per_batch,
                                      layout=teacher_layout(t) if t.backend == "vllm" else None)
                self.m.set(startup_s=round(self.m.wall_s, 3))
                if not api:  # the engine has imported torch now, so CUDA devices can be named
                    self.m.device = meter.device_name()[0]
                    self.m.usd_per_device_hour = _reprice(self.cfg, self.m.device)
            self.mode.chat = teacher.chat
            if getattr(teacher, "precision", None):  # a local engine: the dtype it computes in, and why
                self.m.set(precision=teacher.precision.as_ledger())
            sampling = Sampling(max_tokens=g.max_tokens, temperature=g.temperature, top_p=g.top_p,
                                stop=self.mode.stop, seed=g.seed, regex=self.mode.regex)
            bar = Progress("generate", self.needed, len(self.tally.rows), "rows kept", enabled=progress)
            try:
                for c in teacher.stream(self.feed, sampling):
                    self.record(c)
                    bar.update(len(self.tally.rows), tokens_per_s=self.m.fields["output_tokens"] / self.m.wall_s,
                               usd=self.prior_usd + self.spent())
            except KeyboardInterrupt:  # Ctrl-C, SIGTERM: requests in flight were cancelled, maybe billed
                if self.reserved:
                    self.m.set(unsettled_usd=sum(self.reserved.values()))
                raise
            finally:
                bar.close()
                if own:
                    teacher.close()


def _settings(cfg: Pipeline) -> dict:
    """What must not change between a run and its resume (the rows would mix two datasets)."""
    t, g = cfg.teacher, cfg.generate
    return {"mode": g.mode, "structured": g.structured, "teacher": t.model, "backend": t.backend, "chat": t.chat,
            "seed": g.seed, "temperature": g.temperature, "top_p": g.top_p, "max_tokens": g.max_tokens,
            "held_out_fraction": g.held_out_fraction, "seed_tasks_file": g.seed_tasks_file,
            "instructions_file": g.instructions_file}


def _spent(run_dir: Path) -> float:
    """Dollars spent by earlier generate chunks of this run directory (killed ones included)."""
    return meter.spent_usd(run_dir, "generate")


def _pricing(cfg: Pipeline):
    """(usd per device-hour, API price or None, note): APIs are priced per token, self-hosted
    teachers per device-hour of `teacher.hardware` (the price table of `prices`)."""
    from replicate.cost import catalog

    t = cfg.teacher
    if t.backend == "openai":
        if not catalog.has_api_price(t.model, cfg.prices):
            return 0.0, None, f"no {cfg.prices} API price for {t.model}: not counted"
        p = catalog.api_price(t.model, cfg.prices)
        return 0.0, p, f"API ${p.input_usd_per_m}/M input, ${p.output_usd_per_m}/M output, {cfg.prices}"
    usd_h = catalog.usd_per_device_hour(t.hardware.gpu, cfg.prices, t.hardware.spot)
    return usd_h, None, f"${usd_h}/device-hour x {t.hardware.count} {t.hardware.gpu}, {cfg.prices}"


def _reprice(cfg: Pipeline, device: str) -> float:
    """Dollars per device-hour of the device the engine really runs on (a one-line warning when it
    is not the YAML's teacher.hardware.gpu)."""
    from replicate.cost import catalog

    hw = cfg.teacher.hardware
    _, usd_h, warning = catalog.priced_device(hw.gpu, device, cfg.prices, hw.spot)
    if warning:
        logging.getLogger("replicate").warning(f"generate: {warning}")
    return usd_h


def _finish(cfg, run_dir, tally, examples, run, price_note) -> dict:
    """Dataset files and card from the log (after every run), done.json last (complete runs only)."""
    data_dir = run_dir / "data"
    g = cfg.generate
    rows = tally.rows[:dataset.rows_needed(examples, g.held_out_fraction)]
    train_n, held_n = dataset.write_dataset(data_dir, rows, g.held_out_fraction)
    chunks = meter.measured(meter.ledger(run_dir), "generate")
    stats = {
        "name": cfg.name, "teacher": cfg.teacher.model, "backend": cfg.teacher.backend, "chat": run.mode.chat,
        "mode": g.mode, "seed": g.seed, "complete": run.complete, "exhausted": run.exhausted,
        "sampling": {"temperature": g.temperature, "top_p": g.top_p, "max_tokens": g.max_tokens},
        "train_rows": train_n, "held_out_rows": held_n, "held_out_fraction": g.held_out_fraction,
        "requests": tally.requests, "parsed": tally.parsed, "kept": len(tally.rows), "empty_responses": tally.empty,
        "dropped": tally.dropped, "prompt_tokens": tally.prompt_tokens, "output_tokens": tally.output_tokens,
        "wall_s": sum(r["wall_s"] for r in chunks), "device_hours": sum(r["device_hours"] for r in chunks),
        "usd": sum(r["usd"] for r in chunks), "chunks": len(chunks), "device": chunks[-1]["device"] if chunks else "",
        "price": price_note,
    }
    dataset.write_card(data_dir, stats)
    if run.complete:
        dataset.write_done(data_dir, stats)
    return stats


def _reuse(cfg: Pipeline, data_dir: Path, examples: int) -> dict:
    """mode none: an existing Alpaca file becomes the dataset (its first rows, the same split)."""
    from replicate.generate import selfinstruct as si

    if not cfg.generate.instructions_file:
        raise UserError("generate.instructions_file: mode none needs an Alpaca JSONL file to reuse")
    rows = si.load_instructions(cfg.generate.instructions_file, require_output=True)
    dataset.record_settings(data_dir, _settings(cfg))
    needed = dataset.rows_needed(examples, cfg.generate.held_out_fraction)
    train_n, held_n = dataset.write_dataset(data_dir, rows[:needed], cfg.generate.held_out_fraction)
    stats = {"name": cfg.name, "mode": "none", "source": cfg.generate.instructions_file, "train_rows": train_n,
             "held_out_rows": held_n, "kept": min(len(rows), needed), "requests": 0, "prompt_tokens": 0,
             "output_tokens": 0, "usd": 0.0, "complete": True, "exhausted": len(rows) < needed}
    dataset.write_done(data_dir, stats)
    return stats

"""The evaluate stage's models and their generations: which models (base, the fine-tuned
students, an optional control, the teacher), their prompt formats, their outputs on every item
(through replicate/engines/, cached per model in eval/generations/ so a rerun resumes), and what
the stage's device and API tokens cost. Every model answers greedily; the teacher also answers each
open item a second time, sampled as in the generate stage (kind "sample": the fidelity ceiling).
The model-based scores are in model_scores.py; stage.py calls both in order.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from replicate.config import Evaluate, Pipeline
from replicate.cost import catalog
from replicate.engines.base import Sampling
from replicate.errors import UserError
from replicate.evaluate.reference import ReferencePrompts
from replicate.files import append_jsonl, read_jsonl
from replicate.prompts import ALPACA_STOP, alpaca_prompt, user_message


@dataclass
class Contender:
    role: str  # base | student | teacher
    ref: str  # the reference as given (packaged:NAME, a folder, an API model name)
    path: Path | None  # local HF folder; None for an API model
    chat: bool  # chat template (True) or the Alpaca training template (False)
    backend: str  # vllm | transformers | openai
    max_len: int  # context length: prompts at least this long are skipped and counted
    trust_remote_code: bool = False
    reference: ReferencePrompts | None = None  # the teacher: how its open answers are asked for

    @property
    def signature(self) -> tuple:
        """Two roles with the same signature produce the same outputs: generate them once."""
        return (str(self.path.resolve()) if self.path else self.ref, self.chat, self.backend)


def _model_config(path: Path) -> dict:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"{path}: not an HF model folder (config.json missing or unreadable)") from None
    return {**cfg.get("text_config", {}), **cfg}


def has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((path / "tokenizer_config.json").read_text()).get("chat_template"))
    except (OSError, json.JSONDecodeError):
        return False


def _local(role: str, ref: str, path: Path, chat: bool, backend: str, max_len: int, trc: bool) -> Contender:
    if chat and not has_chat_template(path):
        raise UserError(f"{role} {ref}: the chat prompt format needs a chat template, and this tokenizer has none")
    own = int(_model_config(path).get("max_position_embeddings") or max_len)
    return Contender(role, ref, path, chat, backend, min(max_len, own), trc)


def student_role(i: int) -> str:
    """Role of the i-th fine-tuned student (0 = the run's own; the others are further seeds)."""
    return "student" if i == 0 else f"student_{i + 1}"


def contenders(cfg: Pipeline, student_dirs: list[Path]) -> list[Contender]:
    """Base, the students (one per fine-tuning seed), the control, the teacher, resolved to local
    folders (missing ones are one-line errors)."""
    from replicate.weights import resolve

    t, ev = cfg.teacher, cfg.evaluate
    if t.backend == "openai":
        teacher = Contender("teacher", t.model, None, True if t.chat is None else t.chat, "openai", 1 << 30)
    else:
        path = resolve(t.model, trust_remote_code=t.trust_remote_code)
        chat = has_chat_template(path) if t.chat is None else t.chat
        teacher = _local("teacher", t.model, path, chat, t.backend, t.max_model_len, t.trust_remote_code)
    teacher.reference = ReferencePrompts(cfg, teacher.chat)
    trc = cfg.student.trust_remote_code
    out = [_local("base", cfg.student.model, resolve(cfg.student.model, trust_remote_code=trc), False,
                  ev.backend, ev.max_model_len, trc)]
    for i, student_dir in enumerate(Path(d) for d in student_dirs):
        if not (student_dir / "config.json").is_file():
            raise UserError(f"evaluate: no student model in {student_dir} (no config.json): run `replicate finetune` "
                            "first, or give --student DIR")
        out.append(_local(student_role(i), str(student_dir), student_dir, ev.student_prompt == "chat", ev.backend,
                          ev.max_model_len, trc))
    if ev.control:
        path = resolve(ev.control, trust_remote_code=trc)
        out.append(_local("control", ev.control, path, has_chat_template(path), ev.backend, ev.max_model_len, trc))
    # The teacher last: when it is also the judge, its engine stays up for the judging that follows.
    return out + [teacher]


def prompt_for(c: Contender, item: dict, kind: str = "probe"):
    """What the backend is given: the teacher's open answers in its training format (reference.py);
    otherwise chat messages for a chat model, else the Alpaca training prompt."""
    if c.reference is not None and kind in ("open", "sample"):
        return c.reference.prompt(item)
    if c.chat:
        return [{"role": "user", "content": user_message(item["instruction"], item.get("input", ""))}]
    return alpaca_prompt(item["instruction"], item.get("input", ""))


def prompt_text(c: Contender, tok, item: dict, kind: str = "probe") -> str:
    """The same prompt as text (the chat template rendered exactly as the engines render it)."""
    from replicate.engines.base import render_chat

    p = prompt_for(c, item, kind)
    return p if isinstance(p, str) else render_chat(tok, p)


def device_price(cfg: Pipeline) -> tuple[float, int]:
    """(price of one device, devices) the evaluation runs on (evaluate.hardware, else the
    teacher's); the meter multiplies the two, as for the other stages."""
    hw = cfg.evaluate.hardware or cfg.teacher.hardware
    return catalog.usd_per_device_hour(hw.gpu, cfg.prices, hw.spot), hw.count


@contextlib.contextmanager
def progress() -> Iterator:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        yield bar


# ---------------------------------------------------------------------------- generation

@dataclass
class Generations:
    outputs: dict[str, dict[str, list]] = field(default_factory=dict)  # role -> kind -> text | None (skipped)
    prompt_tokens: int = 0
    output_tokens: int = 0
    api_usd: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)  # prompts too long for the model's context
    teacher_backend: object = None  # left open when the judge is the teacher itself (closed by the caller)


def _open_backend(c: Contender, cfg: Pipeline):
    from replicate.engines import open_engine
    from replicate.engines.hf import HFEngine
    from replicate.engines.vllm import VLLMEngine

    try:
        if c.role == "teacher":  # the estimate's layout, as in generate
            from replicate.cost.estimate import teacher_layout

            vllm = cfg.teacher.backend == "vllm"
            return open_engine(cfg.teacher, layout=teacher_layout(cfg.teacher, cfg.evaluate.hardware) if vllm else None)
        if c.backend == "vllm":
            return VLLMEngine(c.path, chat=c.chat, dtype=cfg.evaluate.dtype, max_model_len=c.max_len,
                              seed=cfg.evaluate.seed, trust_remote_code=c.trust_remote_code, max_in_flight=64)
        elif c.backend == "transformers":
            return HFEngine(c.path, chat=c.chat, dtype=cfg.evaluate.dtype, trust_remote_code=c.trust_remote_code)
    except RuntimeError as e:  # vLLM's "Engine core initialization failed" (the cause is in its log above)
        raise UserError(f"could not start the {c.backend} engine for the {c.role} ({c.ref}): {str(e).splitlines()[0]}"
                        " -- often too little free memory: stop other engines, lower VLLM_CPU_KVCACHE_SPACE, "
                        "or set evaluate.backend: transformers; rerun to resume") from None
    raise UserError(f"evaluate.backend: unknown backend {c.backend!r}")


def cache_meta(c: Contender, ev: Evaluate) -> dict:
    """What one role's cached generations were made with: a cache with other meta is redone."""
    meta = {"model": list(c.signature), "max_tokens": ev.max_tokens, "probe_max_tokens": ev.probe_max_tokens,
            "max_len": c.max_len, "seed": ev.seed,
            "stop": {kind: list(answer_stop(c, kind)) for kind in ("open", "probe")}}
    if c.reference is not None:  # the teacher: its reference format and the sampled answer's settings
        meta["reference"] = c.reference.format
        meta["sample"] = list(c.reference.sampling)
    return meta


def _cache(out_dir: Path, c: Contender, ev: Evaluate) -> tuple[Path, dict, dict]:
    """(file, meta, rows already generated by this same model and settings) for one role."""
    path = out_dir / "generations" / f"{c.role}.jsonl"
    meta = cache_meta(c, ev)
    rows = read_jsonl(path, torn_ok=True)
    if rows and rows[0].get("meta") != meta:
        path.unlink()  # another model or other settings: start this role afresh
        rows = []
    if not rows:
        append_jsonl(path, {"meta": meta})
    return path, meta, {r["key"]: r for r in rows[1:] if "key" in r}


def item_key(kind: str, item: dict) -> str:
    """Cache key of one item: its id and a hash of its text, so an edited eval file or regenerated
    held-out data is never answered from a stale cache."""
    text = f"{item['instruction']}\0{item.get('input', '')}"
    return f"{kind}:{item['id']}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def judge_is_teacher(cfg: Pipeline) -> bool:
    """The judge is the teacher's own self-hosted model: one engine serves both."""
    j, t = cfg.evaluate.judge, cfg.teacher
    return j is not None and j.backend == t.backend != "openai" and j.model == t.model


def answer_stop(c: Contender, kind: str = "open") -> tuple[str, ...]:
    """Where an answer ends besides EOS: for the teacher's open answers, its reference format's own
    stop; for any model given the Alpaca prompt, the template's next section header. A base model
    does not stop: in a demo run it wrote 131 such headers into its 100 answers, each followed by
    more of the same, and 99 answers ran to max_tokens; all of it was scored as its answer."""
    if c.reference is not None and kind in ("open", "sample"):
        return c.reference.stop
    return () if c.chat else ALPACA_STOP


def _jobs(c: Contender, opens: list[dict], probes: list[dict], ev: Evaluate) -> list[tuple[str, dict, Sampling]]:
    """(kind, item, sampling) of everything one model answers. Greedy everywhere; the teacher
    also answers each open item once more, sampled (kind "sample", per-item seeds)."""
    stop = answer_stop(c)
    jobs = [("open", it, Sampling(max_tokens=ev.max_tokens, temperature=0.0, stop=stop, seed=ev.seed)) for it in opens]
    if c.reference is not None:
        temperature, top_p = c.reference.sampling
        jobs += [("sample", it, Sampling(max_tokens=ev.max_tokens, temperature=temperature, top_p=top_p, stop=stop,
                                         seed=ev.seed + 1)) for it in opens]
    probe = Sampling(max_tokens=ev.probe_max_tokens, temperature=0.0, stop=answer_stop(c, "probe"), seed=ev.seed)
    return jobs + [("probe", it, probe) for it in probes]


def generate_all(cons: list[Contender], opens: list[dict], probes: list[dict], cfg: Pipeline, out_dir: Path,
                 bar, teacher_backend=None) -> Generations:
    """Every model answers every open item and probe (the teacher also samples a second answer).
    Resumable: rows are appended to eval/generations/<role>.jsonl as they finish, and a rerun
    generates only what is missing. Engines are started only for models with work left, one at
    a time, and closed after use."""
    from transformers import AutoTokenizer

    ev = cfg.evaluate
    gen = Generations()
    done_by_sig: dict[tuple, dict] = {}
    for c in cons:
        jobs = _jobs(c, opens, probes, ev)
        task = bar.add_task(f"generate {c.role}", total=len(jobs))
        path, _, have = _cache(out_dir, c, ev)
        same = done_by_sig.get(c.signature)
        if same is not None and c.reference is None:  # e.g. student == base: same prompts and model
            for key, row in same.items():
                if key not in have:
                    append_jsonl(path, row)
                    have[key] = row
        todo = [(kind, it, s) for kind, it, s in jobs if item_key(kind, it) not in have]
        backend = None
        tok = AutoTokenizer.from_pretrained(c.path, trust_remote_code=c.trust_remote_code) if c.path and todo else None
        try:
            bar.update(task, completed=len(jobs) - len(todo))
            for kind in ("open", "sample", "probe"):
                part = [(it, s) for k, it, s in todo if k == kind]
                step = ev.requests_per_batch
                for i in range(0, len(part), step):
                    chunk = part[i:i + step]
                    runnable = []
                    for it, _ in chunk:
                        if tok is not None and _prompt_len(c, tok, it, kind) >= c.max_len:
                            row = {"key": item_key(kind, it), "output": None, "skipped": "context"}
                            append_jsonl(path, row)
                            have[row["key"]] = row
                        else:
                            runnable.append(it)
                    if runnable:
                        if backend is None:
                            backend = teacher_backend if (c.role == "teacher" and teacher_backend) else \
                                _open_backend(c, cfg)
                        seeds = [_item_seed(ev.seed, it) for it in runnable] if kind == "sample" else None
                        outs = backend.complete([prompt_for(c, it, kind) for it in runnable], chunk[0][1], seeds)
                        for it, o in zip(runnable, outs):
                            text = c.reference.clean(o.text) if c.reference is not None and kind != "probe" else o.text
                            row = {"key": item_key(kind, it), "output": text, "prompt_tokens": o.prompt_tokens,
                                   "output_tokens": o.output_tokens, "finish_reason": o.finish_reason}
                            append_jsonl(path, row)
                            have[row["key"]] = row
                            gen.prompt_tokens += o.prompt_tokens
                            gen.output_tokens += o.output_tokens
                            if c.backend == "openai":
                                gen.api_usd += catalog.api_usd(c.ref, cfg.prices, o.prompt_tokens, o.output_tokens)
                    bar.advance(task, len(chunk))
        finally:
            if c.role == "teacher" and backend is not None and backend is not teacher_backend \
                    and judge_is_teacher(cfg):
                gen.teacher_backend = backend
            elif backend is not None and backend is not teacher_backend:
                backend.close()
        done_by_sig[c.signature] = have
        kinds = (("open", opens), ("probe", probes)) + ((("sample", opens),) if c.reference is not None else ())
        rows = {kind: [have[item_key(kind, it)] for it in items] for kind, items in kinds}
        gen.outputs[c.role] = {kind: [r["output"] for r in rs] for kind, rs in rows.items()}
        gen.skipped[c.role] = sum(1 for rs in rows.values() for r in rs if r.get("skipped"))
    return gen


def _item_seed(seed: int, item: dict) -> int:
    """The sampled answer's seed: fixed by (evaluate.seed, item id), whatever the batch."""
    return int(hashlib.sha256(f"{seed}:{item['id']}".encode()).hexdigest()[:8], 16)


def _prompt_len(c: Contender, tok, item: dict, kind: str) -> int:
    chat = not isinstance(prompt_for(c, item, kind), str)
    return len(tok(prompt_text(c, tok, item, kind), add_special_tokens=not chat)["input_ids"])

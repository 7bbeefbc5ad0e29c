"""The run directory: where a run lives, who may write into it, what it was started with, what is done.

    runs/<name>/             default_run_dir(name); a sweep's root is runs/<name>-sweep/
                             (the name is one safe path component: config.check_run_name);
                             --run-dir may be anywhere, but must be a folder we can create and lock
      .lock                  held (flock) by the one process writing into the directory: every
                             command that writes here takes it (run, sweep, demo, generate,
                             finetune, evaluate, report)
      pipeline.yaml          the resolved settings; a resume must match them (budget aside)
      data/done.json         \\
      student/train_metrics.json   > each stage's done marker, written LAST (DONE)
      eval/scores.json       /
      n<N>/                  a sweep's sub-run for N examples (sweep_dirs)
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from replicate import files
from replicate.config import Pipeline
from replicate.errors import UserError

RUNS = Path("runs")
DONE = {"generate": "data/done.json", "finetune": "student/train_metrics.json", "evaluate": "eval/scores.json"}
STAGES = tuple(DONE)  # in data-flow order
RESOLVED = "pipeline.yaml"


def default_run_dir(name: str, given: str | Path | None = None, suffix: str = "") -> Path:
    """--run-dir when given, else runs/<name><suffix>."""
    return Path(given) if given else RUNS / f"{name}{suffix}"


def is_done(run_dir: Path, stage: str) -> bool:
    return (Path(run_dir) / DONE[stage]).is_file()


def sweep_dirs(root: str | Path) -> list[Path]:
    """A sweep root's sub-runs n<N>/, smallest N first."""
    subs = [p for p in Path(root).glob("n*") if p.is_dir() and p.name[1:].isdigit()]
    return sorted(subs, key=lambda p: int(p.name[1:]))


def _usable(run_dir: Path) -> None:
    """Create the run directory (and its parents) or say in one line why it cannot be one."""
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"{run_dir}: exists and is not a folder; give another --run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot be made a run directory ({e.strerror}); give another --run-dir") from None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on run_dir/.lock; the OS drops it when the holder exits or is killed.
    A second writer refuses at once (it does not wait: a queued run would silently repeat the
    first one's decisions). Once the lock is ours, a ledger whose last line a crash tore is
    repaired (files.append_jsonl's rule: the torn tail is moved aside and reported)."""
    run_dir = Path(run_dir)
    _usable(run_dir)
    try:
        fh = open(run_dir / ".lock", "a+")  # noqa: SIM115 - closing the file releases the flock
    except OSError as e:
        raise UserError(f"{run_dir}: cannot be used as a run directory ({e.strerror}); give another --run-dir") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = " ".join(fh.read(200).split()) or "another process"
            raise UserError(f"{run_dir} is in use by {holder}; wait for it to finish (a rerun then resumes) "
                            "or give another --run-dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"`replicate` pid {os.getpid()} since {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
        fh.flush()
        files.repair_tail(run_dir / "ledger.jsonl")
        yield


def _comparable(cfg: dict) -> dict:
    # The budget may change between attempts (raise it and resume); everything else may not.
    return {k: v for k, v in cfg.items() if k != "budget"}


def first_difference(old, new, path: str = "") -> str | None:
    """`a.b: old -> new` for the first key where two nested mappings differ, else None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            d = first_difference(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
            if d:
                return d
        return None
    return None if old == new else f"{path}: {old!r} -> {new!r}"


def write_resolved(cfg: Pipeline, run_dir: Path) -> None:
    """Write the resolved pipeline.yaml; refuse to resume a directory started with other settings."""
    path = Path(run_dir) / RESOLVED
    new = cfg.model_dump(mode="json")
    if path.exists():
        old = read_resolved(run_dir).model_dump(mode="json")
        diff = first_difference(_comparable(old), _comparable(new))
        if diff:
            raise UserError(f"{run_dir} was started with a different pipeline ({diff}); "
                            "rerun with the same settings, give another --run-dir, or delete the directory")
    files.write_yaml(path, new, header="# resolved by `replicate`; the run's settings\n")


def check_settings(path: Path, settings: dict, what: str) -> None:
    """A stage's record of what its saved work was made with (`path`, JSON; the stage writes it when
    it starts work): a resume, or a finished stage asked again, with other settings is refused,
    naming the first difference and how to start afresh. Keys the record lacks (an older version's) pass."""
    path = Path(path)
    if not path.exists():
        return
    old = files.read_json_object(path, "")
    diff = first_difference({k: old[k] for k in settings if k in old}, {k: settings[k] for k in settings if k in old})
    if diff:
        raise UserError(f"{path.parent} holds {what} made with other settings ({diff}); rerun with the same "
                        f"settings, give another --run-dir, or delete {path.parent} to start it afresh")


def read_resolved(run_dir: Path) -> Pipeline | None:
    """The settings a run directory was started with (None when it has no pipeline.yaml)."""
    from replicate.config import parse_pipeline

    path = Path(run_dir) / RESOLVED
    if not path.exists():
        return None
    data = files.read_yaml(path, "")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected the run's settings (a mapping); delete it to start the run afresh")
    return parse_pipeline(data, str(path))

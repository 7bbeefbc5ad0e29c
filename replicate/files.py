"""Every read and write of the YAML, JSON and JSONL files the program keeps or is handed.

Readers are strict: a missing file, bytes that are not UTF-8, a syntax error, a line that is not a
JSON object or a duplicate YAML key end in one UserError naming the file (and line). Writers are
crash-safe:

    write_atomic / write_json / write_jsonl / write_yaml / replace_dir
        the whole file (or folder) or nothing: a temporary sibling, fsync, rename over the old one;
    append_jsonl
        one line per call, as one write + fsync, so a kill leaves at most a torn LAST line. The
        next append first moves such a tail aside (to FILE.torn) rather than gluing a new line
        onto it, and every reader skips a torn last line (it has no newline) and nothing else.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from replicate.errors import UserError

log = logging.getLogger("replicate")

# ---- where the shipped data lives ------------------------------------------------------------------


def shipped(folder: str) -> Path:
    """A data folder that ships with the program: `budgets` or `pipelines`. In a source checkout
    it sits at the top of the repository; an installed wheel carries it inside the package
    (pyproject.toml maps it to replicate/<folder>)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / folder, package.parent / folder):
        if candidate.is_dir():
            return candidate
    raise UserError(f"{folder}/ not found next to {package}: reinstall replicate-costsim")


# ---- reading -------------------------------------------------------------------------------------


def read_text(path: str | Path, missing: str) -> str:
    """A file's text, or a UserError: `missing` when it is absent, the byte offset when not UTF-8."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise UserError(f"{path}: {missing}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror})") from None


def _strict_loader(base: type) -> type:
    """`base` (a PyYAML safe loader), except that a key given twice in one mapping is an error
    (PyYAML silently keeps the last one, so a typo'd second `epochs:` would win unseen) and YAML
    1.2 floats such as 2e-4 are numbers."""

    class Loader(base):
        pass

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
    # YAML 1.2 floats without a dot or an exponent sign (1e30, 2e-4): YAML 1.1 reads them as strings,
    # so `learning_rate: 2e-4` would be refused as "not a number".
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
        list("-+.0123456789"))
    return Loader


def _mapping_without_duplicates(loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        if isinstance(key, (str, int, float, bool)):
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader = _strict_loader(yaml.SafeLoader)
# libyaml's C parser, when PyYAML has it, for the shipped budget tables: 10x faster, so `plan` and
# `estimate` answer in well under a second. Its complaints are vaguer, so a file it refuses is read
# again with the Python parser for the message.
_FastLoader = _strict_loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _yaml_problem(e: yaml.YAMLError) -> str:
    """The parser's complaint in one line: what, then where (`line 3, column 7`)."""
    problem = getattr(e, "problem", None) or " ".join(str(e).split())
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def parse_yaml(text: str, source: str, *, fast: bool = False) -> Any:
    """YAML text -> data (safe tags only, no duplicate keys); the parser's complaint as a UserError.
    `fast`: libyaml's parser first (large files the program ships)."""
    if fast:
        try:
            return yaml.load(text, Loader=_FastLoader)
        except (yaml.YAMLError, RecursionError):
            pass  # the Python parser below says what is wrong, and where
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise UserError(f"{source}: not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise UserError(f"{source}: not valid YAML: nested too deeply") from None


def read_yaml(path: str | Path, missing: str, *, fast: bool = False) -> Any:
    return parse_yaml(read_text(path, missing), str(path), fast=fast)


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"{text} does not fit a float")
    return x


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str) -> Any:
    """Strict JSON: no NaN/Infinity, no float overflow; ValueError (JSONDecodeError) otherwise."""
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _json_problem(e: ValueError) -> str:
    return e.msg if isinstance(e, json.JSONDecodeError) else str(e)


def read_json(path: str | Path, missing: str) -> Any:
    text = read_text(path, missing)
    try:
        return parse_json(text)
    except ValueError as e:
        line = f", line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise UserError(f"{path}: not valid JSON ({_json_problem(e)}{line})") from None


def read_json_object(path: str | Path, missing: str) -> dict:
    """read_json for files that must hold one JSON object (state files, settings, scores)."""
    data = read_json(path, missing)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_model(where: str, data: Any, model, remedy: str) -> None:
    """`data` (read from `where`: a file, or file:line) must validate against the pydantic `model`
    (what this program writes there); the first problem is one UserError line, with `remedy`."""
    from pydantic import ValidationError  # here, not at the top: the cost model reads files without pydantic

    try:
        model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{where}: {field + ': ' if field else ''}{err['msg'].removeprefix('Value error, ')}"
                        f"{remedy}") from None


def jsonl_rows(path: str | Path, missing: str, *, torn_ok: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-blank line; anything that is not a JSON object is a UserError
    naming file:line. `torn_ok` (files this program appends to): a last line without its newline
    that does not parse is a write a kill cut short, and is skipped."""
    path = Path(path)
    text = read_text(path, missing)
    lines = text.split("\n")  # not splitlines(): U+2028 may sit inside a JSON string
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except ValueError as e:
            if torn_ok and lineno == len(lines):  # after the last newline: torn by a kill mid-append
                return  # the next append moves it aside
            hint = " (expected JSONL: one JSON object per line)" if line.lstrip().startswith("[") else ""
            raise UserError(f"{path}:{lineno}: not valid JSON: {_json_problem(e)}{hint}") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def read_jsonl(path: str | Path, missing: str | None = None, *, torn_ok: bool = False) -> list[dict]:
    """The objects of a JSONL file. `missing` None: an absent file is empty (a cache or a log not
    written yet); else the UserError to raise. `torn_ok`: the file is one this program appends to
    (append_jsonl), whose last line a kill may have torn; files written whole (write_jsonl) and
    files a user hands in are read strictly, every line."""
    if missing is None and not Path(path).exists():
        return []
    return [row for _, row in jsonl_rows(path, missing or "no such file", torn_ok=torn_ok)]


# ---- writing -------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, text: str) -> None:
    """Write a whole file or nothing: temporary sibling, fsync, rename over the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _jsonable(o: Any) -> Any:
    """numpy scalars as Python numbers, anything else (a Path, a dataclass) as its text."""
    return o.item() if hasattr(o, "item") else str(o)


def finite(o: Any) -> Any:
    """`o` with every NaN or infinity as None (null): JSON has no such numbers, and this program
    reads JSON strictly (parse_json), so what it writes must read back. A `never` (an infinite
    number of examples) is null in the files, as an undefined score is."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    if hasattr(o, "item") and getattr(o, "ndim", 0) == 0:  # a numpy scalar
        return finite(o.item())
    return o


def write_json(path: str | Path, data: Any) -> None:
    write_atomic(path, json.dumps(finite(data), indent=2, ensure_ascii=False, default=_jsonable, allow_nan=False) + "\n")


def jsonl_text(rows) -> str:
    return "".join(json.dumps(finite(r), ensure_ascii=False, default=_jsonable, allow_nan=False) + "\n" for r in rows)


def write_jsonl(path: str | Path, rows) -> None:
    write_atomic(path, jsonl_text(rows))


def write_yaml(path: str | Path, data: Any, header: str = "") -> None:
    write_atomic(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def repair_tail(path: str | Path) -> None:
    """A last line without its newline (a kill mid-append). A whole JSON object lost only its
    newline: give it one. Anything else is a torn write: move it to FILE.torn, cut it off, say so."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        start = max(0, size - (1 << 20))
        fh.seek(start)
        chunk = fh.read()
        cut = chunk.rfind(b"\n")
        keep = start + cut + 1 if cut >= 0 else 0
        tail = chunk[cut + 1:]
        try:
            whole = isinstance(parse_json(tail.decode("utf-8")), dict)
        except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
            whole = False
        if whole:
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n")
        else:
            aside = path.with_name(path.name + ".torn")
            with open(aside, "ab") as torn:
                torn.write(tail + b"\n")
            fh.truncate(keep)
            log.warning("replicate: warning: %s ended in a torn line (%d bytes, a write cut short by a crash); "
                        "moved it to %s", path, len(tail), aside)
        fh.flush()
        os.fsync(fh.fileno())


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one JSON line durably: a single write of the whole line, then fsync."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(path)
    data = jsonl_text([row]).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(final: str | Path, write: Callable[[Path], Any]) -> None:
    """A folder written whole or not at all: `write(tmp)` fills a sibling, which then replaces `final`."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)

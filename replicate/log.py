"""Logging: the `replicate` logger, `-v/-q`, and the engines' own logs.

Every status line, progress line and warning goes through `logging.getLogger("replicate")` (a
module's own logger is a child of it), on stderr, so a command's stdout holds only its result
(`--json`). The CLI sets the level once:

    replicate -q run ...    warnings and errors only; no progress
    replicate run ...       status lines and progress (INFO)
    replicate -v run ...    also DEBUG lines, and vLLM's, transformers'/TRL's and datasets' own
                            logs, which are quiet by default (their start-up chatter would bury
                            the progress)

The third-party loggers are set through their environment variables, so the engine's own
process (vLLM's engine core) and accelerate's training processes inherit the choice.
"""
from __future__ import annotations

import logging
import os
import sys

LOGGER = "replicate"
QUIET, NORMAL, VERBOSE = -1, 0, 1


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is at the time (pytest's capture, a redirect)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def setup(verbosity: int = NORMAL) -> logging.Logger:
    """Configure the `replicate` logger (idempotent) and the third-party libraries' verbosity."""
    log = logging.getLogger(LOGGER)
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        log.addHandler(handler)
        log.propagate = False
    level = {QUIET: logging.WARNING, NORMAL: logging.INFO}.get(verbosity, logging.DEBUG)
    log.setLevel(level)
    fmt = "%(asctime)s %(name)s %(levelname)s: %(message)s" if verbosity >= VERBOSE else "%(message)s"
    for h in log.handlers:
        h.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    if verbosity >= VERBOSE:
        # Let the engines speak (a user's own setting of these variables wins).
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info")
        os.environ.setdefault("DATASETS_VERBOSITY", "info")
        os.environ.setdefault("REPLICATE_ENGINE_LOGS", "1")
        if not logging.getLogger().handlers:  # vLLM/accelerate log through the root logger's children
            logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                                format="%(asctime)s %(name)s %(levelname)s: %(message)s", datefmt="%H:%M:%S")
    return log


def verbose() -> bool:
    """Whether -v was given (the libraries' own logs and progress bars are wanted)."""
    return os.environ.get("REPLICATE_ENGINE_LOGS") == "1" or logging.getLogger(LOGGER).isEnabledFor(logging.DEBUG)


def quiet() -> bool:
    """Whether -q was given (no status lines, no progress)."""
    return not logging.getLogger(LOGGER).isEnabledFor(logging.INFO)


def get(name: str = "") -> logging.Logger:
    """`get(__name__)` in a module; the `replicate` logger itself without a name."""
    if not name or name == LOGGER:
        return logging.getLogger(LOGGER)
    return logging.getLogger(name if name.startswith(LOGGER + ".") else f"{LOGGER}.{name}")

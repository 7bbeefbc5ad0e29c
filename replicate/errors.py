"""How the program fails: the one exception a user can cause (UserError), and how every failure
becomes one line on stderr and an exit code (`exit_code`, what the CLI runs each command under).

    2    UserError: bad input, a missing file or extra, a budget exceeded, a directory in use;
         and an OSError from the environment (permission denied, disk full): `replicate: error: ...`
    130  Ctrl-C; 143 SIGTERM, 129 SIGHUP (unwound like Ctrl-C, so every `finally` runs)
    141  stdout closed early (`replicate plan --json | head -2`): nothing more is said
    1    a bug: `replicate: internal error: ...` on one line (REPLICATE_DEBUG=1: the traceback)
"""
from __future__ import annotations

import os
import signal
import sys
import threading


class UserError(Exception):
    """Bad input, a missing file or extra, a budget exceeded: anything the user can fix."""


def missing_extra(package: str, extra: str) -> UserError:
    """The one-line message for an optional dependency that is not installed."""
    return UserError(f"{package} is not installed: run  pip install -e '.[{extra}]'  (or `make setup`)")


class BudgetExceeded(UserError):
    """Spending would pass the budget: the stage saved everything finished and stopped cleanly."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a scheduler, a container stop) or SIGHUP (the terminal closed):
    unwinds like Ctrl-C, so every `finally` runs: engine processes are stopped, the chunk's ledger
    line is written."""


def _terminate(signum, frame):
    raise Terminated(signal.Signals(signum).name)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
RESUME = "everything finished is saved: rerun the same command to resume"


def _say(line: str) -> None:
    print(" ".join(line.split()), file=sys.stderr)  # one line, whatever the message held


def exit_code(func, *args) -> int:
    """Run `func(*args)` (a CLI command returning its exit code) so that nothing ends in a traceback."""
    # Only signals left at their default: `nohup` ignores SIGHUP on purpose, and that must hold.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _terminate) for s in STOP_SIGNALS
                if main_thread and signal.getsignal(s) is signal.SIG_DFL}
    try:
        code = func(*args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return code
    except UserError as e:
        _say(f"replicate: error: {e}")
        return 2
    except BrokenPipeError:  # `replicate ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a writer killed by SIGPIPE
    except OSError as e:  # the environment refused: disk full, permission denied, read-only file system
        _say(f"replicate: error: {e.filename}: {e.strerror or e}" if e.filename else f"replicate: error: {e}")
        return 2
    except Terminated as e:
        name = str(e) or "SIGTERM"
        _say(f"replicate: stopped by {name}; {RESUME}")
        return 128 + signal.Signals[name].value  # 143 for SIGTERM, 129 for SIGHUP, as a shell reports them
    except KeyboardInterrupt:
        _say(f"replicate: interrupted; {RESUME}")
        return 130
    except Exception as e:  # a bug, not the user's doing: still one line
        if os.environ.get("REPLICATE_DEBUG"):
            raise
        _say(f"replicate: internal error: {type(e).__name__}: {str(e)[:300]} (a bug: please report it; "
             "REPLICATE_DEBUG=1 shows the traceback)")
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""Numbers and tables for people: one formatter per kind of number, one renderer per table format.

Every console table, report table and status line goes through these, so a dollar, a duration
or an interval reads the same everywhere.

    money(0.000862) -> "$0.000862"   money(0.0123) -> "$0.0123"   money(0.1) -> "$0.10"   money(12.3) -> "$12.30"
    money(1234) -> "$1,234"
    tokens(49_600) -> "49.6K"   tokens(21_840_000) -> "21.8M"
    duration(95) -> "95 s"   duration(600) -> "10.0 min"   duration(9000) -> "2.5 h"
    num(0.123456) -> "0.123"   num(12345.6) -> "12,346"   num(None) -> "-"
    interval(0.15, [0.07, 0.22]) -> "0.15 [0.07, 0.22]"
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence

MISSING = "-"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x, digits: int = 3, missing: str = MISSING) -> str:
    """`digits` significant digits; thousands with separators; `missing` for None or not finite."""
    if isinstance(x, str):
        return x
    if not _finite(x):
        return missing
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    if abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x + 0.0:.{digits}g}"  # + 0.0: -0.0 prints as 0


def fixed(x, decimals: int = 2, missing: str = MISSING) -> str:
    """A fixed number of decimals (scores in [0, 1], gap_closed); `missing` for None."""
    return f"{x + 0.0:.{decimals}f}" if _finite(x) else missing


def money(usd) -> str:
    """Dollars with the precision their size needs: cents for dollars, three significant digits
    below a dollar (a CPU run costs fractions of a cent), no cents from $100 up."""
    if not _finite(usd):
        return MISSING
    if usd == 0:
        return "$0"
    if abs(usd) >= 100:
        return f"${usd:,.0f}"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    if abs(usd) < 1e-4:
        return f"${usd:.2e}"
    text = f"{usd:.3g}"  # three significant digits, but never fewer than cents: $0.10, not $0.1
    return f"${usd:.2f}" if len(text.partition(".")[2]) < 2 else f"${text}"


def tokens(n) -> str:
    """A token count with an SI suffix: 950 -> "950", 49_600 -> "49.6K", 21_840_000 -> "21.8M"."""
    if not _finite(n):
        return MISSING
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"


def duration(seconds) -> str:
    if not _finite(seconds):
        return MISSING
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def hours(h) -> str:
    return duration(h * 3600) if _finite(h) else MISSING


def interval(point, ci: Sequence | None, decimals: int = 2) -> str:
    """`point [lo, hi]`; the point alone when there is no interval."""
    text = fixed(point, decimals)
    if ci and len(ci) == 2 and _finite(ci[0]) and _finite(ci[1]):
        text += f" [{fixed(ci[0], decimals)}, {fixed(ci[1], decimals)}]"
    return text


def ratio(measured, estimated) -> float | None:
    """measured / estimated, None when either is missing or the estimate is 0."""
    if not _finite(measured) or not _finite(estimated) or estimated == 0:
        return None
    return measured / estimated


def markdown(head: Sequence[str], body: Sequence[Sequence]) -> str:
    """A Markdown table; `|` inside a cell is escaped."""
    def cell(c) -> str:
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def html_table(head: Sequence[str], body: Sequence[Sequence]) -> str:
    """An HTML table; Markdown bold (`**x**`) becomes <b>."""
    def cell(c) -> str:
        text = html.escape(str(c))
        return f"<b>{text[2:-2]}</b>" if text.startswith("**") and text.endswith("**") else text

    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def console_table(title: str, head: Sequence[str], body: Sequence[Sequence], *, bold_rows: Sequence[int] = (),
                  min_width: int = 110) -> None:
    """A table on stdout with rich; cells are text, never console markup."""
    import sys

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title)
    for i, h in enumerate(head):
        t.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for i, row in enumerate(body):
        t.add_row(*(Text(str(c)) for c in row), style="bold" if i in bold_rows else None)
    Console(width=max(Console().width, min_width) if sys.stdout.isatty() else 200).print(t)

"""Text output for people: tables that fit the terminal and coloured verdicts.

On a terminal, tables are drawn with rich when it is installed, else as aligned plain text
wrapped to the terminal's width; when the output is piped, plain text with every cell on
one line (for grep and diff). Long cells are folded onto more lines, never cut, so an
errno and its ``error_offset`` always survive a narrow terminal. Verdict words (``PASS``,
``FAIL``, ``SKIP``, ``ok``, ...) are coloured on a terminal unless ``NO_COLOR`` is set
(no-color.org). The core stays stdlib-only.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, TextIO

#: Verdict words and their colour (rich style name, ANSI SGR code).
VERDICTS: dict[str, tuple[str, str]] = {
    "PASS": ("green", "32"),
    "ok": ("green", "32"),
    "yes": ("green", "32"),
    "FAIL": ("bold red", "1;31"),
    "NO": ("bold red", "1;31"),
    "SKIP": ("yellow", "33"),
    "skip": ("yellow", "33"),
    "skipped": ("yellow", "33"),
}
GAP = "  "


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def use_rich(stream: TextIO | None = None) -> bool:
    """Whether tables on ``stream`` are drawn with rich: a terminal, rich installed."""
    if not is_terminal(stream or sys.stdout):
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def colour_wanted(stream: TextIO) -> bool:
    """A terminal, and ``NO_COLOR`` unset or empty."""
    return is_terminal(stream) and not os.environ.get("NO_COLOR")


def width(stream: TextIO) -> int | None:
    """Columns available on a terminal (``COLUMNS`` wins), None when piped."""
    if not is_terminal(stream):
        return None
    return shutil.get_terminal_size((80, 24)).columns


def verdict(word: str, stream: TextIO | None = None) -> str:
    """``word`` in its verdict colour on a terminal, unchanged otherwise."""
    stream = stream or sys.stdout
    shown = VERDICTS.get(word)
    if shown is None or not colour_wanted(stream):
        return word
    return f"\x1b[{shown[1]}m{word}\x1b[0m"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Print a table: rich on a terminal, wrapped plain text on a terminal without rich,
    one line per row when piped."""
    stream = stream or sys.stdout
    if use_rich(stream):
        _rich_table(headers, rows, title, stream)
        return
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = _fit([max(len(r[i]) for r in cells) for i in range(len(headers))], width(stream))
    if title:
        print(title, file=stream)
    for n, row in enumerate(cells):
        wrapped = [_wrap(c, w) for c, w in zip(row, widths, strict=True)]
        for line in range(max(len(w) for w in wrapped)):
            parts = []
            for column, w in zip(wrapped, widths, strict=True):
                text = column[line] if line < len(column) else ""
                shown = verdict(text, stream) if n > 0 else text
                parts.append(shown + " " * (w - len(text)))
            print(GAP.join(parts).rstrip(), file=stream)
        if n == 0:
            print(GAP.join("-" * w for w in widths), file=stream)


def _rich_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None, stream: TextIO
) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    # cells are plain text: "[g]" or "[0x1000, +0x1000)" must not be read as rich markup
    t = Table(title=None if title is None else escape(title), title_justify="left")
    for h in headers:
        t.add_column(escape(str(h)), overflow="fold")
    for row in rows:
        t.add_row(*(Text(str(c), style=VERDICTS.get(str(c), ("", ""))[0]) for c in row))
    Console(file=stream).print(t)


def _fit(natural: list[int], available: int | None) -> list[int]:
    """Column widths within ``available`` columns: the widest column gives way first."""
    widths = list(natural)
    if available is None:
        return widths
    budget = available - len(GAP) * (len(widths) - 1)
    while sum(widths) > budget:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        if widths[widest] <= 8:
            break
        widths[widest] -= 1
    return widths


def _wrap(text: str, limit: int) -> list[str]:
    if len(text) <= limit:
        return [text]
    return textwrap.wrap(text, limit, break_long_words=True, break_on_hyphens=False) or [""]

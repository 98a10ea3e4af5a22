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
import re
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
    "N/A": ("cyan", "36"),
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
    verdicts: Sequence[int] = (),
    whole_words: Sequence[int] = (),
) -> None:
    """Print a table: rich on a terminal, wrapped plain text on a terminal without rich,
    one line per row when piped. Cells of the ``verdicts`` columns (and verdict words in
    the title) are coloured; cells of the ``whole_words`` columns break only between words
    (up to :data:`WORD_LIMIT` characters), so ``(error_offset=0x1000)`` stays in one piece."""
    stream = stream or sys.stdout
    texts = [[str(c) for c in row] for row in rows]
    floors = [0] * len(headers)
    for i in whole_words:
        floors[i] = min(WORD_LIMIT, max((len(w) for r in texts for w in r[i].split()), default=0))
    if use_rich(stream):
        _rich_table(headers, texts, title, stream, verdicts, floors)
        return
    cells = [[str(h) for h in headers], *texts]
    widths = _fit([max(len(r[i]) for r in cells) for i in range(len(headers))], floors, width(stream))
    if title:
        print(_colour_words(title, stream), file=stream)
    for n, row in enumerate(cells):
        wrapped = [_wrap(c, w) for c, w in zip(row, widths, strict=True)]
        for line in range(max(len(w) for w in wrapped)):
            parts = []
            for i, (column, w) in enumerate(zip(wrapped, widths, strict=True)):
                text = column[line] if line < len(column) else ""
                shown = verdict(text, stream) if n > 0 and i in verdicts else text
                parts.append(shown + " " * (w - len(text)))
            print(GAP.join(parts).rstrip(), file=stream)
        if n == 0:
            print(GAP.join("-" * w for w in widths), file=stream)


#: The longest word a ``whole_words`` column keeps in one piece.
WORD_LIMIT = 24


def _colour_words(text: str, stream: TextIO) -> str:
    return re.sub(r"\b(?:PASS|FAIL|SKIP)\b|N/A", lambda m: verdict(m.group(0), stream), text)


def _rich_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str | None,
    stream: TextIO,
    verdicts: Sequence[int],
    floors: Sequence[int],
) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    heading = None
    if title is not None:
        heading = Text(title, style="bold")
        for word in ("PASS", "FAIL", "SKIP", "N/A"):
            heading.highlight_regex(rf"\b{re.escape(word)}\b", VERDICTS[word][0])
    # cells are Text, never markup: "[g]" or "[0x1000, +0x1000)" must stay as they are
    t = Table(title=heading, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for h, floor in zip(headers, floors, strict=True):
        t.add_column(Text(str(h)), overflow="fold", min_width=floor or None)
    for row in rows:
        styles = [VERDICTS.get(c, ("", ""))[0] if i in verdicts else "" for i, c in enumerate(row)]
        t.add_row(*(Text(c, style=style) for c, style in zip(row, styles, strict=True)))
    Console(file=stream).print(t)


def _fit(natural: list[int], floors: Sequence[int], available: int | None) -> list[int]:
    """Column widths within ``available`` columns: the widest column gives way first, no
    column below its floor or 8 characters."""
    widths = list(natural)
    if available is None:
        return widths
    budget = available - len(GAP) * (len(widths) - 1)
    while sum(widths) > budget:
        shrinkable = [i for i in range(len(widths)) if widths[i] > max(8, floors[i])]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _wrap(text: str, limit: int) -> list[str]:
    if len(text) <= limit:
        return [text]
    return textwrap.wrap(text, limit, break_long_words=True, break_on_hyphens=False) or [""]

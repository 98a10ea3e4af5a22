"""Terminal output: rich tables on a terminal when rich is installed, plain text when
piped or on a bare machine (the core is stdlib-only)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def use_rich(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    if not stream.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Print a table: rich on a terminal, aligned plain text otherwise."""
    stream = stream or sys.stdout
    if use_rich(stream):
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        # cells are plain text: "[g]" or "[0x1000, +0x1000)" must not be read as rich markup
        t = Table(title=None if title is None else escape(title))
        for h in headers:
            t.add_column(escape(str(h)))
        for row in rows:
            t.add_row(*(escape(str(c)) for c in row))
        Console(file=stream).print(t)
        return
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(title, file=stream)
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=stream)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=stream)


def dump_json(value: Any, stream: TextIO | None = None) -> None:
    json.dump(value, stream or sys.stdout, indent=2, sort_keys=False)
    print(file=stream or sys.stdout)

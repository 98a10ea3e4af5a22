"""``guestmem matrix``: docs/semantics.md §2 for one ABI revision, every cell computed by the model.

See :mod:`guestmem.report.matrix` for how a cell is measured and what its notes mean.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from guestmem import schemas
from guestmem.cli import chosen_revisions
from guestmem.report import matrix
from guestmem.spec import revisions
from guestmem.spec.terms import Direction
from guestmem.terminal import table

FORMATS = ("text", "json", "markdown")

EXAMPLE = """\
example:
  guestmem matrix                      # seed, as a table
  guestmem matrix --abi rfc-v5 --format markdown
  guestmem matrix --abi all --format json

Each cell: a fresh one-page model VM, a pattern written by the side owning the page, one
conversion with the revision's flags for the policy, a read from the other side. Results:
zeros, preserved, fill:ab, ciphertext, garbage, random, or the errno of the conversion."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "matrix",
        help="what a conversion does, per platform, policy and phase (computed by the model)",
        description="Print docs/semantics.md §2 for an ABI revision (or all); every cell runs the model.",
        epilog=EXAMPLE,
    )
    parser.add_argument(
        "--abi",
        default=revisions.DEFAULT,
        help=f"ABI revision: {', '.join(revisions.REVISIONS)}, or all (default: {revisions.DEFAULT})",
    )
    parser.add_argument("--format", default="text", choices=FORMATS, help="default: text")
    parser.set_defaults(func=run)


def _footnotes(abi: str, rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    """``(marker, text)`` for the notes used in ``rows``, then the general notes."""
    notes = [(f"[{matrix.NOTES[k][0]}]", matrix.NOTES[k][1]) for k in matrix.used_notes(rows)]
    general = (
        [*matrix.GENERAL, matrix.REVISION_NOTES[abi]] if abi in matrix.REVISION_NOTES else matrix.GENERAL
    )
    return notes + [("-", text) for text in general]


def _header(abi: str) -> str:
    revision = revisions.get(abi)
    return f"Conversion matrix for {revision.name}: {revision.title}. Every cell is computed by the model."


def write_text(abi: str, rows: list[dict[str, str]], stream: TextIO) -> None:
    print(_header(abi), file=stream)
    for direction in Direction:
        headers, body = matrix.grid(rows, direction)
        print(file=stream)
        table(headers, body, title=matrix.title(abi, direction), stream=stream)
    print("\nnotes:", file=stream)
    for marker, text in _footnotes(abi, rows):
        print(f"  {marker} {text.replace('`', '')}", file=stream)


def write_markdown(abi: str, rows: list[dict[str, str]], stream: TextIO) -> None:
    print(_header(abi), file=stream)
    for direction in Direction:
        headers, body = matrix.grid(rows, direction)
        print(f"\n#### {matrix.title(abi, direction)}\n", file=stream)
        print("| " + " | ".join(headers) + " |", file=stream)
        print("|" + "---|" * len(headers), file=stream)
        for row in body:
            print(
                "| " + " | ".join(f"`{row[0]}`" if i == 0 else c for i, c in enumerate(row)) + " |",
                file=stream,
            )
    print("\nNotes:\n", file=stream)
    for marker, text in _footnotes(abi, rows):
        print(f"- {marker} {text}" if marker != "-" else f"- {text}", file=stream)


def run(args: argparse.Namespace, stream: TextIO | None = None) -> int:
    abis = chosen_revisions(args.abi)
    out = stream or sys.stdout
    computed = {abi: matrix.compute(abi) for abi in abis}
    if args.format == "json":
        docs = [
            {"abi": abi, "title": revisions.get(abi).title, "cells": rows} for abi, rows in computed.items()
        ]
        schemas.dump("matrix", {"revisions": docs}, out)
        return 0
    for n, (abi, rows) in enumerate(computed.items()):
        if n:
            print(file=out)
        if args.format == "markdown":
            write_markdown(abi, rows, out)
        else:
            write_text(abi, rows, out)
    return 0


def main(argv: Sequence[str]) -> int:
    """Run ``guestmem matrix ARGV`` on its own (without the other commands' modules)."""
    parser = argparse.ArgumentParser(prog="guestmem")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["matrix", *argv])
    from guestmem.cli import UsageError

    try:
        return run(args)
    except UsageError as err:
        print(f"guestmem: {err}", file=sys.stderr)
        return 2

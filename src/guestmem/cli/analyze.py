"""``guestmem analyze``: per ABI revision, whether flags = 0 is accepted for every
platform, direction and phase, the EOPNOTSUPP map, and the property violations that
``guestmem explore`` finds, each with its counterexample."""

from __future__ import annotations

import argparse
from typing import Any

from guestmem import progress, schemas
from guestmem.checker import analyze
from guestmem.checker.explore import TIMEOUT, Exploration
from guestmem.checker.schedule import Search
from guestmem.cli import chosen_revisions
from guestmem.cli.explore import add_engine_options, add_workers, check_engine, deadline_of, engine, timed_out
from guestmem.cli.run import add_timeout, timeout_of
from guestmem.terminal import table

DESCRIPTION = """\
What a reviewer of the UAPI reads, per ABI revision: whether flags = 0 is accepted for
every platform, direction and phase; which policies fail with EOPNOTSUPP; and the property
violations an exhaustive exploration finds, each with its shortest counterexample."""

EPILOG = """\
examples:
  guestmem analyze --abi seed
  guestmem analyze --abi all --format markdown > docs/analyze.md
  guestmem analyze --abi all --engine ray --address auto

Exit status: 0 when no platform violates a property it claims, 1 when one does, 2 for
bad input, 3 when an exploration could not finish (a Ray worker died), 124 when --timeout
stopped an exploration (what was explored whole is reported, and one line on stderr says
how far each got)."""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "analyze",
        help="what a UAPI reviewer reads: flags = 0, EOPNOTSUPP, violations",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument("--abi", default="all", help="ABI revision or 'all' (default: all)")
    parser.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    add_workers(parser, "the explorations")
    add_timeout(parser, "the explorations", "report how far they got (exit status 124)", TIMEOUT)
    add_engine_options(parser)
    parser.set_defaults(func=run)


def document(results: list[analyze.RevisionAnalysis]) -> dict[str, Any]:
    """The ``guestmem.analyze/1`` document of ``results``."""
    return schemas.document("analyze", {"revisions": [r.to_json() for r in results]})


def run(args: argparse.Namespace) -> int:
    abis = chosen_revisions(args.abi)
    workers = check_engine(args)
    deadline = deadline_of(args)
    with progress.Status("analyze", enabled=args.format != "json") as status, engine(args, workers) as on:
        count = [0]

        def done(search: Search, result: Exploration) -> None:
            count[0] += 1
            status.finish(f"{search.label}")
            status.update(f"explored {count[0]}: {search.label} ({result.distinct} states)", force=True)

        shown = workers if on is None else getattr(on, "workers", workers)
        status.update(f"exploring with {shown} worker(s)", force=True)
        results = analyze.analyze(abis, workers=workers or 1, done=done, engine=on, deadline=deadline)
    if args.format == "json":
        schemas.write(document(results))
    elif args.format == "markdown":
        print(analyze.markdown(results), end="")
    else:
        for text, headers, rows in analyze.blocks(results):
            if headers:
                table(headers, rows)
            else:
                print(text.lstrip("# ") if text.startswith("#") else text)
            print()
    claimed = [p for r in results for e in r.explorations for p in e.violated(claimed_only=True)]
    explored = [e for r in results for e in r.explorations]
    return timed_out("analyze", explored, timeout_of(args, TIMEOUT)) or (1 if claimed else 0)

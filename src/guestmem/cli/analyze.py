"""``guestmem analyze``: per ABI revision, whether flags = 0 is accepted for every
platform, direction and phase, the EOPNOTSUPP map, and the property violations that
``guestmem explore`` finds, each with its counterexample."""

from __future__ import annotations

import argparse
import os
from typing import Any

from guestmem import progress
from guestmem.checker import analyze
from guestmem.checker.explore import Exploration
from guestmem.checker.schedule import Search
from guestmem.cli import UsageError
from guestmem.cli.output import dump_json, table
from guestmem.spec import revisions

EPILOG = """\
examples:
  guestmem analyze --abi seed
  guestmem analyze --abi all --format markdown > docs/analyze.md

Exit status: 0 when no platform violates a property it claims, 1 when one does, 2 for
bad input."""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "analyze",
        help="what a UAPI reviewer reads: flags = 0, EOPNOTSUPP, violations",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--abi", default="all", help="ABI revision or 'all' (default: all)")
    parser.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes sharing the explorations (default: the CPU count)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.abi == "all":
        abis = list(revisions.REVISIONS)
    elif args.abi in revisions.REVISIONS:
        abis = [args.abi]
    else:
        raise UsageError(
            f"--abi: unknown revision {args.abi!r} (choose from all, {', '.join(revisions.REVISIONS)})"
        )
    workers = (os.cpu_count() or 1) if args.workers is None else args.workers
    if workers < 1:
        raise UsageError(f"--workers: {workers} must be >= 1")
    with progress.Status("analyze", enabled=args.format != "json") as status:
        count = [0]

        def done(search: Search, result: Exploration) -> None:
            count[0] += 1
            status.finish(f"{search.label}")
            status.update(f"explored {count[0]}: {search.label} ({result.distinct} states)", force=True)

        status.update(f"exploring with {workers} worker(s)", force=True)
        results = analyze.analyze(abis, workers=workers, done=done)
    if args.format == "json":
        dump_json({"revisions": [r.to_json() for r in results]})
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
    return 1 if claimed else 0

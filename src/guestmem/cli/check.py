"""``guestmem check``: run the built-in conformance suite and summarise per platform."""

from __future__ import annotations

import argparse
from pathlib import Path

from guestmem.cli import UsageError
from guestmem.cli.run import add_selection, check_selection, execute, load_all
from guestmem.scenario import output as show
from guestmem.scenario import suite_files

EXAMPLE = """\
example:
  guestmem check                   # the whole suite on the model
  guestmem check --platform snp --format tap
  guestmem check --backend kvm     # on this machine's kernel (the rest skips)
  guestmem check --abi v8          # cases that do not hold under v8 are N/A
  guestmem check --abi all --format junit > results.xml

exit status: 0 every expectation held (skips and N/A beside passes included), 1 one
failed, 2 bad input, 4 nothing ran: every run was skipped or N/A (KSFT_SKIP)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "check",
        help="run the built-in conformance suite",
        description="Run the built-in suite (docs/semantics.md §2-§4, the review's examples, the kernel "
        "selftests' cases) and print a pass/fail line per case and a per-platform summary.",
        epilog=EXAMPLE,
    )
    add_selection(parser)
    parser.add_argument(
        "-k", dest="match", default=None, metavar="TEXT", help="only cases whose name or file contains TEXT"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_selection(args)
    scenarios = load_all([str(p) for p in suite_files()])
    if args.match is not None:
        scenarios = [s for s in scenarios if args.match in s.name or args.match in Path(s.file).name]
    results = execute(scenarios, args, what="check")
    if not results:
        raise UsageError("no case of the suite matches the selection")
    return show.print_results(results, args.format)

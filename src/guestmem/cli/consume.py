"""``guestmem consume DIR``: replay JSON fixtures on a backend and report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from guestmem.cli import UsageError
from guestmem.cli.run import add_timeout, timeout_of
from guestmem.outfile import check_path, shown
from guestmem.scenario import ScenarioError, fixture
from guestmem.scenario import output as show
from guestmem.scenario.runner import check_limits, open_backend
from guestmem.scenario.runner import run as run_one

EXAMPLE = """\
example:
  guestmem fill /tmp/fixtures && guestmem consume /tmp/fixtures --backend kvm
  guestmem consume /tmp/fixtures --backend kvm --format junit > results.xml

exit status: 0 every allowed outcome held (skips beside passes included), 1 one did not,
2 bad input, 4 every run was skipped (KSFT_SKIP)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "consume",
        help="replay JSON fixtures on a backend",
        description="Replay the fixtures 'guestmem fill' wrote, on the model or the kernel, and "
        "check every step against the outcomes the fixture allows.",
        epilog=EXAMPLE,
    )
    parser.add_argument("dir", metavar="DIR", help="directory of *.json fixtures")
    parser.add_argument("--backend", default="model", choices=("model", "kvm"), help="default: model")
    parser.add_argument("--format", default="text", choices=show.FORMATS, help="default: text")
    add_timeout(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_path(args.dir)
    try:
        with os.scandir(args.dir) as entries:  # an unreadable directory is an error, not empty
            paths = sorted(Path(args.dir, e.name) for e in entries if e.name.endswith(".json"))
    except NotADirectoryError:
        raise UsageError(f"{shown(args.dir)}: not a directory") from None
    except OSError as err:
        raise UsageError(f"{shown(args.dir)}: cannot list the directory: {err.strerror or err}") from None
    if not paths:
        raise UsageError(f"{shown(args.dir)}: no *.json fixtures")
    backend = open_backend(args.backend)
    try:
        loaded = [fixture.load(p) for p in paths]
        check_limits([scenario for scenario, _platform in loaded], backend)
    except ScenarioError as err:
        raise UsageError(str(err)) from None
    timeout = timeout_of(args)
    results = [run_one(scenario, platform, backend, timeout=timeout) for scenario, platform in loaded]
    return show.print_results(results, args.format)

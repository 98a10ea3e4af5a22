"""``guestmem explore``: search every operation sequence up to a depth for property
violations (docs/semantics.md §5) and print the shortest counterexample of each."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from guestmem import outfile, progress, schemas
from guestmem.checker import counterexample, distributed
from guestmem.checker.explore import (
    DEFAULT_DEPTH,
    DEFAULT_PAGES,
    MAX_DEPTH,
    MAX_PAGES,
    TIMEOUT,
    Exploration,
)
from guestmem.checker.schedule import Engine, Search, run_searches
from guestmem.cli import UsageError, chosen_revisions
from guestmem.cli.run import add_timeout, timeout_of
from guestmem.printable import printable
from guestmem.spec import platforms, revisions
from guestmem.terminal import table

#: Ablations: a platform variant with one rule switched off, to show the rule matters.
ABLATIONS = ("consent",)
#: The most processes ``--workers`` may ask for.
MAX_WORKERS = 64

EPILOG = """\
examples:
  guestmem explore --platform all
  guestmem explore --platform sw_protected --depth 4 --out /tmp/cx
  guestmem explore --platform pkvm --ablate consent --format json
  guestmem explore --platform tdx --abi all --depth 4
  guestmem explore --platform snp --pages 3 --depth 8 --engine ray
  guestmem explore --platform all --pages 4 --engine ray --address auto

Exit status: 0 when no platform violates a property it claims, 1 when one does,
2 for bad input, 3 when a search could not finish (more states than --max-states, or
a Ray worker died): then no result is reported, 124 when --timeout stopped a search
before its depth (what was explored whole is reported, and one line on stderr says how
far each search got). Violations of properties a platform does not claim (sw_protected:
confidentiality, integrity) are reported but do not fail the run."""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "explore",
        help="search every operation sequence for property violations",
        description="Search every sequence of host, guest and VMM operations up to a depth for "
        "violations of the properties of docs/semantics.md §5 (isolation, confidentiality, integrity, "
        "policy, atomicity) and print the shortest counterexample of each.",
        epilog=EPILOG,
    )
    parser.add_argument("--platform", default="all", help="platform name or 'all' (default: all)")
    parser.add_argument("--abi", default=revisions.DEFAULT, help="ABI revision or 'all' (default: seed)")
    parser.add_argument(
        "--pages",
        type=int,
        default=DEFAULT_PAGES,
        help=f"pages in the guest_memfd, 1 to {MAX_PAGES} (default: {DEFAULT_PAGES})",
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=DEFAULT_DEPTH,
        help=f"operations per sequence, 0 to {MAX_DEPTH} (default: {DEFAULT_DEPTH}); a search "
        "ends earlier when no new state is left",
    )
    add_workers(parser, "the search")
    add_engine_options(parser)
    parser.add_argument(
        "--max-states",
        type=int,
        default=None,
        metavar="N",
        help="stop a search (exit 3, no result) once it holds more than N distinct states, "
        "counted over every worker",
    )
    add_timeout(parser, "the whole search", "report how far it got (exit status 124)", TIMEOUT)
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--no-symmetry",
        dest="symmetry",
        action="store_false",
        help="count states that differ only by a permutation of pages separately",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="write each counterexample as a scenario file here (created if missing)"
    )
    parser.add_argument(
        "--ablate",
        choices=ABLATIONS,
        action="append",
        default=[],
        help="switch a platform rule off (consent: pKVM's guest-consent rule)",
    )
    parser.set_defaults(func=run)


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """``--engine`` and ``--address`` (explore and analyze)."""
    parser.add_argument(
        "--engine",
        choices=distributed.ENGINES,
        default="local",
        help="local: this machine's processes (the default); ray: the actors of a Ray cluster "
        f"(pip install '{distributed.EXTRA}')",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="with --engine ray, the Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT "
        "(default: start Ray on this machine)",
    )


def check_engine(args: argparse.Namespace) -> int | None:
    """The workers to ask for: ``--workers``, or by default this machine's CPU count for
    ``local`` and the cluster's for ``ray`` (None)."""
    if args.address is not None and args.engine != "ray":
        raise UsageError("--address: only with --engine ray")
    if args.engine == "ray" and args.workers is None:
        return None
    return workers_of(args)


@contextlib.contextmanager
def engine(args: argparse.Namespace, workers: int | None) -> Iterator[Engine | None]:
    """The engine ``--engine`` asks for; one that cannot run here is bad input."""
    try:
        with distributed.engine(args.engine, args.address, workers) as running:
            yield running
    except distributed.EngineUnavailable as err:
        raise UsageError(str(err)) from None


def _targets(args: argparse.Namespace) -> list[tuple[platforms.Platform, str]]:
    if args.platform == "all":
        chosen = list(platforms.PLATFORMS.values())
    elif args.platform in platforms.PLATFORMS:
        chosen = [platforms.get(args.platform)]
    else:
        raise UsageError(
            f"--platform: unknown platform {args.platform!r} "
            f"(choose from all, {', '.join(platforms.PLATFORMS)})"
        )
    out = []
    for platform in chosen:
        variant = []
        if "consent" in args.ablate:
            platform = dataclasses.replace(platform, consent=False)
            variant.append("consent=False")
        out.append((platform, ", ".join(variant)))
    return out


def add_workers(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"processes sharing {what}, 1 to {MAX_WORKERS} (default: the CPU count)",
    )


def workers_of(args: argparse.Namespace) -> int:
    """``--workers``, checked: 1 to :data:`MAX_WORKERS` (default: the CPU count, so bounded)."""
    if args.workers is None:
        return min(os.cpu_count() or 1, MAX_WORKERS)
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers: {args.workers} is out of range (1 to {MAX_WORKERS})")
    workers: int = args.workers
    return workers


def deadline_of(args: argparse.Namespace) -> float | None:
    """``--timeout`` (or ``$GUESTMEM_TIMEOUT``) as a ``time.monotonic()`` deadline."""
    limit = timeout_of(args, TIMEOUT)
    return None if limit is None else time.monotonic() + limit


def timed_out(what: str, results: list[Exploration], limit: float | None) -> int:
    """If a search stopped at its deadline: one line saying how far each got, and 124."""
    stopped = [r for r in results if r.timed_out]
    if not stopped:
        return 0
    reached = "; ".join(
        f"{r.label} under {r.abi} explored depth {r.reached} of {r.depth} whole ({r.distinct} states)"
        for r in stopped
    )
    print(f"guestmem: {what} timed out after {limit:g} s (--timeout): {reached}", file=sys.stderr)
    return progress.TIMED_OUT


def _check(args: argparse.Namespace) -> int | None:
    chosen_revisions(args.abi)
    if not 1 <= args.pages <= MAX_PAGES:
        raise UsageError(f"--pages: {args.pages} is out of range (1 to {MAX_PAGES})")
    if not 0 <= args.depth <= MAX_DEPTH:
        raise UsageError(f"--depth: {args.depth} is out of range (0 to {MAX_DEPTH})")
    if args.max_states is not None and args.max_states < 1:
        raise UsageError(f"--max-states: {args.max_states} must be >= 1")
    workers = check_engine(args)
    timeout_of(args, TIMEOUT)  # a bad $GUESTMEM_TIMEOUT is bad input before anything runs
    if args.out is not None:  # before exploring: a directory it cannot use is bad input
        outfile.check_directory(args.out, "--out")
    return workers


def run(args: argparse.Namespace) -> int:
    workers = _check(args)
    targets = _targets(args)
    deadline = deadline_of(args)
    searches = [
        Search(
            platform,
            abi,
            args.pages,
            args.depth,
            variant,
            args.symmetry,
            deadline,
            max_states=args.max_states,
        )
        for abi in chosen_revisions(args.abi)
        for platform, variant in targets
    ]
    with progress.Status("explore", enabled=args.format != "json") as status:
        if args.engine == "ray":
            status.update("starting the Ray workers", force=True)
        with engine(args, workers) as on:
            results = _explore(args, searches, workers, status, on)
    written: dict[tuple[str, str, str], str] = {}
    if args.out is not None:
        with outfile.Directory(args.out, create=True, what="--out") as directory:
            found = [(r, cx) for r in results for cx in r.counterexamples.values()]
            for result, cx in found:  # every name first: a target it refuses leaves the others unwritten
                directory.check(counterexample.file_name(result, cx))
            for result, cx in found:
                written[result.abi, result.label, cx.prop.value] = counterexample.write(result, cx, directory)
    if args.format == "json":
        payload = [r.to_json() for r in results]
        for entry, result in zip(payload, results, strict=True):
            for violation in entry["violations"]:
                path = written.get((result.abi, result.label, violation["property"]))
                violation["file"] = path
        schemas.dump(
            "explore",
            {
                "abi": args.abi,
                "pages": args.pages,
                "depth": args.depth,
                "timed_out": any(r.timed_out for r in results),
                "results": payload,
            },
        )
    else:
        _print_text(args, results, written)
    stopped = timed_out("explore", results, timeout_of(args, TIMEOUT))
    return stopped or (1 if any(r.violated(claimed_only=True) for r in results) else 0)


def _explore(
    args: argparse.Namespace,
    searches: list[Search],
    workers: int | None,
    status: progress.Status,
    on: Engine | None,
) -> list[Exploration]:
    def level(level: int, expanded: int, size: int, generated: int, distinct: int) -> None:
        elapsed = time.monotonic() - status.started
        status.update(
            f"{running[0]}: depth {level}/{args.depth} ({expanded}/{size}), {generated} generated "
            f"({progress.rate(generated, elapsed)}), {distinct} distinct"
        )

    def done(search: Search, result: Exploration) -> None:
        status.finish(f"{result.label} ({result.distinct} states)")
        status.update(f"finished {len(status.finished)}/{len(searches)}: {result.label}", force=True)

    running = [searches[0].platform.name]
    if workers is not None and workers > 1 and len(searches) > 1 and on is None:
        status.update(f"{len(searches)} searches on {workers} workers", force=True)
        return run_searches(searches, workers, done=done)
    results: list[Exploration] = []
    for search in searches:
        running[0] = search.platform.name + (f" ({search.variant})" if search.variant else "")
        results += run_searches([search], workers or 1, progress=level, done=done, engine=on)
    return results


def _print_text(
    args: argparse.Namespace,
    results: list[Exploration],
    written: dict[tuple[str, str, str], str],
) -> None:
    workers = results[0].workers if results else 0
    on = f" on {args.engine}" if args.engine != "local" else ""
    print(f"explore: abi {args.abi}, {args.pages} pages, depth {args.depth}, {workers} worker(s){on}")
    rows = []
    several = len({r.abi for r in results}) > 1
    for r in results:
        found = [p.value + ("" if c.claimed else " (not claimed)") for p, c in r.counterexamples.items()] or [
            "none"
        ]
        label = f"{r.label} [{r.abi}]" if several else r.label
        rows.append(
            [label, r.generated, r.distinct, f"{r.cpu_seconds:.1f}", f"{r.rate:.0f}", ", ".join(found)]
        )
    table(["platform", "states explored", "distinct", "CPU seconds", "states/CPU-s", "violations"], rows)
    for r in results:
        if not r.local_lookups:
            print(
                f"note: {r.label} [{r.abi}]: an operation on one page changed another page, so the "
                "search ran the model for every step (slower, same result); the model is not local",
                file=sys.stderr,
            )
    for r in results:
        for prop, cx in r.counterexamples.items():
            claim = "claimed" if cx.claimed else f"not claimed by {cx.platform}"
            print()
            where = f"{r.label} [{r.abi}]" if several else r.label
            print(f"{where}: {prop.value} ({claim}) violated after {cx.length} steps from init {cx.init}")
            print(f"  {cx.message}")
            for number, (op, expect) in enumerate(zip(cx.ops, cx.expects, strict=True), start=1):
                mark = "  <- fails here on replay" if number == cx.fails_at + 1 else ""
                shown = expect if len(expect) <= 40 else expect[:37] + "..."
                print(f"  {number}. {op}  expect {shown}{mark}")
            path = written.get((r.abi, r.label, prop.value))
            if path is not None:
                print(f"  scenario: {printable(path)}")

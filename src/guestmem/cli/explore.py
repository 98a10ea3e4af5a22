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
from pathlib import Path
from typing import Any

from guestmem import progress, schemas
from guestmem.checker import counterexample, distributed
from guestmem.checker.explore import DEFAULT_DEPTH, DEFAULT_PAGES, Exploration
from guestmem.checker.schedule import Engine, Search, run_searches
from guestmem.cli import UsageError, chosen_revisions
from guestmem.spec import platforms, revisions
from guestmem.terminal import table

#: Ablations: a platform variant with one rule switched off, to show the rule matters.
ABLATIONS = ("consent",)
MAX_PAGES = 8

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
a Ray worker died): then no result is reported. Violations of properties a platform
does not claim (sw_protected: confidentiality, integrity) are reported but do not fail
the run."""


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
        "--pages", type=int, default=DEFAULT_PAGES, help="pages in the guest_memfd (default: 2)"
    )
    parser.add_argument(
        "--depth", type=int, default=DEFAULT_DEPTH, help="operations per sequence (default: 6)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes sharing the search (default: the CPU count; with --engine ray, the cluster's)",
    )
    add_engine_options(parser)
    parser.add_argument(
        "--max-states",
        type=int,
        default=None,
        metavar="N",
        help="stop a search (exit 3, no result) once it holds more than N distinct states, "
        "counted over every worker",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--no-symmetry",
        dest="symmetry",
        action="store_false",
        help="count states that differ only by a permutation of pages separately",
    )
    parser.add_argument("--out", type=Path, help="write each counterexample as a scenario file here")
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
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: {args.workers} must be >= 1")
    asked: int | None = args.workers
    if args.engine == "ray":
        return asked
    return (os.cpu_count() or 1) if asked is None else asked


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


def _check(args: argparse.Namespace) -> int | None:
    chosen_revisions(args.abi)
    if not 1 <= args.pages <= MAX_PAGES:
        raise UsageError(f"--pages: {args.pages} is out of range (1 to {MAX_PAGES})")
    if args.depth < 0:
        raise UsageError(f"--depth: {args.depth} must be >= 0")
    if args.max_states is not None and args.max_states < 1:
        raise UsageError(f"--max-states: {args.max_states} must be >= 1")
    workers = check_engine(args)
    if args.out is not None:  # before exploring: a directory it cannot make is bad input
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except ValueError as err:  # a NUL in the name
            raise UsageError(f"--out: bad directory name {str(args.out)!r}: {err}") from None
        except OSError as err:
            raise UsageError(
                f"--out: cannot create directory {str(args.out)!r}: {err.strerror or err}"
            ) from None
    return workers


def run(args: argparse.Namespace) -> int:
    workers = _check(args)
    targets = _targets(args)
    searches = [
        Search(platform, abi, args.pages, args.depth, variant, args.symmetry, args.max_states)
        for abi in chosen_revisions(args.abi)
        for platform, variant in targets
    ]
    with progress.Status("explore", enabled=args.format != "json") as status:
        if args.engine == "ray":
            status.update("starting the Ray workers", force=True)
        with engine(args, workers) as on:
            results = _explore(args, searches, workers, status, on)
    written: dict[tuple[str, str, str], Path] = {}
    if args.out is not None:
        for result in results:
            for prop, cx in result.counterexamples.items():
                written[result.abi, result.label, prop.value] = counterexample.write(result, cx, args.out)
    if args.format == "json":
        payload = [r.to_json() for r in results]
        for entry, result in zip(payload, results, strict=True):
            for violation in entry["violations"]:
                path = written.get((result.abi, result.label, violation["property"]))
                violation["file"] = None if path is None else str(path)
        schemas.dump(
            "explore", {"abi": args.abi, "pages": args.pages, "depth": args.depth, "results": payload}
        )
    else:
        _print_text(args, results, written)
    return 1 if any(r.violated(claimed_only=True) for r in results) else 0


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
    written: dict[tuple[str, str, str], Path],
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
                print(f"  scenario: {path}")

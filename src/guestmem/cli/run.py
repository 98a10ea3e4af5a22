"""``guestmem run FILE...``: run scenario files and show what each side read."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence

from guestmem import progress
from guestmem.cli import UsageError, chosen_revisions
from guestmem.scenario import Scenario, ScenarioError, format
from guestmem.scenario import output as show
from guestmem.scenario.runner import TIMEOUT, RunResult, run_all, select_platforms
from guestmem.spec import platforms, revisions

EXAMPLE = """\
example:
  guestmem run src/guestmem/suite/review_payload_injection.toml --platform tdx
  guestmem run my.toml --platform all --abi all --format junit > results.xml

exit status: 0 every expectation held (skips beside passes included), 1 one failed,
2 bad input, 4 every run was skipped (KSFT_SKIP)."""


def _seconds(text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds {bound}, not {text!r}")
    return value


def seconds(text: str) -> float | None:
    """``--timeout`` value: seconds > 0, or 0 for no limit."""
    return _seconds(text, positive=False) or None


def positive_seconds(text: str) -> float:
    """A time limit that must be given: finite seconds > 0."""
    return _seconds(text, positive=True)


#: The environment variable that sets ``--timeout``'s default (``guestmem vm`` sets it
#: inside a VM under software emulation, where a long selftest takes minutes).
TIMEOUT_VARIABLE = "GUESTMEM_TIMEOUT"


def add_timeout(
    parser: argparse.ArgumentParser,
    what: str = "a scenario run (one platform)",
    then: str = "report it timed out",
    default: float = TIMEOUT,
) -> None:
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"stop {what} after this long and {then} "
        f"(default ${TIMEOUT_VARIABLE} if set, else {default:g}; 0: no limit)",
    )


def timeout_of(args: argparse.Namespace, default: float = TIMEOUT) -> float | None:
    """``--timeout`` as given, else ``$GUESTMEM_TIMEOUT``, else ``default`` seconds."""
    if hasattr(args, "timeout"):
        given: float | None = args.timeout
        return given
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return default
    try:
        return seconds(text)
    except argparse.ArgumentTypeError as err:
        raise UsageError(f"${TIMEOUT_VARIABLE}: {err}") from None


def add_selection(parser: argparse.ArgumentParser) -> None:
    """``--platform``, ``--abi``, ``--backend``, ``--format`` (shared by run, check, consume)."""
    parser.add_argument(
        "--platform",
        default="all",
        help=f"one of {', '.join(platforms.PLATFORMS)}, or all (default: each scenario's platforms)",
    )
    parser.add_argument(
        "--abi",
        default=None,
        help=f"ABI revision for every run: {', '.join(revisions.REVISIONS)}, or all "
        "(default: each scenario's own)",
    )
    parser.add_argument("--backend", default="model", choices=("model", "kvm"), help="default: model")
    parser.add_argument("--format", default="text", choices=show.FORMATS, help="default: text")
    add_timeout(parser)


def check_selection(args: argparse.Namespace) -> None:
    """Bad ``--platform`` / ``--abi`` values are bad input (exit 2)."""
    if args.platform != "all" and args.platform not in platforms.PLATFORMS:
        choices = ", ".join((*platforms.PLATFORMS, "all"))
        raise UsageError(f"--platform: unknown platform {args.platform!r} (choose from {choices})")
    selected_revisions(args)


def selected_revisions(args: argparse.Namespace) -> list[str | None]:
    """``--abi``: None runs each scenario under its own revision; ``all`` under every one."""
    if args.abi is None:
        return [None]
    return list(chosen_revisions(args.abi))


def load_all(files: Sequence[str]) -> list[Scenario]:
    """Parse every file before running any (bad input changes nothing)."""
    try:
        return [scenario for f in files for scenario in format.load_all(f)]
    except ScenarioError as err:
        raise UsageError(str(err)) from None


def execute(
    scenarios: Sequence[Scenario],
    args: argparse.Namespace,
    *,
    backend: str | None = None,
    observe: bool = False,
    what: str | None = None,
    each: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Every scenario on each selected platform, under each selected revision; ``each``
    sees every run whole before it is made compact.

    With ``what`` (the command's name), a progress line on a terminal (not for ``--format
    json``) counts the runs finished, and Ctrl-C names them."""
    abis = selected_revisions(args)
    if what is None:
        return _execute(scenarios, args, abis, backend, observe, None, each)
    with progress.Status(what, enabled=args.format != "json") as status:
        return _execute(scenarios, args, abis, backend, observe, status, each)


def planned(scenarios: Sequence[Scenario], args: argparse.Namespace) -> list[tuple[Scenario, str, str]]:
    """The runs :func:`execute` would make and run (scenario, platform, revision): a run
    under a revision its file does not list makes none."""
    out = []
    for abi in selected_revisions(args):
        for scenario in scenarios:
            revision = abi or scenario.abi
            if scenario.applies_to(revision):
                out += [
                    (scenario, platform, revision) for platform in select_platforms(scenario, args.platform)
                ]
    return out


def _execute(
    scenarios: Sequence[Scenario],
    args: argparse.Namespace,
    abis: list[str | None],
    backend: str | None,
    observe: bool,
    status: progress.Status | None,
    each: Callable[[RunResult], None] | None,
) -> list[RunResult]:
    results: list[RunResult] = []

    def done(result: RunResult, finished: int, total: int) -> None:
        if status is not None:
            revision = f"{result.abi}, " if len(abis) > 1 else ""
            status.update(f"{revision}{finished}/{total} runs; {result.scenario.name} on {result.platform}")

    try:
        for abi in abis:
            batch = run_all(
                scenarios,
                platform=args.platform,
                abi=abi,
                backend=backend or args.backend,
                observe=observe,
                timeout=timeout_of(args),
                done=done,
                each=each,
            )
            results += batch
            if status is not None:
                status.finish(f"{len(batch)} runs" + (f" under {abi}" if abi is not None else ""))
    except ScenarioError as err:  # beyond what the backend accepts
        raise UsageError(str(err)) from None
    return results


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "run",
        help="run scenario files and show what each side read",
        description="Run scenario files (docs/scenarios.md) on the model or the kernel and show, "
        "step by step, what the host, the guest and the VMM saw against what was expected.",
        epilog=EXAMPLE,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="scenario TOML files")
    add_selection(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_selection(args)
    scenarios = load_all(args.files)
    results = execute(scenarios, args, what="run")
    if not results:
        raise UsageError(f"no scenario runs on platform {args.platform!r}")
    return show.print_results(results, args.format, per_step=True)

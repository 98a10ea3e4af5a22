"""Scenario results as text (rich on a terminal), JSON, or TAP 13 (kselftest habits)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from guestmem.cli import output
from guestmem.cli.output import dump_json
from guestmem.scenario.expect import describe
from guestmem.scenario.runner import RunResult, StepResult
from guestmem.spec import platforms

FORMATS = ("text", "json", "tap")
_ORDER = {name: n for n, name in enumerate(platforms.PLATFORMS)}
__all__ = [
    "FORMATS",
    "dump_json",
    "exit_code",
    "print_cases",
    "print_runs",
    "print_tap",
    "summary",
    "to_json",
]
_STATUS = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP", "n/a": "N/A"}
#: The summary's column for each run status.
_COUNTS = {"pass": "passed", "fail": "failed", "skip": "skipped", "n/a": "not applicable"}


def title(result: RunResult) -> str:
    return f"{result.scenario.name} [{result.platform}]"


def step_verdict(step: StepResult) -> str:
    return {True: "ok", False: "FAIL", None: "skip"}[step.passed]


def saw(step: StepResult) -> str:
    """What the acting side saw: the data it read, the error, the signal or the exit."""
    if step.outcome is None:
        return "(not run)"
    return describe(step.outcome)


def to_json(results: Sequence[RunResult]) -> dict[str, Any]:
    return {"passed": all(r.passed for r in results), "runs": [r.to_json() for r in results]}


def summary(results: Sequence[RunResult]) -> dict[str, dict[str, int]]:
    """Per platform: how many runs passed, failed, were skipped, or did not apply."""
    out: dict[str, dict[str, int]] = {}
    for r in sorted(results, key=lambda r: _ORDER.get(r.platform, len(_ORDER))):
        counts = out.setdefault(r.platform, dict.fromkeys(_COUNTS.values(), 0))
        counts[_COUNTS[r.status]] += 1
    return out


def print_runs(results: Sequence[RunResult], stream: TextIO | None = None) -> None:
    """``guestmem run`` text: every step, what each side saw, the verdict."""
    stream = stream or sys.stdout
    for r in results:
        head = f"{title(r)} abi={r.abi} backend={r.backend}: {_STATUS[r.status]}"
        if r.skipped:
            head += f" (skipped: {r.skipped})"
        if r.not_applicable:
            head += f" (not applicable: {r.not_applicable})"
        if r.error:
            head += f" (error: {r.error})"
        rows = [
            (
                s.step.index,
                s.step.side,
                s.step.label(),
                saw(s),
                " | ".join(map(str, s.expect)),
                step_verdict(s),
            )
            for s in r.steps
        ]
        output.table(("#", "side", "action", "saw", "expect", "result"), rows, title=head, stream=stream)
        print(file=stream)


def print_cases(results: Sequence[RunResult], stream: TextIO | None = None) -> None:
    """``guestmem check`` text: one line per case, the failing steps, then a summary."""
    stream = stream or sys.stdout
    for r in results:
        line = f"{_STATUS[r.status]:<4}  {title(r)}"
        if r.skipped:
            line += f"  # {r.skipped}"
        if r.not_applicable:
            line += f"  # {r.abi}: {r.not_applicable}"
        if r.error:
            line += f"  # error: {r.error}"
        print(line, file=stream)
        for s in r.failures:
            print(
                f"      step {s.step.index} {s.step.label()}: expected {_expected(s)}, saw {saw(s)}",
                file=stream,
            )
    print(file=stream)
    counts = summary(results)
    columns = tuple(_COUNTS.values())
    rows: list[tuple[object, ...]] = [(p, *(c[k] for k in columns)) for p, c in counts.items()]
    rows.append(("total", *(sum(c[k] for c in counts.values()) for k in columns)))
    output.table(("platform", *columns), rows, title="summary", stream=stream)


def print_tap(results: Sequence[RunResult], stream: TextIO | None = None, *, totals: bool = False) -> None:
    """TAP version 13: ``ok N - name [platform]``, ``not ok`` with ``#`` diagnostics,
    ``# SKIP reason``; ``totals`` adds kselftest's ``# Totals:`` line. A run that does not
    apply to the revision is no test point: a ``# N/A`` line says so, and the totals
    count it apart."""
    stream = stream or sys.stdout
    print("TAP version 13", file=stream)
    for r in results:
        if r.status == "n/a":
            print(f"# N/A {title(r)} {r.abi}: {r.not_applicable}".replace("\n", " "), file=stream)
    points = [r for r in results if r.status != "n/a"]
    print(f"1..{len(points)}", file=stream)
    for n, r in enumerate(points, start=1):
        name = f"{title(r)} {r.abi}".replace("#", "")
        if r.status == "fail":
            print(f"not ok {n} - {name}", file=stream)
            if r.error:
                print(f"# error: {r.error}", file=stream)
            for s in r.failures:
                print(
                    f"# step {s.step.index} {s.step.label()}: expected {_expected(s)}, saw {saw(s)}",
                    file=stream,
                )
        elif r.status == "skip":
            print(f"ok {n} - {name} # SKIP {r.skipped}", file=stream)
        else:
            print(f"ok {n} - {name}", file=stream)
    if totals:
        for platform, c in summary(results).items():
            counts = " ".join(f"{k} {v}" for k, v in c.items())
            print(f"# {platform}: {counts}", file=stream)
        passed, failed, skipped, na = (sum(r.status == s for r in results) for s in _COUNTS)
        print(f"# Totals: pass:{passed} fail:{failed} xfail:0 xpass:0 skip:{skipped} error:0", file=stream)
        if na:
            print(f"# not applicable to this revision: {na}", file=stream)


def _expected(step: StepResult) -> str:
    return " or ".join(map(str, step.expect))


def print_suite(results: Sequence[RunResult], fmt: str) -> int:
    """A suite's results (``check``, ``consume``): a line per case and a per-platform
    summary, or JSON with the summary, or TAP with kselftest's totals; the exit code."""
    if fmt == "json":
        dump_json({**to_json(results), "summary": summary(results)})
    elif fmt == "tap":
        print_tap(results, totals=True)
    else:
        print_cases(results)
    return exit_code(results)


def exit_code(results: Sequence[RunResult]) -> int:
    """0 when no expectation failed (skips are not failures), else 1."""
    return 1 if any(r.status == "fail" for r in results) else 0

"""Scenario results for people (text, coloured on a terminal) and for machines (JSON,
TAP 13 as kselftest prints it, JUnit XML for CI dashboards), and the exit status.

Exit status (every command that runs scenarios): :data:`EXIT_PASS` when every expectation
held, :data:`EXIT_FAIL` when one failed, :data:`EXIT_SKIP` (kselftest's ``KSFT_SKIP``)
when nothing failed and nothing passed because every run was skipped; bad input is 2.
"""

from __future__ import annotations

import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any, TextIO

from guestmem import schemas, terminal
from guestmem.printable import printable
from guestmem.scenario.expect import describe
from guestmem.scenario.runner import RunResult, StepResult
from guestmem.spec import platforms

FORMATS = ("text", "json", "tap", "junit")
EXIT_PASS, EXIT_FAIL, EXIT_SKIP = 0, 1, 4
_ORDER = {name: n for n, name in enumerate(platforms.PLATFORMS)}
__all__ = [
    "EXIT_FAIL",
    "EXIT_PASS",
    "EXIT_SKIP",
    "FORMATS",
    "exit_code",
    "print_cases",
    "print_junit",
    "print_runs",
    "print_tap",
    "summary",
    "to_json",
]
_STATUS = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP", "n/a": "N/A"}
#: The summary's column for each run status.
_COUNTS = {"pass": "passed", "fail": "failed", "skip": "skipped", "n/a": "not applicable"}


def title(result: RunResult) -> str:
    """``name [platform]``, the name's line-changing characters escaped (:mod:`guestmem.printable`)."""
    return f"{printable(result.scenario.name)} [{result.platform}]"


def step_verdict(step: StepResult) -> str:
    return {True: "ok", False: "FAIL", None: "skip"}[step.passed]


def saw(step: StepResult) -> str:
    """What the acting side saw: the data it read, the error, the signal or the exit."""
    if step.outcome is None:
        return "(not run)"
    return describe(step.outcome)


def to_json(results: Sequence[RunResult]) -> dict[str, Any]:
    """A ``guestmem.results/1`` document (schemas/results.schema.json)."""
    return {**_head(results), "runs": [r.to_json() for r in results]}


def _head(results: Sequence[RunResult]) -> dict[str, Any]:
    """The results document without its runs."""
    return schemas.document(
        "results",
        {
            "passed": all(r.passed for r in results),
            "exit_status": exit_code(results),
            "summary": summary(results),
        },
    )


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
            (s.step.index, s.step.label(), saw(s), " | ".join(map(str, s.expect)), step_verdict(s))
            for s in r.steps
        ]
        headers = ("#", "action", "saw", "expect", "result")
        terminal.table(headers, rows, title=head, stream=stream, verdicts=(4,), whole_words=(2, 3))
        print(file=stream)


def print_cases(results: Sequence[RunResult], stream: TextIO | None = None) -> None:
    """``guestmem check`` text: one line per case, the failing steps, then a summary."""
    stream = stream or sys.stdout
    for r in results:
        status = _STATUS[r.status]
        line = f"{status:<4}  {title(r)}"
        if r.skipped:
            line += f"  # {r.skipped}"
        if r.not_applicable:
            line += f"  # {r.abi}: {r.not_applicable}"
        if r.error:
            line += f"  # error: {r.error}"
        print(terminal.verdict(status, stream) + _fold(line, stream, "      ")[len(status) :], file=stream)
        for s in r.failures:
            print(_fold(f"      {_failure(s)}", stream, "        "), file=stream)
    print(file=stream)
    counts = summary(results)
    columns = tuple(_COUNTS.values())
    rows: list[tuple[object, ...]] = [(p, *(c[k] for k in columns)) for p, c in counts.items()]
    rows.append(("total", *(sum(c[k] for c in counts.values()) for k in columns)))
    terminal.table(("platform", *columns), rows, title="summary", stream=stream)
    if exit_code(results) == EXIT_SKIP:
        print(
            f"nothing ran: every run was skipped or not applicable: exit status {EXIT_SKIP} (KSFT_SKIP)",
            file=stream,
        )


def _fold(line: str, stream: TextIO, indent: str) -> str:
    """``line`` broken between words to the terminal's width (unchanged when piped)."""
    columns = terminal.width(stream)
    if columns is None:
        return line
    return textwrap.fill(
        line, columns, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
    )


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
                print(f"# {_failure(s)}", file=stream)
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


def junit(results: Sequence[RunResult]) -> ET.Element:
    """JUnit XML as CI dashboards read it: a ``testsuite`` per platform, a ``testcase``
    per run (``classname`` guestmem.PLATFORM, ``name`` SCENARIO [ABI]) with a ``failure``
    per failing step, an ``error`` when a backend raised, ``skipped`` with the reason."""
    root = ET.Element("testsuites", name="guestmem")
    suites: dict[str, ET.Element] = {}
    for r in sorted(results, key=lambda r: _ORDER.get(r.platform, len(_ORDER))):
        suite = suites.get(r.platform)
        if suite is None:
            suite = suites[r.platform] = ET.SubElement(root, "testsuite", name=f"guestmem.{r.platform}")
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"guestmem.{r.platform}",
            name=f"{printable(r.scenario.name)} [{r.abi}]",
            file=printable(r.scenario.file),
        )
        if r.error:
            ET.SubElement(case, "error", message=r.error, type="backend").text = r.error
        failures = [_failure(s) for s in r.failures if s.outcome is not None]
        if failures:
            ET.SubElement(case, "failure", message=failures[0], type="expectation").text = "\n".join(failures)
        if r.status == "skip":
            ET.SubElement(case, "skipped", message=r.skipped or "")
        elif r.status == "n/a":
            ET.SubElement(case, "skipped", message=f"not applicable to {r.abi}: {r.not_applicable}")
        ET.SubElement(
            case, "system-out"
        ).text = f"backend={r.backend} abi={r.abi} file={printable(r.scenario.file)}"
    for element in (root, *suites.values()):
        cases = element.iter("testcase")
        counted = list(cases)
        element.set("tests", str(len(counted)))
        for tag, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            element.set(key, str(sum(c.find(tag) is not None for c in counted)))
    return root


def print_junit(results: Sequence[RunResult], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    root = junit(results)
    ET.indent(root)
    print('<?xml version="1.0" encoding="utf-8"?>', file=stream)
    print(ET.tostring(root, encoding="unicode"), file=stream)


def _failure(step: StepResult) -> str:
    return f"step {step.step.index} {step.step.label()}: expected {_expected(step)}, saw {saw(step)}"


def _expected(step: StepResult) -> str:
    return " or ".join(map(str, step.expect))


def print_results(results: Sequence[RunResult], fmt: str, *, per_step: bool = False) -> int:
    """Results in ``fmt``; text is a line per case and a per-platform summary (``check``,
    ``consume``) or, with ``per_step``, every step of every run (``run``). The exit status."""
    if fmt == "json":  # as to_json(results), one run at a time
        schemas.write_list(_head(results), "runs", (r.to_json() for r in results))
    elif fmt == "tap":
        print_tap(results, totals=True)
    elif fmt == "junit":
        print_junit(results)
    elif per_step:
        print_runs(results)
    else:
        print_cases(results)
    return exit_code(results)


def exit_code(results: Sequence[RunResult]) -> int:
    """:data:`EXIT_FAIL` when an expectation failed, :data:`EXIT_SKIP` when nothing ran
    because every run was skipped or not applicable, else :data:`EXIT_PASS` (skips and
    not-applicable runs beside passes are not failures)."""
    if any(r.status == "fail" for r in results):
        return EXIT_FAIL
    if results and not any(r.status == "pass" for r in results):
        return EXIT_SKIP
    return EXIT_PASS

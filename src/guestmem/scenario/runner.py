"""Run a :class:`~guestmem.scenario.format.Scenario` on a backend and judge every step.

One run = one scenario on one platform under one ABI revision. Every step runs (a failed
expectation does not stop the run, so the output shows what each side read later); a
step the backend cannot perform (``Outcome.skipped``) or a backend that cannot open the
platform (:class:`~guestmem.backend.base.Unavailable`) makes the run *skipped* from that
point with the backend's reason, never passed. A revision the file's ``abi`` does not
list makes the run *not applicable*: nothing runs, and it is neither a pass nor a failure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from guestmem import backend as backends
from guestmem.backend.base import MAX_PAGES, Backend, Machine, Outcome, PageView, PageViews, Unavailable
from guestmem.errors import IoctlError, TimeLimit
from guestmem.scenario.expect import Expect, matches
from guestmem.scenario.format import Scenario, ScenarioError, Step
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
)

#: Default ``--timeout``: seconds one scenario run may take on one platform.
TIMEOUT = 60.0
#: What a run observes for the report's memory maps (model backend): the first pages of
#: the file after each of the first steps.
OBSERVED_PAGES = 16
OBSERVED_STEPS = 500
#: Bytes of short reads (a page or less) a run keeps whole after it ends; the rest is
#: summarised as a long read is (:meth:`RunResult.compact`).
KEPT = 4 << 20


@dataclass
class StepResult:
    step: Step
    expect: tuple[Expect, ...]
    outcome: Outcome | None
    #: True / False; None when the step did not count (the run was skipped before or at it).
    passed: bool | None
    #: The memory after the step, page by page (model backend only; for reports).
    pages: PageViews | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.step.index,
            "op": self.step.op,
            "passed": self.passed,
            "expect": " | ".join(str(e) for e in self.expect),
            "outcome": None if self.outcome is None else outcome_json(self.outcome),
        }


#: Bytes read that JSON output keeps whole (one page); a longer read is abbreviated.
JSON_DATA_LIMIT = 4096
#: How much of an abbreviated read JSON output keeps.
JSON_DATA_HEAD = 32


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """The step's outcome for JSON output (schemas/results.schema.json). A read of more than
    :data:`JSON_DATA_LIMIT` bytes keeps its first :data:`JSON_DATA_HEAD` bytes in ``data``
    and adds ``data_size`` and ``data_sha256`` of the whole, so a whole-suite document stays
    small (a selftest reads megabytes) and two reads can still be compared."""
    out = outcome.to_json()
    data = outcome.data
    if outcome.data_size is not None:  # summarised when its run ended
        out["data_size"] = outcome.data_size
        out["data_sha256"] = outcome.data_sha256
    elif data is not None and len(data) > JSON_DATA_LIMIT:
        out["data"] = data[:JSON_DATA_HEAD].hex()
        out["data_size"] = len(data)
        out["data_sha256"] = hashlib.sha256(data).hexdigest()
    return out


def summarised(outcome: Outcome) -> Outcome:
    """``outcome`` with its data summarised: the first :data:`JSON_DATA_HEAD` bytes, the
    length, the SHA-256 and the byte every byte is, if one is (what JSON output, text and
    the report show of a long read)."""
    data = outcome.data
    if data is None or outcome.data_size is not None or len(data) <= JSON_DATA_HEAD:
        return outcome
    fill = data[0] if data.count(data[:1]) == len(data) else None
    return dataclasses.replace(
        outcome,
        data=data[:JSON_DATA_HEAD],
        origins=None,
        data_size=len(data),
        data_sha256=hashlib.sha256(data).hexdigest(),
        data_fill=fill,
    )


@dataclass
class RunResult:
    scenario: Scenario
    platform: str
    abi: str
    backend: str
    steps: list[StepResult] = field(default_factory=list)
    skipped: str | None = None
    #: Why the scenario does not apply to this revision (its ``abi`` does not list it).
    not_applicable: str | None = None
    #: A backend raised instead of returning an outcome (a bug there): the run fails.
    error: str | None = None
    #: The memory before the first step (model backend only).
    initial: PageViews | None = None
    #: The run was stopped at its time limit (``--timeout``); ``error`` says where.
    timed_out: bool = False

    def compact(self) -> None:
        """Keep what a judged run needs to be shown: reads longer than a page summarised
        (:func:`summarised`), and short ones whole up to :data:`KEPT` bytes in all."""
        kept = 0
        for step in self.steps:
            outcome = step.outcome
            if outcome is None or outcome.data is None or outcome.data_size is not None:
                continue
            size = len(outcome.data)
            if size <= JSON_DATA_LIMIT and kept + size <= KEPT:
                kept += size
                continue
            step.outcome = summarised(outcome)

    @property
    def passed(self) -> bool:
        return (
            self.skipped is None
            and self.not_applicable is None
            and self.error is None
            and all(s.passed for s in self.steps)
        )

    @property
    def status(self) -> str:
        """``pass``, ``fail``, ``skip`` (a failure before the skip still counts as a
        failure) or ``n/a`` (the scenario does not apply to the revision)."""
        if self.not_applicable is not None:
            return "n/a"
        if self.error is not None or any(s.passed is False for s in self.steps):
            return "fail"
        return "skip" if self.skipped is not None else "pass"

    @property
    def failures(self) -> list[StepResult]:
        return [s for s in self.steps if s.passed is False]

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "file": self.scenario.file,
            "platform": self.platform,
            "abi": self.abi,
            "backend": self.backend,
            "status": self.status,
            "passed": self.passed,
            "skipped": self.skipped,
            "not_applicable": self.not_applicable,
            "error": self.error,
            "steps": [s.to_json() for s in self.steps],
        }


def gmem_flags(scenario: Scenario) -> int:
    """``MMAP``, plus ``INIT_SHARED`` when the scenario starts shared (docs/semantics.md §9)."""
    return GUEST_MEMFD_FLAG_MMAP | (GUEST_MEMFD_FLAG_INIT_SHARED if scenario.init == "shared" else 0)


def observed(machine: Machine, known: dict[PageView, PageView]) -> PageViews | None:
    """The first :data:`OBSERVED_PAGES` pages as the machine shows them
    (:meth:`~guestmem.backend.base.Machine.observe`; None on a kernel), equal views shared
    through ``known``."""
    pages = machine.observe(OBSERVED_PAGES)
    if pages is not None:
        pages.views = [known.setdefault(view, view) for view in pages.views]
    return pages


def check_limits(scenarios: Iterable[Scenario], backend: Backend) -> None:
    """Refuse, before anything runs, a scenario larger than ``backend`` accepts
    (:class:`ScenarioError` naming the file, the field, the value and the reason)."""
    limit: tuple[int, str] | None = None
    for scenario in scenarios:
        if limit is None:
            limit = backend.max_pages()
        if scenario.pages > limit[0]:
            raise ScenarioError(
                f"{scenario.file}: field 'pages': {scenario.pages} pages is more than the {backend.name} "
                f"backend accepts here ({limit[0]}: {limit[1]})"
            )


def run(
    scenario: Scenario,
    platform: str,
    backend: Backend,
    abi: str | None = None,
    *,
    observe: bool = False,
    timeout: float | None = TIMEOUT,
    compact: bool = True,
) -> RunResult:
    """Run ``scenario`` on ``platform`` under revision ``abi`` (default: the scenario's
    own); a revision the scenario does not apply to gives a *not applicable* result.

    A run that takes longer than ``timeout`` seconds (None: no limit) is stopped: a guest
    command is cut at the limit, no further step runs, and the run fails as timed out.
    The result is compact (:meth:`RunResult.compact`) unless ``compact`` is False."""
    abi = abi or scenario.abi
    result = RunResult(scenario, platform, abi, backend.name)
    if not scenario.applies_to(abi):
        listed = ", ".join(scenario.revisions)
        result.not_applicable = f"its expectations hold for {listed}, not {abi}"
        result.steps = [StepResult(s, s.expect_for(platform), None, None) for s in scenario.steps]
        return result
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        machine = backend.open(platform, abi, scenario.size, gmem_flags(scenario))
    except Unavailable as why:
        result.skipped = str(why)
        result.steps = [StepResult(s, s.expect_for(platform, abi), None, None) for s in scenario.steps]
        return result
    except IoctlError as err:
        result.error = f"creating the guest_memfd failed: {err}"
        result.steps = [StepResult(s, s.expect_for(platform, abi), None, None) for s in scenario.steps]
        return result
    machine.deadline = deadline
    known: dict[PageView, PageView] = {}
    try:
        if observe:
            result.initial = observed(machine, known)
        for step in scenario.steps:
            expect = step.expect_for(platform, abi)
            if result.skipped is not None or result.error is not None:
                result.steps.append(StepResult(step, expect, None, None))
                continue
            try:
                outcome = step.operation.apply(machine)
            except TimeLimit:  # a long step stopped at the deadline: the run ends here
                result.timed_out = True
                result.error = (
                    f"timed out: the run took more than {timeout:g} s (--timeout), at step {step.index} "
                    "(stopped during it)"
                )
                result.steps.append(StepResult(step, expect, None, False))
                continue
            except Exception as err:  # a backend bug: report it as this run's failure, go on
                result.error = f"step {step.index} ({step.op}): {type(err).__name__}: {err}"
                result.steps.append(StepResult(step, expect, None, False))
                continue
            if outcome.skipped is not None:
                result.skipped = f"step {step.index} ({step.op}): {outcome.skipped}"
                result.steps.append(StepResult(step, expect, outcome, None))
                continue
            passed = any(matches(e, outcome) for e in expect)
            pages = observed(machine, known) if observe and step.index <= OBSERVED_STEPS else None
            result.steps.append(StepResult(step, expect, outcome, passed, pages))
            if deadline is not None and time.monotonic() > deadline:
                result.timed_out = True
                result.error = (
                    f"timed out: the run took more than {timeout:g} s (--timeout), at step {step.index}"
                )
    finally:
        try:
            machine.close()
        except Exception as err:
            result.error = result.error or f"close: {type(err).__name__}: {err}"
    if compact:
        result.compact()
    return result


def run_all(
    scenarios: Iterable[Scenario],
    *,
    platform: str | None = None,
    abi: str | None = None,
    backend: str = "model",
    observe: bool = False,
    timeout: float | None = TIMEOUT,
    done: Callable[[RunResult, int, int], None] | None = None,
    each: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Every scenario on each of its platforms (or only ``platform``; ``all`` = all).

    ``done(result, finished, total)`` is called after each run (for a progress display);
    ``each(result)`` sees each run whole, before it is made compact. :class:`ScenarioError`
    before anything runs if a scenario exceeds the backend's limits."""
    chosen = open_backend(backend)
    scenarios = list(scenarios)
    check_limits(scenarios, chosen)
    runs = [(scenario, name) for scenario in scenarios for name in select_platforms(scenario, platform)]
    results = []
    for scenario, name in runs:
        result = run(scenario, name, chosen, abi, observe=observe, timeout=timeout, compact=each is None)
        if each is not None:
            each(result)
            result.compact()
        results.append(result)
        if done is not None:
            done(results[-1], len(results), len(runs))
    return results


class _Missing:
    """A backend whose code is not importable here: every run is skipped with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def max_pages(self) -> tuple[int, str]:
        return MAX_PAGES, "the limit of every backend"

    def open(self, platform: str, abi: str, size: int, flags: int) -> Machine:
        raise Unavailable(self.reason)


def open_backend(name: str) -> Backend:
    """``backend.get(name)``; a backend that cannot even be imported skips every run."""
    try:
        return backends.get(name)
    except ImportError as err:
        return _Missing(name, f"the {name} backend is not available: {err}")


def select_platforms(scenario: Scenario, platform: str | None) -> Sequence[str]:
    if platform in (None, "all"):
        return scenario.platforms
    return [p for p in scenario.platforms if p == platform]

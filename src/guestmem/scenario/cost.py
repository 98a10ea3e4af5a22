"""What one run of a scenario may cost, estimated from the file before anything runs.

Each field of a scenario is bounded on its own (:mod:`guestmem.scenario.format`); these
limits bound a run as a whole, and what the commands that keep or write its results make
of it. Every figure is an upper bound computed from the steps alone, the same on every
platform, revision and backend, so that what is refused is refused before anything runs,
with the step at which the figure passes its limit (docs/scenarios.md, *Limits*):

* :data:`MAX_MOVED`: bytes read and written by the run's host and guest accesses, each
  access counted in the whole pages it touches. It bounds the memory a run's pages take
  (the model stores every page written; the kernel allocates it) and the data its reads
  return;
* :data:`MAX_PINNED`: pages pinned, the sum of every ``pin``'s size (each pinned page is
  a page the kernel allocates and a count the model keeps);
* :data:`MAX_FIXTURE`: the fixture ``guestmem fill`` writes for a run, which ``guestmem
  consume`` reads (its file limit, so that ``fill`` never writes what ``consume``
  refuses);
* :data:`MAX_REPORT`: the HTML report of ``guestmem report``, whose memory maps show at
  most :data:`~guestmem.scenario.runner.OBSERVED_STEPS` steps and
  :data:`~guestmem.scenario.runner.OBSERVED_PAGES` pages of each run.

What a run keeps after it ends is compact whatever it read (see
:meth:`~guestmem.scenario.runner.RunResult.compact`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from guestmem import inputs
from guestmem.ops import GuestRead, GuestWrite, HostRead, HostWrite, Pin
from guestmem.uapi.kvm import PAGE_SIZE

if TYPE_CHECKING:
    from guestmem.scenario.format import Scenario, Step

#: Bytes one run's host and guest accesses may move, counted in whole pages.
MAX_MOVED = 64 << 20
#: Pages one run may pin (the sum of its ``pin`` sizes).
MAX_PINNED = 1 << 14
#: The largest fixture ``fill`` writes: what ``consume`` reads.
MAX_FIXTURE = inputs.MAX_FIXTURE_BYTES
#: The largest HTML report ``report`` writes.
MAX_REPORT = 64 << 20

#: Upper bound of the JSON a fixture holds per step beyond the step's own fields and its
#: expectations: the model's outcome (keys, an exit, an ``error_offset``, a read's first
#: bytes, length and hash) and one rendered outcome that is not data; where the file only
#: said ``ok`` or ``any``, a read adds its hex to what is allowed.
_FIXTURE_STEP = 1024
#: Upper bounds of the report's HTML: a memory-map row's step label and what it saw, one
#: page cell of a row, and the rest of a run (its heading and table frame).
_REPORT_ROW = 1024
_REPORT_CELL = 1024
_REPORT_RUN = 4096
#: Characters of escaped HTML per character of text (``"`` becomes ``&quot;``, a
#: bidirectional control ``\\u202e``, an unassigned character ``\\U000e0fff``).
_ESCAPED = 10


class CostError(ValueError):
    """A scenario over a limit of this module: ``FILE: step N: reason``."""


def accessed(step: Step) -> int:
    """Bytes a host or guest access moves, counted in whole pages (0 for other ops)."""
    if not isinstance(step.operation, (HostWrite, HostRead, GuestWrite, GuestRead)):
        return 0
    offset, length = step.operation.span
    if length == 0:
        return 0
    first = offset // PAGE_SIZE
    last = (offset + length - 1) // PAGE_SIZE
    return (last - first + 1) * PAGE_SIZE


def pinned(step: Step) -> int:
    """Pages a ``pin`` step pins at most."""
    return -(-step.operation.span[1] // PAGE_SIZE) if isinstance(step.operation, Pin) else 0


class Budget:
    """The running totals of one file's steps, checked as each step is read, so that a
    file over a limit is refused at the step that passes it (and before later steps cost
    memory)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.moved = 0
        self.pinned = 0

    def add(self, step: Step) -> None:
        self.moved += accessed(step)
        if self.moved > MAX_MOVED:
            raise CostError(
                f"{self.where}: step {step.index}: field '{_field(step)}': the run's accesses would move "
                f"{self.moved} bytes counted in whole pages by here, more than the limit of "
                f"{MAX_MOVED >> 20} MiB for one run"
            )
        self.pinned += pinned(step)
        if self.pinned > MAX_PINNED:
            raise CostError(
                f"{self.where}: step {step.index}: field 'size': the run would pin {self.pinned} pages by "
                f"here, more than the limit of {MAX_PINNED} pages for one run"
            )


def _field(step: Step) -> str:
    return "size" if step.op.endswith("_read") else ("repeat" if "repeat" in step.raw else "data")


def _expect_chars(step: Step, platform: str, abi: str) -> int:
    return sum(len(str(e)) + 24 for e in step.expect_for(platform, abi))


def fixture_bound(scenario: Scenario, platform: str, abi: str) -> tuple[int, int]:
    """An upper bound of the bytes of the fixture of one run, and the first step at which
    the bound passes :data:`MAX_FIXTURE` (0 if it does not)."""
    total = 4096 + sum(len(json.dumps(text)) for text in (scenario.name, scenario.about, scenario.file))
    for step in scenario.steps:
        total += _FIXTURE_STEP + _raw_json(step)
        total += 2 * _expect_chars(step, platform, abi)
        if step.op.endswith("_read") and all(e.kind in ("ok", "any") for e in step.expect_for(platform, abi)):
            total += 2 * step.operation.span[1]  # allowed: what the model read, as hex
        if total > MAX_FIXTURE:
            return total, step.index
    return total, 0


def _raw_json(step: Step) -> int:
    """Bytes of the step's own fields in the fixture (indented JSON, without expectations)."""
    return sum(
        len(json.dumps(key)) + len(json.dumps(value, indent=2))
        for key, value in step.raw.items()
        if key not in ("expect", "expect_abi", "error_offset")
    )


def check_fixture(scenario: Scenario, platform: str, abi: str) -> None:
    """Refuse a run whose fixture could pass :data:`MAX_FIXTURE` (:class:`CostError`)."""
    total, at = fixture_bound(scenario, platform, abi)
    if at:
        raise CostError(
            f"{scenario.file}: step {at}: the fixture of the run on {platform} ({abi}) could take "
            f"{total} bytes by here, more than the {MAX_FIXTURE >> 20} MiB a fixture may have "
            "(guestmem consume reads no larger one)"
        )


def report_bound(runs: Sequence[tuple[Scenario, str, str]], observed_steps: int, observed_pages: int) -> int:
    """An upper bound of the report's bytes for these runs (scenario, platform, revision)."""
    total = 1 << 20  # the matrices, the legend, the style
    seen: set[int] = set()
    for scenario, platform, abi in runs:
        if id(scenario) not in seen:  # its heading and description, once
            seen.add(id(scenario))
            total += _ESCAPED * (len(scenario.about) + 2 * len(scenario.name))
        rows = min(len(scenario.steps), observed_steps) + 1
        cells = min(scenario.pages, observed_pages)
        total += _REPORT_RUN + 8 * _ESCAPED * (len(scenario.name) + len(scenario.file))
        total += rows * (_REPORT_ROW + cells * _REPORT_CELL)
        # a failed step names what it expected
        total += _ESCAPED * sum(_expect_chars(step, platform, abi) for step in scenario.steps)
    return total

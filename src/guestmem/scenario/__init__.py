"""Scenarios: a sequence of host, guest and VMM actions with what each should see.

:mod:`~guestmem.scenario.format` reads and validates files (docs/scenarios.md),
:mod:`~guestmem.scenario.expect` judges outcomes, :mod:`~guestmem.scenario.runner` runs
them on a backend. :func:`suite` lists the built-in conformance suite shipped in
``guestmem/suite/``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from guestmem.scenario.format import Scenario, ScenarioError, Step, load, load_all
from guestmem.scenario.runner import RunResult, StepResult, run, run_all


def suite_dir() -> Path:
    """The directory of the packaged suite files."""
    return Path(str(resources.files("guestmem") / "suite"))


def suite_files() -> list[Path]:
    """The built-in suite's scenario files, sorted by name."""
    return sorted(suite_dir().glob("*.toml"))


def suite() -> list[Scenario]:
    """The built-in suite, parsed (a parametrised file gives one scenario per run)."""
    return [scenario for path in suite_files() for scenario in load_all(path)]


__all__ = [
    "RunResult",
    "Scenario",
    "ScenarioError",
    "Step",
    "StepResult",
    "load",
    "load_all",
    "run",
    "run_all",
    "suite",
    "suite_dir",
    "suite_files",
]

"""The built-in suite on a kernel that has ``KVM_SET_MEMORY_ATTRIBUTES2``.

Every scenario of the suite runs on ``sw_protected`` and the default VM under the
revision the kernel implements, on the kernel and on the model, and the two must agree
step by step (errno, ``error_offset``, signal, exit, bytes except those the revision does
not promise). Whether a file's expectations hold under that revision is the suite's
business (``guestmem check --abi``); that the model answers what the kernel answers is
checked here, so every expectation the model meets, the kernel meets too. A kernel skip
must carry a reason and be one the kernel truly needs: a guest access naming the side
that ``sw_protected`` cannot name, or a private access on a VM without private memory.
The selftest scenarios (``selftest_*``, RFC v5's ``rfc_*``) written for the kernel's
revision must pass on it.

These tests run inside the test kernels (``tests/test_vm.py`` boots them, naming the series
in ``GUESTMEM_TEST_SERIES``); elsewhere they skip with the reason (tests/kvm_support.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from guestmem.backend.compare import observed
from guestmem.backend.kernel import KernelBackend
from guestmem.backend.model import ModelBackend
from guestmem.scenario import suite
from guestmem.scenario.format import Scenario
from guestmem.scenario.runner import RunResult, run
from kvm_support import SERIES, requires_conversions, series

pytestmark = requires_conversions
PLATFORMS = ("sw_protected", "default")
#: The skips the kernel backend may give on these VM types (see its docstring).
ALLOWED_SKIPS = ("KVM takes the side from the page's attribute", "VM has no private memory on this kernel")

SCENARIOS = suite()


def _cases() -> list[Any]:
    return [pytest.param(s, p, id=f"{s.name}[{p}]") for s in SCENARIOS for p in PLATFORMS if p in s.platforms]


_KERNEL_RUNS: dict[tuple[str, str], RunResult] = {}


def on_kernel(scenario: Scenario, platform: str) -> RunResult:
    """``scenario`` run on the kernel under its revision, once: every test here that needs
    that run reads the same result (under emulation a long selftest takes seconds a run)."""
    key = (scenario.name, platform)
    if key not in _KERNEL_RUNS:
        _KERNEL_RUNS[key] = run(scenario, platform, KernelBackend(), series(), compact=False)
    return _KERNEL_RUNS[key]


def both(scenario: Scenario, platform: str) -> tuple[RunResult, RunResult]:
    return run(scenario, platform, ModelBackend(), series(), compact=False), on_kernel(scenario, platform)


@pytest.mark.parametrize(("scenario", "platform"), _cases())
def test_kernel_answers_what_the_model_answers(scenario: Scenario, platform: str) -> None:
    model, kernel = both(scenario, platform)
    assert kernel.error is None, kernel.error
    if kernel.skipped is not None:
        assert any(s in kernel.skipped for s in ALLOWED_SKIPS), f"{scenario.file}: skipped: {kernel.skipped}"
    for want, got in zip(model.steps, kernel.steps, strict=True):
        if got.outcome is None or got.outcome.skipped is not None:
            break
        assert want.outcome is not None
        assert observed(got.outcome, want.outcome) == observed(want.outcome, want.outcome), (
            f"{scenario.file}: step {want.step.index} ({want.step.op}) on {platform} under {SERIES}: "
            f"kernel {got.outcome.to_json()} != model {want.outcome.to_json()}"
        )
    if model.passed and kernel.skipped is None:
        assert kernel.passed, [f.step.index for f in kernel.failures]


def applies(scenario: Scenario, series: str | None) -> bool:
    """Whether the file's expectations are written for ``series``."""
    return series is not None and scenario.applies_to(series)


#: The kernel selftests in the project's form: guest_memfd_conversions_test and friends
#: (``selftest_*``) and RFC v5's content-mode tests (``rfc_*``).
SELFTEST_PREFIXES = ("selftest_", "rfc_")


def _selftests() -> list[Any]:
    """The kernel selftests in the project's form written for this kernel's revision."""
    return [
        pytest.param(s, id=s.name)
        for s in SCENARIOS
        if s.name.startswith(SELFTEST_PREFIXES) and applies(s, SERIES) and "sw_protected" in s.platforms
    ]


@pytest.mark.parametrize("scenario", _selftests())
def test_selftest_passes_on_its_kernel(scenario: Scenario) -> None:
    result = on_kernel(scenario, "sw_protected")
    assert result.skipped is None, result.skipped
    assert result.passed, [(f.step.index, f.step.op, f.outcome) for f in result.failures]


def _written_for_this_kernel() -> list[Any]:
    return [
        pytest.param(s, p, id=f"{s.name}[{p}]")
        for s in SCENARIOS
        if applies(s, SERIES)
        for p in PLATFORMS
        if p in s.platforms
    ]


@pytest.mark.parametrize(("scenario", "platform"), _written_for_this_kernel())
def test_files_for_this_revision_pass_on_the_kernel(scenario: Scenario, platform: str) -> None:
    """``guestmem check --backend kvm --abi SERIES`` for the files written for SERIES."""
    result = on_kernel(scenario, platform)
    if result.skipped is not None:
        assert any(s in result.skipped for s in ALLOWED_SKIPS), result.skipped
    assert result.error is None and not result.failures, [
        (f.step.index, f.step.op, f.outcome) for f in result.failures
    ]

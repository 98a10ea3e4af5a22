"""The suite's ``guest_memfd_conversions_test`` scenarios (uapi.md §14) on the real kernel,
through the scenario runner and the kernel backend's ``Machine`` API.

On their own platform (``sw_protected``) they run when the kernel offers that VM type and
are skipped with the ``KVM_CAP_VM_TYPES`` reason otherwise. On the default VM, which
every x86 KVM offers, the steps before the first conversion (shared memory, hole
punching, host faults) must pass, and the run must stop at the conversion skipped with
the kernel's reason (``ENOTTY`` without the ioctl), at a pin without ``CONFIG_GUP_TEST``,
or at a guest request where ``KVM_HC_MAP_GPA_RANGE`` does not exit to userspace.
"""

from __future__ import annotations

import pytest

from guestmem.backend.kernel import KernelBackend
from guestmem.kvm.facts import cached
from guestmem.model.vm import GPA_BASE
from guestmem.scenario import Scenario, run, suite
from kvm_support import requires_guest_memfd

pytestmark = requires_guest_memfd
SELFTESTS = [s for s in suite() if s.name.startswith("selftest_")]


def test_the_suite_has_the_kernel_selftests() -> None:
    assert len(SELFTESTS) >= 9


@pytest.mark.parametrize("scenario", SELFTESTS, ids=lambda s: s.name)
def test_selftest_on_its_platform(scenario: Scenario) -> None:
    for platform in scenario.platforms:
        result = run(scenario, platform, KernelBackend())
        assert result.error is None
        if result.skipped is None:
            assert result.passed, [f.to_json() for f in result.failures]
        elif platform not in cached("/dev/kvm").vm_types:
            assert "KVM_CAP_VM_TYPES" in result.skipped
        assert all(step.passed is not False for step in result.steps)


@pytest.mark.parametrize("scenario", SELFTESTS, ids=lambda s: s.name)
def test_selftest_on_the_default_vm_until_conversion(scenario: Scenario) -> None:
    facts = cached("/dev/kvm")
    result = run(scenario, "default", KernelBackend())
    assert result.error is None
    counted = [step for step in result.steps if step.passed is not None]
    if scenario.init == "private":
        # A default VM has no private memory: the host faults, and the emulated guest,
        # which reaches guest_memfd only through the host mapping, stops with an exit.
        for step in counted:
            if step.step.op.startswith("guest"):
                assert step.outcome is not None and step.outcome.exit is not None
                assert step.outcome.exit["gpa"] == GPA_BASE + step.step.offset
            else:
                assert step.passed, step.to_json()
    else:
        assert all(step.passed for step in counted), [f.to_json() for f in result.failures]
    if facts.conversion_ioctl:
        return
    if not any(s.op in ("convert", "pin", "guest_request") for s in scenario.steps):
        assert result.status == "pass", [f.to_json() for f in result.failures]  # it all ran here
        return
    assert result.skipped is not None
    op = result.skipped.split("(", 1)[1].split(")", 1)[0]
    assert op in ("convert", "pin", "guest_request")
    reason = {"convert": "ENOTTY", "pin": "CONFIG_GUP_TEST", "guest_request": "KVM_EXIT_HYPERCALL"}[op]
    assert reason in result.skipped

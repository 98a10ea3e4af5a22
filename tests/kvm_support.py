"""Shared skip helper for real-KVM tests: ``pytestmark = requires_kvm`` or the ``kvm`` fixture.

Tests skip with the precise reason when ``/dev/kvm`` is missing or unusable (it is opened
and a VM created to find out).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from guestmem.kvm.system import Kvm, unusable_reason

KVM_REASON = unusable_reason()

#: Mark a module or test as needing a usable ``/dev/kvm``.
requires_kvm = [
    pytest.mark.kvm,
    pytest.mark.skipif(KVM_REASON is not None, reason=f"/dev/kvm unusable: {KVM_REASON}"),
]


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    """An open ``/dev/kvm``, closed after the test; skips with the reason if unusable."""
    if KVM_REASON is not None:
        pytest.skip(f"/dev/kvm unusable: {KVM_REASON}")
    with Kvm() as handle:
        yield handle


@dataclass(frozen=True)
class BootedKernel:
    """A test kernel of ``shared/kernel/NAME/``, keyed by the revision it implements: what
    its boot must show (tests/kernel_boots.py boots each, tests/test_vm.py reads them). A
    kernel with another revision is one more entry of :data:`TEST_KERNELS`."""

    #: The series ``guestmem probe`` reports inside. The probe knows a revision only by
    #: what the kernel answers, and a kernel with the merged v13 code answers as v8 does.
    probed: str
    #: ``KVM_CAP_MEMORY_ATTRIBUTES2_FLAGS`` (251) inside: the content modes, RFC v5 only.
    flags_cap: int
    #: Generated scenarios tests/test_kernel_differential.py runs inside.
    examples: int


TEST_KERNELS: dict[str, BootedKernel] = {
    "v8": BootedKernel(probed="v8", flags_cap=0, examples=500),
    "rfc-v5": BootedKernel(probed="rfc-v5", flags_cap=3, examples=200),
}
#: Set inside a boot (tests/kernel_boots.py): the revision the booted kernel implements.
KERNEL_ENV = "GUESTMEM_TEST_KERNEL"


def _series() -> tuple[str | None, str]:
    """The series this kernel implements (a :data:`TEST_KERNELS` key) and why not when
    None: inside a boot the one :data:`KERNEL_ENV` names, if the probe agrees; elsewhere
    what the probe finds."""
    if KVM_REASON is not None:
        return None, f"/dev/kvm unusable: {KVM_REASON}"
    from guestmem.errors import GuestmemError
    from guestmem.kvm import facts

    try:
        found = facts.cached("/dev/kvm")
    except GuestmemError as exc:
        return None, f"probing /dev/kvm failed: {exc}"
    if found.series is None:
        return None, (
            f"{found.conversion_skip_reason()}; these tests run inside the test kernels "
            "(tests/test_vm.py boots them with guestmem vm)"
        )
    declared = os.environ.get(KERNEL_ENV)
    if declared:
        kernel = TEST_KERNELS.get(declared)
        if kernel is None or kernel.probed != found.series:
            return None, f"{KERNEL_ENV}={declared}, but the probe finds {found.series}"
        return declared, ""
    return found.series, ""


SERIES, SERIES_REASON = _series()

#: Mark a module or test as needing a kernel with ``KVM_SET_MEMORY_ATTRIBUTES2``.
requires_conversions = [
    pytest.mark.kvm,
    pytest.mark.skipif(SERIES is None, reason=SERIES_REASON),
]

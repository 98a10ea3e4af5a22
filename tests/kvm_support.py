"""Shared skip helper for real-KVM tests: ``pytestmark = requires_kvm`` or the ``kvm`` fixture.

Tests skip with the precise reason when ``/dev/kvm`` is missing or unusable (it is opened
and a VM created to find out).
"""

from __future__ import annotations

from collections.abc import Iterator

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


def _series() -> tuple[str | None, str]:
    """The series this kernel implements (``v8``, ``rfc-v5``) and why not when None."""
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
    return found.series, ""


SERIES, SERIES_REASON = _series()

#: Mark a module or test as needing a kernel with ``KVM_SET_MEMORY_ATTRIBUTES2``.
requires_conversions = [
    pytest.mark.kvm,
    pytest.mark.skipif(SERIES is None, reason=SERIES_REASON),
]

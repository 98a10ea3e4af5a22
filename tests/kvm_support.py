"""What the real-KVM tests need from this kernel, found lazily: nothing here touches
``/dev/kvm`` at import or collection.

A test or module that needs a kernel feature carries ``needs(feature, ...)`` (a feature is a
key of :data:`guestmem.kvm.facts.FEATURES`, ``"kvm"`` for a usable ``/dev/kvm``); at setup,
``conftest.py`` asks :func:`missing`, which probes the kernel once per session, and skips
the test with the probe's reason where a feature is absent.

The tests of the conversion series (``requires_conversions``) run inside the test kernels,
where ``tests/kernel_boots.py`` names the series in ``GUESTMEM_TEST_SERIES``; the session
then checks that the kernel answers as that series (:func:`series`), and fails if not.
Set ``GUESTMEM_TEST_SERIES`` to run them on another kernel with the series.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from guestmem.kvm import facts as kernel_facts
from guestmem.kvm.system import DEVICE, Kvm


def needs(*features: str) -> pytest.MarkDecorator:
    """Mark a test as needing ``features`` of this kernel (checked at setup, not collection)."""
    for feature in features:
        if feature not in kernel_facts.FEATURES:
            raise KeyError(f"unknown kernel feature {feature!r}")
    return pytest.mark.needs(*features)


def facts() -> kernel_facts.Facts:
    """This kernel's facts, probed on first use (the probe never raises for an absence)."""
    return kernel_facts.cached(DEVICE)


def missing(*features: str) -> str | None:
    """Why the first absent feature of ``features`` is absent here, or None."""
    found = facts()
    for feature in features:
        why = found.lacks(feature)
        if why is not None:
            return f"this kernel lacks {feature}: {why}"
    return None


def skip_unless(*features: str) -> None:
    """Skip the running test with the reason unless this kernel has ``features``."""
    why = missing(*features)
    if why is not None:
        pytest.skip(why)


#: Mark a module or test as needing a usable ``/dev/kvm``.
requires_kvm = [pytest.mark.kvm, needs("kvm")]
#: ... and guest_memfd (``MMAP | INIT_SHARED`` guest_memfds, as the backend makes them).
requires_guest_memfd = [
    pytest.mark.kvm,
    needs("kvm", "guest_memfd", "guest_memfd_mmap", "guest_memfd_init_shared"),
]


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

#: The series the test kernel implements, as ``tests/kernel_boots.py`` names it; None elsewhere.
SERIES: str | None = os.environ.get("GUESTMEM_TEST_SERIES") or None
SERIES_REASON = (
    "these tests run inside the test kernels (tests/test_vm.py boots them and sets "
    "GUESTMEM_TEST_SERIES); set it to v8 or rfc-v5 to run them on a kernel with that series"
)


def series() -> str:
    """:data:`SERIES`, once the kernel has been found to answer as that series (a test
    fails if it does not: a kernel named as the series must have it)."""
    assert SERIES is not None, SERIES_REASON
    found = facts()
    kernel = TEST_KERNELS.get(SERIES)
    assert found.series == (kernel.probed if kernel else SERIES), (
        f"GUESTMEM_TEST_SERIES={SERIES}, but the kernel answers as {found.series}: "
        f"{found.conversion_skip_reason() or found.missing}"
    )
    return SERIES


#: Mark a module or test as needing the kernel named in ``GUESTMEM_TEST_SERIES``.
requires_conversions = [
    pytest.mark.kvm,
    pytest.mark.skipif(SERIES is None, reason=SERIES_REASON),
]


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    """An open ``/dev/kvm``, closed after the test; skips with the reason if unusable."""
    skip_unless("kvm")
    with Kvm() as handle:
        yield handle

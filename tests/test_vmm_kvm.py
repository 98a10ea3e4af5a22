"""The conversion handler over the real-kernel backend (kvm-here.md): the same code path as on
the model, and whatever this kernel cannot do comes back skipped with its reason, never as
a conversion that happened. Only the default VM type exists here and
``KVM_SET_MEMORY_ATTRIBUTES2`` is ``ENOTTY`` (kvm-here.md §2, §4)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from guestmem.backend.kernel import KernelBackend, KernelMachine
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_MEMORY_EXIT_FLAG_PRIVATE,
)
from guestmem.vmm import ConversionHandler
from kvm_support import requires_guest_memfd

pytestmark = requires_guest_memfd
PAGE = 4096


@pytest.fixture
def machine() -> Iterator[KernelMachine]:
    m = KernelBackend().open(
        "default", "seed", 4 * PAGE, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
    )
    try:
        yield m
    finally:
        m.close()


def test_access_without_exit_passes_through(machine: KernelMachine) -> None:
    vmm = ConversionHandler(machine)
    assert machine.host_write(PAGE, b"from the host").ok
    out = vmm.run(lambda: machine.guest_read(PAGE, 13, "shared"))
    assert out.ok and out.data == b"from the host"
    assert vmm.log == []


def test_conversion_the_kernel_lacks_is_skipped_not_passed(machine: KernelMachine) -> None:
    vmm = ConversionHandler(machine)
    fault = {
        "reason": "MEMORY_FAULT",
        "gpa": machine.gpa_base,
        "size": PAGE,
        "flags": KVM_MEMORY_EXIT_FLAG_PRIVATE,
    }
    res = vmm.handle(fault)
    assert (res.offset, res.size, res.direction) == (0, PAGE, Direction.TO_PRIVATE)
    assert not res.ok
    skipped = res.outcome.skipped
    if skipped is None:  # a kernel with the ioctl: the default VM has no private memory
        assert res.outcome.errno == "EINVAL"
    else:
        assert "KVM_SET_MEMORY_ATTRIBUTES2" in skipped or "ENOTTY" in skipped
    assert machine.host_read(0, 1).ok  # nothing converted


def test_guest_request_result_is_never_faked(machine: KernelMachine) -> None:
    vmm = ConversionHandler(machine)
    out = vmm.run(lambda: machine.guest_request(0, PAGE, Direction.TO_PRIVATE))
    assert not out.ok
    assert out.skipped is not None or out.errno == "EINVAL"

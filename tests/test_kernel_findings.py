"""What the kernels here answer where the model, following the series, answers otherwise
for a cause outside the series (docs/stress.md, *Findings*). Each test states the kernel's
answer as it is; a kernel that fixes it fails the test, which says so.

These tests run inside the test kernels (``tests/test_vm.py`` boots them, naming the series
in ``GUESTMEM_TEST_SERIES``); elsewhere they skip with the reason (tests/kvm_support.py).
"""

from __future__ import annotations

from guestmem.backend.kernel import KernelBackend
from guestmem.model.vm import GPA_BASE
from guestmem.stress.engine import FLAGS
from guestmem.uapi.kvm import KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE
from kvm_support import requires_conversions, series

pytestmark = requires_conversions
PAGE = 3
OFFSET = PAGE * PAGE_SIZE
SHARED_FAULT = {"reason": "MEMORY_FAULT", "gpa": GPA_BASE + OFFSET, "size": PAGE_SIZE, "flags": 0}


def test_a_page_touched_while_the_memslot_was_gone_faults_as_shared_once_private() -> None:
    """sw_protected: the guest reads a page while its memslot is deleted (an MMIO exit,
    which leaves an MMIO entry in the nested page table); the memslot comes back, the page
    turns private, and every guest access to it now exits as a *shared* memory fault —
    the model lets the guest at its private page. A shared access maps the page for real,
    after which the private page is the guest's again."""
    machine = KernelBackend().open("sw_protected", series(), 16 * PAGE_SIZE, FLAGS)
    try:
        assert machine.delete_memslot().ok
        mmio = machine.guest_read(OFFSET, 1)
        assert mmio.exit is not None and mmio.exit["reason"] == "MMIO", mmio
        assert machine.restore_memslot().ok
        assert machine.convert(OFFSET, PAGE_SIZE, KVM_MEMORY_ATTRIBUTE_PRIVATE).ok
        for _ in range(2):  # it stays: nothing replaces the entry
            got = machine.guest_write(OFFSET, b"\xcf")
            assert got.exit == SHARED_FAULT, f"fixed? the guest's private write gave {got.to_json()}"
        # a page never touched while the memslot was gone: the guest writes it
        assert machine.convert(OFFSET + PAGE_SIZE, PAGE_SIZE, KVM_MEMORY_ATTRIBUTE_PRIVATE).ok
        assert machine.guest_write(OFFSET + PAGE_SIZE, b"\xcf").ok
        # shared again, a guest access maps the page; private once more, the guest has it
        assert machine.convert(OFFSET, PAGE_SIZE, 0).ok
        assert machine.guest_read(OFFSET, 1).data is not None
        assert machine.convert(OFFSET, PAGE_SIZE, KVM_MEMORY_ATTRIBUTE_PRIVATE).ok
        assert machine.guest_write(OFFSET, b"\xcf").ok
        assert machine.guest_read(OFFSET, 1).data == b"\xcf"
    finally:
        machine.close()

"""The kernel's conversion selftests in their v8 form, against the model on the test vehicle.

- ``guest_memfd_conversions_test`` (v8 31-39/46): ``flags`` = 0 on every conversion, so
  values carry across only because ``KVM_X86_SW_PROTECTED_VM`` leaves contents alone
  (docs/semantics.md §1, v8). Each case is the selftest's sequence of host and guest
  rounds on single bytes at the start of a page; multi-page cases run once per
  ``test_page`` on a fresh VM, as the selftest does.
- ``private_mem_conversions_test`` as v8 40/46 and 45/46 leave it: a guest_memfd made
  ``MMAP | INIT_SHARED``, conversions requested by the guest (``KVM_HC_MAP_GPA_RANGE``)
  and done by the VMM, the host faulting on private pages, shared memory reset after the
  hole punch.
- ``private_mem_kvm_exits_test`` as v8 46/46 leaves it: after the memslot is deleted,
  the guest's read of its (private) page exits as emulated MMIO.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from functools import partial

import pytest

from guestmem.errors import HostFault, IoctlError, MmioExit
from guestmem.model import Vm
from guestmem.model.gmem import HostMapping
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    PAGE_SIZE,
)

A, B, C, D, E = (ord(c) for c in "ABCDE")


def expect_sigbus(access: Callable[[], object]) -> None:
    with pytest.raises(HostFault) as info:
        access()
    assert info.value.signal == "SIGBUS"


class Conversions:
    """One ``gmem_conversions`` fixture: a v8 test-vehicle VM, a guest_memfd of ``pages``
    pages made ``MMAP`` (plus ``INIT_SHARED``), and the VMM's mapping of it."""

    def __init__(self, pages: int, init_shared: bool) -> None:
        flags = GUEST_MEMFD_FLAG_MMAP | (GUEST_MEMFD_FLAG_INIT_SHARED if init_shared else 0)
        self.vm = Vm("sw_protected", "v8")
        self.gmem = self.vm.create_guest_memfd(pages * PAGE_SIZE, flags)
        self.mem = self.gmem.mmap()

    # the selftest's primitives, one byte at the start of page ``pg``
    def host_rmw(self, pg: int, expected: int, new: int, mem: HostMapping | None = None) -> None:
        mem = mem or self.mem
        assert mem.read(pg * PAGE_SIZE, 1) == bytes([expected])
        mem.write(pg * PAGE_SIZE, bytes([new]))

    def guest_rmw(self, pg: int, expected: int, new: int) -> None:
        assert self.gmem.guest_read(pg * PAGE_SIZE, 1) == bytes([expected])
        self.gmem.guest_write(pg * PAGE_SIZE, bytes([new]))

    def private(self, pg: int, start: int, write: int) -> None:
        """``test_private``: the host's write faults, the guest reads ``start`` and writes
        ``write``, the host's read faults."""
        expect_sigbus(lambda: self.mem.write(pg * PAGE_SIZE, bytes([write])))
        self.guest_rmw(pg, start, write)
        expect_sigbus(lambda: self.mem.read(pg * PAGE_SIZE, 1))

    def shared(self, pg: int, start: int, host_write: int, write: int) -> None:
        """``test_shared``: the host reads ``start`` and writes ``host_write``, the guest
        reads that and writes ``write``, the host reads ``write``."""
        self.host_rmw(pg, start, host_write)
        self.guest_rmw(pg, host_write, write)
        assert self.mem.read(pg * PAGE_SIZE, 1) == bytes([write])

    def convert(self, pg: int, npages: int, to: str) -> None:
        self.gmem.convert(pg * PAGE_SIZE, npages * PAGE_SIZE, to, 0)

    def to_private(self, pg: int, start: int, write: int) -> None:
        self.convert(pg, 1, "to_private")
        self.private(pg, start, write)

    def to_shared(self, pg: int, start: int, host_write: int, write: int) -> None:
        self.convert(pg, 1, "to_shared")
        self.shared(pg, start, host_write, write)

    def to_private_fails(self, pg: int, npages: int, error_offset: int) -> None:
        with pytest.raises(IoctlError) as info:
            self.convert(pg, npages, "to_private")
        assert (info.value.code, info.value.error_offset) == (errno.EAGAIN, error_offset)


def test_init_private() -> None:
    t = Conversions(1, init_shared=False)
    t.private(0, 0, A)
    t.to_shared(0, A, B, C)
    t.to_private(0, C, E)


def test_init_shared() -> None:
    t = Conversions(1, init_shared=True)
    t.shared(0, 0, A, B)
    t.to_private(0, B, C)
    t.to_shared(0, C, D, E)


@pytest.mark.parametrize("test_page", range(4))
def test_indexing(test_page: int) -> None:
    def val(x: int, n: int) -> int:
        return (x << 4) + n

    t, tp = Conversions(4, init_shared=True), test_page
    for i in reversed(range(4)):
        t.shared(i, 0, val(i, 0), val(i, 2))
    t.to_private(tp, val(tp, 2), val(tp, 3))
    for i in range(4):
        if i == tp:
            t.private(tp, val(tp, 3), val(tp, 4))
        else:
            t.shared(i, val(i, 2), val(i, 3), val(i, 4))
    t.to_shared(tp, val(tp, 4), val(tp, 5), val(tp, 6))
    for i in range(4):
        t.shared(i, val(tp, 6) if i == tp else val(i, 4), val(i, 7), val(i, 8))


def test_before_allocation_shared() -> None:
    Conversions(1, init_shared=True).to_private(0, 0, A)


def test_before_allocation_private() -> None:
    Conversions(1, init_shared=False).to_shared(0, 0, A, B)


@pytest.mark.parametrize("test_page", range(8))
def test_unallocated_folios(test_page: int) -> None:
    t, second = Conversions(8, init_shared=True), 4
    t.host_rmw(test_page, 0, A)
    if test_page != second:
        t.host_rmw(second, 0, A)
    t.convert(0, 8, "to_private")
    for i in range(8):
        t.private(i, A if i in (test_page, second) else 0, B)
    for i in range(8):
        t.to_shared(i, B, C, D)


def test_truncate() -> None:
    t = Conversions(1, init_shared=True)
    t.host_rmw(0, 0, A)
    t.gmem.fallocate(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, PAGE_SIZE)
    t.host_rmw(0, 0, A)
    t.to_private(0, A, B)
    t.gmem.fallocate(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, PAGE_SIZE)
    t.private(0, 0, A)  # still private: the host faults both ways, the guest reads 0
    assert t.gmem.is_private(0)


def test_forked_accesses() -> None:
    """The child has its own mapping (fork copies the page tables, not the pages): it
    faults the page in, and the parent's conversion must remove it there too."""
    t = Conversions(1, init_shared=True)
    child = t.gmem.mmap()
    t.shared(0, 0, 0x0A, 0x0B)
    t.host_rmw(0, 0x0B, 0x0C, mem=child)
    assert 0 in child.ptes and 0 in t.mem.ptes
    t.to_private(0, 0x0C, 0x0D)  # the parent's own accesses fault (test_private)
    expect_sigbus(lambda: child.read(0, 1))
    expect_sigbus(lambda: child.write(0, b"\xdd"))


@pytest.mark.parametrize("test_page", range(4))
def test_elevated_refcount(test_page: int) -> None:
    t = Conversions(4, init_shared=True)
    t.gmem.pin(test_page * PAGE_SIZE, PAGE_SIZE)
    for i in range(4):
        t.shared(i, 0, A, B)
    t.to_private_fails(0, 4, test_page * PAGE_SIZE)
    for i in range(4):
        if i == test_page:
            t.to_private_fails(i, 1, test_page * PAGE_SIZE)
        else:
            t.to_private(i, B, C)
    t.gmem.unpin(test_page * PAGE_SIZE, PAGE_SIZE)
    # a mixed range: test_page still shared, every other page already private
    assert [t.gmem.is_private(i * PAGE_SIZE) for i in range(4)] == [i != test_page for i in range(4)]
    t.convert(0, 4, "to_private")
    for i in range(4):
        t.private(i, B if i == test_page else C, D)


# --- private_mem_conversions_test (v8 40/46, 45/46) -----------------------------------------
SZ_2M = 2 << 20
PER_CPU_DATA_SIZE = SZ_2M + PAGE_SIZE
TEST_RANGES = [(0, PAGE_SIZE), (0, SZ_2M), (PAGE_SIZE, PAGE_SIZE), (PAGE_SIZE, SZ_2M), (SZ_2M, PAGE_SIZE)]


class PrivateMem:
    """One vCPU's data region of ``private_mem_conversions_test``: the guest converts by
    hypercall, the VMM's exit handler punches (or preallocates) and sets the attributes,
    and the host checks or writes patterns at the guest's ``GUEST_SYNC``."""

    def __init__(self) -> None:
        self.vm = Vm("sw_protected", "v8")
        flags = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
        self.gmem = self.vm.create_guest_memfd(PER_CPU_DATA_SIZE, flags)
        self.host = self.gmem.mmap()

    def map_gpa(self, offset: int, size: int, shared: bool, fallocate: bool, attributes: bool = True) -> None:
        """The guest's ``KVM_HC_MAP_GPA_RANGE`` and ``handle_exit_hypercall``."""
        to = Direction.TO_SHARED if shared else Direction.TO_PRIVATE
        self.gmem.guest_request(offset, size, to)
        if fallocate:
            mode = FALLOC_FL_KEEP_SIZE | (FALLOC_FL_PUNCH_HOLE if shared else 0)
            self.gmem.fallocate(mode, offset, size)
        if attributes:
            self.gmem.convert(offset, size, to.value, 0)

    def guest_fill(self, offset: int, size: int, pattern: int) -> None:
        self.gmem.guest_write(offset, bytes([pattern]) * size)

    def guest_check(self, offset: int, size: int, pattern: int) -> None:
        assert self.gmem.guest_read(offset, size) == bytes([pattern]) * size

    def sync_shared(self, offset: int, size: int, current: int, new: int) -> None:
        for page in range(offset, offset + size, PAGE_SIZE):
            assert self.host.read(page, PAGE_SIZE) == bytes([current]) * PAGE_SIZE
            self.host.write(page, bytes([new]) * PAGE_SIZE)

    def sync_private(self, offset: int, size: int) -> None:
        """In-place: the host's view of a private page faults (v8 45/46)."""
        for page in range(offset, offset + size, PAGE_SIZE):
            expect_sigbus(partial(self.host.read, page, 1))


@pytest.mark.parametrize("do_fallocate", [False, True])
def test_private_mem_conversions_explicit(do_fallocate: bool) -> None:
    t = PrivateMem()
    def_p, init_p, p1, p2, p3, p4 = 0xAA, 0xCC, 0x11, 0x22, 0x33, 0x44
    t.guest_fill(0, PER_CPU_DATA_SIZE, def_p)
    t.guest_check(0, PER_CPU_DATA_SIZE, def_p)
    t.sync_shared(0, PER_CPU_DATA_SIZE, def_p, init_p)
    t.guest_check(0, PER_CPU_DATA_SIZE, init_p)
    for offset, size in TEST_RANGES:
        t.guest_fill(offset, size, p1)
        t.map_gpa(offset, size, shared=False, fallocate=do_fallocate)
        if size > PAGE_SIZE:
            t.guest_fill(offset, PAGE_SIZE, p2)
        else:
            t.guest_fill(offset, size, p2)
            t.sync_private(offset, size)
            t.guest_check(offset, size, p2)
            t.guest_check(0, offset, init_p)
            t.guest_check(offset + size, PER_CPU_DATA_SIZE - offset - size, init_p)
            t.sync_private(offset, PAGE_SIZE)  # the single page is even-numbered: stays private
        t.map_gpa(offset, size, shared=True, fallocate=do_fallocate)
        t.guest_fill(offset, size, p3)
        t.sync_shared(offset, size, p3, p4)
        t.guest_check(offset, size, p4)
        # free everything, then reset the shared memory (v8 40/46: after the punch)
        t.map_gpa(0, PER_CPU_DATA_SIZE, shared=True, fallocate=True)
        t.guest_check(0, PER_CPU_DATA_SIZE, 0)
        t.guest_fill(0, PER_CPU_DATA_SIZE, init_p)


@pytest.mark.parametrize("precise", [False, True])
def test_private_mem_conversions_punch_hole(precise: bool) -> None:
    """PUNCH_HOLE without a conversion frees private memory: it reads zero afterwards."""
    t, init_p = PrivateMem(), 0xCC
    t.map_gpa(0, PER_CPU_DATA_SIZE, shared=False, fallocate=False)
    for offset, size in TEST_RANGES:
        t.map_gpa(0, PER_CPU_DATA_SIZE, shared=True, fallocate=True, attributes=False)
        if precise:
            t.guest_fill(offset, size, init_p)
            t.guest_check(offset, size, init_p)
        else:
            t.guest_fill(0, PER_CPU_DATA_SIZE, init_p)
            t.guest_check(0, PER_CPU_DATA_SIZE, init_p)
        t.map_gpa(offset, size, shared=True, fallocate=True, attributes=False)
        t.guest_check(offset, size, 0)
        assert all(t.gmem.is_private(o) for o in range(offset, offset + size, PAGE_SIZE))
    # after the VM is gone the guest_memfd still punches and preallocates
    t.gmem.fallocate(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, PER_CPU_DATA_SIZE)
    t.gmem.fallocate(FALLOC_FL_KEEP_SIZE, 0, PER_CPU_DATA_SIZE)


# --- private_mem_kvm_exits_test (v8 46/46) ---------------------------------------------------
def test_private_access_memslot_deleted() -> None:
    """With attributes kept in guest_memfd, deleting the memslot leaves the GPA without
    memory, so the guest's read (of a page that was private) is emulated MMIO of 8 bytes,
    not a memory-fault exit. (The selftest's other case, a private access to a memslot
    without guest_memfd, cannot arise with in-place conversion; v8 skips it.)
    docs/semantics.md §3 *Memslots*."""
    vm = Vm("sw_protected", "v8")
    gmem = vm.create_guest_memfd(PAGE_SIZE, 0)
    assert gmem.is_private(0)  # guest_memfd memory starts private: no conversion needed
    gmem.delete_memslot()
    with pytest.raises(MmioExit) as info:
        gmem.guest_read(0, 8)
    assert (info.value.gpa, info.value.len, info.value.is_write) == (gmem.gpa, 8, False)

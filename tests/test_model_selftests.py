"""The nine cases of the kernel's ``guest_memfd_conversions_test`` (uapi.md §14), expressed
against the model on the test vehicle. They rely on contents carrying across conversions,
so every conversion asks for PRESERVE. Multi-page cases run once per ``test_page``."""

from __future__ import annotations

import errno

import pytest

from guestmem.errors import HostFault, IoctlError
from guestmem.model import Vm
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, PAGE_SIZE

PRESERVE = 2


class Harness:
    """One VM with a guest_memfd of ``pages`` pages, mapped by the host (``test_data_t``)."""

    def __init__(self, pages: int, init_shared: bool) -> None:
        flags = GUEST_MEMFD_FLAG_MMAP | (GUEST_MEMFD_FLAG_INIT_SHARED if init_shared else 0)
        self.vm = Vm("sw_protected")
        self.gmem = self.vm.create_guest_memfd(pages * PAGE_SIZE, flags)
        self.mem = self.gmem.mmap()
        self.pages = pages

    @staticmethod
    def fill(value: int) -> bytes:
        return bytes([value]) * PAGE_SIZE

    def host_sigbus(self, page: int) -> None:
        for access in (
            lambda: self.mem.read(page * PAGE_SIZE, 1),
            lambda: self.mem.write(page * PAGE_SIZE, b"x"),
        ):
            with pytest.raises(HostFault) as info:
                access()
            assert info.value.signal == "SIGBUS"

    def guest_rmw(self, page: int, expected: int, new: int) -> None:
        assert self.gmem.guest_read(page * PAGE_SIZE, PAGE_SIZE) == self.fill(expected)
        self.gmem.guest_write(page * PAGE_SIZE, self.fill(new))

    def host_rmw(self, page: int, expected: int, new: int) -> None:
        assert self.mem.read(page * PAGE_SIZE, PAGE_SIZE) == self.fill(expected)
        self.mem.write(page * PAGE_SIZE, self.fill(new))

    def private(self, page: int, expected: int, new: int) -> None:
        """Host access faults; the guest reads ``expected`` and writes ``new``."""
        self.host_sigbus(page)
        self.guest_rmw(page, expected, new)
        self.host_sigbus(page)

    def shared(self, page: int, expected: int, host_new: int, guest_new: int) -> None:
        """Host reads ``expected``, writes ``host_new``; the guest reads it, writes
        ``guest_new``; the host reads that."""
        self.host_rmw(page, expected, host_new)
        self.guest_rmw(page, host_new, guest_new)
        assert self.mem.read(page * PAGE_SIZE, PAGE_SIZE) == self.fill(guest_new)

    def convert(self, page: int, npages: int, to: str) -> None:
        self.gmem.convert(page * PAGE_SIZE, npages * PAGE_SIZE, to, PRESERVE)


A, B, C, D, E = (ord(c) for c in "ABCDE")


def test_init_private() -> None:
    t = Harness(1, init_shared=False)
    t.private(0, 0, A)
    t.convert(0, 1, "to_shared")
    t.shared(0, A, B, C)
    t.convert(0, 1, "to_private")
    t.private(0, C, E)


def test_init_shared() -> None:
    t = Harness(1, init_shared=True)
    t.shared(0, 0, A, B)
    t.convert(0, 1, "to_private")
    t.private(0, B, C)
    t.convert(0, 1, "to_shared")
    t.shared(0, C, D, E)


@pytest.mark.parametrize("test_page", range(4))
def test_indexing(test_page: int) -> None:
    t = Harness(4, init_shared=True)
    for page in reversed(range(4)):
        t.host_rmw(page, 0, A + page)
    t.convert(test_page, 1, "to_private")
    for page in range(4):
        if page == test_page:
            t.private(page, A + page, B + page)
        else:
            t.shared(page, A + page, A + page, A + page)
    t.convert(test_page, 1, "to_shared")
    t.shared(test_page, B + test_page, C, D)


def test_before_allocation_shared() -> None:
    t = Harness(1, init_shared=True)
    t.convert(0, 1, "to_private")
    t.private(0, 0, A)


def test_before_allocation_private() -> None:
    t = Harness(1, init_shared=False)
    t.convert(0, 1, "to_shared")
    t.shared(0, 0, A, B)


@pytest.mark.parametrize("test_page", range(8))
def test_unallocated_folios(test_page: int) -> None:
    t = Harness(8, init_shared=True)
    second = 4
    t.host_rmw(test_page, 0, A)
    if test_page != second:
        t.host_rmw(second, 0, A)
    t.convert(0, 8, "to_private")
    for page in range(8):
        t.private(page, A if page in (test_page, second) else 0, B)
    for page in range(8):
        t.convert(page, 1, "to_shared")
        t.host_rmw(page, B, B)


def test_truncate() -> None:
    t = Harness(1, init_shared=True)
    t.host_rmw(0, 0, A)
    t.gmem.punch_hole(0, PAGE_SIZE)
    t.host_rmw(0, 0, A)
    t.convert(0, 1, "to_private")
    t.guest_rmw(0, A, A)
    t.gmem.punch_hole(0, PAGE_SIZE)
    t.guest_rmw(0, 0, A)
    assert t.gmem.is_private(0)
    t.host_sigbus(0)


def test_forked_accesses() -> None:
    t = Harness(1, init_shared=True)
    child = t.gmem.mmap()  # the child's mapping, inherited across fork
    t.host_rmw(0, 0, A)
    assert child.read(0, PAGE_SIZE) == t.fill(A)
    child.write(0, t.fill(B))
    t.convert(0, 1, "to_private")
    for access in (lambda: child.read(0, 1), lambda: child.write(0, b"x")):
        with pytest.raises(HostFault) as info:
            access()
        assert info.value.signal == "SIGBUS"
    t.guest_rmw(0, B, C)


@pytest.mark.parametrize("test_page", range(4))
def test_elevated_refcount(test_page: int) -> None:
    t = Harness(4, init_shared=True)
    for page in range(4):
        t.host_rmw(page, 0, A + page)
    t.gmem.pin(test_page * PAGE_SIZE, PAGE_SIZE)

    def convert_fails(page: int, npages: int, expected_error_offset: int) -> None:
        with pytest.raises(IoctlError) as info:
            t.convert(page, npages, "to_private")
        assert (info.value.code, info.value.error_offset) == (errno.EAGAIN, expected_error_offset)

    convert_fails(0, 4, test_page * PAGE_SIZE)
    for page in range(4):
        if page == test_page:
            convert_fails(page, 1, page * PAGE_SIZE)
        else:
            t.convert(page, 1, "to_private")
            t.convert(page, 1, "to_shared")
    t.gmem.unpin(test_page * PAGE_SIZE, PAGE_SIZE)
    t.convert(0, 4, "to_private")
    for page in range(4):
        t.private(page, A + page, A + page)

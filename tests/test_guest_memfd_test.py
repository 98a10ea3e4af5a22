"""The upstream ``guest_memfd_test`` cases that need no conversion, on the model and on
this machine's kernel (through the kvm bindings), with the same assertions on both.

- ``read()``/``write()`` on the fd fail (``EINVAL``: the file has no read or write
  method), and so do ``pread()``/``pwrite()`` (``ESPIPE``);
- ``fstat()`` gives the size and a block size of one page;
- several guest_memfds are distinct files (inode numbers differ, sizes stay their own);
- every size from 1 to 4095 bytes is ``EINVAL``;
- each of the 64 flag bits is accepted exactly when ``KVM_CAP_GUEST_MEMFD_FLAGS`` lists it,
  else ``EINVAL``;
- ``MADV_COLLAPSE`` on a PMD-aligned shared mapping is ``EINVAL`` (folios are never
  collapsed into huge pages), while ``MADV_HUGEPAGE`` and ``MADV_DONTNEED`` work and the
  page faults back in afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Protocol

import pytest

from guestmem.errors import IoctlError, errno_of
from guestmem.kvm import syscalls
from guestmem.kvm.system import Kvm
from guestmem.model import Vm as ModelVm
from guestmem.model.vm import SUPPORTED_GMEM_FLAGS
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_CAP_GUEST_MEMFD_FLAGS,
    MADV_COLLAPSE,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    PAGE_SIZE,
)
from kvm_support import skip_unless

SHARED = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
PMD_SIZE = 2 << 20
THP = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"


class File(Protocol):
    """One guest_memfd, as the test sees it."""

    def read(self, size: int) -> bytes: ...
    def write(self, data: bytes) -> int: ...
    def pread(self, size: int, offset: int) -> bytes: ...
    def pwrite(self, data: bytes, offset: int) -> int: ...
    def stat(self) -> Any: ...


class Side(Protocol):
    """A VM on the model or on the kernel: make guest_memfds, probe flags, collapse."""

    def create(self, size: int, flags: int = 0) -> File: ...
    def valid_flags(self) -> int: ...
    def collapse(self) -> list[int]: ...


def _os_errno(call: Callable[[], object], name: str) -> None:
    try:
        call()
    except OSError as err:
        raise IoctlError(err.errno or 0, name) from None


class KernelFile:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, size: int) -> bytes:
        _os_errno(lambda: os.read(self.fd, size), "read")
        return b""

    def write(self, data: bytes) -> int:
        _os_errno(lambda: os.write(self.fd, data), "write")
        return len(data)

    def pread(self, size: int, offset: int) -> bytes:
        _os_errno(lambda: os.pread(self.fd, size, offset), "pread")
        return b""

    def pwrite(self, data: bytes, offset: int) -> int:
        _os_errno(lambda: os.pwrite(self.fd, data, offset), "pwrite")
        return len(data)

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)


class KernelSide:
    def __init__(self, kvm: Kvm) -> None:
        self.vm = kvm.create_vm()
        self.open: list[Any] = []

    def create(self, size: int, flags: int = 0) -> File:
        gmem = self.vm.create_guest_memfd(size, flags)
        self.open.append(gmem)
        return KernelFile(gmem.fd)

    def valid_flags(self) -> int:
        return self.vm.check_extension(KVM_CAP_GUEST_MEMFD_FLAGS)

    def collapse(self) -> list[int]:
        """guest_memfd_test's ``test_collapse``: a PMD-sized file mapped at a PMD-aligned
        address, read page by page, then HUGEPAGE, COLLAPSE, DONTNEED; the errnos."""
        gmem = self.vm.create_guest_memfd(PMD_SIZE, SHARED)
        self.open.append(gmem)
        reserved = syscalls.mmap(2 * PMD_SIZE, 0, syscalls.MAP_PRIVATE | syscalls.MAP_ANONYMOUS)
        try:
            aligned = (reserved + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
            rw = syscalls.PROT_READ | syscalls.PROT_WRITE
            mem = syscalls.mmap(
                PMD_SIZE, rw, syscalls.MAP_FIXED | syscalls.MAP_SHARED, gmem.fd, address=aligned
            )
            assert mem == aligned
            view = (ctypes.c_char * PMD_SIZE).from_address(mem)
            for i in range(0, PMD_SIZE, PAGE_SIZE):  # reads populate without dirtying
                assert view[i] == b"\0"
            codes = [errno_of(partial(syscalls.madvise, mem, PMD_SIZE, a)) for a in ADVICE]
            assert view[0] == b"\0"  # faults back in as a small page
            return codes
        finally:
            syscalls.munmap(reserved, 2 * PMD_SIZE)

    def close(self) -> None:
        for gmem in self.open:
            gmem.close()
        self.vm.close()


class ModelSide:
    def __init__(self) -> None:
        self.vm = ModelVm("default")

    def create(self, size: int, flags: int = 0) -> File:
        return self.vm.create_guest_memfd(size, flags)

    def valid_flags(self) -> int:
        return SUPPORTED_GMEM_FLAGS

    def collapse(self) -> list[int]:
        mapping = self.vm.create_guest_memfd(PMD_SIZE, SHARED).mmap()
        for i in range(0, PMD_SIZE, PAGE_SIZE):
            assert mapping.read(i, 1) == b"\0"
        codes = [errno_of(partial(mapping.madvise, 0, PMD_SIZE, a)) for a in ADVICE]
        assert not mapping.ptes  # DONTNEED dropped them
        assert mapping.read(0, 1) == b"\0"
        return codes


ADVICE = (MADV_HUGEPAGE, MADV_COLLAPSE, MADV_DONTNEED)


@contextmanager
def _side(which: str) -> Iterator[Side]:
    if which == "model":
        yield ModelSide()
        return
    skip_unless("kvm", "guest_memfd", "guest_memfd_mmap", "guest_memfd_init_shared")
    with Kvm() as kvm:
        side = KernelSide(kvm)
        try:
            yield side
        finally:
            side.close()


@pytest.fixture(params=["model", pytest.param("kernel", marks=pytest.mark.kvm)])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    with _side(request.param) as chosen:
        yield chosen


@pytest.mark.parametrize("flags", [0, GUEST_MEMFD_FLAG_MMAP, SHARED])
def test_file_read_write(side: Side, flags: int) -> None:
    f = side.create(4 * PAGE_SIZE, flags)
    assert errno_of(lambda: f.read(64)) == errno.EINVAL
    assert errno_of(lambda: f.write(b"\0" * 64)) == errno.EINVAL
    assert errno_of(lambda: f.pread(64, 0)) == errno.ESPIPE
    assert errno_of(lambda: f.pwrite(b"\0" * 64, 0)) == errno.ESPIPE


@pytest.mark.parametrize("flags", [0, GUEST_MEMFD_FLAG_MMAP, SHARED])
def test_file_size(side: Side, flags: int) -> None:
    st = side.create(4 * PAGE_SIZE, flags).stat()
    assert (st.st_size, st.st_blksize) == (4 * PAGE_SIZE, PAGE_SIZE)


def test_create_guest_memfd_multiple(side: Side) -> None:
    one = side.create(PAGE_SIZE)
    assert one.stat().st_size == PAGE_SIZE
    two = side.create(2 * PAGE_SIZE)
    assert two.stat().st_size == 2 * PAGE_SIZE
    assert one.stat().st_size == PAGE_SIZE  # the first keeps its own size
    assert one.stat().st_ino != two.stat().st_ino


@pytest.mark.parametrize("flags", [0, GUEST_MEMFD_FLAG_MMAP, SHARED])
def test_create_guest_memfd_invalid_sizes(side: Side, flags: int) -> None:
    codes = {size: errno_of(partial(side.create, size, flags)) for size in range(1, PAGE_SIZE)}
    assert set(codes.values()) == {errno.EINVAL}


def test_guest_memfd_flags(side: Side) -> None:
    valid = side.valid_flags()
    assert valid & GUEST_MEMFD_FLAG_MMAP  # a default VM maps guest_memfd (6.18)
    for bit in range(64):
        flag = 1 << bit
        code = errno_of(partial(side.create, PAGE_SIZE, flag))
        assert code == (0 if flag & valid else errno.EINVAL), f"flag {flag:#x}"


def test_collapse(side: Side) -> None:
    if isinstance(side, KernelSide):
        try:
            with open(THP) as f:
                assert int(f.read()) == PMD_SIZE
        except OSError as err:
            pytest.skip(f"no transparent huge pages here ({THP}: {err.strerror})")
    assert side.collapse() == [0, errno.EINVAL, 0]

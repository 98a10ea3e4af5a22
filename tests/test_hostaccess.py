"""The host-access helper (:mod:`guestmem.kvm.hostaccess`) over an ordinary shared memory
mapping (a memfd): no KVM needed."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any, cast

import pytest

from guestmem.kvm import syscalls
from guestmem.kvm.gmem import GuestMemfd, Mapping
from guestmem.kvm.hostaccess import HostAccess
from guestmem.uapi.kvm import PAGE_SIZE

PAGES = 4


@pytest.fixture
def host() -> Iterator[HostAccess]:
    fd = os.memfd_create("guestmem-test")
    os.ftruncate(fd, PAGES * PAGE_SIZE)
    address = syscalls.mmap(
        PAGES * PAGE_SIZE, syscalls.PROT_READ | syscalls.PROT_WRITE, syscalls.MAP_SHARED, fd
    )
    mapping = Mapping(cast(GuestMemfd, cast(Any, None)), address, PAGES * PAGE_SIZE)
    access = HostAccess(mapping, PAGES * PAGE_SIZE)
    yield access
    access.close()
    mapping.close()
    os.close(fd)


def test_reads_and_writes_through_the_helper(host: HostAccess) -> None:
    host.write(PAGE_SIZE - 2, b"abcd")
    assert host.read(PAGE_SIZE - 2, 4) == b"abcd"
    assert host.read(3 * PAGE_SIZE, 2) == b"\0\0"


def test_a_helper_that_died_while_idle_is_replaced_before_the_next_access(host: HostAccess) -> None:
    """A helper killed between two accesses (a memory error on a page it had mapped can do
    that) faulted on nothing the caller asked for: the next access is made by a new helper
    and succeeds."""
    host.write(2 * PAGE_SIZE, b"kept")
    first = host.pid
    os.kill(first, signal.SIGKILL)
    os.waitid(os.P_PID, first, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
    assert host.read(2 * PAGE_SIZE, 4) == b"kept"
    assert host.pid not in (0, first)
    host.write(0, b"x")
    assert host.read(0, 1) == b"x"

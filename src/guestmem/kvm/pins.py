"""Long-term page pins through ``CONFIG_GUP_TEST`` (``/sys/kernel/debug/gup_test``), as the
v8 ``elevated_refcount`` selftest takes them (docs/semantics.md §3 *Pins*): ``PIN_LONGTERM_TEST_START``
pins ``[addr, addr+size)`` of this process, ``PIN_LONGTERM_TEST_STOP`` releases them.
The test module holds one pinned range at a time for the whole system (a second
``PIN_LONGTERM_TEST_START``, on any open file, is ``EINVAL`` until the first is stopped).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from guestmem.errors import IoctlError
from guestmem.kvm import syscalls
from guestmem.uapi.ioctl import io, iow

GUP_TEST = "/sys/kernel/debug/gup_test"
PIN_LONGTERM_TEST_FLAG_USE_WRITE = 1


class PinLongtermTest(ctypes.LittleEndianStructure):
    """``struct pin_longterm_test`` (``mm/gup_test.h``; 24 bytes with padding)."""

    _fields_ = [("addr", ctypes.c_uint64), ("size", ctypes.c_uint64), ("flags", ctypes.c_uint32)]


PIN_LONGTERM_TEST_START = iow(ord("g"), 7, ctypes.sizeof(PinLongtermTest))
PIN_LONGTERM_TEST_STOP = io(ord("g"), 8)


def unavailable_reason() -> str | None:
    """Why pins cannot be taken here, or None."""
    if not os.path.exists(GUP_TEST):
        return f"pinning needs CONFIG_GUP_TEST ({GUP_TEST} is absent)"
    return None


class Pin:
    """One pinned range; ``release()`` (or ``with``) unpins it."""

    def __init__(self, address: int, size: int) -> None:
        self.fd = syscalls.open_device(GUP_TEST)
        arg = PinLongtermTest(addr=address, size=size, flags=PIN_LONGTERM_TEST_FLAG_USE_WRITE)
        try:
            named_ioctl(self.fd, PIN_LONGTERM_TEST_START, arg, "PIN_LONGTERM_TEST_START")
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self.fd >= 0:
            try:
                named_ioctl(self.fd, PIN_LONGTERM_TEST_STOP, 0, "PIN_LONGTERM_TEST_STOP")
            finally:
                os.close(self.fd)
                self.fd = -1


class SpliceRef:
    """References to ``[address, +size)`` held by a pipe that ``vmsplice(2)`` filled and
    nobody reads (docs/semantics.md §3 *Pins*: such a page has an extra reference, and a
    to-private conversion fails with ``EAGAIN`` on it); ``release()`` closes the pipe.
    The pipe is grown to hold the whole range; a fault part-way leaves the rest out, so a
    short splice raises ``EFAULT`` (after releasing what it took)."""

    def __init__(self, address: int, size: int) -> None:
        self.read_fd, self.fd = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, max(size, 1 << 16))
            done = syscalls.vmsplice(self.fd, address, size)
            if done != size:
                raise IoctlError(errno.EFAULT, "vmsplice")
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for fd in (self.fd, self.read_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.read_fd = -1


F_SETPIPE_SZ = 1031


def named_ioctl(fd: int, request: int, arg: syscalls.Arg, name: str) -> int:
    """:func:`guestmem.kvm.syscalls.ioctl` with the name of a non-KVM request."""
    try:
        return syscalls.ioctl(fd, request, arg)
    except IoctlError as err:
        raise IoctlError(err.code, name) from None

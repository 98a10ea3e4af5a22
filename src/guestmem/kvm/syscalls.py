"""The one place where a failing system call becomes a typed error.

Every KVM device is opened by :func:`open_device` and every ioctl goes through :func:`ioctl`, which raises
:class:`~guestmem.errors.IoctlError` with the errno and the request's name from
:data:`guestmem.uapi.kvm.IOCTL_NAMES`; ``try_ioctl`` returns 0 or the errno instead, in
the manner of the kernel selftests' ``__vm_ioctl()``; the one hot path that calls
:data:`raw_ioctl` itself (``Vcpu.run``) turns its ``OSError`` into that same error with
:func:`failure`. ``mmap``/``munmap``/``fallocate`` go through ``ctypes`` because Python's
``mmap`` module refuses a mapping longer than the file and has no ``fallocate``
(docs/kernel.md §3, §10); so do the POSIX timers (``timer_create(2)``) that bound
``KVM_RUN``, which Python's ``signal`` module does not offer.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import math
import os
from typing import Final, Self

from guestmem.errors import IoctlError, errno_of
from guestmem.uapi.kvm import IOCTL_NAMES, PAGE_SIZE

PROT_READ: Final = 0x1
PROT_WRITE: Final = 0x2
MAP_SHARED: Final = 0x01
MAP_PRIVATE: Final = 0x02
MAP_FIXED: Final = 0x10
MAP_ANONYMOUS: Final = 0x20
MAP_NORESERVE: Final = 0x4000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.fallocate.restype = ctypes.c_int
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_MAP_FAILED: Final = ctypes.c_void_p(-1).value


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc.vmsplice.restype = ctypes.c_ssize_t
_libc.vmsplice.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_size_t, ctypes.c_uint]

CLOCK_MONOTONIC: Final = 1  # the clock of time.monotonic()
TIMER_ABSTIME: Final = 1
SIGEV_THREAD_ID: Final = 4  # Linux: signal one thread, named by its kernel thread id


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _Sigevent(ctypes.Structure):
    """``struct sigevent`` (64 bytes on Linux), with the ``SIGEV_THREAD_ID`` member."""

    _fields_ = [
        ("sigev_value", ctypes.c_void_p),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("sigev_tid", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


_libc.timer_create.restype = ctypes.c_int
_libc.timer_create.argtypes = [ctypes.c_int, ctypes.POINTER(_Sigevent), ctypes.POINTER(ctypes.c_void_p)]
_libc.timer_settime.restype = ctypes.c_int
_libc.timer_settime.argtypes = [
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.POINTER(_Itimerspec),
    ctypes.POINTER(_Itimerspec),
]
_libc.timer_gettime.restype = ctypes.c_int
_libc.timer_gettime.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Itimerspec)]
_libc.timer_delete.restype = ctypes.c_int
_libc.timer_delete.argtypes = [ctypes.c_void_p]

Arg = int | bytearray | ctypes.Structure | ctypes.Array[ctypes.c_char]


def ioctl_name(request: int) -> str:
    """The UAPI name of ``request`` (``KVM_RUN``), or its number for an unknown one."""
    return IOCTL_NAMES.get(request, f"ioctl {request:#x}")


#: ``fcntl.ioctl`` itself, for the per-exit hot path (``Vcpu.run``): its ``OSError`` must
#: become :func:`failure`'s error.
raw_ioctl: Final = fcntl.ioctl


def failure(err: OSError, request: int) -> IoctlError:
    """The typed error of ``request`` failing with ``err``."""
    return IoctlError(err.errno or errno.EIO, ioctl_name(request))


def open_device(path: str) -> int:
    """Open a device (``/dev/kvm``, ``gup_test``) read-write and close-on-exec; ``OSError``
    on failure. With :func:`ioctl`, the one way this package reaches the kernel's KVM, so a
    test can stand in for a kernel that lacks a feature at these two points."""
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def ioctl(fd: int, request: int, arg: Arg = 0) -> int:
    """Issue ``request`` on ``fd``; returns the ioctl's int result (e.g. a new fd).

    ``arg`` is an int, or a writable buffer (``bytearray`` or ctypes object) that the
    kernel may read and write in place. A failure raises ``IoctlError(errno, name)``.
    """
    try:
        if isinstance(arg, int):
            # arg 0 is passed by omission: given explicitly, fcntl.ioctl first tries two
            # buffer parses (about 1.3 µs per call here; docs/bench.md kvm_run_vs_c)
            result: int = fcntl.ioctl(fd, request, arg) if arg else fcntl.ioctl(fd, request)
        else:
            result = fcntl.ioctl(fd, request, memoryview(arg).cast("B"), True)
    except OSError as err:
        raise failure(err, request) from None
    return result


#: A second handle on the C library for :func:`ioctl_marked`: its functions take ctypes
#: objects as they are (no ``argtypes``), so calling them converts nothing.
_bare = ctypes.CDLL(None, use_errno=True)


def ioctl_marked(fd: int, request: int, arg: bytearray | ctypes.Structure, mark: int) -> int:
    """As :func:`ioctl` with a buffer, with ``mark`` (an open ``make-it-fail`` file of this
    thread: docs/stress.md, *Fault injection*) holding 1 for the ioctl alone.

    While the thread is marked, the kernel's fault injection fails its next allocation of
    the armed kind wherever it happens: in the ioctl, or in whatever else the thread does,
    such as the memory an interpreter takes for its objects. So everything that may
    allocate is done before the mark or after it: the argument and the C calls' own
    arguments are built first, the three calls (mark, ioctl, unmark) take ready ctypes
    objects and so convert nothing, and a failure becomes a Python exception only after
    the unmark.
    """
    size = ctypes.sizeof(arg) if isinstance(arg, ctypes.Structure) else len(arg)
    buffer = (ctypes.c_char * size).from_buffer(arg)
    call = (ctypes.c_int(fd), ctypes.c_ulong(request), ctypes.c_void_p(ctypes.addressof(buffer)))
    on = (ctypes.c_int(mark), ctypes.c_char_p(b"1"), ctypes.c_size_t(1), ctypes.c_long(0))
    off = (ctypes.c_int(mark), ctypes.c_char_p(b"0"), ctypes.c_size_t(1), ctypes.c_long(0))
    pwrite, issue, get_errno = _bare.pwrite, _bare.ioctl, ctypes.get_errno
    get_errno()  # ctypes keeps the thread's errno in an object made at first use: made here
    result, code, marked = -1, 0, False
    try:
        marked = pwrite(*on) == 1
        if not marked:
            code = get_errno()
        else:
            result = issue(*call)
            code = get_errno() if result < 0 else 0
    finally:
        unmarked = pwrite(*off) == 1
    if not marked or not unmarked:
        failed = code or get_errno() or errno.EIO
        raise OSError(failed, f"writing make-it-fail: {os.strerror(failed)}")
    if result < 0:
        raise IoctlError(code or errno.EIO, ioctl_name(request))
    return int(result)


def try_ioctl(fd: int, request: int, arg: Arg = 0) -> int:
    """As :func:`ioctl`, but returns 0 on success and the errno on failure."""
    return errno_of(lambda: ioctl(fd, request, arg))


def _fail(call: str) -> IoctlError:
    return IoctlError(ctypes.get_errno() or errno.EIO, call)


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0, *, address: int = 0) -> int:
    """``mmap(2)``; returns the address. ``IoctlError(errno, "mmap")`` on failure.
    ``address`` is a hint, or the place itself with ``MAP_FIXED``."""
    address = _libc.mmap(address or None, length, prot, flags, fd, offset)
    if address is None or address == _MAP_FAILED:
        raise _fail("mmap")
    return int(address)


def madvise(address: int, length: int, advice: int) -> None:
    """``madvise(2)``; ``IoctlError(errno, "madvise")`` on failure."""
    if _libc.madvise(address, length, advice) != 0:
        raise _fail("madvise")


def vmsplice(fd: int, address: int, length: int) -> int:
    """``vmsplice(2)`` of ``[address, +length)`` into the pipe ``fd`` (no flags: the pipe
    holds references to the pages until it is read or closed); returns the bytes spliced."""
    iov = _Iovec(address, length)
    done = _libc.vmsplice(fd, ctypes.byref(iov), 1, 0)
    if done < 0:
        raise _fail("vmsplice")
    return int(done)


def munmap(address: int, length: int) -> None:
    if _libc.munmap(address, length) != 0:
        raise _fail("munmap")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)``; ``IoctlError(errno, "fallocate")`` on failure."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        raise _fail("fallocate")


def timer_create(clock: int, signo: int, tid: int) -> int:
    """``timer_create(2)`` of a timer on ``clock`` that sends ``signo`` to the thread
    ``tid`` (``SIGEV_THREAD_ID``); returns the timer's id. ``IoctlError`` on failure."""
    event = _Sigevent(sigev_signo=signo, sigev_notify=SIGEV_THREAD_ID, sigev_tid=tid)
    timer = ctypes.c_void_p()
    if _libc.timer_create(clock, ctypes.byref(event), ctypes.byref(timer)) != 0:
        raise _fail("timer_create")
    return timer.value or 0


def _timespec(seconds: float) -> _Timespec:
    ns = math.ceil(seconds * 1e9)  # never earlier than asked
    return _Timespec(ns // 1_000_000_000, ns % 1_000_000_000)


def timer_settime(timer: int, when: float, interval: float = 0.0) -> None:
    """``timer_settime(2)`` with ``TIMER_ABSTIME``: first expiry at ``when`` on the
    timer's clock, then every ``interval`` seconds (0: once); ``when = 0`` disarms."""
    spec = _Itimerspec(_timespec(interval), _timespec(when))
    if _libc.timer_settime(timer, TIMER_ABSTIME if when else 0, ctypes.byref(spec), None) != 0:
        raise _fail("timer_settime")


def timer_gettime(timer: int) -> tuple[float, float]:
    """``timer_gettime(2)``: (seconds to the next expiry, interval); (0, 0) when disarmed."""
    spec = _Itimerspec()
    if _libc.timer_gettime(timer, ctypes.byref(spec)) != 0:
        raise _fail("timer_gettime")
    value, interval = spec.it_value, spec.it_interval
    return value.tv_sec + value.tv_nsec / 1e9, interval.tv_sec + interval.tv_nsec / 1e9


def timer_delete(timer: int) -> None:
    """``timer_delete(2)``; ``IoctlError(errno, "timer_delete")`` on failure."""
    if _libc.timer_delete(timer) != 0:
        raise _fail("timer_delete")


def anonymous(length: int) -> int:
    """A private anonymous read-write mapping (guest low memory)."""
    return mmap(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)


def close(fd: int) -> None:
    """Close ``fd`` once; closing is never an error worth raising at teardown."""
    with contextlib.suppress(OSError):
        os.close(fd)


def page_align_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


class Handle:
    """An owned kernel object released by ``close()``, also at the end of a ``with`` block.

    Subclasses that own an fd set ``self.fd``; the default ``close()`` closes it once.
    """

    fd: int = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

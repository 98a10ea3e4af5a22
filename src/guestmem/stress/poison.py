"""Memory errors injected on guest_memfd pages (``madvise(MADV_HWPOISON)``), for
``guestmem stress`` (docs/stress.md *Memory errors*; what the kernel answers afterwards:
docs/semantics.md §3 *Memory errors*).

A forked child maps the one page of the guest_memfd, touches it, says so through a pipe,
and calls ``madvise(MADV_HWPOISON)`` on it: the memory-failure code handles the page as if
the hardware had reported it bad. It poisons the page and then either kills the child with
``SIGBUS`` (seen on v8-debug when the page was dirty) or answers ``EBUSY`` because its
recovery failed (guest_memfd keeps the folio; seen when the page was clean). The child's
report tells the cases apart: the page faulted when touched (it was not shared), the
error was injected, or ``madvise`` refused.

``MADV_HWPOISON`` needs ``CONFIG_MEMORY_FAILURE`` (``/proc/sys/vm/memory_failure_recovery``)
and ``CAP_SYS_ADMIN``; each injection is also a probe: ``madvise`` failing with ``EINVAL``
or ``EPERM`` makes the injector unavailable, with the reason. A poisoned page is lost to
the system for good (its folio stays poisoned after the file lets it go), so a run injects
a bounded number (:data:`LIMIT`, the caller's to enforce).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from guestmem import progress
from guestmem.errors import IoctlError
from guestmem.kvm import syscalls
from guestmem.uapi.kvm import PAGE_SIZE

MADV_HWPOISON = 100
#: The most memory errors one run injects (each costs a page of the system's memory).
LIMIT = 64
SYSCTL = "/proc/sys/vm/memory_failure_recovery"


@dataclass(frozen=True)
class Injection:
    """What one attempt did: ``done`` the page is poisoned; else ``faulted`` the page
    faulted when touched (it was not shared for the host), or ``why`` it could not be."""

    done: bool
    faulted: bool = False
    why: str = ""


def _child(fd: int, offset: int, report: int) -> None:  # pragma: no cover - the child
    """Map the page, touch it, poison it; each step reported with one byte."""
    try:
        address = syscalls.mmap(
            PAGE_SIZE, syscalls.PROT_READ | syscalls.PROT_WRITE, syscalls.MAP_SHARED, fd, offset
        )
    except IoctlError as err:
        os.write(report, b"m" + bytes([err.code & 0xFF]))
        return
    ctypes.string_at(address, 1)
    os.write(report, b"t")
    try:
        syscalls.madvise(address, PAGE_SIZE, MADV_HWPOISON)
    except IoctlError as err:
        os.write(report, b"e" + bytes([err.code & 0xFF]))
        return
    os.write(report, b"d")


class MemoryErrors:
    """Injects a memory error on one page of a kernel guest_memfd.

    ``reason`` says why none can be injected (None: available, as far as is known);
    ``injected`` counts the pages poisoned."""

    def __init__(self, sysctl: str = SYSCTL) -> None:
        self.lock = threading.Lock()
        self.injected = 0
        self.reason: str | None = None
        if not os.path.exists(sysctl):
            self.reason = f"the kernel has no MEMORY_FAILURE (no {sysctl})"
        elif os.geteuid() != 0:
            self.reason = "madvise(MADV_HWPOISON) needs CAP_SYS_ADMIN: not root"

    def inject(self, machine: Any, offset: int) -> Injection:
        """A memory error on the page at ``offset`` of ``machine``'s guest_memfd."""
        if self.reason is not None:
            return Injection(False, why=self.reason)
        fd = getattr(getattr(machine, "gmem", None), "fd", None)
        if not isinstance(fd, int):
            return Injection(False, why="not a kernel guest_memfd")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(read)
                signal.signal(signal.SIGBUS, signal.SIG_DFL)
                progress.default_stop_signals()
                _child(fd, offset - offset % PAGE_SIZE, write)
            finally:
                os._exit(0)
        os.close(write)
        said = b""
        while chunk := os.read(read, 64):
            said += chunk
        os.close(read)
        _pid, status = os.waitpid(pid, 0)
        died = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else None
        return self._result(said, died)

    def _result(self, said: bytes, died: str | None) -> Injection:
        if said.startswith(b"m"):
            code = said[1] if len(said) > 1 else errno.EIO
            return self._unavailable(
                f"the injecting child could not map the page: {errno.errorcode.get(code, code)}"
            )
        if not said.startswith(b"t"):
            return Injection(
                False, faulted=True, why=f"the page faulted when touched ({died or 'no report'})"
            )
        if said[1:2] == b"e":
            code = said[2] if len(said) > 2 else errno.EIO
            name = errno.errorcode.get(code, str(code))
            if code == errno.EBUSY:  # poisoned; the memory-failure code reports its recovery failed
                return self._done()
            if code == errno.EINVAL:
                return self._unavailable(
                    "madvise(MADV_HWPOISON) answers EINVAL: the kernel lacks MEMORY_FAILURE"
                )
            if code == errno.EPERM:
                return self._unavailable("madvise(MADV_HWPOISON) answers EPERM: CAP_SYS_ADMIN is needed")
            return self._unavailable(f"madvise(MADV_HWPOISON) answers {name}")
        return self._done()  # madvise returned, or the kernel killed the child that touched it

    def _done(self) -> Injection:
        with self.lock:
            self.injected += 1
        return Injection(True)

    def _unavailable(self, why: str) -> Injection:
        with self.lock:
            if self.reason is None:
                self.reason = why
        return Injection(False, why=why)

"""Typed errors shared by the model and the kernel bindings.

One vocabulary for both backends, so a scenario can compare them errno for errno:
a failing call raises :class:`IoctlError` (errno plus the call's name, and
``error_offset`` where the call writes one back); a host access that the kernel answers
with a signal raises :class:`HostFault`; a guest access that exits to the VMM with
``KVM_EXIT_MEMORY_FAULT`` raises :class:`MemoryFault` (it arrives on ``KVM_RUN``'s
``EFAULT`` path, docs/semantics.md §9).
"""

from __future__ import annotations

import errno as _errno
import functools
import os
from collections.abc import Callable
from typing import Any

#: ``EHWPOISON`` (a memory error, asm-generic/errno.h), which Python's errno module lacks:
#: ``KVM_RUN`` answers it for a guest access to a poisoned guest_memfd page.
EHWPOISON = 133
#: errno names as the kernel documentation spells them (Python calls 95 ``ENOTSUP``).
_PREFERRED = {
    _errno.EOPNOTSUPP: "EOPNOTSUPP",
    _errno.EAGAIN: "EAGAIN",
    _errno.EDEADLK: "EDEADLK",
    EHWPOISON: "EHWPOISON",
}


def errno_name(code: int) -> str:
    """``95 -> 'EOPNOTSUPP'``; unknown numbers come back as ``'E<n>'``."""
    return _PREFERRED.get(code) or _errno.errorcode.get(code, f"E{code}")


def errno_code(name: str) -> int:
    """``'EOPNOTSUPP' -> 95``; raises ``ValueError`` for a name that is not an errno."""
    if name == "EHWPOISON":
        return EHWPOISON
    value = getattr(_errno, name, None)
    if not name.startswith("E") or not isinstance(value, int):
        raise ValueError(f"not an errno name: {name!r}")
    return value


def errno_of(call: Callable[[], Any]) -> int:
    """Run ``call``; 0 if it succeeds, the errno of its :class:`IoctlError` if not.

    The ``try_x()`` half of every ``x()``/``try_x()`` pair, in the manner of the kernel
    selftests' ``__vm_ioctl()``.
    """
    try:
        call()
    except IoctlError as err:
        return err.code
    return 0


class GuestmemError(Exception):
    """Base of every error guestmem raises on purpose."""


class IoctlError(GuestmemError, OSError):
    """A call failed with ``errno``; ``call`` names the ioctl or syscall.

    ``error_offset`` is set when the call wrote ``kvm_memory_attributes2.error_offset``
    back (docs/semantics.md §4: ``EOPNOTSUPP``, ``EPERM``, ``EAGAIN``, ``ENOMEM``).
    """

    def __init__(self, code: int, call: str, error_offset: int | None = None) -> None:
        OSError.__init__(self, code, _strerror(code))
        self.code = code
        self.call = call
        self.error_offset = error_offset

    @property
    def name(self) -> str:
        return errno_name(self.code)

    def __str__(self) -> str:
        where = "" if self.error_offset is None else f" (error_offset={self.error_offset:#x})"
        return f"{self.call}: {self.name}: {self.strerror}{where}"

    def __reduce__(self) -> tuple[type[IoctlError], tuple[int, str, int | None]]:
        return (type(self), (self.code, self.call, self.error_offset))


class HostFault(GuestmemError):
    """A host access through a mapping raised a signal (``SIGBUS`` for guest_memfd)."""

    def __init__(self, signal: str, offset: int, reason: str) -> None:
        super().__init__(f"{signal} at offset {offset:#x}: {reason}")
        self.signal = signal
        self.offset = offset
        self.reason = reason

    def __reduce__(self) -> tuple[type[HostFault], tuple[str, int, str]]:
        return (type(self), (self.signal, self.offset, self.reason))


class GuestExit(GuestmemError):
    """The guest stopped with an exit the VMM sees; :meth:`record` is that exit as a
    backend's ``Outcome.exit`` (``{"reason": ..., ...}``)."""

    def record(self) -> dict[str, Any]:
        raise NotImplementedError


class MemoryFault(GuestExit):
    """``KVM_EXIT_MEMORY_FAULT``: the guest touched ``[gpa, gpa+size)`` as the wrong side.

    ``flags`` carries ``KVM_MEMORY_EXIT_FLAG_PRIVATE`` when the access was private.
    """

    def __init__(self, gpa: int, size: int, flags: int) -> None:
        kind = "private" if flags & (1 << 3) else "shared"
        super().__init__(f"memory fault: {kind} access at gpa {gpa:#x} size {size:#x}")
        self.gpa = gpa
        self.size = size
        self.flags = flags

    @property
    def private(self) -> bool:
        return bool(self.flags & (1 << 3))

    def record(self) -> dict[str, Any]:
        return {"reason": "MEMORY_FAULT", "gpa": self.gpa, "size": self.size, "flags": self.flags}

    def __reduce__(self) -> tuple[type[MemoryFault], tuple[int, int, int]]:
        return (type(self), (self.gpa, self.size, self.flags))


class MmioExit(GuestExit):
    """``KVM_EXIT_MMIO``: the guest touched ``gpa`` where no memslot is bound any more
    (docs/semantics.md §3 *Memslots*); ``len`` is the access's first chunk (at most 8 bytes)."""

    def __init__(self, gpa: int, length: int, is_write: bool) -> None:
        kind = "write" if is_write else "read"
        super().__init__(f"MMIO exit: {kind} of {length} bytes at gpa {gpa:#x} (no memslot)")
        self.gpa = gpa
        self.len = length
        self.is_write = is_write

    def record(self) -> dict[str, Any]:
        return {"reason": "MMIO", "gpa": self.gpa, "len": self.len, "is_write": self.is_write}

    def __reduce__(self) -> tuple[type[MmioExit], tuple[int, int, bool]]:
        return (type(self), (self.gpa, self.len, self.is_write))


class TimeLimit(GuestmemError):
    """A run's time limit (``--timeout``) passed in the middle of a long step, which stopped
    there: what the step had done stays done (the run ends, and its machine with it)."""


@functools.cache
def _strerror(code: int) -> str:
    return os.strerror(code)

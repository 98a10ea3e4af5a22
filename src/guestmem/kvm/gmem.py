"""A guest_memfd fd: mapping, hole punching and the proposed conversion ioctl.

Facts from docs/kernel.md §3 (6.18): the fd is a regular anonymous-inode file whose size is
fixed; it maps ``MAP_SHARED`` only (``MAP_PRIVATE`` → ``EINVAL``, no ``MMAP`` flag →
``ENODEV``); ``fallocate(PUNCH_HOLE|KEEP_SIZE)`` frees pages, which read zero afterwards.
``KVM_SET_MEMORY_ATTRIBUTES2`` is issued on this fd (docs/semantics.md §9, v8 17/46); a kernel
without it answers ``ENOTTY`` (docs/semantics.md §4 step 0).
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import TYPE_CHECKING

from guestmem.errors import IoctlError, errno_of
from guestmem.kvm import syscalls
from guestmem.uapi.kvm import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    KVM_SET_MEMORY_ATTRIBUTES2,
    PAGE_SIZE,
    KvmMemoryAttributes2,
)

if TYPE_CHECKING:
    from guestmem.kvm.vm import Vm

#: errnos for which the conversion ioctl writes ``error_offset`` back (docs/semantics.md §4).
ERROR_OFFSET_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.EPERM, errno.EAGAIN, errno.ENOMEM})


class Mapping(syscalls.Handle):
    """A ``MAP_SHARED`` mapping of a guest_memfd at ``address``, ``length`` bytes long.

    ``length`` may exceed the file size (docs/kernel.md §3): touching a page past the end
    raises ``SIGBUS``, as does touching a private page. Never touch it from this process
    unless the page is known to be mappable; :mod:`guestmem.kvm.hostaccess` does it
    safely in a child process.
    """

    def __init__(self, gmem: GuestMemfd, address: int, length: int) -> None:
        self.gmem = gmem
        self.address = address
        self.length = length

    def close(self) -> None:
        if self.length:
            syscalls.munmap(self.address, self.length)
            self.length = 0


class GuestMemfd(syscalls.Handle):
    """A guest_memfd of ``size`` bytes created with ``flags``; close it (or use ``with``)."""

    def __init__(self, vm: Vm, fd: int, size: int, flags: int) -> None:
        os.set_inheritable(fd, False)  # the kernel does not set O_CLOEXEC (docs/kernel.md §3)
        self.vm = vm
        self.fd = fd
        self.size = size
        self.flags = flags

    def mmap(self, length: int | None = None, *, shared: bool = True) -> Mapping:
        """Map ``length`` bytes (default: the file size) read-write at offset 0.

        ``IoctlError(ENODEV, "mmap")`` without ``GUEST_MEMFD_FLAG_MMAP``;
        ``IoctlError(EINVAL, "mmap")`` for ``shared=False``.
        """
        length = self.size if length is None else length
        flags = syscalls.MAP_SHARED if shared else syscalls.MAP_PRIVATE
        address = syscalls.mmap(length, syscalls.PROT_READ | syscalls.PROT_WRITE, flags, self.fd)
        return Mapping(self, address, length)

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        syscalls.fallocate(self.fd, mode, offset, length)

    def punch_hole(self, offset: int, length: int) -> None:
        """``fallocate(PUNCH_HOLE | KEEP_SIZE)``: the range reads zero afterwards."""
        self.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)

    def try_punch_hole(self, offset: int, length: int) -> int:
        return errno_of(lambda: self.punch_hole(offset, length))

    def set_memory_attributes2(
        self, arg: KvmMemoryAttributes2 | bytearray, *, mark: int | None = None
    ) -> None:
        """``KVM_SET_MEMORY_ATTRIBUTES2`` on this fd with the raw 128-byte struct.

        The kernel writes ``error_offset`` back for ``EOPNOTSUPP``/``EPERM``/``EAGAIN``/
        ``ENOMEM``; it is attached to the raised :class:`IoctlError` (docs/semantics.md §4).
        ``mark``, an open ``make-it-fail`` file of this thread, marks the thread for the
        kernel's fault injection during the ioctl alone (:func:`syscalls.ioctl_marked`).
        """
        if len(memoryview(arg).cast("B")) != ctypes.sizeof(KvmMemoryAttributes2):
            raise ValueError(f"struct kvm_memory_attributes2 is {ctypes.sizeof(KvmMemoryAttributes2)} bytes")
        try:
            if mark is None:
                syscalls.ioctl(self.fd, KVM_SET_MEMORY_ATTRIBUTES2, arg)
            else:
                syscalls.ioctl_marked(self.fd, KVM_SET_MEMORY_ATTRIBUTES2, arg, mark)
        except IoctlError as err:
            if err.code in ERROR_OFFSET_ERRNOS:
                view = KvmMemoryAttributes2.from_buffer(arg)
                raise IoctlError(err.code, err.call, view.error_offset) from None
            raise

    def try_set_memory_attributes2(self, arg: KvmMemoryAttributes2 | bytearray) -> int:
        return errno_of(lambda: self.set_memory_attributes2(arg))

    def conversion_errno(self) -> int:
        """Whether this kernel has the conversion ioctl, without changing anything.

        Issues it with ``size = 0``: a kernel without it answers ``ENOTTY`` (check 0 of
        docs/semantics.md §4); one with it rejects the size with ``EINVAL`` (check 6) or refuses
        the VM type with ``EINVAL`` (check 4). Returns the errno.
        """
        return self.try_set_memory_attributes2(KvmMemoryAttributes2(size=0))


def page_count(size: int) -> int:
    return (size + PAGE_SIZE - 1) // PAGE_SIZE

"""Real-kernel bindings over :mod:`guestmem.uapi.kvm`, stdlib only (``fcntl``, ``mmap``,
``ctypes``, ``os``): :class:`Kvm` (``/dev/kvm``), :class:`Vm`, :class:`GuestMemfd`,
:class:`Vcpu`, the :class:`TinyGuest` program and fault-isolated host accesses
(:class:`HostAccess`). Every failing ioctl raises :class:`~guestmem.errors.IoctlError`
through :func:`guestmem.kvm.syscalls.ioctl`; every fd and mapping is released by
``close()`` or a ``with`` block.
"""

from __future__ import annotations

from guestmem.kvm.gmem import GuestMemfd, Mapping
from guestmem.kvm.guest import TinyGuest
from guestmem.kvm.hostaccess import HostAccess
from guestmem.kvm.system import Kvm, KvmUnavailable, unusable_reason
from guestmem.kvm.vcpu import Exit, GuestTimeout, UnexpectedExit, Vcpu
from guestmem.kvm.vm import Vm

__all__ = [
    "Exit",
    "GuestMemfd",
    "GuestTimeout",
    "HostAccess",
    "Kvm",
    "KvmUnavailable",
    "Mapping",
    "TinyGuest",
    "UnexpectedExit",
    "Vcpu",
    "Vm",
    "unusable_reason",
]

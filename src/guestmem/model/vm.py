"""A model VM: platform, ABI revision, launch phase, per-VM key, guest_memfds.

Creation checks follow ``kvm_gmem_create()`` (Linux 6.18; kvm-here.md §3): size 0,
unaligned or negative as ``loff_t`` → ``EINVAL``; unknown flags → ``EINVAL``;
``reserved`` is not checked. Launch follows semantics.md §3 *Launch*.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import struct

from guestmem.errors import IoctlError
from guestmem.model.gmem import GmemSnapshot, GuestMemfd
from guestmem.spec import platforms, revisions
from guestmem.spec.platforms.base import Platform
from guestmem.spec.revisions import Revision
from guestmem.spec.terms import Phase
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    PAGE_SIZE,
    KvmCreateGuestMemfd,
)

SUPPORTED_GMEM_FLAGS = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
#: Where guest_memfd is bound in guest physical memory, as in guest_memfd_conversions_test.
GPA_BASE = 1 << 32


class Vm:
    """One VM of ``platform`` under ABI ``revision``; ``seed`` keys its ciphertext."""

    def __init__(
        self,
        platform: str | Platform = "sw_protected",
        abi: str | Revision = revisions.DEFAULT,
        *,
        seed: int = 0,
    ) -> None:
        self.platform = platforms.get(platform) if isinstance(platform, str) else platform
        self.revision = revisions.get(abi) if isinstance(abi, str) else abi
        self.phase = Phase.PRE_LAUNCH
        self.key = hashlib.sha256(f"guestmem-vm:{self.platform.name}:{seed}".encode()).digest()
        self.gmems: list[GuestMemfd] = []

    def __repr__(self) -> str:
        return f"Vm({self.platform.name!r}, {self.revision.name!r}, {self.phase.value})"

    @property
    def running(self) -> bool:
        return self.phase is Phase.RUNNING

    def create_guest_memfd(
        self, size: int | bytes | bytearray | KvmCreateGuestMemfd, flags: int = 0
    ) -> GuestMemfd:
        """``KVM_CREATE_GUEST_MEMFD``: a raw 64-byte struct, or ``size`` and ``flags``."""
        if not isinstance(size, int):
            raw = bytes(size)
            if len(raw) < ctypes.sizeof(KvmCreateGuestMemfd):
                raise IoctlError(errno.EFAULT, "KVM_CREATE_GUEST_MEMFD")
            size, flags = struct.unpack_from("<QQ", raw)
        assert isinstance(size, int)
        if not 0 <= size < 1 << 64 or not 0 <= flags < 1 << 64:
            raise ValueError(f"size and flags are u64: size={size} flags={flags}")
        if size == 0 or size >= 1 << 63 or size % PAGE_SIZE:
            raise IoctlError(errno.EINVAL, "KVM_CREATE_GUEST_MEMFD")
        if flags & ~SUPPORTED_GMEM_FLAGS:
            raise IoctlError(errno.EINVAL, "KVM_CREATE_GUEST_MEMFD")
        gmem = GuestMemfd(self, size, flags, gpa=GPA_BASE + sum(g.size for g in self.gmems))
        self.gmems.append(gmem)
        return gmem

    def launch(self) -> None:
        """Finalize / launch-finish / activate: *pre-launch* → *running*, once."""
        if self.phase is Phase.RUNNING:
            raise IoctlError(errno.EINVAL, "launch")
        self.phase = Phase.RUNNING

    def require_running(self, call: str = "KVM_RUN") -> None:
        """The vCPU runs only after launch on platforms with a launch phase.

        Model assumption: ``KVM_RUN`` before finalize is ``EINVAL`` (TDX's pre-run check).
        """
        if self.platform.launch and self.phase is Phase.PRE_LAUNCH:
            raise IoctlError(errno.EINVAL, call)

    # --- snapshots (the checker's restore-apply-snapshot loop; no behaviour change) -------
    def snapshot(self) -> tuple[Phase, tuple[GmemSnapshot, ...]]:
        """The launch phase and every guest_memfd's :meth:`GuestMemfd.snapshot`."""
        return self.phase, tuple(g.snapshot() for g in self.gmems)

    def restore(self, snap: tuple[Phase, tuple[GmemSnapshot, ...]]) -> None:
        """Put back a :meth:`snapshot` of this VM (same guest_memfds)."""
        self.phase, gmems = snap
        for gmem, state in zip(self.gmems, gmems, strict=True):
            gmem.restore(state)

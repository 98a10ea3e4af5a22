"""A model VM: platform, ABI revision, launch phase, per-VM key, guest_memfds.

Creation checks follow ``kvm_gmem_create()`` (docs/semantics.md §6): size 0, unaligned
or negative as ``loff_t`` → ``EINVAL``; unknown flags → ``EINVAL``; ``reserved`` is not
checked. Launch follows docs/semantics.md §3 *Launch*; capabilities §7.
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
    """One VM of ``platform`` under ABI ``revision``; ``key_seed`` makes its
    key (ciphertext, garbage and scrambles differ between VMs of different seeds)."""

    def __init__(
        self,
        platform: str | Platform = "sw_protected",
        abi: str | Revision = revisions.DEFAULT,
        *,
        key_seed: int = 0,
        in_place_conversion: bool = True,
    ) -> None:
        self.platform = platforms.get(platform) if isinstance(platform, str) else platform
        self.revision = revisions.get(abi) if isinstance(abi, str) else abi
        self.phase = Phase.PRE_LAUNCH
        self.key = hashlib.sha256(f"guestmem-vm:{self.platform.name}:{key_seed}".encode()).digest()
        self.gmems: list[GuestMemfd] = []
        #: Whether guest_memfd tracks PRIVATE itself (``kvm.gmem_in_place_conversion`` in
        #: v8, ``!vm_memory_attributes`` in RFC v5). Without it the conversion ioctl is
        #: ``ENOTTY`` and its capability reads 0 (docs/semantics.md §4 step 0, §7).
        self.in_place_conversion = in_place_conversion
        #: Fault injection, as the kernel's failslab ``times``: this many upcoming
        #: allocations a conversion needs fail, and the call returns ``ENOMEM`` with
        #: ``error_offset`` = ``offset`` (docs/semantics.md §4 step 10a).
        self.failslab = 0

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

    def run_guest(self, call: str = "KVM_RUN") -> None:
        """A vCPU is about to run guest code (docs/semantics.md §3 *Launch*).

        On a platform whose first run is its launch (pKVM creates the EL2 VM then), a
        pre-launch VM moves to *running* and the guest proceeds. On the others with a
        launch phase, ``KVM_RUN`` before finalize is ``EINVAL`` and nothing changes
        (model assumption after TDX's pre-run check).
        """
        if self.platform.launch and self.phase is Phase.PRE_LAUNCH:
            if not self.platform.first_run_launches:
                raise IoctlError(errno.EINVAL, call)
            self.phase = Phase.RUNNING

    def take_allocation(self) -> bool:
        """One kernel allocation: False when :attr:`failslab` makes it fail."""
        if self.failslab > 0:
            self.failslab -= 1
            return False
        return True

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on this VM's fd, for the capabilities the model knows
        (docs/semantics.md §7); any other capability reads 0."""
        return self.revision.capabilities(self.platform, self.in_place_conversion).get(cap, 0)

    # --- snapshots (the checker's restore-apply-snapshot loop; no behaviour change) -------
    def snapshot(self) -> tuple[Phase, tuple[GmemSnapshot, ...]]:
        """The launch phase and every guest_memfd's :meth:`GuestMemfd.snapshot`."""
        return self.phase, tuple(g.snapshot() for g in self.gmems)

    def restore(self, snap: tuple[Phase, tuple[GmemSnapshot, ...]]) -> None:
        """Put back a :meth:`snapshot` of this VM (same guest_memfds)."""
        self.phase, gmems = snap
        for gmem, state in zip(self.gmems, gmems, strict=True):
            gmem.restore(state)

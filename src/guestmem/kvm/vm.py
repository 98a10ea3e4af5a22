"""A VM fd: guest_memfd creation, memslots, capabilities and vCPUs (api.rst §4.5, §4.141).

``create_guest_memfd`` follows ``KVM_CREATE_GUEST_MEMFD`` (docs/semantics.md §6, §9, docs/kernel.md §3);
``set_user_memory_region2`` binds a guest_memfd with ``KVM_MEM_GUEST_MEMFD``
(docs/kernel.md §5). Each operation also has a ``try_`` form returning 0 or the errno.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guestmem.errors import errno_of
from guestmem.kvm import syscalls
from guestmem.kvm.gmem import GuestMemfd
from guestmem.kvm.vcpu import Vcpu
from guestmem.uapi.kvm import (
    KVM_CHECK_EXTENSION,
    KVM_CREATE_GUEST_MEMFD,
    KVM_CREATE_VCPU,
    KVM_ENABLE_CAP,
    KVM_MEM_GUEST_MEMFD,
    KVM_SET_USER_MEMORY_REGION,
    KVM_SET_USER_MEMORY_REGION2,
    KvmCreateGuestMemfd,
    KvmEnableCap,
    KvmUserspaceMemoryRegion,
    KvmUserspaceMemoryRegion2,
)

if TYPE_CHECKING:
    from guestmem.kvm.system import Kvm

_U64 = (1 << 64) - 1


class Vm(syscalls.Handle):
    """A VM of ``vm_type``; closing it closes its vCPUs (guest_memfds stay the caller's)."""

    def __init__(self, kvm: Kvm, fd: int, vm_type: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self.type = vm_type
        self.vcpus: list[Vcpu] = []

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        super().close()

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the VM fd (answers for this VM's type)."""
        return syscalls.ioctl(self.fd, KVM_CHECK_EXTENSION, cap)

    def enable_cap(self, cap: int, *args: int) -> None:
        """``KVM_ENABLE_CAP`` on the VM fd, e.g. ``KVM_CAP_EXIT_HYPERCALL`` with a hypercall mask."""
        arg = KvmEnableCap(cap=cap)
        for i, value in enumerate(args):
            arg.args[i] = value
        syscalls.ioctl(self.fd, KVM_ENABLE_CAP, arg)

    # --- guest_memfd ---------------------------------------------------------------------
    def create_guest_memfd(self, size: int, flags: int = 0, reserved: tuple[int, ...] = ()) -> GuestMemfd:
        """``KVM_CREATE_GUEST_MEMFD``. ``size`` and ``flags`` are taken as u64 (``-4096`` is
        the huge unsigned value the kernel sees); bad ones give ``IoctlError(EINVAL)``."""
        arg = KvmCreateGuestMemfd(size=size & _U64, flags=flags & _U64)
        for i, word in enumerate(reserved):
            arg.reserved[i] = word & _U64
        fd = syscalls.ioctl(self.fd, KVM_CREATE_GUEST_MEMFD, arg)
        return GuestMemfd(self, fd, size, flags)

    def try_create_guest_memfd(self, size: int, flags: int = 0) -> int:
        """0 if the guest_memfd can be created (it is closed again), else the errno."""
        return errno_of(lambda: self.create_guest_memfd(size, flags).close())

    # --- memslots --------------------------------------------------------------------------
    def set_user_memory_region2(
        self,
        slot: int,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int = 0,
        *,
        flags: int = 0,
        gmem: GuestMemfd | None = None,
        gmem_offset: int = 0,
    ) -> None:
        """``KVM_SET_USER_MEMORY_REGION2``; with ``gmem`` the slot gets ``KVM_MEM_GUEST_MEMFD``.

        Here ``userspace_addr`` must be the guest_memfd's own ``MAP_SHARED`` mapping for
        the guest to see guest_memfd: guest instructions are emulated and reach memory
        through it (docs/kernel.md §1). ``memory_size = 0`` deletes the slot.
        """
        arg = KvmUserspaceMemoryRegion2(
            slot=slot,
            flags=flags | (KVM_MEM_GUEST_MEMFD if gmem is not None else 0),
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
            userspace_addr=userspace_addr,
            guest_memfd_offset=gmem_offset,
            guest_memfd=gmem.fd if gmem is not None else 0,
        )
        syscalls.ioctl(self.fd, KVM_SET_USER_MEMORY_REGION2, arg)

    def try_set_user_memory_region2(
        self,
        slot: int,
        guest_phys_addr: int,
        memory_size: int,
        userspace_addr: int = 0,
        *,
        flags: int = 0,
        gmem: GuestMemfd | None = None,
        gmem_offset: int = 0,
    ) -> int:
        return errno_of(
            lambda: self.set_user_memory_region2(
                slot,
                guest_phys_addr,
                memory_size,
                userspace_addr,
                flags=flags,
                gmem=gmem,
                gmem_offset=gmem_offset,
            )
        )

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        """The original ``KVM_SET_USER_MEMORY_REGION`` (no guest_memfd)."""
        arg = KvmUserspaceMemoryRegion(
            slot=slot,
            flags=flags,
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
            userspace_addr=userspace_addr,
        )
        syscalls.ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, arg)

    # --- vCPUs -------------------------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int = 0) -> Vcpu:
        """``KVM_CREATE_VCPU`` plus the ``kvm_run`` mapping; closed with the VM."""
        fd = syscalls.ioctl(self.fd, KVM_CREATE_VCPU, vcpu_id)
        try:
            vcpu = Vcpu(self, fd, vcpu_id, self.kvm.vcpu_mmap_size())
        except BaseException:
            syscalls.close(fd)
            raise
        self.vcpus.append(vcpu)
        return vcpu

"""``/dev/kvm``: the system handle, capability probing and VM creation (api.rst §4.1-§4.4).

Nothing is assumed: every capability is asked with ``KVM_CHECK_EXTENSION`` and VM types
come from ``KVM_CAP_VM_TYPES`` (docs/semantics.md §7, kvm-here.md §2).
"""

from __future__ import annotations

import ctypes

from guestmem.errors import IoctlError, errno_of
from guestmem.kvm import syscalls
from guestmem.kvm.vm import Vm
from guestmem.uapi.kvm import (
    KVM_CAP_VM_TYPES,
    KVM_CHECK_EXTENSION,
    KVM_CREATE_VM,
    KVM_GET_API_VERSION,
    KVM_GET_SUPPORTED_CPUID,
    KVM_GET_VCPU_MMAP_SIZE,
    KVM_X86_DEFAULT_VM,
    KvmCpuid2Header,
    KvmCpuidEntry2,
)

DEVICE = "/dev/kvm"
#: ``KVM_GET_API_VERSION`` has returned 12 since Linux 2.6.22 (api.rst §4.1).
API_VERSION = 12
_MAX_CPUID_ENTRIES = 256


class KvmUnavailable(Exception):
    """``/dev/kvm`` is missing or unusable; the message is the reason."""


def unusable_reason(path: str = DEVICE) -> str | None:
    """Why ``path`` cannot run VMs here, or None when it can (it is opened and a VM created)."""
    try:
        with Kvm(path) as kvm, kvm.create_vm():
            return None
    except KvmUnavailable as err:
        return str(err)
    except IoctlError as err:
        return f"{path}: KVM_CREATE_VM failed: {err}"


class Kvm(syscalls.Handle):
    """An open ``/dev/kvm``; a context manager that closes it."""

    def __init__(self, path: str = DEVICE) -> None:
        try:
            self.fd = syscalls.open_device(path)
        except OSError as err:
            raise KvmUnavailable(f"{path}: {err.strerror}") from None
        self.path = path
        try:
            version = self.api_version()
        except IoctlError as err:
            self.close()
            raise KvmUnavailable(f"{path}: {err}") from None
        if version != API_VERSION:
            self.close()
            raise KvmUnavailable(f"{path}: KVM_GET_API_VERSION is {version}, expected {API_VERSION}")

    def api_version(self) -> int:
        return syscalls.ioctl(self.fd, KVM_GET_API_VERSION)

    def vcpu_mmap_size(self) -> int:
        """Size of the ``kvm_run`` mapping of a vCPU fd."""
        return syscalls.ioctl(self.fd, KVM_GET_VCPU_MMAP_SIZE)

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on ``/dev/kvm``: 0 when absent, else a cap-specific value."""
        return syscalls.ioctl(self.fd, KVM_CHECK_EXTENSION, cap)

    def vm_types(self) -> int:
        """Bitmask of VM types (bit *n* = type *n*). Kernels without ``KVM_CAP_VM_TYPES``
        offer the default type only."""
        return self.check_extension(KVM_CAP_VM_TYPES) or 1 << KVM_X86_DEFAULT_VM

    def supported_cpuid(self) -> bytearray:
        """``KVM_GET_SUPPORTED_CPUID``: a ``struct kvm_cpuid2`` ready for ``KVM_SET_CPUID2``."""
        entry = ctypes.sizeof(KvmCpuidEntry2)
        buf = bytearray(ctypes.sizeof(KvmCpuid2Header) + _MAX_CPUID_ENTRIES * entry)
        KvmCpuid2Header.from_buffer(buf).nent = _MAX_CPUID_ENTRIES
        syscalls.ioctl(self.fd, KVM_GET_SUPPORTED_CPUID, buf)
        nent = KvmCpuid2Header.from_buffer(buf).nent
        return buf[: ctypes.sizeof(KvmCpuid2Header) + nent * entry]

    def create_vm(self, vm_type: int = KVM_X86_DEFAULT_VM) -> Vm:
        """``KVM_CREATE_VM``; ``IoctlError(EINVAL)`` for a type this kernel lacks."""
        return Vm(self, syscalls.ioctl(self.fd, KVM_CREATE_VM, vm_type), vm_type)

    def try_create_vm(self, vm_type: int) -> int:
        """0 if a VM of ``vm_type`` can be created (it is destroyed again), else the errno."""
        return errno_of(lambda: self.create_vm(vm_type).close())


__all__ = ["API_VERSION", "DEVICE", "Kvm", "KvmUnavailable", "unusable_reason"]

"""KVM constants, structures and ioctl numbers (x86-64, little-endian).

Upstream values come from Linux 6.18 ``include/uapi/linux/kvm.h`` and
``arch/x86/include/uapi/asm/kvm.h``; the conversion ioctl and its struct follow the
in-place conversion series (docs/semantics.md §9). Proposed capability numbers moved with every
rebase of that series: the two defined here are the numbers of the project's test kernels,
used only where an ioctl confirms them, and the whole range the series has used is
:data:`PROPOSED_CAP_RANGE` (docs/semantics.md §7).
"""

from __future__ import annotations

import ctypes

from guestmem.uapi.ioctl import io, ior, iow, iowr

KVMIO = 0xAE
PAGE_SIZE = 4096
PAGE_SHIFT = 12

# --- memory attributes and guest_memfd flags (docs/semantics.md §9) -------------------------------
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
GUEST_MEMFD_FLAG_MMAP = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2

# --- VM types (KVM_CAP_VM_TYPES bit n = type n) --------------------------------------------
KVM_X86_DEFAULT_VM = 0
KVM_X86_SW_PROTECTED_VM = 1
KVM_X86_SEV_VM = 2
KVM_X86_SEV_ES_VM = 3
KVM_X86_SNP_VM = 4
KVM_X86_TDX_VM = 5

# --- upstream capabilities (docs/semantics.md §7) -------------------------------------------
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_SYNC_REGS = 74
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_X86_DISABLE_EXITS = 143
KVM_CAP_EXIT_HYPERCALL = 201
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_FAULT_INFO = 232
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235
KVM_CAP_PRE_FAULT_MEMORY = 236
KVM_CAP_GUEST_MEMFD_FLAGS = 244
#: Numbers the series has used for its proposed capabilities; reported, and used only where
#: an ioctl confirms them.
PROPOSED_CAP_RANGE = range(245, 252)
# --- the series' capabilities as the test kernels number them (shared/kernel/README.md) ----
#: v8 and RFC v5: the attributes ``KVM_SET_MEMORY_ATTRIBUTES2`` accepts for a VM (PRIVATE).
KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES = 250
#: RFC v5 only: the content-mode ``flags`` a VM accepts (ZERO | PRESERVE).
KVM_CAP_MEMORY_ATTRIBUTES2_FLAGS = 251

# --- exit reasons and exit flags ------------------------------------------------------------
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_MEMORY_FAULT = 39
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3

EXIT_REASON_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("KVM_EXIT_") and not name.startswith("KVM_EXIT_IO_") and isinstance(value, int)
}

# --- hypercalls (Documentation/virt/kvm/x86/hypercalls.rst, docs/semantics.md §9) -------------------
KVM_HC_MAP_GPA_RANGE = 12
KVM_MAP_GPA_RANGE_PAGE_SZ_4K = 0
KVM_MAP_GPA_RANGE_PAGE_SZ_2M = 1 << 0
KVM_MAP_GPA_RANGE_PAGE_SZ_1G = 1 << 1
KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4
KVM_MAP_GPA_RANGE_DECRYPTED = 0

# --- fallocate modes (include/uapi/linux/falloc.h) -----------------------------------------
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
#: ``madvise()`` advice that guest_memfd_test uses on a guest_memfd mapping.
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25


# --- structures -------------------------------------------------------------------------------
class _Struct(ctypes.LittleEndianStructure):
    _pack_ = 8


class KvmMemoryAttributes(_Struct):
    """``struct kvm_memory_attributes`` (v1 VM ioctl, 32 bytes)."""

    _fields_ = [
        ("address", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("attributes", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _AddressOrOffset(ctypes.Union):
    _fields_ = [("address", ctypes.c_uint64), ("offset", ctypes.c_uint64)]


class KvmMemoryAttributes2(_Struct):
    """``struct kvm_memory_attributes2`` (128 bytes; docs/semantics.md §9).

    ``address``/``offset`` share the first word; guest_memfd uses ``offset``.
    ``error_offset`` is output only and written back on ``EOPNOTSUPP``, ``EPERM``,
    ``EAGAIN`` and ``ENOMEM`` (docs/semantics.md §4).
    """

    _anonymous_ = ("_u",)
    _fields_ = [
        ("_u", _AddressOrOffset),
        ("size", ctypes.c_uint64),
        ("attributes", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("error_offset", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64 * 11),
    ]


class KvmCreateGuestMemfd(_Struct):
    """``struct kvm_create_guest_memfd`` (64 bytes)."""

    _fields_ = [
        ("size", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64 * 6),
    ]


class KvmUserspaceMemoryRegion(_Struct):
    """``struct kvm_userspace_memory_region`` (32 bytes)."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    ]


class KvmUserspaceMemoryRegion2(_Struct):
    """``struct kvm_userspace_memory_region2`` (160 bytes)."""

    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
        ("guest_memfd_offset", ctypes.c_uint64),
        ("guest_memfd", ctypes.c_uint32),
        ("pad1", ctypes.c_uint32),
        ("pad2", ctypes.c_uint64 * 14),
    ]


class KvmEnableCap(_Struct):
    """``struct kvm_enable_cap`` (104 bytes)."""

    _fields_ = [
        ("cap", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("args", ctypes.c_uint64 * 4),
        ("pad", ctypes.c_uint8 * 64),
    ]


_REG_NAMES = (
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rsp",
    "rbp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rip",
    "rflags",
)


class KvmRegs(_Struct):
    """``struct kvm_regs`` (x86, 144 bytes)."""

    _fields_ = [(name, ctypes.c_uint64) for name in _REG_NAMES]


class KvmSegment(_Struct):
    """``struct kvm_segment`` (24 bytes)."""

    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    ]


class KvmDtable(_Struct):
    """``struct kvm_dtable`` (16 bytes)."""

    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint16),
        ("padding", ctypes.c_uint16 * 3),
    ]


class KvmSregs(_Struct):
    """``struct kvm_sregs`` (x86, 312 bytes)."""

    _fields_ = [
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", ctypes.c_uint64),
        ("cr2", ctypes.c_uint64),
        ("cr3", ctypes.c_uint64),
        ("cr4", ctypes.c_uint64),
        ("cr8", ctypes.c_uint64),
        ("efer", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("interrupt_bitmap", ctypes.c_uint64 * 4),
    ]


class KvmCpuidEntry2(_Struct):
    """``struct kvm_cpuid_entry2`` (40 bytes)."""

    _fields_ = [
        ("function", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("eax", ctypes.c_uint32),
        ("ebx", ctypes.c_uint32),
        ("ecx", ctypes.c_uint32),
        ("edx", ctypes.c_uint32),
        ("padding", ctypes.c_uint32 * 3),
    ]


class KvmCpuid2Header(_Struct):
    """Header of ``struct kvm_cpuid2`` (8 bytes); ``nent`` entries follow it."""

    _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32)]


class KvmRunIo(_Struct):
    """``kvm_run.io`` (exit union at offset 32)."""

    _fields_ = [
        ("direction", ctypes.c_uint8),
        ("size", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("count", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint64),
    ]


class KvmRunMmio(_Struct):
    """``kvm_run.mmio``."""

    _fields_ = [
        ("phys_addr", ctypes.c_uint64),
        ("data", ctypes.c_uint8 * 8),
        ("len", ctypes.c_uint32),
        ("is_write", ctypes.c_uint8),
    ]


class KvmRunHypercall(_Struct):
    """``kvm_run.hypercall``: ``nr`` @32, ``args[6]`` @40, ``ret`` @88, ``flags`` @96."""

    _fields_ = [
        ("nr", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
        ("ret", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class KvmRunMemoryFault(_Struct):
    """``kvm_run.memory_fault``: ``flags`` @32, ``gpa`` @40, ``size`` @48 (docs/semantics.md §9)."""

    _fields_ = [("flags", ctypes.c_uint64), ("gpa", ctypes.c_uint64), ("size", ctypes.c_uint64)]


class KvmRunInternal(_Struct):
    """``kvm_run.internal``."""

    _fields_ = [
        ("suberror", ctypes.c_uint32),
        ("ndata", ctypes.c_uint32),
        ("data", ctypes.c_uint64 * 16),
    ]


class KvmRunFailEntry(_Struct):
    """``kvm_run.fail_entry``."""

    _fields_ = [("hardware_entry_failure_reason", ctypes.c_uint64), ("cpu", ctypes.c_uint32)]


class _KvmRunExit(ctypes.Union):
    _fields_ = [
        ("io", KvmRunIo),
        ("mmio", KvmRunMmio),
        ("hypercall", KvmRunHypercall),
        ("memory_fault", KvmRunMemoryFault),
        ("internal", KvmRunInternal),
        ("fail_entry", KvmRunFailEntry),
        ("padding", ctypes.c_uint8 * 256),
    ]


class KvmRun(_Struct):
    """The fixed head of ``struct kvm_run`` (the shared vCPU mapping), through the exit union."""

    _anonymous_ = ("_exit",)
    _fields_ = [
        ("request_interrupt_window", ctypes.c_uint8),
        ("immediate_exit", ctypes.c_uint8),
        ("padding1", ctypes.c_uint8 * 6),
        ("exit_reason", ctypes.c_uint32),
        ("ready_for_interrupt_injection", ctypes.c_uint8),
        ("if_flag", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("cr8", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("_exit", _KvmRunExit),
    ]


# --- ioctl numbers (docs/semantics.md §9) -------------------------------------------
KVM_GET_API_VERSION = io(KVMIO, 0x00)
KVM_CREATE_VM = io(KVMIO, 0x01)
KVM_CHECK_EXTENSION = io(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = io(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = iowr(KVMIO, 0x05, ctypes.sizeof(KvmCpuid2Header))
KVM_CREATE_VCPU = io(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = iow(KVMIO, 0x46, ctypes.sizeof(KvmUserspaceMemoryRegion))
KVM_SET_USER_MEMORY_REGION2 = iow(KVMIO, 0x49, ctypes.sizeof(KvmUserspaceMemoryRegion2))
KVM_RUN = io(KVMIO, 0x80)
KVM_GET_REGS = ior(KVMIO, 0x81, ctypes.sizeof(KvmRegs))
KVM_SET_REGS = iow(KVMIO, 0x82, ctypes.sizeof(KvmRegs))
KVM_GET_SREGS = ior(KVMIO, 0x83, ctypes.sizeof(KvmSregs))
KVM_SET_SREGS = iow(KVMIO, 0x84, ctypes.sizeof(KvmSregs))
KVM_SET_CPUID2 = iow(KVMIO, 0x90, ctypes.sizeof(KvmCpuid2Header))
KVM_ENABLE_CAP = iow(KVMIO, 0xA3, ctypes.sizeof(KvmEnableCap))
KVM_GET_STATS_FD = io(KVMIO, 0xCE)
KVM_SET_MEMORY_ATTRIBUTES = iow(KVMIO, 0xD2, ctypes.sizeof(KvmMemoryAttributes))
KVM_CREATE_GUEST_MEMFD = iowr(KVMIO, 0xD4, ctypes.sizeof(KvmCreateGuestMemfd))
KVM_PRE_FAULT_MEMORY = iowr(KVMIO, 0xD5, 64)
#: Proposed (RFC v2-v8): issued on the guest_memfd fd, not the VM fd.
KVM_SET_MEMORY_ATTRIBUTES2 = iowr(KVMIO, 0xD2, ctypes.sizeof(KvmMemoryAttributes2))
#: Historical RFC v1 encoding (64-byte struct, nr 0xd6); only probed, never issued.
KVM_SET_MEMORY_ATTRIBUTES2_RFC_V1 = iowr(KVMIO, 0xD6, 64)

IOCTL_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("KVM_")
    and isinstance(value, int)
    and value >= KVMIO << 8
    and (value >> 8) & 0xFF == KVMIO
}

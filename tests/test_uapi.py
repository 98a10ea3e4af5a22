"""Every UAPI size, offset and ioctl number against the kernel's headers (uapi.md §2-§5,
docs/kernel.md §6-§7)."""

from __future__ import annotations

import ctypes

import pytest

from guestmem.uapi import ioctl
from guestmem.uapi import kvm as k


@pytest.mark.parametrize(
    ("struct", "size"),
    [
        (k.KvmMemoryAttributes, 32),
        (k.KvmMemoryAttributes2, 128),
        (k.KvmCreateGuestMemfd, 64),
        (k.KvmUserspaceMemoryRegion, 32),
        (k.KvmUserspaceMemoryRegion2, 160),
        (k.KvmEnableCap, 104),
        (k.KvmRegs, 144),
        (k.KvmSegment, 24),
        (k.KvmDtable, 16),
        (k.KvmSregs, 312),
        (k.KvmCpuidEntry2, 40),
        (k.KvmCpuid2Header, 8),
    ],
)
def test_struct_sizes(struct: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(struct) == size


def _offsets(struct: type[ctypes.Structure]) -> dict[str, int]:
    return {name: getattr(struct, name).offset for name, *_ in struct._fields_}


def test_kvm_memory_attributes2_layout() -> None:
    s = k.KvmMemoryAttributes2
    assert s.address.offset == s.offset.offset == 0
    assert (s.size.offset, s.attributes.offset, s.flags.offset) == (8, 16, 24)
    assert (s.error_offset.offset, s.reserved.offset) == (32, 40)
    assert s.reserved.size == 88  # reserved[11]
    # the first four fields match struct kvm_memory_attributes (MEMORY_ATTRIBUTES_MATCH)
    v1 = _offsets(k.KvmMemoryAttributes)
    assert v1 == {"address": 0, "size": 8, "attributes": 16, "flags": 24}


def test_kvm_memory_attributes2_union_and_bytes() -> None:
    arg = k.KvmMemoryAttributes2(offset=0x2000, size=0x1000, attributes=8, flags=2)
    arg.reserved[10] = 7
    raw = bytes(arg)
    assert raw[0:8] == (0x2000).to_bytes(8, "little")
    assert arg.address == 0x2000
    assert raw[120:128] == (7).to_bytes(8, "little")


def test_create_guest_memfd_layout() -> None:
    assert _offsets(k.KvmCreateGuestMemfd) == {"size": 0, "flags": 8, "reserved": 16}


def test_userspace_memory_region2_layout() -> None:
    assert _offsets(k.KvmUserspaceMemoryRegion2) == {
        "slot": 0,
        "flags": 4,
        "guest_phys_addr": 8,
        "memory_size": 16,
        "userspace_addr": 24,
        "guest_memfd_offset": 32,
        "guest_memfd": 40,
        "pad1": 44,
        "pad2": 48,
    }


def test_sregs_layout() -> None:
    o = _offsets(k.KvmSregs)
    assert (o["cs"], o["ldt"], o["gdt"], o["idt"]) == (0, 168, 192, 208)
    assert (o["cr0"], o["cr2"], o["cr3"], o["cr4"], o["cr8"]) == (224, 232, 240, 248, 256)
    assert (o["efer"], o["apic_base"], o["interrupt_bitmap"]) == (264, 272, 280)


def test_kvm_run_offsets() -> None:
    r = k.KvmRun
    assert (r.immediate_exit.offset, r.exit_reason.offset) == (1, 8)
    assert r.io.offset == r.memory_fault.offset == r.hypercall.offset == r.mmio.offset == 32
    mf = k.KvmRunMemoryFault
    assert (32 + mf.flags.offset, 32 + mf.gpa.offset, 32 + mf.size.offset) == (32, 40, 48)
    hc = k.KvmRunHypercall
    assert (32 + hc.nr.offset, 32 + hc.args.offset, 32 + hc.ret.offset, 32 + hc.flags.offset) == (
        32,
        40,
        88,
        96,
    )
    io = k.KvmRunIo
    assert (io.direction.offset, io.size.offset, io.port.offset, io.count.offset, io.data_offset.offset) == (
        0,
        1,
        2,
        4,
        8,
    )


@pytest.mark.parametrize(
    ("number", "value"),
    [
        (k.KVM_GET_API_VERSION, 0xAE00),
        (k.KVM_CREATE_VM, 0xAE01),
        (k.KVM_CHECK_EXTENSION, 0xAE03),
        (k.KVM_GET_VCPU_MMAP_SIZE, 0xAE04),
        (k.KVM_CREATE_VCPU, 0xAE41),
        (k.KVM_RUN, 0xAE80),
        (k.KVM_GET_STATS_FD, 0xAECE),
        (k.KVM_ENABLE_CAP, 0x4068AEA3),
        (k.KVM_SET_USER_MEMORY_REGION, 0x4020AE46),
        (k.KVM_SET_USER_MEMORY_REGION2, 0x40A0AE49),
        (k.KVM_SET_MEMORY_ATTRIBUTES, 0x4020AED2),
        (k.KVM_CREATE_GUEST_MEMFD, 0xC040AED4),
        (k.KVM_PRE_FAULT_MEMORY, 0xC040AED5),
        (k.KVM_SET_MEMORY_ATTRIBUTES2, 0xC080AED2),
        (k.KVM_SET_MEMORY_ATTRIBUTES2_RFC_V1, 0xC040AED6),
        (k.KVM_GET_REGS, 0x8090AE81),
        (k.KVM_SET_REGS, 0x4090AE82),
        (k.KVM_GET_SREGS, 0x8138AE83),
        (k.KVM_SET_SREGS, 0x4138AE84),
        (k.KVM_GET_SUPPORTED_CPUID, 0xC008AE05),
        (k.KVM_SET_CPUID2, 0x4008AE90),
    ],
)
def test_ioctl_numbers(number: int, value: int) -> None:
    assert number == value


def test_ioctl_decode_roundtrip_and_limits() -> None:
    assert ioctl.decode(k.KVM_SET_MEMORY_ATTRIBUTES2) == (3, 0xAE, 0xD2, 128)
    assert ioctl.iowr(0xAE, 0xD2, 128) == 0xC080AED2
    with pytest.raises(ValueError, match="size"):
        ioctl.iow(0xAE, 0x01, 1 << 14)
    with pytest.raises(ValueError, match="out of range"):
        ioctl.io(0xAE, 0x100)


def test_ioctl_names_cover_the_conversion_ioctl() -> None:
    assert k.IOCTL_NAMES[0xC080AED2] == "KVM_SET_MEMORY_ATTRIBUTES2"
    assert k.IOCTL_NAMES[0xAE03] == "KVM_CHECK_EXTENSION"
    assert k.EXIT_REASON_NAMES[k.KVM_EXIT_MEMORY_FAULT] == "KVM_EXIT_MEMORY_FAULT"


def test_constants() -> None:
    assert k.KVM_MEMORY_ATTRIBUTE_PRIVATE == 8
    assert (k.GUEST_MEMFD_FLAG_MMAP, k.GUEST_MEMFD_FLAG_INIT_SHARED, k.KVM_MEM_GUEST_MEMFD) == (1, 2, 4)
    assert k.KVM_MEMORY_EXIT_FLAG_PRIVATE == 8
    assert (k.KVM_EXIT_HYPERCALL, k.KVM_EXIT_MEMORY_FAULT, k.KVM_HC_MAP_GPA_RANGE) == (3, 39, 12)
    assert k.KVM_MAP_GPA_RANGE_ENCRYPTED == 1 << 4
    assert (k.KVM_CAP_GUEST_MEMFD, k.KVM_CAP_VM_TYPES, k.KVM_CAP_GUEST_MEMFD_FLAGS) == (234, 235, 244)
    assert (k.KVM_X86_SW_PROTECTED_VM, k.KVM_X86_SNP_VM, k.KVM_X86_TDX_VM) == (1, 4, 5)


def test_seed_policy_flags() -> None:
    from guestmem.spec.revisions import seed

    assert (seed.CONTENT_POLICY_ZERO, seed.CONTENT_POLICY_PRESERVE, seed.CONTENT_POLICY_NONE) == (1, 2, 4)

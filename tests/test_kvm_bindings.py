"""The real-kernel bindings (:mod:`guestmem.kvm`) against ``/dev/kvm``: error typing,
capability probing, guest_memfd creation and mapping, host faults in a helper process,
hole punching, the tiny guest through the memslot, time limits and exit decoding."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator

import pytest

from guestmem.backend.kernel import physical_address_bits
from guestmem.errors import HostFault, IoctlError, MemoryFault
from guestmem.kvm import GuestTimeout, HostAccess, Kvm, KvmUnavailable, TinyGuest, UnexpectedExit, syscalls
from guestmem.kvm.facts import cached
from guestmem.kvm.guest import MAX_WINDOW
from guestmem.kvm.syscalls import ioctl, try_ioctl
from guestmem.kvm.vcpu import decode_exit, memory_fault
from guestmem.kvm.vm import Vm
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_CAP_GUEST_MEMFD,
    KVM_CAP_GUEST_MEMFD_FLAGS,
    KVM_CAP_USER_MEMORY2,
    KVM_CAP_VM_TYPES,
    KVM_CHECK_EXTENSION,
    KVM_CREATE_GUEST_MEMFD,
    KVM_EXIT_MEMORY_FAULT,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_MEMORY_EXIT_FLAG_PRIVATE,
    KVM_SET_MEMORY_ATTRIBUTES,
    KVM_X86_SW_PROTECTED_VM,
    PAGE_SIZE,
    KvmMemoryAttributes,
    KvmMemoryAttributes2,
    KvmRun,
)
from kvm_support import facts, kvm, needs, requires_kvm

pytestmark = requires_kvm
GPA = 1 << 32
SHARED = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
#: The tests that make guest_memfds as the backend does (``MMAP | INIT_SHARED``).
GMEM = needs("guest_memfd", "guest_memfd_mmap", "guest_memfd_init_shared")
__all__ = ["kvm"]  # the fixture, imported for pytest


@pytest.fixture
def vm(kvm: Kvm) -> Iterator[Vm]:
    with kvm.create_vm() as handle:
        yield handle


class Bound:
    """A guest_memfd of ``pages`` pages bound at 4 GiB with the tiny guest loaded."""

    def __init__(self, vm: Vm, pages: int, flags: int = SHARED) -> None:
        self.size = pages * PAGE_SIZE
        self.gmem = vm.create_guest_memfd(self.size, flags)
        self.mapping = self.gmem.mmap(self.size + 4 * PAGE_SIZE)
        vm.set_user_memory_region2(1, GPA, self.size, self.mapping.address, gmem=self.gmem)
        self.host = HostAccess(self.mapping, self.size)
        self.guest = TinyGuest(vm, GPA, self.size)

    def close(self) -> None:
        self.host.close()
        self.gmem.vm.close()
        self.guest.close()
        self.mapping.close()
        self.gmem.close()


@pytest.fixture
def bound(vm: Vm) -> Iterator[Bound]:
    b = Bound(vm, 4)
    yield b
    b.close()


# --- error typing and capabilities ------------------------------------------------------------
def test_failing_ioctl_raises_errno_and_name(vm: Vm) -> None:
    arg = KvmMemoryAttributes(address=0, size=PAGE_SIZE, attributes=KVM_MEMORY_ATTRIBUTE_PRIVATE)
    with pytest.raises(IoctlError) as info:
        ioctl(vm.fd, KVM_SET_MEMORY_ATTRIBUTES, arg)
    assert info.value.code == errno.ENOTTY  # not compiled in here (kvm-here.md §4)
    assert info.value.name == "ENOTTY"
    assert info.value.call == "KVM_SET_MEMORY_ATTRIBUTES"
    assert try_ioctl(vm.fd, KVM_SET_MEMORY_ATTRIBUTES, arg) == errno.ENOTTY


def test_create_guest_memfd_on_dev_kvm_is_einval_named(kvm: Kvm) -> None:
    with pytest.raises(IoctlError) as info:
        ioctl(kvm.fd, KVM_CREATE_GUEST_MEMFD, bytearray(64))
    assert (info.value.code, info.value.call) == (errno.EINVAL, "KVM_CREATE_GUEST_MEMFD")


def test_unknown_request_is_named_by_number(kvm: Kvm) -> None:
    with pytest.raises(IoctlError) as info:
        ioctl(kvm.fd, 0xAEFF)
    assert info.value.call == "ioctl 0xaeff"


def test_capabilities_are_probed_not_assumed(kvm: Kvm, vm: Vm) -> None:
    assert kvm.api_version() == 12
    # the CAP and a real KVM_CREATE_GUEST_MEMFD agree on whether guest_memfd is here
    gmem = facts().lacks("guest_memfd") is None
    assert bool(kvm.check_extension(KVM_CAP_GUEST_MEMFD)) == gmem
    assert kvm.check_extension(KVM_CAP_USER_MEMORY2) == 1
    flags = kvm.check_extension(KVM_CAP_GUEST_MEMFD_FLAGS)
    assert bool(flags & GUEST_MEMFD_FLAG_MMAP) == (facts().lacks("guest_memfd_mmap") is None)
    assert vm.check_extension(KVM_CAP_GUEST_MEMFD_FLAGS) == flags
    assert ioctl(kvm.fd, KVM_CHECK_EXTENSION, 0xFFFF) == 0  # an unknown CAP is 0, not an error
    types = kvm.vm_types()
    assert types & 1
    for vm_type in range(8):
        offered = bool(types & (1 << vm_type))
        assert (kvm.try_create_vm(vm_type) == 0) == offered, vm_type
    assert kvm.check_extension(KVM_CAP_VM_TYPES) in (0, types)


def test_unusable_device_is_a_typed_reason() -> None:
    with pytest.raises(KvmUnavailable, match="/dev/no-such-kvm"):
        Kvm("/dev/no-such-kvm")


def test_sw_protected_vm_creation_follows_vm_types(kvm: Kvm) -> None:
    offered = kvm.vm_types() & (1 << KVM_X86_SW_PROTECTED_VM)
    code = kvm.try_create_vm(KVM_X86_SW_PROTECTED_VM)
    assert code == (0 if offered else errno.EINVAL)


# --- guest_memfd creation and mapping -----------------------------------------------------------
@GMEM
@pytest.mark.parametrize("size", [0, 100, PAGE_SIZE + 1, -4096])
def test_create_bad_size_is_einval(vm: Vm, size: int) -> None:
    with pytest.raises(IoctlError) as info:
        vm.create_guest_memfd(size, SHARED)
    assert (info.value.code, info.value.call) == (errno.EINVAL, "KVM_CREATE_GUEST_MEMFD")
    assert vm.try_create_guest_memfd(size, SHARED) == errno.EINVAL


@GMEM
@pytest.mark.parametrize("bit", [2, 3, 63])
def test_create_unknown_flag_is_einval(vm: Vm, bit: int) -> None:
    assert vm.try_create_guest_memfd(PAGE_SIZE, 1 << bit) == errno.EINVAL


@GMEM
def test_created_fd_is_cloexec_and_sized(vm: Vm) -> None:
    with vm.create_guest_memfd(1 << 40, SHARED) as gmem:  # 1 TiB: nothing allocated up front
        assert not os.get_inheritable(gmem.fd)
        assert os.fstat(gmem.fd).st_size == 1 << 40


@GMEM
def test_mmap_without_mmap_flag_is_enodev(vm: Vm) -> None:
    with vm.create_guest_memfd(PAGE_SIZE, 0) as gmem, pytest.raises(IoctlError) as info:
        gmem.mmap()
    assert (info.value.code, info.value.call) == (errno.ENODEV, "mmap")


@GMEM
def test_private_mapping_is_einval(vm: Vm) -> None:
    with vm.create_guest_memfd(PAGE_SIZE, SHARED) as gmem, pytest.raises(IoctlError) as info:
        gmem.mmap(shared=False)
    assert info.value.code == errno.EINVAL


# --- host faults in a helper process ---------------------------------------------------------------
@GMEM
def test_host_access_past_the_end_is_sigbus_in_the_helper(vm: Vm) -> None:
    with (
        vm.create_guest_memfd(2 * PAGE_SIZE, SHARED) as gmem,
        gmem.mmap(4 * PAGE_SIZE) as mapping,
        HostAccess(mapping, gmem.size) as host,
    ):
        with pytest.raises(HostFault) as info:
            host.write(PAGE_SIZE - 2, b"abcdefgh" * 1000)  # pages 0, 1 written, page 2 faults
        assert info.value.signal == "SIGBUS"
        assert info.value.offset == 2 * PAGE_SIZE
        assert "past the end" in info.value.reason
        # earlier pages were written, and the helper is replaced for the next access
        assert host.read(PAGE_SIZE - 2, 4) == b"abcd"
        with pytest.raises(HostFault):
            host.read(2 * PAGE_SIZE, 1)
        assert host.read(2 * PAGE_SIZE - 1, 0) == b""


@GMEM
def test_host_access_to_private_page_is_sigbus_in_the_helper(vm: Vm) -> None:
    with (
        vm.create_guest_memfd(PAGE_SIZE, GUEST_MEMFD_FLAG_MMAP) as gmem,
        gmem.mmap() as mapping,
        HostAccess(mapping, gmem.size) as host,
    ):
        for access in (lambda: host.read(10, 1), lambda: host.write(10, b"x")):
            with pytest.raises(HostFault) as info:
                access()
            assert (info.value.signal, info.value.offset) == ("SIGBUS", 0)
            assert "not shared" in info.value.reason


@GMEM
def test_punch_hole_zeroes_only_the_range(vm: Vm) -> None:
    with (
        vm.create_guest_memfd(4 * PAGE_SIZE, SHARED) as gmem,
        gmem.mmap() as mapping,
        HostAccess(mapping, gmem.size) as host,
    ):
        host.write(0, b"\x5a" * 4 * PAGE_SIZE)
        gmem.punch_hole(PAGE_SIZE, 2 * PAGE_SIZE)
        data = host.read(0, 4 * PAGE_SIZE)
        assert data == b"\x5a" * PAGE_SIZE + bytes(2 * PAGE_SIZE) + b"\x5a" * PAGE_SIZE
        assert gmem.try_punch_hole(1, PAGE_SIZE) == errno.EINVAL
        assert gmem.try_punch_hole(0, 100) == errno.EINVAL
        assert gmem.try_punch_hole(8 * PAGE_SIZE, PAGE_SIZE) == 0  # past the end: nothing to do
        with pytest.raises(IoctlError) as info:
            gmem.fallocate(0, 0, PAGE_SIZE)
        assert (info.value.name, info.value.call) == ("EOPNOTSUPP", "fallocate")


# --- the guest --------------------------------------------------------------------------------------------
@GMEM
def test_guest_and_host_views_agree(bound: Bound) -> None:
    bound.host.write(PAGE_SIZE - 3, b"host bytes")
    assert bound.guest.read(GPA + PAGE_SIZE - 3, 10) == b"host bytes"
    payload = bytes(range(256)) * 20  # crosses two page boundaries
    bound.guest.write(GPA + 100, payload)
    assert bound.host.read(100, len(payload)) == payload
    assert bound.guest.read(GPA + 100, len(payload)) == payload
    bound.gmem.punch_hole(0, PAGE_SIZE)
    assert bound.guest.read(GPA, PAGE_SIZE) == bytes(PAGE_SIZE)
    assert bound.host.read(PAGE_SIZE, 4) == payload[PAGE_SIZE - 100 : PAGE_SIZE - 96]


@GMEM
def test_guest_access_outside_its_window_is_rejected(bound: Bound) -> None:
    with pytest.raises(ValueError, match="outside the window"):
        bound.guest.read(GPA + bound.size - 1, 2)


@GMEM
def test_guest_halt_is_decoded(bound: Bound) -> None:
    assert bound.guest.halt().reason == "HLT"


@GMEM
def test_guest_access_to_unmappable_page_stops_with_an_exit(vm: Vm) -> None:
    """MMAP without INIT_SHARED: the host mapping refuses the page, and the emulated guest,
    which reaches memory through that mapping, stops with a decoded exit (here MMIO)."""
    b = Bound(vm, 1, GUEST_MEMFD_FLAG_MMAP)
    try:
        with pytest.raises(UnexpectedExit) as info:
            b.guest.read(GPA + 8, 4)
        assert info.value.exit.fields.get("gpa") == GPA + 8 or info.value.exit.reason == "MEMORY_FAULT"
        assert b.guest.halt().reason == "HLT"  # a fresh vCPU carries on
    finally:
        b.close()


@GMEM
def test_guest_that_never_exits_is_stopped(bound: Bound) -> None:
    with pytest.raises(GuestTimeout) as info:
        bound.guest.spin(0.05)
    assert info.value.limit == 0.05
    assert isinstance(info.value, TimeoutError)
    bound.host.write(0, b"after")
    assert bound.guest.read(GPA, 5) == b"after"


def test_the_guest_reaches_the_last_page_of_a_tib_window(vm: Vm) -> None:
    """The tiny guest's page tables reach the last page of a 1 TiB window (past one PDPT's
    512 GiB); only the window's first and last pages are backed (ordinary memory, two
    memslots), which is all the guest touches. A CPU with fewer than 41 physical address
    bits gets the largest window below its limit (still past 512 GiB)."""
    bits = physical_address_bits() or 48
    window = min(1 << 40, ((1 << bits) - GPA) & ~((1 << 30) - 1))
    assert window > 512 << 30
    pages = [syscalls.anonymous(PAGE_SIZE) for _ in range(2)]
    try:
        vm.set_user_memory_region(1, GPA, PAGE_SIZE, pages[0])
        vm.set_user_memory_region(2, GPA + window - PAGE_SIZE, PAGE_SIZE, pages[1])
        guest = TinyGuest(vm, GPA, window)
        try:
            guest.write(GPA + window - 8, b"last8byt")
            guest.write(GPA, b"first")
            assert ctypes.string_at(pages[1] + PAGE_SIZE - 8, 8) == b"last8byt"
            assert ctypes.string_at(pages[0], 5) == b"first"
            assert guest.read(GPA + window - 8, 8) == b"last8byt"
            with pytest.raises(ValueError, match="outside the window"):
                guest.read(GPA + window - 4, 8)
        finally:
            vm.close()
            guest.close()
    finally:
        for page in pages:
            syscalls.munmap(page, PAGE_SIZE)


def test_a_window_beyond_the_page_tables_reach_is_refused(vm: Vm) -> None:
    with pytest.raises(ValueError, match="too large to map"):
        TinyGuest(vm, GPA, MAX_WINDOW - GPA + (1 << 30))
    with pytest.raises(ValueError, match="at least 2 GiB up"):
        TinyGuest(vm, 1 << 30, PAGE_SIZE)


def test_memory_fault_exit_is_decoded() -> None:
    """``KVM_EXIT_MEMORY_FAULT`` cannot be provoked on this kernel (no private memory); its
    decoding is checked on a ``kvm_run`` laid out as the UAPI header says (uapi.md §13)."""
    buf = ctypes.create_string_buffer(4096)
    run = KvmRun.from_buffer(buf)
    view = memoryview(buf).cast("B")
    run.exit_reason = 2  # an IO exit carries no memory fault
    assert memory_fault(view) is None
    run.exit_reason = KVM_EXIT_MEMORY_FAULT
    raw = (KVM_MEMORY_EXIT_FLAG_PRIVATE).to_bytes(8, "little") + GPA.to_bytes(8, "little")
    ctypes.memmove(ctypes.addressof(buf) + 32, raw + PAGE_SIZE.to_bytes(8, "little"), 24)
    fault = memory_fault(view)
    assert isinstance(fault, MemoryFault)
    assert (fault.gpa, fault.size, fault.private) == (GPA, PAGE_SIZE, True)
    exit_ = decode_exit(view)
    assert exit_.reason == "MEMORY_FAULT"
    assert exit_.fields == {"flags": KVM_MEMORY_EXIT_FLAG_PRIVATE, "gpa": GPA, "size": PAGE_SIZE}


# --- the conversion ioctl ------------------------------------------------------------------------------
@GMEM
def test_conversion_ioctl_presence_is_detected_by_issuing_it(vm: Vm) -> None:
    with vm.create_guest_memfd(PAGE_SIZE, SHARED) as gmem:
        code = gmem.conversion_errno()
        arg = KvmMemoryAttributes2(offset=0, size=PAGE_SIZE, attributes=KVM_MEMORY_ATTRIBUTE_PRIVATE)
        with pytest.raises(IoctlError) as info:
            gmem.set_memory_attributes2(arg)
    assert info.value.call == "KVM_SET_MEMORY_ATTRIBUTES2"
    found = cached("/dev/kvm")
    assert found.conversion_ioctl == (code != errno.ENOTTY)
    if code == errno.ENOTTY:
        assert info.value.code == errno.ENOTTY
        reason = found.conversion_skip_reason()
        assert reason is not None and "ENOTTY" in reason
    else:  # a default VM has no private memory: check 4 of uapi.md §7
        assert info.value.code == errno.EINVAL


def test_facts_of_a_usable_device() -> None:
    found = facts()
    assert found.usable and found.reason is None and "kvm" not in found.missing
    assert found.api_version == 12

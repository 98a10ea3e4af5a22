"""The model follows the posted kernel code where it departed from it (docs/semantics.md).

Each group names the rule it checks; the expected values are stated here from the
kernel patches and docs/semantics.md, never computed by the spec code.
"""

from __future__ import annotations

import errno
import struct

import pytest

from guestmem import errors
from guestmem.backend.base import Outcome
from guestmem.backend.model import ModelMachine
from guestmem.checker.properties import Monitor, Property, capture
from guestmem.errors import IoctlError
from guestmem.model import GuestMemfd, Vm
from guestmem.ops import Convert
from guestmem.spec import platforms, revisions
from guestmem.spec.terms import Direction, Policy
from guestmem.uapi.kvm import (
    FALLOC_FL_KEEP_SIZE,
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_CAP_GUEST_MEMFD_FLAGS,
    PAGE_SIZE,
)

PAGE = PAGE_SIZE
PRIVATE = 1 << 3
S, P = Direction.TO_SHARED, Direction.TO_PRIVATE
SHARED = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
HOST = b"\x5a" * PAGE  # never 0, never 0xab
GUEST = b"\x3c" * PAGE
#: seed's encoding (docs/semantics.md §1); rfc-v5: ZERO 1, PRESERVE 2, 0 unspecified.
ZERO, PRESERVE, NONE = 1, 2, 4
#: Proposed capability numbers on the project's kernels (v8: 250; RFC v5: 250 and 251).
CAP_GMEM_ATTRIBUTES, CAP_ATTRIBUTES2_FLAGS = 250, 251


def raw(offset: int, size: int, attributes: int, flags: int = 0) -> bytearray:
    return bytearray(struct.pack("<16Q", offset, size, attributes, flags, *[0] * 12))


def fails(call: object, *args: object) -> IoctlError:
    assert callable(call)
    with pytest.raises(IoctlError) as info:
        call(*args)
    return info.value


def mixed_shared_then_private(platform: str, abi: str) -> tuple[Vm, GuestMemfd]:
    """Two pages: page 0 private holding ``GUEST``, page 1 shared holding ``HOST``."""
    vm = Vm(platform, abi)
    gmem = vm.create_guest_memfd(2 * PAGE, SHARED)
    gmem.mmap().write(0, HOST * 2)
    gmem.convert(0, PAGE, P, PRESERVE)  # the pre-launch payload path (2 in seed and rfc-v5)
    vm.launch()
    gmem.guest_write(0, GUEST, "private")
    return vm, gmem


# --- 1. a native effect reaches only pages that change state (§3 *Whole range*) -----------------
@pytest.mark.parametrize(
    ("platform", "abi", "flags"),
    [
        ("tdx", "seed", NONE),  # native: zeros
        ("snp", "seed", NONE),  # native: ciphertext
        ("cca", "seed", NONE),  # native: zeros
        ("tdx", "rfc-v5", 0),  # the arch hook for unspecified does nothing on TDX/SNP
        ("snp", "rfc-v5", 0),
        ("snp", "iteration2", NONE),
    ],
)
def test_native_to_shared_leaves_pages_already_shared_alone(platform: str, abi: str, flags: int) -> None:
    _vm, gmem = mixed_shared_then_private(platform, abi)
    gmem.convert(0, 2 * PAGE, S, flags)
    assert gmem.peek(PAGE, PAGE) == HOST, "a page already shared met the native effect"
    assert gmem.peek(0, PAGE) not in (GUEST, HOST), "the converting page kept its plaintext"


@pytest.mark.parametrize(
    ("platform", "abi", "flags"),
    # TDX under rfc-v5 and v8 is the exception: the call unmaps the private page from the
    # TD and the guest loses it (semantics.md §3 *Mixed ranges*; test_spec_mixed_ranges.py)
    [("snp", "seed", NONE), ("snp", "rfc-v5", 0), ("tdx", "seed", NONE)],
)
def test_native_to_private_leaves_pages_already_private_alone(platform: str, abi: str, flags: int) -> None:
    _vm, gmem = mixed_shared_then_private(platform, abi)
    gmem.convert(0, 2 * PAGE, P, flags)
    assert gmem.guest_read(0, PAGE, "private") == GUEST
    assert gmem.guest_read(PAGE, PAGE, "private") != HOST


@pytest.mark.parametrize(
    ("platform", "abi", "flags", "want"),
    [
        ("tdx", "seed", ZERO, bytes(PAGE)),  # ZERO is KVM's: every allocated page
        ("sw_protected", "seed", NONE, b"\xab" * PAGE),  # the 0xab fill is KVM's
        ("sw_protected", "iteration2", NONE, b"\xab" * PAGE),
        ("tdx", "rfc-v5", ZERO, bytes(PAGE)),  # applied although the page is already shared
    ],
)
def test_policies_kvm_applies_reach_pages_already_shared(
    platform: str, abi: str, flags: int, want: bytes
) -> None:
    vm = Vm(platform, abi)
    gmem = vm.create_guest_memfd(2 * PAGE, SHARED)
    gmem.mmap().write(PAGE, HOST)
    vm.launch()
    gmem.convert(0, 2 * PAGE, S, flags)
    assert gmem.peek(PAGE, PAGE) == want


def test_rfc_v5_scramble_reaches_pages_already_shared() -> None:
    gmem = Vm("sw_protected", "rfc-v5").create_guest_memfd(PAGE, SHARED)
    gmem.mmap().write(0, HOST)
    gmem.convert(0, PAGE, S, 0)  # shared → shared, unspecified: scrambled (kernel README)
    assert gmem.peek(0, PAGE) not in (HOST, bytes(PAGE))


# --- 2. rfc-v5 on arm64: no PRIVATE attribute (check 5) ------------------------------------------
@pytest.mark.parametrize("platform", ["pkvm", "cca"])
@pytest.mark.parametrize("flags", [0, ZERO, PRESERVE])
def test_rfc_v5_arm64_to_private_is_einval(platform: str, flags: int) -> None:
    gmem = Vm(platform, "rfc-v5").create_guest_memfd(PAGE, SHARED)
    arg = raw(0, PAGE, PRIVATE, flags)
    before = gmem.digest()
    assert fails(gmem.set_memory_attributes2, arg).code == errno.EINVAL
    assert gmem.digest() == before and struct.unpack_from("<Q", arg, 32)[0] == 0


@pytest.mark.parametrize("platform", ["pkvm", "cca"])
def test_rfc_v5_arm64_to_shared_unspecified_is_accepted(platform: str) -> None:
    gmem = Vm(platform, "rfc-v5").create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP)
    gmem.convert(0, PAGE, S, 0)  # attributes = 0 passes check 5 everywhere
    assert not gmem.is_private(0)
    assert fails(gmem.convert, 0, PAGE, S, ZERO).code == errno.EOPNOTSUPP  # no arm64 modes


# --- 3. preallocation is not allocation (§3 *Allocated*) -------------------------------------------
@pytest.mark.parametrize(
    ("platform", "abi", "flags"),
    [
        ("sw_protected", "seed", NONE),  # the 0xab fill passes a preallocated page by
        ("sw_protected", "rfc-v5", 0),  # so does the scramble
        ("snp", "seed", NONE),  # and the native garbage
    ],
)
def test_preallocated_page_reads_zeros_after_a_policy(platform: str, abi: str, flags: int) -> None:
    vm = Vm(platform, abi)
    gmem = vm.create_guest_memfd(PAGE, SHARED)
    gmem.fallocate(FALLOC_FL_KEEP_SIZE, 0, PAGE)
    gmem.convert(0, PAGE, P, flags)
    if platform != "sw_protected":
        vm.launch()
    assert gmem.guest_read(0, PAGE, "private") == bytes(PAGE)
    assert {o.label for _a, _b, o in gmem.origins(0, PAGE)} == {"init_zero"}


def test_preallocated_page_is_not_allocated() -> None:
    gmem = Vm("sw_protected").create_guest_memfd(4 * PAGE, SHARED)
    gmem.fallocate(FALLOC_FL_KEEP_SIZE, PAGE, 2 * PAGE)
    assert gmem.allocated() == []
    gmem.mmap().write(PAGE, b"x")  # faulted in: allocated
    assert gmem.allocated() == [1]


# --- 4. pKVM's first run is its launch (§3 *Launch*) -----------------------------------------------
@pytest.mark.parametrize("first", ["guest_write", "guest_read", "guest_request"])
def test_pkvm_first_guest_run_launches(first: str) -> None:
    vm = Vm("pkvm")
    gmem = vm.create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP)
    if first == "guest_write":
        gmem.guest_write(0, b"x", "private")
        assert gmem.guest_read(0, 1, "private") == b"x"
    elif first == "guest_read":
        assert gmem.guest_read(0, 4, "private") == bytes(4)
    else:
        gmem.guest_request(0, PAGE, S)
    assert vm.running
    assert fails(vm.launch).code == errno.EINVAL  # already running
    # from now on the consent rule holds: P→S needs a share request
    if first != "guest_request":
        assert fails(gmem.convert, 0, PAGE, S, PRESERVE).code == errno.EPERM


@pytest.mark.parametrize("platform", ["tdx", "snp", "cca"])
def test_finalized_platforms_refuse_a_guest_before_launch(platform: str) -> None:
    vm = Vm(platform)
    gmem = vm.create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP)
    before = gmem.digest()
    assert fails(gmem.guest_write, 0, b"x", "private").code == errno.EINVAL
    assert not vm.running and gmem.digest() == before


# --- 5. ENOTTY, capabilities, ENOMEM, memslot deletion -------------------------------------------------
@pytest.mark.parametrize("abi", ["seed", "rfc-v5", "v8"])
def test_enotty_without_in_place_conversion(abi: str) -> None:
    vm = Vm("sw_protected", abi, in_place_conversion=False)
    gmem = vm.create_guest_memfd(PAGE, SHARED)
    arg = raw(0, PAGE, PRIVATE)
    struct.pack_into("<Q", arg, 32, 0x1234000)  # a sentinel the call must not touch
    before = gmem.digest()
    assert fails(gmem.set_memory_attributes2, arg).code == errno.ENOTTY
    assert gmem.digest() == before
    assert struct.unpack_from("<Q", arg, 32)[0] == 0x1234000
    assert vm.check_extension(CAP_GMEM_ATTRIBUTES) == 0


@pytest.mark.parametrize(
    ("abi", "platform", "gmem_attributes", "flags_cap"),
    [
        ("v8", "sw_protected", PRIVATE, None),
        ("v8", "tdx", PRIVATE, None),
        ("v8", "default", 0, None),
        ("v8", "pkvm", 0, None),
        ("rfc-v5", "sw_protected", PRIVATE, ZERO | PRESERVE),  # kernel README: 250 = 8, 251 = 3
        ("rfc-v5", "snp", PRIVATE, ZERO | PRESERVE),
        ("rfc-v5", "default", 0, 0),
        ("rfc-v5", "cca", 0, 0),
        ("seed", "pkvm", PRIVATE, None),
    ],
)
def test_capabilities_through_check_extension(
    abi: str, platform: str, gmem_attributes: int, flags_cap: int | None
) -> None:
    machine = ModelMachine(platform, abi, PAGE, SHARED)
    assert machine.check_extension(CAP_GMEM_ATTRIBUTES) == gmem_attributes
    if flags_cap is not None:
        assert machine.check_extension(CAP_ATTRIBUTES2_FLAGS) == flags_cap
    else:  # the flags capability exists only in RFC v4-v5
        assert machine.check_extension(CAP_ATTRIBUTES2_FLAGS) == 0
    assert machine.check_extension(KVM_CAP_GUEST_MEMFD_FLAGS) == SHARED
    assert machine.check_extension(9999) == 0


@pytest.mark.parametrize("abi", ["seed", "rfc-v5", "v8"])
def test_enomem_by_fault_injection(abi: str) -> None:
    vm = Vm("sw_protected", abi)
    gmem = vm.create_guest_memfd(4 * PAGE, SHARED)
    host = gmem.mmap()
    host.write(PAGE, HOST)
    vm.failslab = 1
    arg = raw(PAGE, 2 * PAGE, PRIVATE)
    before = gmem.digest()
    err = fails(gmem.set_memory_attributes2, arg)
    assert (err.code, err.error_offset) == (errno.ENOMEM, PAGE)
    assert struct.unpack_from("<Q", arg, 32)[0] == PAGE
    assert gmem.digest() == before, "ENOMEM comes before the unmap: host mappings stay"
    assert host.read(PAGE, 1) == HOST[:1]
    gmem.convert(PAGE, 2 * PAGE, P)  # the injection is spent
    assert gmem.is_private(PAGE)


def test_enomem_needs_a_range_that_changes() -> None:
    vm = Vm("sw_protected", "v8")
    gmem = vm.create_guest_memfd(PAGE, SHARED)
    vm.failslab = 1
    gmem.convert(0, PAGE, S)  # already shared: nothing to store, nothing to allocate
    assert vm.failslab == 1


def test_memslot_deletion_turns_guest_accesses_into_mmio_exits() -> None:
    machine = ModelMachine("sw_protected", "v8", 2 * PAGE, SHARED)
    assert machine.guest_write(PAGE, b"ab").ok
    machine.gmem.delete_memslot()
    read = machine.guest_read(PAGE, 16)
    assert read.exit == {"reason": "MMIO", "gpa": machine.gpa_base + PAGE, "len": 8, "is_write": False}
    write = machine.guest_write(0, b"xy")  # two single bytes: the first exits
    assert write.exit == {"reason": "MMIO", "gpa": machine.gpa_base, "len": 1, "is_write": True}
    # 5 bytes before the page's end: single bytes up to it (the next page's part is words)
    border = machine.guest_read(PAGE - 5, 64)
    assert border.exit == {"reason": "MMIO", "gpa": machine.gpa_base + PAGE - 5, "len": 1, "is_write": False}
    assert machine.guest_read(PAGE - 8, 64).exit["len"] == 8  # type: ignore[index]
    assert machine.gmem.peek(PAGE, 2) == b"ab" and machine.gmem.peek(0, 2) == bytes(2)
    with pytest.raises(errors.MmioExit):
        machine.gmem.guest_read(0, 1)


# --- 6. a failing call after the unmap (§3 *All or nothing*) ----------------------------------------
def _mapped_and_pinned(platform: str = "sw_protected") -> ModelMachine:
    machine = ModelMachine(platform, "seed", 2 * PAGE, SHARED)
    assert machine.host_write(0, HOST * 2).ok
    assert machine.pin(0, PAGE).ok
    return machine


def test_efault_after_the_unmap_leaves_mappings_removed() -> None:
    machine = _mapped_and_pinned()
    op = Convert(0, 2 * PAGE, to=Direction.TO_PRIVATE, policy=Policy.PRESERVE)
    before = capture(machine)
    with pytest.raises(IoctlError) as info:  # read-only argument: the write-back fails
        machine.gmem.set_memory_attributes2(bytes(raw(0, 2 * PAGE, PRIVATE, PRESERVE)))
    assert info.value.code == errno.EFAULT
    after = capture(machine)
    assert after.ptes == ((),), "the kernel zaps host PTEs before the refcount check"
    monitor = Monitor(platforms.get("sw_protected"), revisions.get("seed"))
    assert monitor.observe(op, Outcome(errno="EFAULT"), before, after) == []
    # a model that kept the mappings would be caught
    kept = monitor.observe(op, Outcome(errno="EFAULT"), before, before)
    assert [v.prop for v in kept] == [Property.ATOMICITY]


def test_efault_before_the_unmap_must_change_nothing() -> None:
    machine = _mapped_and_pinned("snp")  # S→P ZERO on SNP fails at step 9, before the unmap
    op = Convert(0, 2 * PAGE, to=Direction.TO_PRIVATE, policy=Policy.ZERO)
    before = capture(machine)
    with pytest.raises(IoctlError) as info:
        machine.gmem.set_memory_attributes2(bytes(raw(0, 2 * PAGE, PRIVATE, ZERO)))
    assert info.value.code == errno.EFAULT
    after = capture(machine)
    assert after == before
    monitor = Monitor(platforms.get("snp"), revisions.get("seed"))
    assert monitor.observe(op, Outcome(errno="EFAULT"), before, after) == []
    zapped = after._replace(ptes=((),))
    assert [v.prop for v in monitor.observe(op, Outcome(errno="EFAULT"), before, zapped)] == [
        Property.ATOMICITY
    ]


@pytest.mark.kvm
@pytest.mark.parametrize("abi", ["seed", "v8"])
def test_capabilities_agree_with_this_kernel(abi: str) -> None:
    """Both backends answer the same ``check_extension`` call; on a kernel without the
    conversion series (or with it) the default VM's answers are the model's."""
    from kvm_support import skip_unless

    skip_unless("kvm", "guest_memfd", "guest_memfd_mmap", "guest_memfd_init_shared")
    from guestmem.backend.kernel import KernelBackend

    kernel = KernelBackend().open("default", abi, PAGE, SHARED)
    try:
        model = ModelMachine("default", abi, PAGE, SHARED)
        for cap in (233, 234, KVM_CAP_GUEST_MEMFD_FLAGS, CAP_GMEM_ATTRIBUTES):
            assert kernel.check_extension(cap) == model.check_extension(cap), cap
    finally:
        kernel.close()

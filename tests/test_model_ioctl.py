"""KVM_SET_MEMORY_ATTRIBUTES2 in the model: semantics.md §4 row by row, all-or-nothing,
``error_offset`` write-back, and the content policies of the test vehicle (§2)."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestmem.errors import HostFault, IoctlError
from guestmem.model import GuestMemfd, Vm
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    PAGE_SIZE,
    KvmMemoryAttributes2,
)

PRIVATE = KVM_MEMORY_ATTRIBUTE_PRIVATE
ZERO, PRESERVE, NONE = 1, 2, 4  # seed encoding (semantics.md §1)
SHARED_FLAGS = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED


def make(
    platform: str = "sw_protected", pages: int = 8, flags: int = SHARED_FLAGS, abi: str = "seed"
) -> GuestMemfd:
    return Vm(platform, abi).create_guest_memfd(pages * PAGE_SIZE, flags)


def raw(
    offset: int = 0,
    size: int = PAGE_SIZE,
    attributes: int = PRIVATE,
    flags: int = 0,
    error_offset: int = 0,
    reserved: dict[int, int] | None = None,
) -> bytearray:
    words = [offset, size, attributes, flags, error_offset] + [0] * 11
    for index, value in (reserved or {}).items():
        words[5 + index] = value
    return bytearray(struct.pack("<16Q", *words))


def fail(gmem: GuestMemfd, arg: bytes | bytearray | KvmMemoryAttributes2) -> IoctlError:
    before = gmem.digest()
    with pytest.raises(IoctlError) as info:
        gmem.set_memory_attributes2(arg)
    assert info.value.call == "KVM_SET_MEMORY_ATTRIBUTES2"
    assert gmem.digest() == before, "a failed call changed state"
    return info.value


def written_error_offset(arg: bytearray) -> int:
    return int(struct.unpack_from("<Q", arg, 32)[0])


# --- semantics.md §4, in order -------------------------------------------------------------


def test_1_efault_short_argument() -> None:
    gmem = make()
    assert fail(gmem, bytes(64)).code == errno.EFAULT


@pytest.mark.parametrize("flags", [1 << 3, 1 << 63, ZERO | PRESERVE, PRESERVE | NONE, ZERO | NONE, 7])
def test_2_einval_flags(flags: int) -> None:
    assert fail(make(), raw(flags=flags)).code == errno.EINVAL


@pytest.mark.parametrize("word", range(11))
def test_3_einval_reserved(word: int) -> None:
    assert fail(make(), raw(reserved={word: 1})).code == errno.EINVAL


def test_3_einval_error_offset_on_input() -> None:
    assert fail(make(), raw(error_offset=PAGE_SIZE)).code == errno.EINVAL


# Checks 2-8 all give EINVAL and write nothing back, so their order among themselves is
# unobservable (docs/semantics.md §4); the orders between different answers are checked here.
@pytest.mark.parametrize(
    ("name", "platform", "abi", "in_place", "arg", "want"),
    [
        # 0 before 1: without in-place conversion even an unreadable argument is ENOTTY
        ("0<1", "sw_protected", "seed", False, bytes(64), errno.ENOTTY),
        # 1 before 2: a short argument cannot be read, whatever it holds
        ("1<2", "sw_protected", "seed", True, bytes(raw(flags=1 << 5))[:64], errno.EFAULT),
        # 8 before 9: out of bounds with a policy snp refuses (S→P ZERO)
        ("8<9", "snp", "seed", True, raw(offset=8 * PAGE_SIZE, flags=ZERO), errno.EINVAL),
        # 5 before 9 (rfc-v5 on arm64): PRIVATE is unknown before the mode is looked at
        ("5<9", "pkvm", "rfc-v5", True, raw(flags=ZERO), errno.EINVAL),
    ],
)
def test_order_between_different_answers(
    name: str, platform: str, abi: str, in_place: bool, arg: bytes | bytearray, want: int
) -> None:
    vm = Vm(platform, abi, in_place_conversion=in_place)
    assert fail(vm.create_guest_memfd(8 * PAGE_SIZE, SHARED_FLAGS), arg).code == want, name


@pytest.mark.parametrize("attributes", [0, PRIVATE])
def test_4_einval_vm_without_private_memory(attributes: int) -> None:
    gmem = make("default")
    assert fail(gmem, raw(attributes=attributes)).code == errno.EINVAL


@pytest.mark.parametrize("attributes", [1, 1 << 4, PRIVATE | 1, 1 << 63])
def test_5_einval_attributes(attributes: int) -> None:
    assert fail(make(), raw(attributes=attributes)).code == errno.EINVAL


@pytest.mark.parametrize(
    ("offset", "size"),
    [(0, 0), (PAGE_SIZE, (1 << 64) - PAGE_SIZE), ((1 << 64) - PAGE_SIZE, PAGE_SIZE)],
)
def test_6_einval_size_zero_or_overflow(offset: int, size: int) -> None:
    assert fail(make(), raw(offset=offset, size=size)).code == errno.EINVAL


@pytest.mark.parametrize(
    ("offset", "size"), [(1, PAGE_SIZE), (0, PAGE_SIZE + 1), (PAGE_SIZE // 2, PAGE_SIZE // 2)]
)
def test_7_einval_alignment(offset: int, size: int) -> None:
    assert fail(make(), raw(offset=offset, size=size)).code == errno.EINVAL


@pytest.mark.parametrize(
    ("offset", "size"), [(8 * PAGE_SIZE, PAGE_SIZE), (7 * PAGE_SIZE, 2 * PAGE_SIZE), (0, 9 * PAGE_SIZE)]
)
def test_8_einval_bounds(offset: int, size: int) -> None:
    assert fail(make(), raw(offset=offset, size=size)).code == errno.EINVAL


def test_9_eopnotsupp_writes_error_offset_range_start() -> None:
    gmem = make("pkvm")  # S→P ZERO: zeroed memory comes by donation
    arg = raw(offset=3 * PAGE_SIZE, size=2 * PAGE_SIZE, attributes=PRIVATE, flags=ZERO)
    err = fail(gmem, arg)
    assert (err.code, err.error_offset) == (errno.EOPNOTSUPP, 3 * PAGE_SIZE)
    assert written_error_offset(arg) == 3 * PAGE_SIZE


def test_10_eperm_at_first_page_without_request() -> None:
    vm = Vm("pkvm")
    gmem = vm.create_guest_memfd(8 * PAGE_SIZE, SHARED_FLAGS)
    vm.launch()
    gmem.guest_request(2 * PAGE_SIZE, 2 * PAGE_SIZE, "to_private")
    arg = raw(offset=2 * PAGE_SIZE, size=3 * PAGE_SIZE, attributes=PRIVATE, flags=PRESERVE)
    err = fail(gmem, arg)
    assert (err.code, err.error_offset) == (errno.EPERM, 4 * PAGE_SIZE)
    assert written_error_offset(arg) == 4 * PAGE_SIZE


def test_11_eagain_first_pinned_page_and_mappings_stay_zapped() -> None:
    gmem = make(pages=8)
    mapping = gmem.mmap()
    mapping.write(0, b"x" * (8 * PAGE_SIZE))
    gmem.pin(5 * PAGE_SIZE, PAGE_SIZE)
    gmem.pin(3 * PAGE_SIZE, PAGE_SIZE)
    arg = raw(offset=PAGE_SIZE, size=6 * PAGE_SIZE, attributes=PRIVATE, flags=PRESERVE)
    attrs_before, contents_before = gmem.attributes.key(), dict(gmem.pages)
    with pytest.raises(IoctlError) as info:
        gmem.set_memory_attributes2(arg)
    assert (info.value.code, info.value.error_offset) == (errno.EAGAIN, 3 * PAGE_SIZE)
    assert written_error_offset(arg) == 3 * PAGE_SIZE
    # attributes and contents unchanged; host PTEs of the range removed (§3) and re-fault
    assert gmem.attributes.key() == attrs_before and gmem.pages == contents_before
    assert mapping.ptes == {0, 7}
    assert mapping.read(2 * PAGE_SIZE, 2) == b"xx"
    assert 2 in mapping.ptes


def test_11_shared_direction_ignores_pins() -> None:
    gmem = make(flags=GUEST_MEMFD_FLAG_MMAP)  # private
    gmem.convert(0, PAGE_SIZE, "to_shared", PRESERVE)
    gmem.pin(0, PAGE_SIZE)
    gmem.convert(0, PAGE_SIZE, "to_shared", PRESERVE)  # P→S ignores pins
    assert not gmem.is_private(0)


def test_eagain_clears_once_unpinned() -> None:
    gmem = make()
    gmem.pin(0, PAGE_SIZE)
    assert gmem.try_set_memory_attributes2(raw(flags=PRESERVE)) == errno.EAGAIN
    gmem.unpin(0, PAGE_SIZE)
    assert gmem.try_set_memory_attributes2(raw(flags=PRESERVE)) == 0
    assert gmem.is_private(0)


def test_12_success_writes_nothing_back() -> None:
    gmem = make()
    arg = raw(flags=PRESERVE)
    before = bytes(arg)
    gmem.set_memory_attributes2(arg)
    assert bytes(arg) == before
    assert gmem.is_private(0)


#: A value no check writes: rfc-v5 and v8 ignore error_offset on input, so it survives
#: every call that does not write it back (docs/semantics.md §4).
SENTINEL = 0x5EED000


@pytest.mark.parametrize(
    ("code_path", "abi", "vm", "arg"),
    [
        ("EINVAL", "v8", {}, raw(offset=1, error_offset=SENTINEL)),  # check 7
        ("EINVAL", "rfc-v5", {}, raw(reserved={3: 1}, error_offset=SENTINEL)),  # check 3
        ("EFAULT", "v8", {}, bytearray(raw(error_offset=SENTINEL)[:40])),  # check 1: too short
        ("ENOTTY", "v8", {"in_place_conversion": False}, raw(error_offset=SENTINEL)),  # check 0
    ],
)
def test_error_offset_not_written_for_einval(
    code_path: str, abi: str, vm: dict[str, bool], arg: bytearray
) -> None:
    gmem = Vm("sw_protected", abi, **vm).create_guest_memfd(8 * PAGE_SIZE, SHARED_FLAGS)
    assert fail(gmem, arg).name == code_path
    assert written_error_offset(arg) == SENTINEL


def test_readonly_argument_turns_write_back_into_efault() -> None:
    gmem = make()
    gmem.pin(0, PAGE_SIZE)
    assert fail(gmem, bytes(raw(flags=PRESERVE))).code == errno.EFAULT
    # a read-only argument is fine when nothing needs writing back
    gmem.unpin(0, PAGE_SIZE)
    gmem.set_memory_attributes2(bytes(raw(flags=PRESERVE)))
    assert gmem.is_private(0)


def test_ctypes_structure_gets_error_offset() -> None:
    gmem = make()
    gmem.pin(2 * PAGE_SIZE, PAGE_SIZE)
    arg = KvmMemoryAttributes2(offset=0, size=4 * PAGE_SIZE, attributes=PRIVATE, flags=PRESERVE)
    fail(gmem, arg)
    assert arg.error_offset == 2 * PAGE_SIZE


# --- content policies on sw_protected (semantics.md §2 row 1) -------------------------------


def _private_page_with(gmem: GuestMemfd, data: bytes) -> None:
    gmem.convert(0, PAGE_SIZE, "to_private", PRESERVE)
    gmem.guest_write(0, data, "private")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(ZERO, bytes(16)), (0, bytes(16)), (PRESERVE, b"guest secret 123"), (NONE, b"\xab" * 16)],
)
def test_policies_private_to_shared(flags: int, expected: bytes) -> None:
    gmem = make()
    _private_page_with(gmem, b"guest secret 123")
    gmem.convert(0, PAGE_SIZE, "to_shared", flags)
    mapping = gmem.mmap()
    assert mapping.read(0, 16) == expected
    if flags == NONE:
        assert mapping.read(0, PAGE_SIZE) == b"\xab" * PAGE_SIZE  # every byte of the page


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(ZERO, bytes(16)), (0, bytes(16)), (PRESERVE, b"host payload 456"), (NONE, b"\xab" * 16)],
)
def test_policies_shared_to_private(flags: int, expected: bytes) -> None:
    gmem = make()
    gmem.mmap().write(0, b"host payload 456")
    gmem.convert(0, PAGE_SIZE, "to_private", flags)
    assert gmem.guest_read(0, 16, "private") == expected
    if flags == NONE:
        assert gmem.guest_read(0, PAGE_SIZE) == b"\xab" * PAGE_SIZE


def test_policy_applies_to_allocated_pages_only() -> None:
    gmem = make(pages=4)
    mapping = gmem.mmap()
    mapping.write(PAGE_SIZE, b"a")
    gmem.convert(0, 4 * PAGE_SIZE, "to_private", NONE)
    assert gmem.allocated() == [1]
    assert gmem.guest_read(0, 4) == bytes(4)  # zero on first use, not 0xab
    assert gmem.guest_read(PAGE_SIZE, 4) == b"\xab" * 4


def test_policy_applies_to_pages_already_in_target_state() -> None:
    gmem = make(pages=2)
    mapping = gmem.mmap()
    mapping.write(0, b"AA")
    mapping.write(PAGE_SIZE, b"BB")
    gmem.convert(0, PAGE_SIZE, "to_private", PRESERVE)
    gmem.convert(0, 2 * PAGE_SIZE, "to_private", ZERO)  # page 0 was already private
    assert gmem.guest_read(0, 2) == bytes(2) and gmem.guest_read(PAGE_SIZE, 2) == bytes(2)


def test_to_private_unmaps_every_host_mapping() -> None:
    gmem = make()
    parent, child = gmem.mmap(), gmem.mmap()  # like forked processes
    parent.write(0, b"p")
    assert child.read(0, 1) == b"p"
    gmem.convert(0, PAGE_SIZE, "to_private", PRESERVE)
    for mapping in (parent, child):
        with pytest.raises(HostFault) as info:
            mapping.read(0, 1)
        assert info.value.signal == "SIGBUS"
        with pytest.raises(HostFault):
            mapping.write(0, b"q")
    assert gmem.guest_read(0, 1) == b"p"


# --- all or nothing, over random arguments (semantics.md §3) ---------------------------------

_words = st.one_of(
    st.sampled_from([0, PAGE_SIZE, 2 * PAGE_SIZE, 3 * PAGE_SIZE, 8 * PAGE_SIZE, 1, (1 << 64) - PAGE_SIZE]),
    st.integers(0, (1 << 64) - 1),
)


@settings(max_examples=300, deadline=None)
@given(
    platform=st.sampled_from(["sw_protected", "pkvm", "tdx", "snp", "cca", "default"]),
    abi=st.sampled_from(["seed", "iteration2", "rfc-v5", "v8", "v13"]),
    launched=st.booleans(),
    pinned=st.sets(st.integers(0, 7), max_size=2),
    offset=_words,
    size=_words,
    attributes=st.sampled_from([0, PRIVATE, 1, PRIVATE | 2]),
    flags=st.sampled_from([0, 1, 2, 3, 4, 8]),
    error_offset=st.sampled_from([0, 0, PAGE_SIZE]),
    reserved=st.sampled_from([0, 0, 0, 1]),
)
def test_a_failed_call_changes_nothing(
    platform: str,
    abi: str,
    launched: bool,
    pinned: set[int],
    offset: int,
    size: int,
    attributes: int,
    flags: int,
    error_offset: int,
    reserved: int,
) -> None:
    vm = Vm(platform, abi)
    gmem = vm.create_guest_memfd(8 * PAGE_SIZE, SHARED_FLAGS)
    mapping = gmem.mmap()
    mapping.write(0, bytes(range(256)) * (8 * PAGE_SIZE // 256))
    for page in pinned:
        gmem.pin(page * PAGE_SIZE, PAGE_SIZE)
    if launched:
        vm.launch()
    arg = raw(offset, size, attributes, flags, error_offset, {3: reserved})
    before = (gmem.attributes.key(), dict(gmem.pages), dict(gmem.pins), gmem.requests.key())
    digest = gmem.digest()
    code = gmem.try_set_memory_attributes2(arg)
    if code == 0:
        assert written_error_offset(arg) == error_offset  # nothing written back on success
        return
    assert (gmem.attributes.key(), dict(gmem.pages), dict(gmem.pins), gmem.requests.key()) == before
    if code != errno.EAGAIN:  # EAGAIN leaves the range's host mappings zapped (§3)
        assert gmem.digest() == digest
    if code in (errno.EOPNOTSUPP, errno.EPERM, errno.EAGAIN):
        assert lo_page(arg) <= written_error_offset(arg) // PAGE_SIZE < hi_page(arg)
    else:
        assert written_error_offset(arg) == error_offset


def lo_page(arg: bytearray) -> int:
    return int(struct.unpack_from("<Q", arg, 0)[0]) // PAGE_SIZE


def hi_page(arg: bytearray) -> int:
    offset, size = struct.unpack_from("<QQ", arg, 0)
    return int(offset + size) // PAGE_SIZE

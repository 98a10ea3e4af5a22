"""Where the ABI revisions differ besides the result cells (test_spec_cells.py).

semantics.md §1 and §4, uapi.md §4 (flags), §7 (validation order), §8 (``error_offset``),
§12 (content modes of RFC v3-v5).
"""

from __future__ import annotations

import dataclasses
import pickle
import struct

import pytest

from guestmem.errors import IoctlError
from guestmem.model import GuestMemfd, Vm
from guestmem.spec import platforms, revisions
from guestmem.spec.terms import Direction, Phase, Policy
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP

PAGE = 4096
PRIVATE = 1 << 3
X = b"\x5a\xc3" * (PAGE // 2)
SHARED_MMAP = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED


def raw(offset: int, size: int, attributes: int, flags: int = 0, error_offset: int = 0) -> bytearray:
    arg = bytearray(128)
    struct.pack_into("<5Q", arg, 0, offset, size, attributes, flags, error_offset)
    return arg


def shared_vm(platform: str, abi: str, pages: int = 1) -> tuple[Vm, GuestMemfd]:
    vm = Vm(platform, abi)
    gmem = vm.create_guest_memfd(pages * PAGE, SHARED_MMAP)
    gmem.mmap().write(0, X * pages)
    return vm, gmem


def errno_of(gmem: GuestMemfd, arg: bytearray) -> str:
    before = gmem.digest()
    try:
        gmem.set_memory_attributes2(arg)
    except IoctlError as err:
        assert gmem.digest() == before  # a failed call changes nothing (§3)
        return err.name
    return "ok"


# --- check 2: flags ---------------------------------------------------------------------------
FLAG_CASES = [
    # seed / iteration2: one bit per policy; unknown bits and two policy bits are EINVAL (§4.2)
    *[(abi, flags, "ok") for abi in ("seed", "iteration2") for flags in (0, 1, 2, 4)],
    *[(abi, flags, "EINVAL") for abi in ("seed", "iteration2") for flags in (3, 5, 6, 7, 8, 1 << 63)],
    # rfc-v5: ZERO = 1, PRESERVE = 2, 0 = unspecified; ZERO|PRESERVE and unknown bits EINVAL
    *[("rfc-v5", flags, "ok") for flags in (0, 1, 2)],
    *[("rfc-v5", flags, "EINVAL") for flags in (3, 4, 8, 1 << 63)],
    # v8: flags must be 0
    ("v8", 0, "ok"),
    *[("v8", flags, "EINVAL") for flags in (1, 2, 4, 8, 1 << 63)],
]


@pytest.mark.parametrize(("abi", "flags", "want"), FLAG_CASES)
def test_flag_decoding(abi: str, flags: int, want: str) -> None:
    # sw_protected supports every policy P→S in seed/iteration2/rfc-v5, so only decoding decides.
    _vm, gmem = shared_vm("sw_protected", abi)
    gmem.convert(0, PAGE, Direction.TO_PRIVATE, 2 if abi != "v8" else 0)
    assert errno_of(gmem, raw(0, PAGE, 0, flags)) == want


# --- check 3: error_offset on input ------------------------------------------------------------
@pytest.mark.parametrize(
    ("abi", "want"), [("seed", "EINVAL"), ("iteration2", "EINVAL"), ("rfc-v5", "ok"), ("v8", "ok")]
)
def test_error_offset_on_input(abi: str, want: str) -> None:
    """seed keeps RFC v3/v4's rejection; RFC v5 and v8 ignore the input (uapi.md §7 3a, §8)."""
    _vm, gmem = shared_vm("sw_protected", abi)
    arg = raw(0, PAGE, PRIVATE, 0, error_offset=0x1234000)
    assert errno_of(gmem, arg) == want
    if want == "ok":
        assert gmem.is_private(0)
        assert struct.unpack_from("<Q", arg, 32)[0] == 0x1234000  # not written back on success


# --- checks 4-5: private memory and attributes -------------------------------------------------
@pytest.mark.parametrize(
    ("abi", "attributes", "want"),
    [
        ("seed", 0, "EINVAL"),
        ("iteration2", 0, "EINVAL"),
        ("v8", 0, "EINVAL"),
        ("rfc-v5", 0, "ok"),  # bits outside the VM's supported set: none, so 0 passes (§7 row 5)
        ("rfc-v5", PRIVATE, "EINVAL"),
        ("rfc-v5", 1, "EINVAL"),
    ],
)
def test_vm_without_private_memory(abi: str, attributes: int, want: str) -> None:
    vm = Vm("default", abi)
    gmem = vm.create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP)  # created private
    assert errno_of(gmem, raw(0, PAGE, attributes)) == want
    if want == "ok":
        assert not gmem.is_private(0)


@pytest.mark.parametrize("abi", ["seed", "iteration2", "rfc-v5", "v8"])
@pytest.mark.parametrize("attributes", [1, 1 << 4, PRIVATE | 1, 1 << 63])
def test_attributes_other_than_private(abi: str, attributes: int) -> None:
    """Only ``KVM_MEMORY_ATTRIBUTE_PRIVATE`` exists, in every version (uapi.md §4)."""
    _vm, gmem = shared_vm("sw_protected", abi)
    assert errno_of(gmem, raw(0, PAGE, attributes)) == "EINVAL"


@pytest.mark.parametrize("platform", ["pkvm", "cca", "default"])
@pytest.mark.parametrize("attributes", [0, PRIVATE])
def test_v8_accepts_only_vms_with_private_memory(platform: str, attributes: int) -> None:
    """``kvm_arch_has_private_mem()`` is false for arm64 and the default VM (platforms.md §0)."""
    vm = Vm(platform, "v8")
    init = GUEST_MEMFD_FLAG_INIT_SHARED if attributes == PRIVATE else 0  # a real change either way
    gmem = vm.create_guest_memfd(PAGE, GUEST_MEMFD_FLAG_MMAP | init)
    assert errno_of(gmem, raw(0, PAGE, attributes)) == "EINVAL"


# --- whole range vs v8's early return ----------------------------------------------------------
@pytest.mark.parametrize(("abi", "flags"), [("seed", 1), ("iteration2", 1), ("rfc-v5", 1), ("seed", 0)])
def test_policy_applies_to_pages_already_in_target_state(abi: str, flags: int) -> None:
    """semantics.md §3 *Whole range*; uapi.md §12 (RFC v4/v5 api.rst): ZERO on an already
    shared page still zeroes it."""
    _vm, gmem = shared_vm("sw_protected", abi)
    assert errno_of(gmem, raw(0, PAGE, 0, flags)) == "ok"
    assert gmem.mmap().read(0, PAGE) == bytes(PAGE)


@pytest.mark.parametrize("platform", ["sw_protected", "tdx", "snp"])
def test_v8_no_op_returns_early(platform: str) -> None:
    """v8 16/46: a range that already has the attributes returns 0 with no side effect,
    even where a real conversion would change contents (tdx zeros, snp ciphertext)."""
    vm, gmem = shared_vm(platform, "v8", pages=2)
    vm.launch()
    before = gmem.digest()
    assert errno_of(gmem, raw(0, 2 * PAGE, 0)) == "ok"
    assert gmem.digest() == before
    assert gmem.mmap().read(0, 2 * PAGE) == X * 2


@pytest.mark.parametrize("abi", ["v8", "v13"])
@pytest.mark.parametrize(
    ("platform", "direction"), [("tdx", Direction.TO_PRIVATE), ("snp", Direction.TO_SHARED)]
)
def test_mixed_range_leaves_pages_already_converted(platform: str, direction: Direction, abi: str) -> None:
    """v8 and v13 have no content policy and KVM "does not directly manipulate the memory
    contents" (uapi.md §0, §11): in a range that is half converted already, only the pages
    that change state meet the native effect (tdx S→P zeros, snp P→S ciphertext). But
    v8's to-private call also unmaps the page that is private already, which on TDX
    removes it from the TD: the guest's bytes are gone (semantics.md §3 *Mixed ranges*)."""
    vm, gmem = shared_vm(platform, abi, pages=2)
    vm.launch()
    gmem.convert(PAGE, PAGE, Direction.TO_PRIVATE, 0)
    gmem.guest_write(PAGE, X, "private")
    kept = (PAGE, "private") if direction is Direction.TO_PRIVATE else (0, "shared")
    gmem.convert(0, 2 * PAGE, direction, 0)
    lost = abi == "v8" and platform == "tdx"
    assert gmem.guest_read(kept[0], PAGE, kept[1]) == (bytes(PAGE) if lost else X)
    changed = gmem.peek(PAGE - kept[0], PAGE)
    assert changed != X


def test_seed_policy_reaches_pages_already_converted() -> None:
    vm, gmem = shared_vm("tdx", "seed", pages=2)
    vm.launch()
    gmem.convert(PAGE, PAGE, Direction.TO_PRIVATE, 1)
    gmem.guest_write(PAGE, X, "private")
    gmem.convert(0, 2 * PAGE, Direction.TO_PRIVATE, 1)  # ZERO: the whole range
    assert gmem.guest_read(0, 2 * PAGE, "private") == bytes(2 * PAGE)


def test_v8_validates_before_returning_early() -> None:
    """The early return comes after checks 1-8 (uapi.md §7 row 10)."""
    _vm, gmem = shared_vm("sw_protected", "v8", pages=2)
    assert errno_of(gmem, raw(0, PAGE + 1, 0)) == "EINVAL"
    assert errno_of(gmem, raw(0, 3 * PAGE, 0)) == "EINVAL"
    assert errno_of(gmem, raw(0, PAGE, 0, flags=1)) == "EINVAL"
    assert errno_of(gmem, raw(0, PAGE, 0, error_offset=PAGE)) == "ok"  # ignored, then no-op


# --- rfc-v5 ----------------------------------------------------------------------------------
def test_rfc_v5_unspecified_scrambles() -> None:
    """The removed selftest ``convert_mode_unspecified_scrambles`` (uapi.md §14): after a
    shared round trip, a to-private call with flags = 0 succeeds, the guest sees the old value
    changed, and after to-shared the host does not see the guest's last write."""
    _vm, gmem = shared_vm("sw_protected", "rfc-v5")
    host = gmem.mmap()
    gmem.convert(0, PAGE, Direction.TO_PRIVATE, 2)  # PRESERVE
    assert gmem.guest_read(0, PAGE, "private") == X
    gmem.convert(0, PAGE, Direction.TO_SHARED, 2)
    assert host.read(0, PAGE) == X
    gmem.convert(0, PAGE, Direction.TO_PRIVATE, 0)
    first = gmem.guest_read(0, PAGE, "private")
    assert first != X and any(first)
    gmem.guest_write(0, X, "private")
    gmem.convert(0, PAGE, Direction.TO_SHARED, 0)
    second = host.read(0, PAGE)
    assert second != X and any(second)
    assert second != first  # the same plaintext, the same offset, the other way: new bytes
    assert {o.label for _a, _b, o in gmem.origins(0, PAGE)} == {"random"}


def test_rfc_v5_scramble_covers_each_page() -> None:
    _vm, gmem = shared_vm("sw_protected", "rfc-v5", pages=2)
    gmem.convert(0, 2 * PAGE, Direction.TO_PRIVATE, 0)
    a, b = gmem.guest_read(0, PAGE, "private"), gmem.guest_read(PAGE, PAGE, "private")
    assert X not in (a, b) and a != b


@pytest.mark.parametrize("platform", ["tdx", "snp"])
def test_rfc_v5_preserve_only_to_private_before_launch(platform: str) -> None:
    """RFC v5: SNP/TDX PRESERVE only ``to_private && !pre_fault_allowed``; otherwise
    EOPNOTSUPP with ``error_offset`` = the range start (uapi.md §8)."""
    vm, gmem = shared_vm(platform, "rfc-v5", pages=3)
    gmem.convert(0, PAGE, Direction.TO_PRIVATE, 2)
    assert errno_of(gmem, raw(0, PAGE, 0, 2)) == "EOPNOTSUPP"  # P→S, even before launch
    vm.launch()
    assert gmem.guest_read(0, PAGE, "private") == X
    arg = raw(PAGE, 2 * PAGE, PRIVATE, 2)
    assert errno_of(gmem, arg) == "EOPNOTSUPP"
    assert struct.unpack_from("<Q", arg, 32)[0] == PAGE


def test_a_copy_of_a_platform_is_the_same_platform_to_every_revision() -> None:
    """Revisions tell platforms apart by what they are, not by object identity: an
    unpickled copy (a Ray worker's) or an unchanged ``dataclasses.replace`` gets every
    answer the registered platform gets."""
    for revision in revisions.REVISIONS.values():
        for platform in platforms.PLATFORMS.values():
            for copy in (pickle.loads(pickle.dumps(platform)), dataclasses.replace(platform)):
                assert copy is not platform
                decodable = {revision.decode(revision.encode(policy)) for policy in Policy}
                for direction in Direction:
                    for decoded in [d for d in decodable if d is not None]:
                        for phase in Phase:
                            want = revision.effect(platform, direction, decoded, phase)
                            got = revision.effect(copy, direction, decoded, phase)
                            assert got == want, (revision.name, platform.name, direction, decoded, phase)

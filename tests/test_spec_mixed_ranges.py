"""A to-private conversion of a range holding shared and private pages
(semantics.md §3 *Mixed ranges*, §1a): which revisions unmap the already-private pages
from the guest, and on which platforms the guest then loses what they held."""

from __future__ import annotations

import pytest

from guestmem.model import GuestMemfd, Vm
from guestmem.model.provenance import Origin
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, PAGE_SIZE

SHARED = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
P, S = Direction.TO_PRIVATE, Direction.TO_SHARED
BYTES = b"\x5a\xa5guest"
#: (abi, platform) → whether the guest's private bytes survive; flags 0 everywhere, which
#: rfc-v5 scrambles on sw_protected, so that pair is left out.
SURVIVES = {
    ("v8", "tdx"): False,
    ("v8", "snp"): True,
    ("v8", "sw_protected"): True,
    ("v13", "tdx"): True,
    ("v13", "snp"): True,
    ("v13", "sw_protected"): True,
    ("rfc-v5", "tdx"): False,
    ("rfc-v5", "snp"): True,
}


def _guest_page_beside_a_shared_one(platform: str, abi: str, *, launch: bool = True) -> tuple[Vm, GuestMemfd]:
    """Page 0 private holding the guest's bytes (written once running) or, before launch,
    the host's payload; pages 1-2 shared."""
    vm = Vm(platform, abi)
    gmem = vm.create_guest_memfd(3 * PAGE_SIZE, SHARED)
    host = gmem.mmap()
    host.write(PAGE_SIZE, b"host" * 2)
    if launch:
        vm.launch()
    else:
        host.write(0, BYTES)
    gmem.convert(0, PAGE_SIZE, P, 0)
    if launch:
        gmem.guest_write(0, BYTES, "private")
    return vm, gmem


@pytest.mark.parametrize(("abi", "platform"), list(SURVIVES))
def test_the_guests_private_bytes_in_a_mixed_to_private_range(abi: str, platform: str) -> None:
    _vm, gmem = _guest_page_beside_a_shared_one(platform, abi)
    gmem.convert(0, 2 * PAGE_SIZE, P, 0)
    got = gmem.guest_read(0, len(BYTES), "private")
    if SURVIVES[abi, platform]:
        assert got == BYTES
        assert {o for *_, o in gmem.origins(0, len(BYTES))} == {Origin.GUEST_PRIVATE}
    else:
        assert got == bytes(len(BYTES))  # what a guest that accepts the page again reads
        assert {o for *_, o in gmem.origins(0, PAGE_SIZE)} == {Origin.LOST}
    assert gmem.is_private(0) and gmem.is_private(PAGE_SIZE) and not gmem.is_private(2 * PAGE_SIZE)


@pytest.mark.parametrize("abi", ["v8", "rfc-v5"])
def test_only_pages_of_the_range_that_were_private_are_lost(abi: str) -> None:
    """The shared page of the range converts with TDX's native effect; a private page
    outside the range keeps its bytes; nothing changes for a range already all private
    (v8 returns early, RFC v5 returns before any unmap)."""
    vm = Vm("tdx", abi)
    gmem = vm.create_guest_memfd(3 * PAGE_SIZE, SHARED)
    vm.launch()
    gmem.convert(0, PAGE_SIZE, P, 0)
    gmem.convert(2 * PAGE_SIZE, PAGE_SIZE, P, 0)
    gmem.guest_write(0, BYTES, "private")
    gmem.guest_write(2 * PAGE_SIZE, BYTES, "private")
    gmem.convert(2 * PAGE_SIZE, PAGE_SIZE, P, 0)  # already private: untouched
    assert gmem.guest_read(2 * PAGE_SIZE, len(BYTES)) == BYTES
    gmem.convert(0, 2 * PAGE_SIZE, P, 0)
    assert gmem.guest_read(0, len(BYTES)) == bytes(len(BYTES))
    assert gmem.guest_read(2 * PAGE_SIZE, len(BYTES)) == BYTES


@pytest.mark.parametrize("abi", ["v8", "v13"])
def test_to_shared_and_pre_launch_mixed_ranges_lose_nothing(abi: str) -> None:
    """A to-shared conversion drops private mappings of pages that convert anyway; before
    launch no guest has pages mapped (semantics.md §8), so the payload stays."""
    vm, gmem = _guest_page_beside_a_shared_one("tdx", abi, launch=False)
    gmem.convert(0, 2 * PAGE_SIZE, P, 0)
    vm.launch()
    assert gmem.guest_read(0, len(BYTES)) == BYTES
    assert {o for *_, o in gmem.origins(0, len(BYTES))} == {Origin.PAYLOAD}
    vm, gmem = _guest_page_beside_a_shared_one("tdx", abi)
    gmem.convert(PAGE_SIZE, 2 * PAGE_SIZE, S, 0)  # page 1 shared already, page 2 too
    gmem.convert(0, 2 * PAGE_SIZE, S, 0)
    assert {o for *_, o in gmem.origins(0, PAGE_SIZE)} == {Origin.ZEROED}  # TDX's native P→S

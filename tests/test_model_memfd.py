"""The model's guest_memfd outside the conversion ioctl: creation, host mappings and
SIGBUS, guest access and memory-fault exits, punch hole, pins, and scale."""

from __future__ import annotations

import errno
import random
import tracemalloc

import pytest

from guestmem.errors import HostFault, IoctlError, MemoryFault
from guestmem.model import GuestMemfd, Vm
from guestmem.model.vm import GPA_BASE
from guestmem.uapi.kvm import (
    FALLOC_FL_COLLAPSE_RANGE,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_MEMORY_EXIT_FLAG_PRIVATE,
    PAGE_SIZE,
    KvmCreateGuestMemfd,
)

MMAP, INIT_SHARED = GUEST_MEMFD_FLAG_MMAP, GUEST_MEMFD_FLAG_INIT_SHARED
PRESERVE = 2
TIB = 1 << 40


def shared(pages: int = 4, platform: str = "sw_protected") -> GuestMemfd:
    return Vm(platform).create_guest_memfd(pages * PAGE_SIZE, MMAP | INIT_SHARED)


# --- creation (kvm_gmem_create; docs/kernel.md §3) ------------------------------------------------


@pytest.mark.parametrize("size", [0, 100, PAGE_SIZE + 1, (1 << 64) - PAGE_SIZE, 1 << 63])
def test_create_bad_size(size: int) -> None:
    vm = Vm("default")
    with pytest.raises(IoctlError) as info:
        vm.create_guest_memfd(size, MMAP)
    assert (info.value.code, info.value.call) == (errno.EINVAL, "KVM_CREATE_GUEST_MEMFD")
    assert vm.gmems == []


@pytest.mark.parametrize("flags", [1 << 2, 1 << 3, 1 << 63, MMAP | 1 << 2])
def test_create_bad_flags(flags: int) -> None:
    with pytest.raises(IoctlError) as info:
        Vm("default").create_guest_memfd(PAGE_SIZE, flags)
    assert info.value.code == errno.EINVAL


def test_create_from_raw_struct_ignores_reserved() -> None:
    arg = KvmCreateGuestMemfd(size=2 * PAGE_SIZE, flags=MMAP | INIT_SHARED)
    arg.reserved[0] = 1  # not rejected by 6.18
    gmem = Vm("default").create_guest_memfd(arg)
    assert (gmem.size, gmem.flags) == (2 * PAGE_SIZE, MMAP | INIT_SHARED)


@pytest.mark.parametrize(("flags", "private"), [(0, True), (MMAP, True), (MMAP | INIT_SHARED, False)])
def test_initial_attribute(flags: int, private: bool) -> None:
    gmem = Vm("sw_protected").create_guest_memfd(2 * PAGE_SIZE, flags)
    assert gmem.is_private(0) is private and gmem.is_private(PAGE_SIZE) is private


def test_mmap_needs_flag_and_shared() -> None:
    gmem = Vm("default").create_guest_memfd(PAGE_SIZE, INIT_SHARED)
    with pytest.raises(IoctlError) as info:
        gmem.mmap()
    assert info.value.code == errno.ENODEV
    with pytest.raises(IoctlError) as info:
        shared().mmap(shared=False)
    assert info.value.code == errno.EINVAL


# --- host access ----------------------------------------------------------------------------


def test_fresh_memory_reads_zero_and_writes_show_in_every_mapping() -> None:
    gmem = shared()
    a, b = gmem.mmap(), gmem.mmap()
    assert a.read(0, 4 * PAGE_SIZE) == bytes(4 * PAGE_SIZE)
    a.write(PAGE_SIZE - 2, b"span")
    assert b.read(PAGE_SIZE - 2, 4) == b"span"
    assert gmem.allocated() == [0, 1, 2, 3]


def test_sigbus_on_private_page_of_default_vm() -> None:
    gmem = Vm("default").create_guest_memfd(PAGE_SIZE, MMAP)
    mapping = gmem.mmap()  # mmap itself succeeds
    with pytest.raises(HostFault) as info:
        mapping.read(0, 1)
    assert (info.value.signal, info.value.offset) == ("SIGBUS", 0)


def test_sigbus_past_the_end_after_earlier_pages_done() -> None:
    gmem = shared(pages=2)
    mapping = gmem.mmap()
    with pytest.raises(HostFault) as info:
        mapping.write(PAGE_SIZE, b"z" * (2 * PAGE_SIZE))
    assert (info.value.signal, info.value.offset) == ("SIGBUS", 2 * PAGE_SIZE)
    assert mapping.read(PAGE_SIZE, PAGE_SIZE) == b"z" * PAGE_SIZE  # page 1 was written first


def test_sigbus_stops_at_first_private_page() -> None:
    gmem = shared(pages=3)
    gmem.convert(PAGE_SIZE, PAGE_SIZE, "to_private", PRESERVE)
    mapping = gmem.mmap()
    with pytest.raises(HostFault) as info:
        mapping.write(0, b"w" * (3 * PAGE_SIZE))
    assert info.value.offset == PAGE_SIZE
    assert mapping.read(0, 1) == b"w"
    assert gmem.guest_read(PAGE_SIZE, 1, "private") == b"\0"
    assert mapping.read(2 * PAGE_SIZE, 1) == b"\0"  # never reached


# --- guest access ---------------------------------------------------------------------------


def test_guest_and_host_share_in_place_memory() -> None:
    gmem = shared()
    gmem.mmap().write(8, b"host")
    assert gmem.guest_read(8, 4, "shared") == b"host"
    gmem.guest_write(12, b"guest")
    assert gmem.mmap().read(8, 9) == b"hostguest"


@pytest.mark.parametrize(("access", "flags"), [("private", KVM_MEMORY_EXIT_FLAG_PRIVATE)])
def test_private_access_to_shared_page_is_memory_fault(access: str, flags: int) -> None:
    gmem = shared(pages=2)
    before = gmem.digest()
    with pytest.raises(MemoryFault) as info:
        gmem.guest_read(PAGE_SIZE + 5, 3, access)
    assert (info.value.gpa, info.value.size, info.value.flags) == (GPA_BASE + PAGE_SIZE, PAGE_SIZE, flags)
    assert gmem.digest() == before


def test_shared_access_to_private_page_is_memory_fault() -> None:
    gmem = Vm("tdx").create_guest_memfd(2 * PAGE_SIZE, MMAP)
    gmem.vm.launch()
    gmem.guest_write(0, b"ok", "private")
    with pytest.raises(MemoryFault) as info:
        gmem.guest_write(PAGE_SIZE, b"no", "shared")
    assert (info.value.gpa, info.value.flags, info.value.private) == (GPA_BASE + PAGE_SIZE, 0, False)


def test_guest_cannot_run_before_launch_where_there_is_a_finalize_step() -> None:
    """docs/semantics.md §3 *Launch*; pKVM, whose first run is its launch, is in
    test_model_fidelity.py."""
    for platform in ("tdx", "snp", "cca"):
        gmem = Vm(platform).create_guest_memfd(PAGE_SIZE, MMAP)
        with pytest.raises(IoctlError) as info:
            gmem.guest_read(0, 1)
        assert (info.value.code, info.value.call) == (errno.EINVAL, "KVM_RUN")
        gmem.vm.launch()
        assert gmem.guest_read(0, 1) == b"\0"
    assert shared(platform="sw_protected").guest_read(0, 1) == b"\0"


def test_launch_once() -> None:
    vm = Vm("tdx")
    vm.launch()
    with pytest.raises(IoctlError) as info:
        vm.launch()
    assert info.value.code == errno.EINVAL


def test_default_vm_accesses_are_shared() -> None:
    gmem = shared(platform="default")
    gmem.guest_write(0, b"d")
    assert gmem.guest_read(0, 1, "shared") == b"d"
    with pytest.raises(MemoryFault):
        gmem.guest_read(0, 1, "private")


# --- punch hole (semantics.md §3; uapi.md §11) ---------------------------------------------------


def test_punch_hole_shared_then_private_keeps_attribute() -> None:
    gmem = shared(pages=2)
    mapping = gmem.mmap()
    mapping.write(0, b"A" * (2 * PAGE_SIZE))
    gmem.punch_hole(0, PAGE_SIZE)
    assert mapping.read(0, 2) == b"\0\0" and mapping.read(PAGE_SIZE, 1) == b"A"
    mapping.write(0, b"A")
    gmem.convert(0, PAGE_SIZE, "to_private", PRESERVE)
    assert gmem.guest_read(0, 1) == b"A"
    gmem.punch_hole(0, PAGE_SIZE)
    assert gmem.is_private(0)
    assert gmem.guest_read(0, 1) == b"\0"
    with pytest.raises(HostFault):
        mapping.read(0, 1)


def test_punch_hole_past_end_is_clipped_and_zaps_ptes() -> None:
    gmem = shared(pages=2)
    mapping = gmem.mmap()
    mapping.write(PAGE_SIZE, b"x")
    gmem.punch_hole(PAGE_SIZE, 8 * PAGE_SIZE)
    assert gmem.allocated() == [] and mapping.ptes == set()


@pytest.mark.parametrize(
    ("mode", "offset", "length", "code"),
    [
        (FALLOC_FL_PUNCH_HOLE, 0, PAGE_SIZE, errno.EOPNOTSUPP),
        (0, 0, PAGE_SIZE, errno.EOPNOTSUPP),
        (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_KEEP_SIZE, 0, PAGE_SIZE, errno.EOPNOTSUPP),
        (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 0, PAGE_SIZE, errno.EOPNOTSUPP),
        (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1, PAGE_SIZE, errno.EINVAL),
        (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 100, errno.EINVAL),
        (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 0, errno.EINVAL),
        (FALLOC_FL_KEEP_SIZE, PAGE_SIZE, 4 * PAGE_SIZE, errno.EINVAL),
    ],
)
def test_fallocate_errors(mode: int, offset: int, length: int, code: int) -> None:
    gmem = shared(pages=2)
    gmem.mmap().write(0, b"keep")
    before = gmem.digest()
    with pytest.raises(IoctlError) as info:
        gmem.fallocate(mode, offset, length)
    assert info.value.code == code and gmem.digest() == before


def test_keep_size_preallocates_without_allocating_contents() -> None:
    """Preallocated folios are not up to date: no content policy reaches them and the
    first reader sees zeros (docs/semantics.md §3 *Allocated*)."""
    gmem = shared(pages=4)
    gmem.fallocate(FALLOC_FL_KEEP_SIZE, PAGE_SIZE, 2 * PAGE_SIZE)
    assert gmem.allocated() == []
    assert gmem.mmap().read(PAGE_SIZE, 4) == bytes(4)


# --- pins ---------------------------------------------------------------------------------------


def test_pin_private_page_fails_and_unpin_needs_a_pin() -> None:
    gmem = Vm("sw_protected").create_guest_memfd(2 * PAGE_SIZE, MMAP)
    with pytest.raises(IoctlError) as info:
        gmem.pin(0, PAGE_SIZE)
    assert info.value.code == errno.EFAULT
    with pytest.raises(IoctlError) as info:
        gmem.unpin(0, PAGE_SIZE)
    assert info.value.code == errno.EINVAL


def test_pin_counts_nest() -> None:
    gmem = shared()
    gmem.pin(0, PAGE_SIZE)
    gmem.pin(0, PAGE_SIZE)
    gmem.unpin(0, PAGE_SIZE)
    assert gmem.try_set_memory_attributes2(_to_private(0)) == errno.EAGAIN
    gmem.unpin(0, PAGE_SIZE)
    assert gmem.try_set_memory_attributes2(_to_private(0)) == 0


def test_punched_page_is_no_longer_pinned_but_unpin_still_balances() -> None:
    gmem = shared()
    gmem.pin(0, PAGE_SIZE)
    gmem.punch_hole(0, PAGE_SIZE)
    assert gmem.try_set_memory_attributes2(_to_private(0)) == 0
    gmem.unpin(0, PAGE_SIZE)  # the holder releases the old folio
    with pytest.raises(IoctlError):
        gmem.unpin(0, PAGE_SIZE)


def test_an_unpin_names_the_pages_its_holder_saw_punched_out() -> None:
    """Holder A pins page 1, the page is punched out (A keeps the old folio), holder B pins
    the new page 1. A's release must leave B's pin: the kernel refuses the conversion at
    page 1 (seen on v8, stress seed 2867305363). Without ``punched`` the model cannot tell
    the holders apart and drops the current folio's pin."""
    gmem = shared()
    gmem.pin(0, 2 * PAGE_SIZE)  # A
    gmem.punch_hole(PAGE_SIZE, PAGE_SIZE)
    gmem.pin(PAGE_SIZE, PAGE_SIZE)  # B
    gmem.unpin(0, 2 * PAGE_SIZE, punched={1})  # A: page 0's pin, page 1's old folio
    assert gmem.pins == {1: 1} and gmem.stale_pins == {}
    assert gmem.try_set_memory_attributes2(_to_private(PAGE_SIZE)) == errno.EAGAIN
    with pytest.raises(IoctlError):  # nothing of the old folio is held any more
        gmem.unpin(PAGE_SIZE, PAGE_SIZE, punched={1})
    gmem.unpin(PAGE_SIZE, PAGE_SIZE)  # B
    assert gmem.try_set_memory_attributes2(_to_private(PAGE_SIZE)) == 0


def test_a_failed_pin_leaves_the_pages_before_the_failing_one_allocated() -> None:
    """GUP faults pages in one by one: a pin failing at a private page holds nothing, but
    the shared pages before it were allocated (seen on RFC v5, whose unspecified
    conversion scrambles allocated pages only: stress seed 3044114031)."""
    gmem = shared(4)
    gmem.set_memory_attributes2(_to_private(2 * PAGE_SIZE))
    with pytest.raises(IoctlError) as info:
        gmem.pin(0, 4 * PAGE_SIZE)
    assert info.value.code == errno.EFAULT
    assert sorted(gmem.pages) == [0, 1] and gmem.pins == {}
    with pytest.raises(IoctlError):  # past the end: the pages up to the end are faulted in
        gmem.pin(3 * PAGE_SIZE, 2 * PAGE_SIZE)
    assert sorted(gmem.pages) == [0, 1, 3]


def _to_private(offset: int) -> bytearray:
    arg = bytearray(128)
    arg[0:8] = offset.to_bytes(8, "little")
    arg[8:16] = PAGE_SIZE.to_bytes(8, "little")
    arg[16:24] = (8).to_bytes(8, "little")
    arg[24:32] = PRESERVE.to_bytes(8, "little")
    return arg


# --- scale: 1 TiB (docs/bench.md, rss_1tib_mib) ------------------------------------------------------


def test_one_tib_guest_memfd_converts_in_arbitrary_ranges() -> None:
    rng = random.Random(1)
    tracemalloc.start()
    gmem = Vm("sw_protected").create_guest_memfd(TIB, MMAP | INIT_SHARED)
    mapping = gmem.mmap()
    npages = TIB // PAGE_SIZE
    touched = sorted(rng.sample(range(npages), 32))
    for index in touched:
        mapping.write(index * PAGE_SIZE, index.to_bytes(8, "little"))
    for _ in range(400):
        lo = rng.randrange(npages)
        hi = rng.randrange(lo + 1, min(npages, lo + rng.choice([1, 1 << 10, 1 << 20, npages])) + 1)
        to_private = rng.random() < 0.5
        gmem.convert(
            lo * PAGE_SIZE, (hi - lo) * PAGE_SIZE, "to_private" if to_private else "to_shared", PRESERVE
        )
        assert gmem.is_private(lo * PAGE_SIZE) is to_private
        assert gmem.is_private((hi - 1) * PAGE_SIZE) is to_private
    gmem.convert(0, TIB, "to_private", PRESERVE)  # the whole file at once
    gmem.convert(TIB // 2, TIB // 2, "to_shared", 4)  # NONE over half a tebibyte
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 64 << 20, f"peak {peak >> 20} MiB: memory must grow with touched pages only"
    assert gmem.allocated() == touched
    for index in touched:
        if index < npages // 2:
            assert gmem.guest_read(index * PAGE_SIZE, 8, "private") == index.to_bytes(8, "little")
        else:
            assert mapping.read(index * PAGE_SIZE, 8) == b"\xab" * 8
    assert gmem.is_private(0) and not gmem.is_private(TIB - PAGE_SIZE)
    assert gmem.is_private(TIB // 2 - PAGE_SIZE) and not gmem.is_private(TIB // 2)
    runs = list(gmem.attributes.runs())
    assert runs == [(0, npages // 2, 8), (npages // 2, npages, 0)]


def test_one_tib_attributes_match_a_naive_reference_on_sampled_pages() -> None:
    rng = random.Random(7)
    gmem = Vm("sw_protected").create_guest_memfd(TIB, MMAP | INIT_SHARED)
    npages = TIB // PAGE_SIZE
    history: list[tuple[int, int, int]] = []
    for _ in range(300):
        lo = rng.randrange(npages)
        hi = rng.randrange(lo + 1, npages + 1)
        value = rng.choice([0, 8])
        gmem.convert(lo * PAGE_SIZE, (hi - lo) * PAGE_SIZE, "to_private" if value else "to_shared", PRESERVE)
        history.append((lo, hi, value))
    probes = [rng.randrange(npages) for _ in range(500)] + [0, npages - 1]
    for index in probes:
        expected = 0
        for lo, hi, value in history:
            if lo <= index < hi:
                expected = value
        assert gmem.attributes[index] == expected


def test_host_accesses_read_back_what_was_written_on_every_path() -> None:
    """HostMapping's one-page shortcuts (docs/bench.md, *Model performance changes*) and
    its general loop give the same bytes: random reads and writes, whole pages and parts,
    within a page and across pages, first touches and mapped pages, against a bytearray."""
    rng = random.Random(5)
    pages = 6
    gmem = shared(pages)
    mapping, other = gmem.mmap(), gmem.mmap()
    mirror = bytearray(pages * PAGE_SIZE)
    for _ in range(3000):
        where = rng.choice([mapping, other])
        if rng.random() < 0.3:
            offset = rng.randrange(pages) * PAGE_SIZE
            size = PAGE_SIZE * rng.choice([1, 1, 2])
        else:
            offset = rng.randrange(pages * PAGE_SIZE)
            size = rng.randrange(1, 2 * PAGE_SIZE)
        size = min(size, pages * PAGE_SIZE - offset)
        if rng.random() < 0.5:
            data = rng.randbytes(size)
            where.write(offset, data)
            mirror[offset : offset + size] = data
        else:
            assert where.read(offset, size) == mirror[offset : offset + size], (offset, size)
        if rng.random() < 0.05:
            where.zap(0, pages)  # the next accesses fault the pages in again

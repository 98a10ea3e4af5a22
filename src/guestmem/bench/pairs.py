"""Model-versus-baseline pairs: conversions, ZERO, the NONE fill and host accesses.

Every model side runs on ``sw_protected`` under the default ABI revision (``seed``),
whose policies are docs/semantics.md §2's first row: ZERO zeroes both ways, NONE fills
``0xab``. Sizes shrink under ``--quick`` and each figure's note says what ran.
"""

from __future__ import annotations

import ctypes
import mmap

from guestmem.bench.figure import Figure
from guestmem.bench.native import guest_memfd_file, punch_hole
from guestmem.bench.timing import Side, interleaved, median
from guestmem.model import Vm
from guestmem.spec import revisions
from guestmem.spec.terms import Direction, Policy
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    PAGE_SIZE,
)

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
SHARED_FLAGS = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
TO_PRIVATE, TO_SHARED = Direction.TO_PRIVATE, Direction.TO_SHARED
_SEED = revisions.get("seed")
ZERO, PRESERVE, NONE = (_SEED.encode(p) for p in (Policy.ZERO, Policy.PRESERVE, Policy.NONE))


def _size(n: int) -> str:
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} B"


def convert_1tib_vs_4k(reps: int, quick: bool) -> Figure:
    """Converting a 1 TiB unallocated range vs a 4 KiB one, both in the model: the cost of
    a conversion must follow the pages it touches, not the size of the range
    (rangemap.py). The kernel's own cost is not the baseline: no kernel here has the
    conversion ioctl (``ENOTTY``), so the figure is named for what it compares."""
    gmem = Vm("sw_protected").create_guest_memfd(TiB, SHARED_FLAGS)
    rounds = 100 if quick else 500

    def toggle(size: int) -> None:
        convert = gmem.convert
        for _ in range(rounds):
            convert(0, size, TO_PRIVATE)
            convert(0, size, TO_SHARED)

    model, baseline = interleaved(
        Side(lambda: toggle(TiB), ops=2 * rounds), Side(lambda: toggle(4 * KiB), ops=2 * rounds), reps
    )
    return Figure(
        "convert_1tib_vs_4k",
        model=median(model),
        baseline=median(baseline),
        note=f"model vs model: sw_protected, flags 0 (ZERO), round trips private/shared, {reps} reps",
    )


def zero_vs_punch_hole(reps: int, quick: bool) -> Figure:
    """ZERO to private over allocated, host-written pages in the model vs
    ``fallocate(PUNCH_HOLE|KEEP_SIZE)`` of as many written pages of a real guest_memfd."""
    size = 64 * MiB if quick else GiB
    page = bytes(range(256)) * (PAGE_SIZE // 256)
    kernel = guest_memfd_file(size)  # first: Unmeasurable here skips the figure
    gmem = Vm("sw_protected").create_guest_memfd(size, SHARED_FLAGS)
    host = gmem.mmap()

    def model_reset() -> None:
        gmem.convert(0, size, TO_SHARED, PRESERVE)
        write = host.write
        for offset in range(0, size, PAGE_SIZE):
            write(offset, page)

    try:
        model, baseline = interleaved(
            Side(lambda: gmem.convert(0, size, TO_PRIVATE, ZERO), reset=model_reset),
            Side(lambda: punch_hole(kernel.fd, 0, size), reset=lambda: kernel.fill(0x5A)),
            reps,
        )
    finally:
        kind = kernel.kind
        kernel.close()
    return Figure(
        "zero_vs_punch_hole",
        model=median(model),
        baseline=median(baseline),
        note=f"{_size(size)} ({size // PAGE_SIZE} pages) to-private ZERO vs punch of a {kind}, {reps} reps",
    )


def fill_vs_memset(reps: int, quick: bool) -> Figure:
    """NONE (the ``0xab`` fill of ``sw_protected``) over allocated pages vs one
    ``memset`` of as many bytes."""
    size = 32 * MiB if quick else 256 * MiB
    gmem = Vm("sw_protected").create_guest_memfd(size, SHARED_FLAGS)
    host = gmem.mmap()  # allocate every page: written pages are what a policy reaches
    page = b"\x5a" * PAGE_SIZE
    for offset in range(0, size, PAGE_SIZE):
        host.write(offset, page)
    host.close()
    directions = [TO_PRIVATE, TO_SHARED]

    def model_fill() -> None:
        gmem.convert(0, size, directions[0], NONE)
        directions.reverse()

    buffer = mmap.mmap(-1, size)
    anchor = ctypes.c_char.from_buffer(buffer)
    address = ctypes.addressof(anchor)
    ctypes.memset(address, 0, size)  # fault every page in, as the model's are allocated
    try:
        model, baseline = interleaved(
            Side(model_fill), Side(lambda: ctypes.memset(address, 0xAB, size)), reps
        )
    finally:
        del anchor
        buffer.close()
    assert gmem.peek(0, 16) == b"\xab" * 16
    return Figure(
        "fill_vs_memset",
        model=median(model),
        baseline=median(baseline),
        note=f"{_size(size)} ({size // PAGE_SIZE} pages) NONE fill vs ctypes.memset, {reps} reps",
    )


def host_access_vs_mmap(reps: int, quick: bool) -> Figure:
    """A 4 KiB host read and write of an already-faulted shared page through the model's
    ``HostMapping`` vs slicing a raw ``mmap``."""
    pages = 16
    rounds = 2000 if quick else 20000
    data = bytes(range(256)) * (PAGE_SIZE // 256)
    gmem = Vm("sw_protected").create_guest_memfd(pages * PAGE_SIZE, SHARED_FLAGS)
    host = gmem.mmap()
    raw = mmap.mmap(-1, pages * PAGE_SIZE)
    offsets = [(i % pages) * PAGE_SIZE for i in range(rounds)]
    for offset in range(0, pages * PAGE_SIZE, PAGE_SIZE):
        host.write(offset, data)
        raw[offset : offset + PAGE_SIZE] = data

    def model_access() -> None:
        read, write = host.read, host.write
        for offset in offsets:
            read(offset, PAGE_SIZE)
            write(offset, data)

    def mmap_access() -> None:
        for offset in offsets:
            raw[offset : offset + PAGE_SIZE]
            raw[offset : offset + PAGE_SIZE] = data

    try:
        model, baseline = interleaved(Side(model_access, ops=rounds), Side(mmap_access, ops=rounds), reps)
    finally:
        raw.close()
    return Figure(
        "host_access_vs_mmap",
        model=median(model),
        baseline=median(baseline),
        note=f"one 4 KiB read + one 4 KiB write per op, {rounds} ops x {reps} reps",
    )

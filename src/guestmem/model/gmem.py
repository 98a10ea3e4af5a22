"""A model guest_memfd: attributes, contents, pins, host mappings and the conversion ioctl.

``set_memory_attributes2`` follows docs/semantics.md §4 step by step; each step's number
is in a comment. A failing call changes nothing, except that a to-private call that got
as far as removing host mappings of its range (step 11) leaves them removed when it then
fails, with ``EAGAIN`` or with ``EFAULT`` writing ``error_offset`` back (§3 *All or
nothing*).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import struct
import time
from collections.abc import Collection, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple

from guestmem.errors import HostFault, IoctlError, MemoryFault, MmioExit, TimeLimit, errno_code, errno_of
from guestmem.model.provenance import (
    FILL_PAGE,
    INIT_PAGE,
    KEYED,
    LOST_PAGE,
    ZEROED_PAGE,
    Origin,
    Page,
    Runs,
    clip,
    keyed_bytes,
    keyed_domain,
    paint,
    relabel,
)
from guestmem.model.rangemap import RangeMap
from guestmem.spec.terms import Direction, Effect, Phase
from guestmem.uapi.kvm import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_MEMORY_EXIT_FLAG_PRIVATE,
    MADV_DONTNEED,
    MADV_HUGEPAGE,
    PAGE_SHIFT,
    PAGE_SIZE,
    KvmMemoryAttributes2,
)

if TYPE_CHECKING:
    from guestmem.model.vm import Vm

IOCTL = "KVM_SET_MEMORY_ATTRIBUTES2"
_LLONG_MAX = (1 << 63) - 1
ARG_SIZE = ctypes.sizeof(KvmMemoryAttributes2)
_U64 = 1 << 64
#: Guest requests, per page: none, share (for P→S), unshare (for S→P).
NO_REQUEST, SHARE_REQUESTED, UNSHARE_REQUESTED = 0, 1, 2
REQUEST_FOR = {Direction.TO_SHARED: SHARE_REQUESTED, Direction.TO_PRIVATE: UNSHARE_REQUESTED}

#: Inode numbers: every guest_memfd is a file of its own (guest_memfd_test).
_INODES = itertools.count(1)


class FileStat(NamedTuple):
    """What ``fstat()`` tells of a guest_memfd: its size, a block size of one page, and an
    inode number no other guest_memfd has."""

    st_size: int
    st_blksize: int
    st_ino: int


ArgBuffer = bytes | bytearray | memoryview | KvmMemoryAttributes2
RangeKey = tuple[tuple[int, ...], tuple[int, ...]]
#: :meth:`GuestMemfd.snapshot`: attributes, requests, pages, pins, stale pins, host PTEs.
GmemSnapshot = tuple[
    RangeKey,
    RangeKey,
    tuple[tuple[int, Page], ...],
    tuple[tuple[int, int], ...],
    tuple[tuple[int, int], ...],
    tuple[tuple[int, ...], ...],
]


#: :meth:`GuestMemfd.rows`: one page's attribute, guest request, contents (``UNALLOCATED``
#: when not allocated), pins, stale pins and host mappings (bit ``m``: mapping ``m`` maps it).
class PageRow(NamedTuple):
    """One page of a few-page file, as :meth:`GuestMemfd.rows` gives it (the checker's
    states compare, sort and permute these)."""

    attributes: int
    request: int
    #: The page's bytes and provenance, or ``UNALLOCATED``.
    page: Page | tuple[()]
    pins: int
    stale_pins: int
    #: Bit ``m`` set: host mapping ``m`` has the page mapped.
    mapped: int


_new_row = tuple.__new__
UNALLOCATED: tuple[()] = ()
#: The runs of a page the host wrote whole (shared, immutable).
_HOST_PAGE_RUNS: Runs = ((0, PAGE_SIZE, Origin.HOST),)


def _loff_t(value: int) -> int:
    """``value`` as the kernel's signed 64-bit ``loff_t`` (a C caller's u64 wraps)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value > _LLONG_MAX else value


class HostMapping:
    """A ``MAP_SHARED`` mapping of the whole file in some host process.

    ``ptes`` holds the pages currently mapped. An access to a present page goes through
    without asking guest_memfd (it is the MMU); a missing page faults, and
    ``kvm_gmem_fault_user_mapping`` answers ``SIGBUS`` for a private page or a page past
    the end (docs/semantics.md §3 *Host access*). Accesses proceed page by page in
    ascending order; a fault stops the access at the faulting page, earlier pages done.
    """

    def __init__(self, gmem: GuestMemfd) -> None:
        self.gmem = gmem
        self.ptes: set[int] = set()
        self.closed = False

    def _fault_in(self, index: int) -> None:
        gmem = self.gmem
        if index >= gmem.npages:
            raise HostFault("SIGBUS", index << PAGE_SHIFT, "past the end of the guest_memfd")
        if gmem.attributes[index] & KVM_MEMORY_ATTRIBUTE_PRIVATE:
            raise HostFault("SIGBUS", index << PAGE_SHIFT, "page is private")
        if index not in gmem.pages:
            gmem.pages[index] = INIT_PAGE
        self.ptes.add(index)

    def _check(self, offset: int, size: int) -> None:
        if self.closed:
            raise ValueError("host mapping is closed")
        if offset < 0 or size < 0:
            raise ValueError(f"offset and size must be >= 0: offset={offset} size={size}")

    def read(self, offset: int, size: int) -> bytes:
        """Read ``size`` bytes at file ``offset``; ``HostFault`` on ``SIGBUS``."""
        index = offset >> PAGE_SHIFT
        start = offset & (PAGE_SIZE - 1)
        # fast path: within one mapped page (the MMU needs no fault)
        if start + size <= PAGE_SIZE and size >= 0 and index in self.ptes and not self.closed:
            return self.gmem.pages[index][0][start : start + size]
        self._check(offset, size)
        pages, ptes = self.gmem.pages, self.ptes
        out = bytearray()
        end = offset + size
        while offset < end:
            index = offset >> PAGE_SHIFT
            start = offset & (PAGE_SIZE - 1)
            stop = min(PAGE_SIZE, start + end - offset)
            if index not in ptes:
                self._fault_in(index)
            out += pages[index][0][start:stop]
            offset += stop - start
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at file ``offset``; ``HostFault`` on ``SIGBUS``."""
        # fast path: exactly one mapped page, immutable data (stored as is)
        if type(data) is bytes and len(data) == PAGE_SIZE and not offset & (PAGE_SIZE - 1):
            index = offset >> PAGE_SHIFT
            if index in self.ptes and not self.closed:
                self.gmem.pages[index] = (data, _HOST_PAGE_RUNS)
                return
        self._check(offset, len(data))
        pages, ptes = self.gmem.pages, self.ptes
        end = offset + len(data)
        pos = 0
        while offset < end:
            index = offset >> PAGE_SHIFT
            start = offset & (PAGE_SIZE - 1)
            stop = min(PAGE_SIZE, start + end - offset)
            if index not in ptes:
                self._fault_in(index)
            chunk = data[pos : pos + stop - start]
            if stop - start == PAGE_SIZE:  # a whole page: no old bytes or runs survive
                pages[index] = (bytes(chunk), _HOST_PAGE_RUNS)
            else:
                old, runs = pages[index]
                pages[index] = (old[:start] + chunk + old[stop:], paint(runs, start, stop, Origin.HOST))
            pos += stop - start
            offset += stop - start

    def madvise(self, offset: int, length: int, advice: int) -> None:
        """``madvise()`` on the mapping: ``MADV_HUGEPAGE`` is accepted, ``MADV_DONTNEED``
        drops the page-table entries (the next access faults again), and
        ``MADV_COLLAPSE`` is ``EINVAL``: a guest_memfd folio is never collapsed into a huge
        page, which could map private memory into the host (docs/semantics.md §6)."""
        if advice not in (MADV_HUGEPAGE, MADV_DONTNEED):  # MADV_COLLAPSE among them
            raise IoctlError(errno.EINVAL, "madvise")
        if advice == MADV_DONTNEED:
            self.zap(offset >> PAGE_SHIFT, (offset + length + PAGE_SIZE - 1) >> PAGE_SHIFT)

    def zap(self, lo: int, hi: int) -> None:
        """``unmap_mapping_pages()`` for pages ``[lo, hi)``."""
        if self.ptes:
            self.ptes = {p for p in self.ptes if not lo <= p < hi}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.gmem.mappings.remove(self)


class GuestMemfd:
    """A guest_memfd file of ``size`` bytes created with ``flags`` on ``vm``."""

    def __init__(self, vm: Vm, size: int, flags: int, gpa: int) -> None:
        self.vm = vm
        self.size = size
        self.flags = flags
        self.gpa = gpa
        self.npages = size >> PAGE_SHIFT
        initial = 0 if flags & GUEST_MEMFD_FLAG_INIT_SHARED else KVM_MEMORY_ATTRIBUTE_PRIVATE
        self.attributes = RangeMap(self.npages, initial)
        self.requests = RangeMap(self.npages, NO_REQUEST)
        self.pages: dict[int, Page] = {}
        self.pins: dict[int, int] = {}
        self.stale_pins: dict[int, int] = {}
        self.mappings: list[HostMapping] = []
        #: The memslot binding the file at ``gpa`` (docs/semantics.md §3 *Memslots*).
        self.memslot = True
        #: ``time.monotonic()`` past which a call's per-page work stops with
        #: :class:`~guestmem.errors.TimeLimit` (a scenario run's ``--timeout``); None: never.
        self.deadline: float | None = None
        self.ino = next(_INODES)

    def __repr__(self) -> str:
        return f"GuestMemfd(size={self.size:#x}, flags={self.flags:#x}, allocated={len(self.pages)})"

    # --- queries ---------------------------------------------------------------------------
    def is_private(self, offset: int) -> bool:
        return bool(self.attributes[offset >> PAGE_SHIFT] & KVM_MEMORY_ATTRIBUTE_PRIVATE)

    def allocated(self, lo: int = 0, hi: int | None = None) -> list[int]:
        """Allocated page indices in ``[lo, hi)``, ascending; cost ``min(range, allocated)``."""
        hi = self.npages if hi is None else hi
        pages = self.pages
        if hi - lo <= len(pages):
            return [p for p in range(lo, hi) if p in pages]
        return sorted(p for p in pages if lo <= p < hi)

    def peek(self, offset: int, size: int) -> bytes:
        """Contents without side effects (unallocated pages read as zeros)."""
        pages = self.pages
        return b"".join(pages.get(i, INIT_PAGE)[0][a:b] for i, a, b in self._spans(offset, size))

    def origins(self, offset: int, size: int) -> list[tuple[int, int, Origin]]:
        """Provenance of ``[offset, offset+size)`` as ``(start, end, origin)`` file offsets."""
        out: list[tuple[int, int, Origin]] = []
        for index, a, b in self._spans(offset, size):
            runs: Runs = self.pages.get(index, INIT_PAGE)[1]
            out.extend(clip(runs, a, b, index << PAGE_SHIFT))
        return out

    def digest(self) -> str:
        """A hash of every piece of state a call may change: attributes, contents,
        provenance, pins, guest requests and host page-table entries."""
        h = hashlib.sha256()
        h.update(repr((self.attributes.key(), self.requests.key())).encode())
        for index in sorted(self.pages):
            data, runs = self.pages[index]
            h.update(index.to_bytes(8, "little") + data + repr(runs).encode())
        h.update(repr((sorted(self.pins.items()), sorted(self.stale_pins.items()))).encode())
        h.update(repr([sorted(m.ptes) for m in self.mappings]).encode())
        return h.hexdigest()

    # --- snapshots (the checker's restore-apply-snapshot loop; no behaviour change) -------
    def snapshot(self) -> GmemSnapshot:
        """Every piece of state a call may change (as :meth:`digest` covers), as one
        hashable tuple; equal states give equal tuples. Pages are immutable and shared."""
        pages, pins, stale = self.pages, self.pins, self.stale_pins  # sorted only if 2 or more
        return (
            self.attributes.key(),
            self.requests.key(),
            tuple(sorted(pages.items())) if len(pages) > 1 else tuple(pages.items()),
            tuple(sorted(pins.items())) if len(pins) > 1 else tuple(pins.items()),
            tuple(sorted(stale.items())) if len(stale) > 1 else tuple(stale.items()),
            tuple(tuple(sorted(m.ptes)) if len(m.ptes) > 1 else tuple(m.ptes) for m in self.mappings),
        )

    def restore(self, snap: GmemSnapshot) -> None:
        """Put back a :meth:`snapshot` of this file (same mappings, in the same order)."""
        attributes, requests, pages, pins, stale_pins, ptes = snap
        self.attributes.restore(attributes)
        self.requests.restore(requests)
        self.pages.clear()
        self.pages.update(pages)
        self.pins.clear()
        self.pins.update(pins)
        self.stale_pins.clear()
        self.stale_pins.update(stale_pins)
        for mapping, mapped in zip(self.mappings, ptes, strict=True):
            mapping.ptes = set(mapped)

    def rows(self) -> tuple[PageRow, ...]:
        """The same state as :meth:`snapshot`, one :data:`PageRow` per page (for files of a
        few pages: the checker's states, where pages are compared and permuted)."""
        attributes, requests = self.attributes.expand(), self.requests.expand()
        pages, pins, stale = self.pages, self.pins, self.stale_pins
        ptes = [mapping.ptes for mapping in self.mappings]
        rows: list[PageRow] = []
        for i in range(self.npages):
            mapped = 0
            for m, mapped_pages in enumerate(ptes):
                if i in mapped_pages:
                    mapped |= 1 << m
            page = pages.get(i, UNALLOCATED)
            row = (attributes[i], requests[i], page, pins.get(i, 0), stale.get(i, 0), mapped)
            rows.append(_new_row(PageRow, row))  # PageRow(*row), without the Python-level __new__
        return tuple(rows)

    def restore_rows(self, rows: tuple[PageRow, ...]) -> None:
        """Put back a :meth:`rows` of this file (same mappings, in the same order)."""
        self.attributes.assign([row.attributes for row in rows])
        self.requests.assign([row.request for row in rows])
        pages, pins, stale = self.pages, self.pins, self.stale_pins
        pages.clear()
        pins.clear()
        stale.clear()
        for i, (_, _, page, pinned, stale_pinned, _) in enumerate(rows):
            if page:
                pages[i] = page
            if pinned:
                pins[i] = pinned
            if stale_pinned:
                stale[i] = stale_pinned
        for m, mapping in enumerate(self.mappings):
            mapping.ptes = {i for i, row in enumerate(rows) if row.mapped >> m & 1}

    def _spans(self, offset: int, size: int) -> Iterator[tuple[int, int, int]]:
        end = offset + size
        while offset < end:
            index = offset >> PAGE_SHIFT
            start = offset & (PAGE_SIZE - 1)
            stop = min(PAGE_SIZE, start + end - offset)
            yield index, start, stop
            offset += stop - start

    # --- the file (docs/semantics.md §6) -------------------------------------------------------
    def stat(self) -> FileStat:
        return FileStat(self.size, PAGE_SIZE, self.ino)

    def read(self, size: int) -> bytes:
        """``read()``: the file has no read method, so the VFS answers ``EINVAL``; memory is
        reached only through a mapping or the guest."""
        raise IoctlError(errno.EINVAL, "read")

    def write(self, data: bytes) -> int:
        """``write()``: no write method either, ``EINVAL``."""
        raise IoctlError(errno.EINVAL, "write")

    def pread(self, size: int, offset: int) -> bytes:
        """``pread()``: positional I/O on a file that is not seekable is ``ESPIPE``."""
        raise IoctlError(errno.ESPIPE, "pread")

    def pwrite(self, data: bytes, offset: int) -> int:
        raise IoctlError(errno.ESPIPE, "pwrite")

    # --- host side ---------------------------------------------------------------------------
    def mmap(self, shared: bool = True) -> HostMapping:
        """``mmap()`` of the whole file: ``ENODEV`` without ``MMAP``, ``EINVAL`` for private."""
        if not self.flags & GUEST_MEMFD_FLAG_MMAP:
            raise IoctlError(errno.ENODEV, "mmap")
        if not shared:
            raise IoctlError(errno.EINVAL, "mmap")
        mapping = HostMapping(self)
        self.mappings.append(mapping)
        return mapping

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        """``fallocate()``: ``PUNCH_HOLE|KEEP_SIZE`` deallocates, ``KEEP_SIZE`` preallocates.

        Checks as ``vfs_fallocate`` then ``kvm_gmem_fallocate`` (docs/semantics.md §6):
        offset and length are ``loff_t`` (a u64 above 2^63 is negative); a length of 0 or
        less or a negative offset → ``EINVAL``; other modes → ``EOPNOTSUPP``; an end beyond
        ``LLONG_MAX`` → ``EFBIG``; unaligned → ``EINVAL``; preallocating past the end →
        ``EINVAL``; punching past it is clipped. Preallocated folios are not up to date: the
        first reader still sees zeros and content policies pass them by, so the model
        records nothing for them (§3 *Allocated*).
        """
        offset, length = _loff_t(offset), _loff_t(length)
        if offset < 0 or length <= 0:
            raise IoctlError(errno.EINVAL, "fallocate")
        if not mode & FALLOC_FL_KEEP_SIZE or mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE):
            raise IoctlError(errno.EOPNOTSUPP, "fallocate")
        if offset + length > _LLONG_MAX:
            raise IoctlError(errno.EFBIG, "fallocate")
        if offset % PAGE_SIZE or length % PAGE_SIZE:
            raise IoctlError(errno.EINVAL, "fallocate")
        lo = offset >> PAGE_SHIFT
        hi = min(self.npages, (offset + length) >> PAGE_SHIFT)
        if mode & FALLOC_FL_PUNCH_HOLE:
            for mapping in self.mappings:
                mapping.zap(lo, hi)
            for index in self.allocated(lo, hi):
                del self.pages[index]
                count = self.pins.pop(index, 0)
                if count:
                    self.stale_pins[index] = self.stale_pins.get(index, 0) + count
            return
        if offset + length > self.size:
            raise IoctlError(errno.EINVAL, "fallocate")

    def punch_hole(self, offset: int, length: int) -> None:
        """``fallocate(PUNCH_HOLE | KEEP_SIZE)``; the attribute is unchanged (§3 *Punch hole*)."""
        self.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)

    def pin(self, offset: int, size: int) -> None:
        """Take a long-term pin on every page of the range (``PIN_LONGTERM_TEST_START``).

        Pinning goes through a host mapping, so it needs ``MMAP``, faults pages in, and
        fails with ``EFAULT`` on a private page or past the end. A failed pin holds no page,
        but GUP faulted in, one by one, the pages before the one that failed: they are
        allocated (docs/semantics.md §3 *Pins*; the RFC v5 kernel scrambles them on a later
        unspecified conversion, as any allocated page).
        """
        lo, hi = self._page_span(offset, size, "pin")
        if not self.flags & GUEST_MEMFD_FLAG_MMAP:
            raise IoctlError(errno.EFAULT, "pin")
        failing = self.attributes.first_not(lo, min(hi, self.npages), 0)
        if failing is None and hi > self.npages:
            failing = self.npages
        if failing is not None:
            for index in range(lo, failing):
                self.pages.setdefault(index, INIT_PAGE)
            raise IoctlError(errno.EFAULT, "pin")
        for index in range(lo, hi):
            self._on_time(index - lo)
            self.pages.setdefault(index, INIT_PAGE)
            self.pins[index] = self.pins.get(index, 0) + 1

    def unpin(self, offset: int, size: int, punched: Collection[int] = ()) -> None:
        """Drop one pin per page; a page with none → ``EINVAL``, all or nothing.

        A pin whose page was punched out still counts here: the holder keeps the old folio.
        A range names no holder, so where a page has both a pin on its current folio and
        one on a punched-out folio, the current folio's is dropped unless the caller names
        the pages this holder saw punched out (``punched``): for those the old folio's.
        """
        lo, hi = self._page_span(offset, size, "unpin")

        tables = [
            (index, self.stale_pins if index in punched or not self.pins.get(index) else self.pins)
            for index in range(lo, hi)
        ]
        if any(not table.get(index) for index, table in tables):
            raise IoctlError(errno.EINVAL, "unpin")
        for index, table in tables:
            table[index] -= 1
            if not table[index]:
                del table[index]

    def _page_span(self, offset: int, size: int, call: str) -> tuple[int, int]:
        if offset < 0 or size <= 0 or offset % PAGE_SIZE or size % PAGE_SIZE:
            raise IoctlError(errno.EINVAL, call)
        return offset >> PAGE_SHIFT, (offset + size) >> PAGE_SHIFT

    # --- guest side ----------------------------------------------------------------------------
    def delete_memslot(self) -> None:
        """``KVM_SET_USER_MEMORY_REGION2`` with size 0: the guest's GPAs for this file are
        no longer memory, so guest accesses exit to the VMM as MMIO (§3 *Memslots*);
        contents and attributes stay with the file."""
        self.memslot = False

    def restore_memslot(self) -> None:
        """Bind the file at ``gpa`` again (``KVM_SET_USER_MEMORY_REGION2`` with its size):
        guest accesses reach the same contents and attributes as before the deletion."""
        self.memslot = True

    def guest_read(self, offset: int, size: int, access: str | None = None) -> bytes:
        """The guest reads through its memslot; ``access`` is ``private``, ``shared`` or
        None for the page's current state. A mismatch raises :class:`MemoryFault`."""
        out = bytearray()
        for index, a, b in self._guest_spans(offset, size, access, False):
            out += self.pages[index][0][a:b]
        return bytes(out)

    def guest_write(self, offset: int, data: bytes, access: str | None = None) -> None:
        """The guest writes ``data``; a mismatch raises :class:`MemoryFault`."""
        pos = 0
        for index, a, b in self._guest_spans(offset, len(data), access, True):
            old, runs = self.pages[index]
            origin = Origin.GUEST_PRIVATE if self.is_private(index << PAGE_SHIFT) else Origin.GUEST_SHARED
            self.pages[index] = (old[:a] + data[pos : pos + b - a] + old[b:], paint(runs, a, b, origin))
            pos += b - a

    def _guest_spans(
        self, offset: int, size: int, access: str | None, access_is_write: bool
    ) -> Iterator[tuple[int, int, int]]:
        if access not in (None, "private", "shared"):
            raise ValueError(f"access must be 'private', 'shared' or None, not {access!r}")
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError(f"guest access [{offset:#x}, +{size:#x}) is outside the memslot")
        self.vm.run_guest()
        if not self.memslot:  # the GPA is no longer memory: the access exits as MMIO
            raise MmioExit(self.gpa + offset, mmio_length(offset, size), access_is_write)
        has_private = self.vm.platform.private_memory
        for index, a, b in self._spans(offset, size):
            private = bool(self.attributes[index] & KVM_MEMORY_ATTRIBUTE_PRIVATE)
            want = private if access is None and has_private else access == "private"
            if want != private:
                flags = KVM_MEMORY_EXIT_FLAG_PRIVATE if want else 0
                raise MemoryFault(self.gpa + (index << PAGE_SHIFT), PAGE_SIZE, flags)
            if index not in self.pages:
                self.pages[index] = INIT_PAGE
            yield index, a, b

    def guest_request(self, offset: int, size: int, to: Direction | str) -> None:
        """The guest asks to share (P→S) or unshare (S→P) a range: ``KVM_HC_MAP_GPA_RANGE``,
        pKVM ``MEM_SHARE``/``MEM_UNSHARE``. Recorded until a conversion honours it."""
        self.vm.run_guest()
        lo, hi = self._page_span(offset, size, "KVM_HC_MAP_GPA_RANGE")
        if hi > self.npages:
            raise IoctlError(errno.EINVAL, "KVM_HC_MAP_GPA_RANGE")
        self.requests.set(lo, hi, REQUEST_FOR[Direction(to)])

    # --- launch-time population (docs/semantics.md §3 *Populate*) ------------------------------
    def populate(self, offset: int, size: int, source: bytes | None = None) -> None:
        """The platform's launch ioctl that puts the initial payload into private memory
        (TDX ``KVM_TDX_INIT_MEM_REGION``, SNP ``KVM_SEV_SNP_LAUNCH_UPDATE``).

        With ``source`` (the VMM's separate buffer, zero-filled to ``size``) the trusted
        side copies it into each page; without one it takes each page's own contents, which
        needs the revision to allow it and in-place conversion to be on. Checked in this
        order, all before anything changes: no such ioctl on the platform → ``ENOTTY``; the
        VM is running → ``EINVAL``; an empty, unaligned or out-of-file range → ``EINVAL``;
        no source where one is needed → the platform's answer (TDX ``EOPNOTSUPP``, SNP
        ``EINVAL``); a page of the range is shared → ``EINVAL``. The bytes become the
        measured payload.
        """
        vm = self.vm
        platform = vm.platform
        call = platform.populate or "populate"
        if not platform.populate:
            raise IoctlError(errno.ENOTTY, call)
        if vm.phase is Phase.RUNNING:
            raise IoctlError(errno.EINVAL, call)
        if offset < 0 or size <= 0 or offset % PAGE_SIZE or size % PAGE_SIZE or offset + size > self.size:
            raise IoctlError(errno.EINVAL, call)
        if source is None and not (vm.revision.populate_in_place and vm.in_place_conversion):
            raise IoctlError(errno_code(platform.populate_no_source), call)
        lo, hi = offset >> PAGE_SHIFT, (offset + size) >> PAGE_SHIFT
        if self.attributes.first_not(lo, hi, KVM_MEMORY_ATTRIBUTE_PRIVATE) is not None:
            raise IoctlError(errno.EINVAL, call)
        pages = self.pages
        if source is not None:
            buffer = source[:size].ljust(size, b"\0")
            for index in range(lo, hi):
                start = (index - lo) << PAGE_SHIFT
                pages[index] = (buffer[start : start + PAGE_SIZE], ((0, PAGE_SIZE, Origin.PAYLOAD),))
            return
        for index in range(lo, hi):
            data, runs = pages.get(index, INIT_PAGE)
            pages[index] = (data, relabel(runs, Origin.HOST, Origin.PAYLOAD))

    # --- the conversion ioctl --------------------------------------------------------------------
    def convert(self, offset: int, size: int, to: Direction | str, flags: int = 0, **fields: int) -> None:
        """Build the struct and call :meth:`set_memory_attributes2`."""
        direction = Direction(to) if isinstance(to, str) else to
        arg = KvmMemoryAttributes2(
            offset=offset,
            size=size,
            attributes=KVM_MEMORY_ATTRIBUTE_PRIVATE if direction is Direction.TO_PRIVATE else 0,
            flags=flags,
        )
        for name, value in fields.items():
            if name == "reserved":
                raise TypeError("pass reserved words through a raw struct")
            setattr(arg, name, value)
        self.set_memory_attributes2(arg)

    def try_set_memory_attributes2(self, arg: ArgBuffer) -> int:
        """As :meth:`set_memory_attributes2`, returning 0 or the errno instead of raising."""
        return errno_of(lambda: self.set_memory_attributes2(arg))

    def set_memory_attributes2(self, arg: ArgBuffer) -> None:
        """``KVM_SET_MEMORY_ATTRIBUTES2`` on this guest_memfd (docs/semantics.md §4).

        ``arg`` is the 128-byte struct: ``bytes`` (read-only: a failure that writes
        ``error_offset`` back becomes ``EFAULT``, as a read-only user page would), a
        ``bytearray``/writable ``memoryview``, or a :class:`KvmMemoryAttributes2`.
        """
        vm = self.vm
        revision, platform = vm.revision, vm.platform
        # 0. the ioctl exists only where guest_memfd tracks PRIVATE itself
        if not vm.in_place_conversion:
            raise IoctlError(errno.ENOTTY, IOCTL)
        # 1. the argument must be readable
        view = memoryview(arg).cast("B") if not isinstance(arg, memoryview) else arg.cast("B")
        if view.nbytes < ARG_SIZE:
            raise IoctlError(errno.EFAULT, IOCTL)
        offset, size, attributes, flags, error_offset, *reserved = struct.unpack_from("<16Q", view)
        # 2. flags
        policy = revision.decode(flags)
        if policy is None:
            raise IoctlError(errno.EINVAL, IOCTL)
        # 3. reserved words, error_offset on input
        if any(reserved) or (revision.rejects_error_offset_input and error_offset):
            raise IoctlError(errno.EINVAL, IOCTL)
        # 4./5. private memory, attributes
        if not revision.accepts_attributes(platform, attributes):
            raise IoctlError(errno.EINVAL, IOCTL)
        # 6. size, overflow
        if size == 0 or offset + size >= _U64:
            raise IoctlError(errno.EINVAL, IOCTL)
        # 7. alignment
        if offset % PAGE_SIZE or size % PAGE_SIZE:
            raise IoctlError(errno.EINVAL, IOCTL)
        # 8. bounds
        if offset >= self.size or offset + size > self.size:
            raise IoctlError(errno.EINVAL, IOCTL)
        lo, hi = offset >> PAGE_SHIFT, (offset + size) >> PAGE_SHIFT
        to_private = bool(attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE)
        direction = Direction.TO_PRIVATE if to_private else Direction.TO_SHARED
        unchanged = self.attributes.first_not(lo, hi, attributes) is None
        if revision.early_return and unchanged:
            return  # v8: nothing to change, no side effects
        # 9. policy supported for platform, direction and phase
        effect = revision.effect(platform, direction, policy, vm.phase)
        if effect is None:
            self._fail(view, errno.EOPNOTSUPP, offset)
        # 10. consent (pKVM once running)
        wanted = REQUEST_FOR[direction]
        if revision.needs_consent(platform, vm.phase):
            missing = self.requests.first_not(lo, hi, wanted)
            if missing is not None:
                self._fail(view, errno.EPERM, missing << PAGE_SHIFT)
        # 10a. storing new attributes needs memory (a maple-tree node); a range that
        # already has them needs none
        if not unchanged and not vm.take_allocation():
            self._fail(view, errno.ENOMEM, offset)
        # 11. to-private: unmap every host mapping, then look for elevated refcounts
        if to_private:
            for mapping in self.mappings:
                mapping.zap(lo, hi)
            pinned = [p for p in self.pins if lo <= p < hi]
            if pinned:
                self._fail(view, errno.EAGAIN, min(pinned) << PAGE_SHIFT)
        # 12. point of no return: apply attributes and the content policy
        assert effect is not None
        consented = self._consented(lo, hi, wanted)
        indices = self.allocated(lo, hi)
        lost = self._lost(indices) if to_private and not unchanged else []
        if not revision.applied_by_kvm(platform, direction, policy):
            # a native effect comes from the conversion: pages already there keep theirs
            indices = [i for i in indices if self.attributes[i] != attributes]
        self.attributes.set(lo, hi, attributes)
        self._apply(effect, direction, indices, consented)
        self.pages.update(dict.fromkeys(lost, LOST_PAGE))
        for start, end, value in list(self.requests.runs(lo, hi)):
            if value == wanted:
                self.requests.set(start, end, NO_REQUEST)

    def _on_time(self, count: int) -> None:
        """Every 64 pages of a call's work: stop with :class:`TimeLimit` past the deadline."""
        if self.deadline is not None and not count & 63 and time.monotonic() > self.deadline:
            raise TimeLimit("a step stopped at its run's time limit")

    def _lost(self, indices: Iterable[int]) -> list[int]:
        """Pages of a to-private conversion that changes state which were private already and
        leave the guest with what they held (docs/semantics.md §3 *Mixed ranges*): the
        revision unmaps them from the guest too, and on this platform that removes them
        from the confidential VM. Only a running guest has them mapped (a model
        assumption, §8). A page that held only zeros reads the same zeros once the guest
        accepts it again, so only pages with other bytes count as lost."""
        vm = self.vm
        if not (
            vm.revision.unmaps_private_on_to_private
            and vm.platform.unmap_loses_private
            and vm.phase is Phase.RUNNING
        ):
            return []
        pages, attributes = self.pages, self.attributes
        return [i for i in indices if attributes[i] & KVM_MEMORY_ATTRIBUTE_PRIVATE and any(pages[i][0])]

    def _fail(self, view: memoryview, code: int, error_offset: int) -> None:
        """Write ``error_offset`` back, then fail; an unwritable argument gives ``EFAULT``."""
        if view.readonly:
            raise IoctlError(errno.EFAULT, IOCTL)
        struct.pack_into("<Q", view, 32, error_offset)
        raise IoctlError(code, IOCTL, error_offset)

    def _consented(self, lo: int, hi: int, wanted: int) -> RangeMap | None:
        """Which pages of the range the guest asked to convert, as runs (1: asked; it
        costs what the requests' runs cost, never what the range's size does); None: all."""
        if self.requests.first_not(lo, hi, wanted) is None:
            return None
        asked = RangeMap(hi, 0)
        for start, end, value in self.requests.runs(lo, hi):
            if value == wanted:
                asked.set(start, end, 1)
        return asked

    def _apply(
        self, effect: Effect, direction: Direction, indices: Iterable[int], consented: RangeMap | None
    ) -> None:
        pages = self.pages
        if effect is Effect.ZEROS:
            pages.update(dict.fromkeys(indices, ZEROED_PAGE))
        elif effect is Effect.FILL_AB:
            pages.update(dict.fromkeys(indices, FILL_PAGE))
        elif effect is Effect.PRESERVED:
            self._carry(direction, indices, consented)
        else:
            origin = KEYED[effect]
            domain = keyed_domain(origin, direction)
            key = self.vm.key
            for count, index in enumerate(indices):
                self._on_time(count)
                data = keyed_bytes(key, domain, index << PAGE_SHIFT, pages[index][0])
                pages[index] = (data, ((0, PAGE_SIZE, origin),))

    def _carry(self, direction: Direction, indices: Iterable[int], consented: RangeMap | None) -> None:
        """Preserved contents change hands: record whether the guest asked (provenance)."""
        pages = self.pages
        if direction is Direction.TO_SHARED:
            old, new = Origin.GUEST_PRIVATE, Origin.DISCLOSED
        else:
            old = Origin.HOST
            vm = self.vm
            measured = vm.platform.launch and vm.phase is Phase.PRE_LAUNCH
            new = Origin.PAYLOAD if measured else Origin.ACCEPTED
        for count, index in enumerate(indices):
            self._on_time(count)
            if consented is None or consented[index] or new is Origin.PAYLOAD:
                data, runs = pages[index]
                pages[index] = (data, relabel(runs, old, new))


def mmio_length(offset: int, size: int) -> int:
    """How many bytes the guest's first access of ``[offset, +size)`` moves, which is what
    an MMIO exit there reports (docs/semantics.md §8, item 11): the guest copies each page's
    part of an access in 8-byte words, then the rest byte by byte."""
    first = min(size, PAGE_SIZE - offset % PAGE_SIZE)
    return 8 if first >= 8 else min(first, 1)

"""What every backend offers (the scenario API) and what every operation returns."""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

from guestmem.errors import GuestExit, HostFault, IoctlError
from guestmem.spec.terms import Direction

#: The largest guest_memfd (pages) any backend accepts; :meth:`Backend.max_pages` may say less.
MAX_PAGES = (1 << 40) - 1


def check_guest_range(offset: int, size: int, file_size: int) -> None:
    """The guest access ``[offset, +size)`` lies in the file, which the memslot covers
    (docs/semantics.md §3 *Memslots*): a guest reaches any address of it. ``ValueError`` if not."""
    if offset < 0 or size < 0 or offset + size > file_size:
        raise ValueError(f"guest access [{offset:#x}, +{size:#x}) is outside the memslot")


class Unavailable(Exception):
    """The backend cannot run this at all (no ``/dev/kvm``, VM type not offered, no
    conversion ioctl); the message is the reason a run or step is reported skipped."""


@dataclass
class Outcome:
    """What one operation did, in the shape of ``guestmem run --format json``.

    ``errno`` names a failed call (``"EAGAIN"``) with ``error_offset`` when the call wrote
    one back; ``signal`` is ``"SIGBUS"`` for a faulting host access; ``data`` is what a
    read returned; ``exit`` describes a guest exit to the VMM (``{"reason":
    "MEMORY_FAULT", "gpa": …, "size": …, "flags": …}``); ``skipped`` is the reason a
    backend could not perform the operation (never a pass).
    """

    errno: str | None = None
    error_offset: int | None = None
    signal: str | None = None
    data: bytes | None = None
    exit: dict[str, Any] | None = None
    skipped: str | None = None
    #: Provenance of ``data`` where the backend knows it (the model does).
    origins: list[tuple[int, int, str]] | None = field(default=None, compare=False)
    #: A read summarised after its run was judged (``RunResult.compact`` in
    #: :mod:`guestmem.scenario.runner`): ``data`` then holds the first bytes, these the
    #: whole's length, its SHA-256 and, when every byte is the same, that byte.
    data_size: int | None = None
    data_sha256: str | None = None
    data_fill: int | None = None

    @property
    def ok(self) -> bool:
        return self.errno is None and self.signal is None and self.exit is None and self.skipped is None

    def to_json(self) -> dict[str, Any]:
        return {
            "errno": self.errno,
            "error_offset": self.error_offset,
            "signal": self.signal,
            "data": None if self.data is None else self.data.hex(),
            "exit": self.exit,
        }


@dataclass(frozen=True)
class PageView:
    """One page as :meth:`Machine.observe` sees it: its attribute, whether it is allocated,
    the provenance of what a reader sees, how many pins hold it and how many host mappings
    have it mapped (docs/semantics.md §3)."""

    private: bool
    allocated: bool
    origins: tuple[str, ...]
    pins: int = 0
    mapped: int = 0


class PageViews(Sequence[PageView]):
    """The :class:`PageView` of each of the first ``observed`` pages (all of them unless
    :meth:`Machine.observe` was given a limit), stored as runs of equal views; its length
    is the file's page count, and a page past the observed ones raises ``IndexError``. It
    costs what the touched pages and attribute runs cost, never what the file's size does."""

    def __init__(
        self, npages: int, starts: list[int], views: list[PageView], observed: int | None = None
    ) -> None:
        self.npages = npages
        self.starts = starts
        self.views = views
        #: How many pages, from the first, have a view.
        self.observed = npages if observed is None else observed

    def __len__(self) -> int:
        return self.npages

    @overload
    def __getitem__(self, index: int) -> PageView: ...
    @overload
    def __getitem__(self, index: slice) -> list[PageView]: ...
    def __getitem__(self, index: int | slice) -> PageView | list[PageView]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.npages))]
        if index < 0:
            index += self.npages
        if not 0 <= index < self.observed:
            raise IndexError(index)
        return self.views[bisect_right(self.starts, index) - 1]

    def __iter__(self) -> Iterator[PageView]:
        for i in range(self.observed):
            yield self[i]

    def runs(self) -> list[tuple[int, int, PageView]]:
        """``(first page, end page, view)`` per run of the observed pages, ascending."""
        ends = [*self.starts[1:], self.observed]
        return list(zip(self.starts, ends, self.views, strict=True))


def outcome_of(action: Callable[[], bytes | None]) -> Outcome:
    """Run one call of a backend and say what it did: a failed call's errno and
    ``error_offset`` (:class:`~guestmem.errors.IoctlError`), a host access's signal
    (:class:`~guestmem.errors.HostFault`), a guest exit to the VMM
    (:class:`~guestmem.errors.GuestExit`), else the bytes read (None for a write or a call)."""
    try:
        data = action()
    except IoctlError as err:
        return Outcome(errno=err.name, error_offset=err.error_offset)
    except HostFault as fault:
        return Outcome(signal=fault.signal)
    except GuestExit as stop:
        return Outcome(exit=stop.record())
    return Outcome(data=data)


def attributes2(
    offset: int, size: int, attributes: int, flags: int, error_offset: int, reserved: tuple[int, ...]
) -> bytearray:
    """A raw, writable ``struct kvm_memory_attributes2`` (128 bytes, docs/semantics.md §9); each word
    is taken modulo 2^64, as a C caller's u64 would be."""
    words = (offset, size, attributes, flags, error_offset, *reserved)
    if len(words) > 16:
        raise ValueError(f"reserved has {len(reserved)} words; the struct has 11")
    arg = bytearray(128)
    struct.pack_into(f"<{len(words)}Q", arg, 0, *(w & ((1 << 64) - 1) for w in words))
    return arg


class Machine(Protocol):
    """One VM with one guest_memfd, one host mapping and one vCPU.

    Offsets are guest_memfd file offsets; the guest sees offset ``o`` at GPA
    ``gpa_base + o``. Host accesses go through the VMM's mapping, or with ``mapping=1``
    through a second process's mapping of the same file (the forked child of
    ``guest_memfd_conversions_test``'s ``forked_accesses``), made at first use. Host
    and guest accesses proceed page by page in ascending order, and a fault stops an
    access at the faulting page with earlier pages done.
    """

    backend: str
    platform: str
    abi: str
    size: int
    gpa_base: int
    #: ``time.monotonic()`` past which a guest command is stopped (the run's ``--timeout``);
    #: None: only the backend's own per-command limit.
    deadline: float | None

    def host_write(self, offset: int, data: bytes, mapping: int = 0) -> Outcome: ...
    def host_read(self, offset: int, size: int, mapping: int = 0) -> Outcome: ...
    def guest_write(self, offset: int, data: bytes, access: str | None = None) -> Outcome: ...
    def guest_read(self, offset: int, size: int, access: str | None = None) -> Outcome: ...
    def convert(
        self,
        offset: int,
        size: int,
        attributes: int,
        flags: int = 0,
        *,
        reserved: tuple[int, ...] = (),
        error_offset_in: int = 0,
    ) -> Outcome: ...
    def punch_hole(self, offset: int, size: int) -> Outcome: ...
    def pin(self, offset: int, size: int) -> Outcome: ...
    def unpin(self, offset: int, size: int) -> Outcome: ...
    def launch(self) -> Outcome: ...
    def populate(self, offset: int, size: int, source: bytes | None = None) -> Outcome:
        """The launch ioctl that puts the initial payload into private memory, from
        ``source`` or, with none, from the pages themselves (docs/semantics.md §3
        *Populate*)."""
        ...

    def delete_memslot(self) -> Outcome:
        """Delete the memslot that binds the guest_memfd: the guest's GPAs there are no
        longer memory, and guest accesses exit as MMIO (docs/semantics.md §3 *Memslots*)."""
        ...

    def restore_memslot(self) -> Outcome:
        """Make the memslot again as the machine made it: same GPA, host address and file
        (docs/semantics.md §3 *Memslots*). Where it is there already, nothing changes."""
        ...

    def guest_request(self, offset: int, size: int, to: Direction) -> Outcome: ...
    def observe(self, limit: int | None = None) -> PageViews | None:
        """Every page as it is now (:class:`PageView`), or the first ``limit`` pages, where
        the backend can see inside (the model); None where it cannot (a real kernel)."""
        ...

    def check_extension(self, cap: int) -> int: ...
    def close(self) -> None: ...


class Backend(Protocol):
    """Opens machines. ``open`` raises :class:`Unavailable` when it cannot run the
    platform at all, and :class:`~guestmem.errors.IoctlError` when guest_memfd creation
    itself fails (bad ``size`` or ``flags``)."""

    name: str

    def max_pages(self) -> tuple[int, str]:
        """The largest guest_memfd (pages) the backend accepts here, at most
        :data:`MAX_PAGES`, and why (see :func:`guestmem.scenario.runner.check_limits`)."""
        ...

    def open(self, platform: str, abi: str, size: int, flags: int) -> Machine: ...

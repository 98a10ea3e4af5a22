"""The model backend: :class:`~guestmem.backend.base.Machine` over :mod:`guestmem.model`."""

from __future__ import annotations

import errno
from collections.abc import Collection
from typing import Any

from guestmem.backend.base import (
    MAX_PAGES,
    Outcome,
    PageView,
    PageViews,
    attributes2,
    check_guest_range,
    outcome_of,
)
from guestmem.errors import IoctlError
from guestmem.model import GuestMemfd, Vm
from guestmem.model.gmem import HostMapping
from guestmem.spec.platforms.base import Platform
from guestmem.spec.revisions import Revision
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_MMAP,
    KVM_HC_MAP_GPA_RANGE,
    KVM_MAP_GPA_RANGE_DECRYPTED,
    KVM_MAP_GPA_RANGE_ENCRYPTED,
    PAGE_SHIFT,
    PAGE_SIZE,
)


def hypercall_exit(gpa: int, size: int, to: Direction) -> dict[str, Any]:
    """The ``KVM_EXIT_HYPERCALL`` record of a ``KVM_HC_MAP_GPA_RANGE`` request."""
    attributes = KVM_MAP_GPA_RANGE_ENCRYPTED if to is Direction.TO_PRIVATE else KVM_MAP_GPA_RANGE_DECRYPTED
    return {
        "reason": "HYPERCALL",
        "nr": KVM_HC_MAP_GPA_RANGE,
        "gpa": gpa,
        "npages": size // PAGE_SIZE,
        "attributes": attributes,
    }


class ModelMachine:
    """One model VM, guest_memfd, host mapping (when ``MMAP``) and vCPU. ``platform`` and
    ``abi`` may be given as spec objects (a variant, such as an ablation the checker
    searches, keeps the name and so the key of the platform it varies)."""

    backend = "model"

    def __init__(
        self, platform: str | Platform, abi: str | Revision, size: int, flags: int, key_seed: int = 0
    ) -> None:
        self.vm = Vm(platform, abi, key_seed=key_seed)
        self.gmem: GuestMemfd = self.vm.create_guest_memfd(size, flags)
        self.mapping = self.gmem.mmap() if flags & GUEST_MEMFD_FLAG_MMAP else None
        #: Mappings of other host processes (``mapping=1``), made at first use.
        self.others: dict[int, HostMapping] = {}
        self.platform = self.vm.platform.name
        self.abi = self.vm.revision.name
        self.size = size
        self.gpa_base = self.gmem.gpa

    @property
    def deadline(self) -> float | None:
        """The run's deadline: a long call on the file stops there (:class:`~guestmem.errors.TimeLimit`)."""
        return self.gmem.deadline

    @deadline.setter
    def deadline(self, value: float | None) -> None:
        self.gmem.deadline = value

    def _with_origins(self, outcome: Outcome, offset: int, size: int) -> Outcome:
        if outcome.data is not None:
            outcome.origins = [(a, b, o.label) for a, b, o in self.gmem.origins(offset, size)]
        return outcome

    def _mapping(self, which: int) -> HostMapping:
        if self.mapping is None:
            raise IoctlError(errno.ENODEV, "mmap")  # no host mapping without MMAP
        if not which:
            return self.mapping
        if which not in self.others:
            self.others[which] = self.gmem.mmap()
        return self.others[which]

    def host_write(self, offset: int, data: bytes, mapping: int = 0) -> Outcome:
        return outcome_of(lambda: self._mapping(mapping).write(offset, data))

    def host_read(self, offset: int, size: int, mapping: int = 0) -> Outcome:
        return self._with_origins(outcome_of(lambda: self._mapping(mapping).read(offset, size)), offset, size)

    def guest_write(self, offset: int, data: bytes, access: str | None = None) -> Outcome:
        check_guest_range(offset, len(data), self.size)
        return outcome_of(lambda: self.gmem.guest_write(offset, data, access))

    def guest_read(self, offset: int, size: int, access: str | None = None) -> Outcome:
        check_guest_range(offset, size, self.size)
        return self._with_origins(
            outcome_of(lambda: self.gmem.guest_read(offset, size, access)), offset, size
        )

    def convert(
        self,
        offset: int,
        size: int,
        attributes: int,
        flags: int = 0,
        *,
        reserved: tuple[int, ...] = (),
        error_offset_in: int = 0,
    ) -> Outcome:
        arg = attributes2(offset, size, attributes, flags, error_offset_in, reserved)
        return outcome_of(lambda: self.gmem.set_memory_attributes2(arg))

    def punch_hole(self, offset: int, size: int) -> Outcome:
        return outcome_of(lambda: self.gmem.punch_hole(offset, size))

    def pin(self, offset: int, size: int) -> Outcome:
        return outcome_of(lambda: self.gmem.pin(offset, size))

    def unpin(self, offset: int, size: int, *, punched: Collection[int] = ()) -> Outcome:
        """``punched``: the pages the releasing holder saw punched out (``GuestMemfd.unpin``)."""
        return outcome_of(lambda: self.gmem.unpin(offset, size, punched))

    def delete_memslot(self) -> Outcome:
        return outcome_of(self.gmem.delete_memslot)

    def populate(self, offset: int, size: int, source: bytes | None = None) -> Outcome:
        return outcome_of(lambda: self.gmem.populate(offset, size, source))

    def restore_memslot(self) -> Outcome:
        return outcome_of(self.gmem.restore_memslot)

    def launch(self) -> Outcome:
        return outcome_of(self.vm.launch)

    def guest_request(self, offset: int, size: int, to: Direction) -> Outcome:
        """The guest's ``KVM_HC_MAP_GPA_RANGE``: on success the outcome carries the
        ``HYPERCALL`` exit the VMM sees (docs/semantics.md §9)."""
        outcome = outcome_of(lambda: self.gmem.guest_request(offset, size, to))
        if outcome.errno is None:
            outcome.exit = hypercall_exit(self.gpa_base + offset, size, to)
        return outcome

    def observe(self, limit: int | None = None) -> PageViews:
        """Every page's :class:`~guestmem.backend.base.PageView`, or the first ``limit`` pages'.

        Only pages where something changes are visited: attribute-run boundaries and allocated
        pages (an unallocated page's view depends on its attribute alone)."""
        gmem = self.gmem
        npages = self.size >> PAGE_SHIFT
        observed = npages if limit is None else min(npages, limit)
        # a view changes only where an attribute run starts or around an allocated, pinned or
        # host-mapped page
        marked = {*gmem.pages, *gmem.pins, *gmem.stale_pins, *(p for m in gmem.mappings for p in m.ptes)}
        edges = {0, *(a for a, _b, _v in gmem.attributes.runs()), *marked, *(p + 1 for p in marked)}
        starts: list[int] = []
        views: list[PageView] = []
        for index in sorted(p for p in edges if p < observed):
            runs = gmem.origins(index << PAGE_SHIFT, PAGE_SIZE)
            labels = tuple(dict.fromkeys(o.label for _a, _b, o in runs))
            pins = gmem.pins.get(index, 0) + gmem.stale_pins.get(index, 0)
            mapped = sum(index in m.ptes for m in gmem.mappings)
            view = PageView(gmem.is_private(index << PAGE_SHIFT), index in gmem.pages, labels, pins, mapped)
            if views and views[-1] == view:
                continue
            starts.append(index)
            views.append(view)
        return PageViews(npages, starts, views, observed)

    def check_extension(self, cap: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the VM (docs/semantics.md §7)."""
        return self.vm.check_extension(cap)

    def close(self) -> None:
        for other in self.others.values():
            other.close()
        if self.mapping is not None:
            self.mapping.close()


class ModelBackend:
    """Opens :class:`ModelMachine` s; every platform and revision is available."""

    name = "model"

    def __init__(self, key_seed: int = 0) -> None:
        self.key_seed = key_seed

    def max_pages(self) -> tuple[int, str]:
        """The model stores only what was touched: the limit of every backend."""
        return MAX_PAGES, "the model stores only touched pages"

    def open(self, platform: str, abi: str, size: int, flags: int) -> ModelMachine:
        return ModelMachine(platform, abi, size, flags, key_seed=self.key_seed)

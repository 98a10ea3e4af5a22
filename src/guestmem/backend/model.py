"""The model backend: :class:`~guestmem.backend.base.Machine` over :mod:`guestmem.model`."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from guestmem.backend.base import MAX_PAGES, Outcome, attributes2, check_guest_range
from guestmem.errors import HostFault, IoctlError, MemoryFault, MmioExit
from guestmem.model import GuestMemfd, Vm
from guestmem.model.gmem import HostMapping
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_MMAP,
    KVM_HC_MAP_GPA_RANGE,
    KVM_MAP_GPA_RANGE_DECRYPTED,
    KVM_MAP_GPA_RANGE_ENCRYPTED,
    PAGE_SIZE,
)


def _outcome(action: Callable[[], bytes | None]) -> Outcome:
    try:
        data = action()
    except IoctlError as err:
        return Outcome(errno=err.name, error_offset=err.error_offset)
    except HostFault as fault:
        return Outcome(signal=fault.signal)
    except MemoryFault as fault:
        exit_ = {"reason": "MEMORY_FAULT", "gpa": fault.gpa, "size": fault.size, "flags": fault.flags}
        return Outcome(exit=exit_)
    except MmioExit as mmio:
        return Outcome(exit={"reason": "MMIO", "gpa": mmio.gpa, "len": mmio.len, "is_write": mmio.is_write})
    return Outcome(data=data)


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
    """One model VM, guest_memfd, host mapping (when ``MMAP``) and vCPU."""

    backend = "model"

    def __init__(self, platform: str, abi: str, size: int, flags: int, seed: int = 0) -> None:
        self.vm = Vm(platform, abi, seed=seed)
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
        return _outcome(lambda: self._mapping(mapping).write(offset, data))

    def host_read(self, offset: int, size: int, mapping: int = 0) -> Outcome:
        return self._with_origins(_outcome(lambda: self._mapping(mapping).read(offset, size)), offset, size)

    def guest_write(self, offset: int, data: bytes, access: str | None = None) -> Outcome:
        check_guest_range(offset, len(data), self.size)
        return _outcome(lambda: self.gmem.guest_write(offset, data, access))

    def guest_read(self, offset: int, size: int, access: str | None = None) -> Outcome:
        check_guest_range(offset, size, self.size)
        return self._with_origins(_outcome(lambda: self.gmem.guest_read(offset, size, access)), offset, size)

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
        return _outcome(lambda: self.gmem.set_memory_attributes2(arg))

    def punch_hole(self, offset: int, size: int) -> Outcome:
        return _outcome(lambda: self.gmem.punch_hole(offset, size))

    def pin(self, offset: int, size: int) -> Outcome:
        return _outcome(lambda: self.gmem.pin(offset, size))

    def unpin(self, offset: int, size: int) -> Outcome:
        return _outcome(lambda: self.gmem.unpin(offset, size))

    def delete_memslot(self) -> Outcome:
        return _outcome(self.gmem.delete_memslot)

    def populate(self, offset: int, size: int, source: bytes | None = None) -> Outcome:
        return _outcome(lambda: self.gmem.populate(offset, size, source))

    def restore_memslot(self) -> Outcome:
        return _outcome(self.gmem.restore_memslot)

    def launch(self) -> Outcome:
        return _outcome(self.vm.launch)

    def guest_request(self, offset: int, size: int, to: Direction) -> Outcome:
        """The guest's ``KVM_HC_MAP_GPA_RANGE``: on success the outcome carries the
        ``HYPERCALL`` exit the VMM sees (docs/semantics.md §9)."""
        outcome = _outcome(lambda: self.gmem.guest_request(offset, size, to))
        if outcome.errno is None:
            outcome.exit = hypercall_exit(self.gpa_base + offset, size, to)
        return outcome

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

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def max_pages(self) -> tuple[int, str]:
        """The model stores only what was touched: the limit of every backend."""
        return MAX_PAGES, "the model stores only touched pages"

    def open(self, platform: str, abi: str, size: int, flags: int) -> ModelMachine:
        return ModelMachine(platform, abi, size, flags, seed=self.seed)

"""The operations on a :class:`~guestmem.backend.base.Machine`: one frozen class each.

An operation is what a scenario file's ``[[step]]`` names (docs/scenarios.md), what the
checker's search tries (docs/semantics.md §5), what a generated differential case runs,
and what the VMM's conversion handler issues. Each class says how it applies to a
machine (:meth:`Operation.bind`), which scenario fields it takes (:attr:`Operation.FIELDS`,
:attr:`Operation.REQUIRED`) and writes back (:meth:`Operation.fields`), and how it reads
in a report (:meth:`Operation.label`). :data:`OPERATIONS` lists them by ``op`` name.

Offsets are guest_memfd file offsets (docs/semantics.md §3). A conversion's content policy
becomes ``flags`` by the machine's ABI revision unless raw ``flags`` are given (§1, §9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from guestmem.backend.base import Machine, Outcome
from guestmem.spec import revisions
from guestmem.spec.terms import Direction, Policy
from guestmem.uapi.kvm import KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE

#: A write's data shown in a label when it is at most this long (or one repeated byte).
LABEL_DATA = 8


@dataclass(frozen=True)
class Operation:
    """One operation; subclasses add their fields and :meth:`bind`."""

    #: The scenario ``op`` name.
    name: ClassVar[str] = ""
    #: Who acts: ``host``, ``guest`` or ``vmm``.
    side: ClassVar[str] = "vmm"
    #: Scenario fields the operation takes (besides ``op``, ``expect``, ``expect_abi`` and
    #: ``error_offset``), and the ones it requires.
    FIELDS: ClassVar[tuple[str, ...]] = ()
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        """A call that applies the operation to ``machine`` (built once, called often)."""
        raise NotImplementedError

    def apply(self, machine: Machine) -> Outcome:
        """Apply the operation to ``machine``."""
        return self.bind(machine)()

    @property
    def span(self) -> tuple[int, int]:
        """``(offset, length)`` of the file range the operation names (``(0, 0)``: none)."""
        return 0, 0

    @property
    def pages(self) -> range:
        """Indices of the pages the operation's range covers."""
        offset, length = self.span
        if length <= 0:
            return range(0)
        return range(offset // PAGE_SIZE, -(-(offset + length) // PAGE_SIZE))

    def fields(self) -> dict[str, Any]:
        """The scenario step's fields (without ``expect``), as a scenario file writes them."""
        return {"op": self.name}

    def label(self) -> str:
        """``convert 0x0+0x1000 to private (preserve)`` and the like."""
        offset, length = self.span
        return f"{self.name} {offset:#x}+{length:#x}"

    def __str__(self) -> str:
        return self.label()

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> Operation:
        """The operation from parsed scenario fields (keyword names of the class; others ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def _data_fields(data: bytes) -> dict[str, Any]:
    """``data`` as scenario fields: one repeated byte as ``data`` and ``repeat``."""
    if len(data) > 1 and data == data[:1] * len(data):
        return {"data": data[:1].hex(), "repeat": len(data)}
    return {"data": data.hex()}


def _data_label(data: bytes) -> str:
    if len(data) > 1 and data == data[:1] * len(data):
        return f" data={data[:1].hex()}×{len(data)}"
    return f" data={data.hex()}" if len(data) <= LABEL_DATA else ""


@dataclass(frozen=True)
class _Range(Operation):
    offset: int = 0
    size: int = 0
    FIELDS: ClassVar[tuple[str, ...]] = ("offset", "size")
    REQUIRED: ClassVar[tuple[str, ...]] = ("offset", "size")

    @property
    def span(self) -> tuple[int, int]:
        return self.offset, self.size

    def fields(self) -> dict[str, Any]:
        return {"op": self.name, "offset": self.offset, "size": self.size}


@dataclass(frozen=True)
class HostWrite(Operation):
    """The VMM (``mapping`` 0) or a second process (1) writes through its host mapping."""

    offset: int = 0
    data: bytes = b""
    mapping: int = 0
    name: ClassVar[str] = "host_write"
    side: ClassVar[str] = "host"
    FIELDS: ClassVar[tuple[str, ...]] = ("offset", "data", "repeat", "mapping")
    REQUIRED: ClassVar[tuple[str, ...]] = ("offset", "data")

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        offset, data, mapping = self.offset, self.data, self.mapping
        if mapping:
            return lambda: machine.host_write(offset, data, mapping=mapping)
        return lambda: machine.host_write(offset, data)

    @property
    def span(self) -> tuple[int, int]:
        return self.offset, len(self.data)

    def fields(self) -> dict[str, Any]:
        out = {"op": self.name, "offset": self.offset, **_data_fields(self.data)}
        return out | ({"mapping": self.mapping} if self.mapping else {})

    def label(self) -> str:
        through = f" through mapping {self.mapping}" if self.mapping else ""
        return super().label() + _data_label(self.data) + through


@dataclass(frozen=True)
class HostRead(Operation):
    """A read through a host mapping (``mapping`` as for :class:`HostWrite`)."""

    offset: int = 0
    size: int = 0
    mapping: int = 0
    name: ClassVar[str] = "host_read"
    side: ClassVar[str] = "host"
    FIELDS: ClassVar[tuple[str, ...]] = ("offset", "size", "mapping")
    REQUIRED: ClassVar[tuple[str, ...]] = ("offset", "size")

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        offset, size, mapping = self.offset, self.size, self.mapping
        if mapping:
            return lambda: machine.host_read(offset, size, mapping=mapping)
        return lambda: machine.host_read(offset, size)

    @property
    def span(self) -> tuple[int, int]:
        return self.offset, self.size

    def fields(self) -> dict[str, Any]:
        out = {"op": self.name, "offset": self.offset, "size": self.size}
        return out | ({"mapping": self.mapping} if self.mapping else {})

    def label(self) -> str:
        return super().label() + (f" through mapping {self.mapping}" if self.mapping else "")


@dataclass(frozen=True)
class GuestWrite(Operation):
    """The guest writes; ``access`` names the side (None: the page's current one, §3)."""

    offset: int = 0
    data: bytes = b""
    access: str | None = None
    name: ClassVar[str] = "guest_write"
    side: ClassVar[str] = "guest"
    FIELDS: ClassVar[tuple[str, ...]] = ("offset", "data", "repeat", "as")
    REQUIRED: ClassVar[tuple[str, ...]] = ("offset", "data")

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        offset, data, access = self.offset, self.data, self.access
        return lambda: machine.guest_write(offset, data, access)

    @property
    def span(self) -> tuple[int, int]:
        return self.offset, len(self.data)

    def fields(self) -> dict[str, Any]:
        out = {"op": self.name, "offset": self.offset, **_data_fields(self.data)}
        return out | ({"as": self.access} if self.access else {})

    def label(self) -> str:
        return super().label() + _data_label(self.data) + (f" as {self.access}" if self.access else "")


@dataclass(frozen=True)
class GuestRead(Operation):
    """The guest reads (``access`` as for :class:`GuestWrite`)."""

    offset: int = 0
    size: int = 0
    access: str | None = None
    name: ClassVar[str] = "guest_read"
    side: ClassVar[str] = "guest"
    FIELDS: ClassVar[tuple[str, ...]] = ("offset", "size", "as")
    REQUIRED: ClassVar[tuple[str, ...]] = ("offset", "size")

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        offset, size, access = self.offset, self.size, self.access
        return lambda: machine.guest_read(offset, size, access)

    @property
    def span(self) -> tuple[int, int]:
        return self.offset, self.size

    def fields(self) -> dict[str, Any]:
        out = {"op": self.name, "offset": self.offset, "size": self.size}
        return out | ({"as": self.access} if self.access else {})

    def label(self) -> str:
        return super().label() + (f" as {self.access}" if self.access else "")


@dataclass(frozen=True)
class Convert(Operation):
    """``KVM_SET_MEMORY_ATTRIBUTES2`` on the guest_memfd (docs/semantics.md §4, §9).

    ``to`` and ``policy`` say what is asked for; raw ``flags`` replace the policy's
    encoding and raw ``attributes`` the direction's, so a malformed call can be written.
    """

    offset: int = 0
    size: int = 0
    to: Direction | None = None
    policy: Policy | None = None
    flags: int | None = None
    attributes: int | None = None
    reserved: tuple[int, ...] = ()
    error_offset_in: int = 0
    name: ClassVar[str] = "convert"
    FIELDS: ClassVar[tuple[str, ...]] = (
        "offset",
        "size",
        "to",
        "policy",
        "flags",
        "attributes",
        "reserved",
        "error_offset_in",
    )
    REQUIRED: ClassVar[tuple[str, ...]] = ("offset", "size")

    @property
    def direction(self) -> Direction:
        """The direction asked for (from raw ``attributes`` when no ``to`` is given)."""
        if self.to is not None:
            return self.to
        return (
            Direction.TO_PRIVATE
            if (self.attributes or 0) & KVM_MEMORY_ATTRIBUTE_PRIVATE
            else Direction.TO_SHARED
        )

    def encode(self, abi: str) -> tuple[int, int]:
        """``(attributes, flags)`` of the call under revision ``abi``."""
        flags = self.flags
        if flags is None:
            flags = revisions.get(abi).encode(self.policy or Policy.DEFAULT)
        attributes = self.attributes
        if attributes is None:
            attributes = KVM_MEMORY_ATTRIBUTE_PRIVATE if self.to is Direction.TO_PRIVATE else 0
        return attributes, flags

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        offset, size = self.offset, self.size
        attributes, flags = self.encode(machine.abi)
        reserved, error_offset_in = self.reserved, self.error_offset_in
        if reserved or error_offset_in:
            return lambda: machine.convert(
                offset, size, attributes, flags, reserved=reserved, error_offset_in=error_offset_in
            )
        return lambda: machine.convert(offset, size, attributes, flags)

    @property
    def span(self) -> tuple[int, int]:
        return self.offset, self.size

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.name, "offset": self.offset, "size": self.size}
        if self.to is not None:
            out["to"] = self.to.side
        if self.flags is not None:
            out["flags"] = self.flags
        elif self.policy is not None:
            out["policy"] = self.policy.value
        if self.attributes is not None:
            out["attributes"] = self.attributes
        if self.reserved:
            out["reserved"] = list(self.reserved)
        if self.error_offset_in:
            out["error_offset_in"] = self.error_offset_in
        return out

    def label(self) -> str:
        parts = [super().label()]
        if self.to is not None:
            parts.append(f"to {self.to.side}")
        if self.flags is not None:
            parts.append(f"flags={self.flags:#x}")
        elif self.policy is not None:
            parts.append(f"({self.policy.value})")
        if self.attributes is not None:
            parts.append(f"attributes={self.attributes:#x}")
        if any(self.reserved):
            parts.append("reserved!=0")
        if self.error_offset_in:
            parts.append(f"error_offset_in={self.error_offset_in:#x}")
        return " ".join(parts)


@dataclass(frozen=True)
class PunchHole(_Range):
    """``fallocate(PUNCH_HOLE | KEEP_SIZE)`` on the guest_memfd (docs/semantics.md §3)."""

    name: ClassVar[str] = "punch_hole"

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        offset, size = self.offset, self.size
        return lambda: machine.punch_hole(offset, size)


@dataclass(frozen=True)
class Pin(_Range):
    """The host takes a long-term pin on the range (docs/semantics.md §3 *Pins*)."""

    name: ClassVar[str] = "pin"

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        offset, size = self.offset, self.size
        return lambda: machine.pin(offset, size)


@dataclass(frozen=True)
class Unpin(_Range):
    """The host releases the pin it took on exactly this range."""

    name: ClassVar[str] = "unpin"

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        offset, size = self.offset, self.size
        return lambda: machine.unpin(offset, size)


@dataclass(frozen=True)
class Launch(Operation):
    """The VM leaves its launch phase (docs/semantics.md §3 *Launch*)."""

    name: ClassVar[str] = "launch"

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        return machine.launch

    def label(self) -> str:
        return self.name


@dataclass(frozen=True)
class Populate(Operation):
    """The launch ioctl that puts the initial payload into private memory
    (``KVM_TDX_INIT_MEM_REGION``, ``KVM_SEV_SNP_LAUNCH_UPDATE``): from ``data`` or, with
    none, from the guest_memfd pages themselves (docs/semantics.md §3 *Populate*)."""

    offset: int = 0
    size: int = 0
    data: bytes | None = None
    name: ClassVar[str] = "populate"
    FIELDS: ClassVar[tuple[str, ...]] = ("offset", "size", "data", "repeat")
    REQUIRED: ClassVar[tuple[str, ...]] = ("offset", "size")

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        offset, size, data = self.offset, self.size, self.data
        return lambda: machine.populate(offset, size, data)

    @property
    def span(self) -> tuple[int, int]:
        return self.offset, self.size

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.name, "offset": self.offset, "size": self.size}
        return out | ({} if self.data is None else _data_fields(self.data))

    def label(self) -> str:
        return super().label() + (" in place" if self.data is None else " from a source")


@dataclass(frozen=True)
class DeleteMemslot(Operation):
    """The memslot binding the guest_memfd is deleted (docs/semantics.md §3 *Memslots*)."""

    name: ClassVar[str] = "delete_memslot"

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        return machine.delete_memslot

    def label(self) -> str:
        return self.name


@dataclass(frozen=True)
class RestoreMemslot(Operation):
    """The memslot is made again as it was, binding the same file at the same GPA (docs/semantics.md
    §3 *Memslots*): the guest reaches the file's contents and attributes again."""

    name: ClassVar[str] = "restore_memslot"

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        return machine.restore_memslot

    def label(self) -> str:
        return self.name


@dataclass(frozen=True)
class GuestRequest(Operation):
    """The guest asks for a conversion with ``KVM_HC_MAP_GPA_RANGE`` (docs/semantics.md §9)."""

    offset: int = 0
    size: int = 0
    to: Direction = Direction.TO_SHARED
    name: ClassVar[str] = "guest_request"
    side: ClassVar[str] = "guest"
    FIELDS: ClassVar[tuple[str, ...]] = ("offset", "size", "to")
    REQUIRED: ClassVar[tuple[str, ...]] = ("offset", "size", "to")

    def bind(self, machine: Machine) -> Callable[[], Outcome]:
        offset, size, to = self.offset, self.size, self.to
        return lambda: machine.guest_request(offset, size, to)

    @property
    def span(self) -> tuple[int, int]:
        return self.offset, self.size

    def fields(self) -> dict[str, Any]:
        return {"op": self.name, "offset": self.offset, "size": self.size, "to": self.to.side}

    def label(self) -> str:
        return f"{super().label()} to {self.to.side}"


#: Every operation by its scenario ``op`` name.
OPERATIONS: dict[str, type[Operation]] = {
    cls.name: cls
    for cls in (
        HostWrite,
        HostRead,
        GuestWrite,
        GuestRead,
        Convert,
        PunchHole,
        Pin,
        Unpin,
        Launch,
        Populate,
        DeleteMemslot,
        RestoreMemslot,
        GuestRequest,
    )
}

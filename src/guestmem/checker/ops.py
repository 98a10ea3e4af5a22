"""Operations the checker applies: one scenario step each, and the exploration alphabet.

An :class:`Op` is exactly a scenario step (the ``[[step]]`` fields of a scenario file), so
a counterexample is written out as the steps that produced it and replays through
``guestmem run`` unchanged. :func:`alphabet` is the small set of operations that
``guestmem explore`` tries in every state (the issue's alphabet suggestion).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from guestmem.backend.base import Machine, Outcome
from guestmem.spec import revisions
from guestmem.spec.terms import Direction, Policy
from guestmem.uapi.kvm import KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE

#: Bytes a read returns, from the start of a page: one 64-bit word.
WORD = 8
#: The two values a host or guest write stores (every byte of the word).
VALUES = (0x11, 0x22)
#: Policies in the order the alphabet tries them; ones decoding alike are tried once.
POLICIES = (Policy.DEFAULT, Policy.ZERO, Policy.PRESERVE, Policy.NONE)


class Op(NamedTuple):
    """One step: ``name`` is the scenario ``op``; unused fields keep their defaults."""

    name: str
    offset: int = 0
    size: int = 0
    data: bytes = b""
    to: str = ""  # convert, guest_request: "private" | "shared"
    policy: str = ""  # convert: zero | preserve | none | default
    access: str | None = None  # guest accesses: "private" | "shared" | None (current)

    @property
    def pages(self) -> range:
        """Page indices the operation names."""
        end = self.offset + (self.size or len(self.data))
        return range(self.offset // PAGE_SIZE, -(-end // PAGE_SIZE))

    @property
    def direction(self) -> Direction:
        return Direction.TO_PRIVATE if self.to == "private" else Direction.TO_SHARED

    def fields(self) -> dict[str, Any]:
        """The scenario step's fields (without ``expect``), as ``guestmem run`` reads them."""
        out: dict[str, Any] = {"op": self.name}
        if self.name == "launch":
            return out
        out["offset"] = self.offset
        if self.name in ("host_write", "guest_write"):
            uniform = len(self.data) > 1 and self.data == self.data[:1] * len(self.data)
            if uniform:
                out["data"], out["repeat"] = self.data[:1].hex(), len(self.data)
            else:
                out["data"] = self.data.hex()
        else:
            out["size"] = self.size
        if self.to:
            out["to"] = self.to
        if self.policy:
            out["policy"] = self.policy
        if self.access:
            out["as"] = self.access
        return out

    def __str__(self) -> str:
        if self.name == "launch":
            return "launch"
        where = f"[{self.offset:#x}, +{self.size or len(self.data):#x})"
        extra = [f"data={_short(self.data)}"] if self.data else []
        extra += [f"to {self.to}"] if self.to else []
        extra += [self.policy] if self.policy else []
        extra += [f"as {self.access}"] if self.access else []
        return " ".join([self.name, where, *extra])


def _short(data: bytes) -> str:
    """``data`` as hex, a run of one byte as ``11 × 4096``."""
    if len(data) > 16 and data == data[:1] * len(data):
        return f"{data[:1].hex()} × {len(data)}"
    return data.hex()


def bind(op: Op, machine: Machine) -> Callable[[], Outcome]:
    """A call that applies ``op`` to ``machine`` and returns its :class:`Outcome`."""
    name, offset, size = op.name, op.offset, op.size
    if name == "host_write":
        return lambda: machine.host_write(offset, op.data)
    if name == "host_read":
        return lambda: machine.host_read(offset, size)
    if name == "guest_write":
        return lambda: machine.guest_write(offset, op.data, op.access)
    if name == "guest_read":
        return lambda: machine.guest_read(offset, size, op.access)
    if name == "convert":
        attributes = KVM_MEMORY_ATTRIBUTE_PRIVATE if op.to == "private" else 0
        flags = revisions.get(machine.abi).encode(Policy(op.policy))
        return lambda: machine.convert(offset, size, attributes, flags)
    if name == "punch_hole":
        return lambda: machine.punch_hole(offset, size)
    if name == "pin":
        return lambda: machine.pin(offset, size)
    if name == "unpin":
        return lambda: machine.unpin(offset, size)
    if name == "launch":
        return machine.launch
    if name == "guest_request":
        direction = op.direction
        return lambda: machine.guest_request(offset, size, direction)
    raise ValueError(f"unknown operation {name!r}")


def alphabet(pages: int, abi: str) -> list[Op]:
    """Every operation ``explore`` tries in a state, over ``pages`` pages.

    Writes fill a whole page with one of :data:`VALUES` (so a page holds one value of
    one origin); reads read its first word (the guest at the page's current side).
    Conversions name each page and, with more than one page, the whole range, and are
    tried with each policy whose ``flags`` the revision decodes differently (``seed``:
    ``default`` is ZERO, so ZERO is not tried twice). Guest requests, punch, pin and
    unpin name each page (a request for a range is the same as one per page).
    """
    revision = revisions.get(abi)
    whole = [(0, pages * PAGE_SIZE)] if pages > 1 else []
    ranges = [(p * PAGE_SIZE, PAGE_SIZE) for p in range(pages)] + whole
    ops: list[Op] = [Op("launch")]
    for name in ("host_write", "guest_write"):
        ops += [Op(name, p * PAGE_SIZE, data=bytes([v]) * PAGE_SIZE) for p in range(pages) for v in VALUES]
    ops += [
        Op("guest_request", p * PAGE_SIZE, PAGE_SIZE, to=to)
        for p in range(pages)
        for to in ("shared", "private")
    ]
    for o, s in ranges:
        for to in ("private", "shared"):
            seen: set[object] = set()
            for policy in POLICIES:
                decoded = revision.decode(revision.encode(policy))
                if decoded not in seen:
                    seen.add(decoded)
                    ops.append(Op("convert", o, s, to=to, policy=policy.value))
    for name in ("punch_hole", "pin", "unpin"):
        ops += [Op(name, p * PAGE_SIZE, PAGE_SIZE) for p in range(pages)]
    ops += [Op("host_read", p * PAGE_SIZE, WORD) for p in range(pages)]
    ops += [Op("guest_read", p * PAGE_SIZE, WORD) for p in range(pages)]
    return ops

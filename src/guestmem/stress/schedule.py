"""Each stress thread's schedule: the operations it draws, from the run's seed alone.

Thread ``t`` of a run with seed ``s`` draws from its own generator, seeded with ``(s, t)``,
and what it draws never depends on what an earlier operation returned or on what the other
threads did. So a seed names every thread's sequence of operations exactly; only their
interleaving (the kernel's and the scheduler's business) differs between runs. Where an
operation's effect depends on state — a pin is taken when none is held and released when
one is — the thread resolves it when it runs it, and the run's history records what was
done (:class:`~guestmem.stress.engine.Action`).

Thread 0 upwards are the vCPU threads (guest reads and writes through the tiny guest, one
vCPU per guest_memfd); the rest are host threads: conversions both ways over ranges that
overlap and mix private and shared pages, host reads and writes through their own
process's mapping, long-term pins (``gup_test``), ``vmsplice`` references, punch holes,
memslot deletion and re-creation, closing and reopening the whole VM.

Some punch holes come after a memory error on a page of their range
(:attr:`Op.memory_error`; docs/stress.md *Memory errors*), as a VMM discards a page the
hardware reported bad. Whether one does is drawn from a second generator of the thread,
seeded with ``(s, t, "poison")`` and advanced once per punch hole, so the operations the
first generator draws are those it drew before memory errors were among them: a seed
names the same operations as it always did.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from guestmem.uapi.kvm import PAGE_SIZE

#: What a host thread draws, with weights.
HOST_OPS: dict[str, int] = {
    "convert": 30,
    "host_read": 20,
    "host_write": 14,
    "punch_hole": 5,
    "pin": 5,
    "splice": 5,
    "memslot": 1,
    "reopen": 1,
}
#: What a vCPU thread draws.
VCPU_OPS: dict[str, int] = {"guest_read": 55, "guest_write": 45}
#: The content mode a conversion asks for; each revision maps it to its ``flags``
#: (v8 knows only 0; RFC v5 has unspecified, ZERO and PRESERVE).
MODES = ("default", "preserve", "zero")
#: Fault injection a conversion may ask for (done where the kernel offers it).
INJECTIONS = ("failslab", "fail_page_alloc")
#: The longest range a conversion, pin or punch hole covers, in pages.
MAX_RANGE_PAGES = 8
#: The longest host or guest access, in bytes.
MAX_ACCESS = 2 * PAGE_SIZE
#: The share of punch holes that come after a memory error on a page of their range.
MEMORY_ERROR_SHARE = 0.75


@dataclass(frozen=True)
class Op:
    """One drawn operation: the ``index``-th of thread ``thread``, on guest_memfd ``target``."""

    thread: int
    index: int
    kind: str
    target: int
    offset: int = 0
    size: int = 0
    data: bytes = b""
    to: str = ""
    mode: str = "default"
    inject: str = ""
    #: A punch hole made after a memory error on a page of its range.
    memory_error: bool = False

    def describe(self, *, faults: bool = True) -> str:
        """The drawn operation; ``faults`` False leaves out the fault it asks for (an
        allocation failure, a memory error), for where none was made."""
        where = f"gmem{self.target} [{self.offset:#x}, +{self.size:#x})"
        extra = ""
        if self.kind == "convert":
            fault = f" with {self.inject}" if self.inject and faults else ""
            extra = f" to {self.to} ({self.mode}){fault}"
        elif self.data:
            extra = f" data {self.data[:4].hex()}…" if len(self.data) > 4 else f" data {self.data.hex()}"
        elif self.memory_error and faults:
            extra = " after a memory error"
        return f"t{self.thread}#{self.index} {self.kind} {where}{extra}"


def _range(rng: random.Random, pages: int) -> tuple[int, int]:
    first = rng.randrange(pages)
    count = rng.randint(1, min(MAX_RANGE_PAGES, pages - first))
    return first * PAGE_SIZE, count * PAGE_SIZE


def _access(rng: random.Random, pages: int) -> tuple[int, int]:
    """A byte range inside the file: mostly small, sometimes across a page boundary."""
    size = pages * PAGE_SIZE
    length = rng.choice([1, 8, 64, rng.randint(1, MAX_ACCESS)])
    length = min(length, size)
    offset = rng.randrange(0, size - length + 1)
    if rng.random() < 0.5:  # at a page start, as the selftests do
        offset = min(offset - offset % PAGE_SIZE, size - length)
    return offset, length


def _payload(rng: random.Random, length: int) -> bytes:
    pattern = rng.randbytes(rng.randint(1, 8))
    return (pattern * (length // len(pattern) + 1))[:length]


def schedule(seed: int, thread: int, *, vcpus: int, targets: int, pages: int) -> Iterator[Op]:
    """Thread ``thread``'s operations, without end; the same arguments give the same ones."""
    rng = random.Random(f"guestmem-stress/{seed}/{thread}")
    poison = random.Random(f"guestmem-stress/{seed}/{thread}/poison")
    ops = VCPU_OPS if thread < vcpus else HOST_OPS
    kinds, weights = list(ops), list(ops.values())
    index = 0
    while True:
        kind = rng.choices(kinds, weights)[0]
        target = thread % targets if thread < vcpus else rng.randrange(targets)
        if kind in ("guest_read", "host_read"):
            offset, size = _access(rng, pages)
            op = Op(thread, index, kind, target, offset, size)
        elif kind in ("guest_write", "host_write"):
            offset, size = _access(rng, pages)
            op = Op(thread, index, kind, target, offset, size, data=_payload(rng, size))
        elif kind == "convert":
            offset, size = _range(rng, pages)
            inject = rng.choice(INJECTIONS) if rng.random() < 0.15 else ""
            op = Op(
                thread,
                index,
                kind,
                target,
                offset,
                size,
                to=rng.choice(["private", "shared"]),
                mode=rng.choice(MODES),
                inject=inject,
            )
        elif kind in ("punch_hole", "pin", "splice"):
            offset, size = _range(rng, pages)
            error = kind == "punch_hole" and poison.random() < MEMORY_ERROR_SHARE
            op = Op(thread, index, kind, target, offset, size, memory_error=error)
        else:  # memslot, reopen: the whole guest_memfd
            op = Op(thread, index, kind, target, 0, pages * PAGE_SIZE)
        yield op
        index += 1


def first_ops(seed: int, thread: int, count: int, *, vcpus: int, targets: int, pages: int) -> list[Op]:
    """The first ``count`` operations of a thread's schedule."""
    out: list[Op] = []
    for op in schedule(seed, thread, vcpus=vcpus, targets=targets, pages=pages):
        if len(out) == count:
            break
        out.append(op)
    return out

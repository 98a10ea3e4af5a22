"""The security properties of docs/semantics.md §5 as executable predicates over a trace.

A trace is a list of :class:`Record` s: the operation, its :class:`Outcome` (with the
provenance of every byte a read returned) and the model state before and after it
(:class:`State`). Each property is checked where it can be observed:

- **isolation**: a host access that succeeds on a page that is private; a private page
  that holds a host pin (a pin is host access outside the page tables, which is why a
  to-private conversion must refuse it with ``EAGAIN``, §3 *Pins*);
- **confidentiality**: a host read returns bytes the guest wrote to private memory and
  never asked to share (``Origin.GUEST_PRIVATE``);
- **integrity**: once running (from the start on a platform without a launch phase), a
  guest read of a private page returns host-written bytes the guest never asked for
  (``Origin.HOST``; measured pre-launch payload is ``PAYLOAD``, bytes the guest asked for
  are ``ACCEPTED``), or finds its own private bytes gone with a page that a conversion of
  a range unmapped without converting it (``Origin.LOST``: docs/semantics.md §3 *Mixed
  ranges*);
- **policy**: after a successful conversion whose result is a guarantee (§2: zeros,
  preserved, ``0xab``), the next reader of each allocated page in the range (the host
  after P→S, the guest after S→P) sees exactly that;
- **atomicity**: a failed call changes nothing, with one exception: a to-private
  conversion that got as far as unmapping (every check before the unmap passed, so it
  failed with ``EAGAIN`` or with ``EFAULT`` writing ``EAGAIN``'s ``error_offset`` back)
  has removed every host mapping of its range, and must have (docs/semantics.md §3 *All
  or nothing*);
- **reporting**: a failed conversion writes back the ``error_offset`` §4 defines (the
  range start for ``EOPNOTSUPP``, the first page without a guest request for ``EPERM``,
  the first pinned page for ``EAGAIN``) and nothing for other errors.

Which platform claims which property is :func:`claimed`: ``sw_protected`` claims no
confidentiality or integrity, so the checker shows what it would break.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from guestmem.backend.base import Outcome
from guestmem.backend.model import ModelMachine
from guestmem.checker.ops import WORD
from guestmem.model.gmem import REQUEST_FOR, RangeKey
from guestmem.model.provenance import FILL_PAGE, ZERO_BYTES, Page
from guestmem.ops import Convert, Operation
from guestmem.spec import platforms
from guestmem.spec.platforms.base import Platform
from guestmem.spec.revisions import Revision
from guestmem.spec.terms import Direction, Effect, Phase, Policy
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    PAGE_SHIFT,
    PAGE_SIZE,
)


class Property(enum.Enum):
    """A property of docs/semantics.md §5 (``reporting`` is §4's ``error_offset`` rule)."""

    ISOLATION = "isolation"
    CONFIDENTIALITY = "confidentiality"
    INTEGRITY = "integrity"
    POLICY = "policy"
    ATOMICITY = "atomicity"
    REPORTING = "reporting"


def claimed(prop: Property, platform: str | Platform) -> bool:
    """Whether ``platform`` promises ``prop`` (every platform claims the others;
    confidentiality and integrity only a :attr:`~Platform.confidential` one)."""
    if prop in (Property.CONFIDENTIALITY, Property.INTEGRITY):
        return (platforms.get(platform) if isinstance(platform, str) else platform).confidential
    return True


class State(NamedTuple):
    """The model state around an operation (the facts a record carries)."""

    phase: Phase
    attributes: RangeKey
    requests: RangeKey
    pages: tuple[tuple[int, Page], ...]
    pins: tuple[tuple[int, int], ...]
    stale_pins: tuple[tuple[int, int], ...]
    ptes: tuple[tuple[int, ...], ...]

    def private(self, index: int) -> bool:
        starts, values = self.attributes
        return bool(values[bisect_right(starts, index) - 1] & KVM_MEMORY_ATTRIBUTE_PRIVATE)

    def request(self, index: int) -> int:
        starts, values = self.requests
        return values[bisect_right(starts, index) - 1]

    def page(self, index: int) -> Page | None:
        for i, page in self.pages:
            if i == index:
                return page
        return None


def capture(machine: ModelMachine) -> State:
    """The :class:`State` of a model machine."""
    return State(machine.vm.phase, *machine.gmem.snapshot())


def restore(machine: ModelMachine, state: State) -> None:
    """Put ``state`` back into ``machine`` (the same objects, no re-creation)."""
    machine.vm.phase = state.phase
    machine.gmem.restore(state[1:])


class Record(NamedTuple):
    """One step of a trace."""

    op: Operation
    outcome: Outcome
    before: State
    after: State


@dataclass(frozen=True)
class Violation:
    """``prop`` fails at ``step`` of a trace.

    ``expect`` is what that step should have given, as a scenario ``expect`` (with
    ``error_offset`` for an errno), or None when the failure shows only in a later step
    (atomicity). For policy, ``expect`` is what the next reader of page ``error_offset``
    (here a page index) should read.
    """

    prop: Property
    step: int
    message: str
    expect: str | None
    error_offset: int | None = None


FILL_BYTES = FILL_PAGE[0]
_CALLS = frozenset({"convert", "punch_hole", "pin", "unpin", "launch", "guest_request"})


class Monitor:
    """Checks every property on one step, from the step's operation, outcome and the
    states around it; it keeps no memory between steps, so states are all it needs."""

    def __init__(self, platform: Platform, revision: Revision) -> None:
        self.platform = platform
        self.revision = revision
        self._promises: dict[tuple[Convert, Phase], Effect | None] = {}

    def observe(
        self,
        op: Operation,
        outcome: Outcome,
        before: State,
        after: State,
        step: int = 0,
        *,
        pins: bool = True,
    ) -> list[Violation]:
        """The violations ``op`` shows. With ``pins`` False the one check that looks at
        pages outside ``op``'s range (a private page holding a pin, after a successful
        conversion: :meth:`pinned_private`) is left to the caller."""
        name = op.name
        found: list[Violation] = []
        if name in _CALLS:
            if outcome.errno is not None:
                self._failed_call(op, outcome, before, after, step, found)
            elif isinstance(op, Convert):
                if pins:
                    pinned = [p for p, count in after.pins if count and after.private(p)]
                    found += self.pinned_private(pinned, step)
                self._policy(op, before, after, step, found)
            return found
        if name == "host_read" or name == "host_write":
            if outcome.signal is None and outcome.errno is None:
                private = [p for p in op.pages if before.private(p)]
                if private:
                    found.append(
                        Violation(
                            Property.ISOLATION,
                            step,
                            f"the host {name[5:]}s private page {private[0]}",
                            "SIGBUS",
                        )
                    )
            if name == "host_read" and outcome.data is not None:
                leaked = [(a, b) for a, b, label in outcome.origins or () if label == "guest_private"]
                if leaked:
                    a, b = leaked[0]
                    plain = outcome.data[a - op.span[0] : b - op.span[0]]
                    found.append(
                        Violation(
                            Property.CONFIDENTIALITY,
                            step,
                            f"the host reads bytes [{a:#x}, {b:#x}) the guest wrote to private memory "
                            "and never asked to share",
                            f"not:{plain.hex()}",
                        )
                    )
        elif name == "guest_read" and outcome.data is not None and self._running(after):
            injected = [
                (a, b)
                for a, b, label in outcome.origins or ()
                if label == "host" and before.private(a >> PAGE_SHIFT)
            ]
            lost = [(a, b) for a, b, label in outcome.origins or () if label == "lost"]
            if lost and not injected:
                a, b = lost[0]
                start = op.span[0]
                gone = outcome.data[a - start : b - start]
                found.append(
                    Violation(
                        Property.INTEGRITY,
                        step,
                        f"the running guest finds its private bytes [{a:#x}, {b:#x}) gone: a "
                        "conversion of a range unmapped the page from the guest without converting it",
                        f"not:{gone.hex()}",
                    )
                )
            if injected:
                a, b = injected[0]
                forged = outcome.data[a - op.span[0] : b - op.span[0]]
                found.append(
                    Violation(
                        Property.INTEGRITY,
                        step,
                        f"the running guest reads host-written bytes [{a:#x}, {b:#x}) in private memory "
                        "without having asked for that conversion",
                        f"not:{forged.hex()}",
                    )
                )
        return found

    def _running(self, state: State) -> bool:
        """The guest runs: after launch, or always on a platform without a launch phase
        (docs/semantics.md §3 *Launch*), where nothing is measured before it runs. A read
        is judged by the state after it: on pKVM the first guest read is the launch."""
        return state.phase is Phase.RUNNING or not self.platform.launch

    # --- atomicity and reporting ---------------------------------------------------------------
    def _failed_call(
        self, op: Operation, outcome: Outcome, before: State, after: State, step: int, found: list[Violation]
    ) -> None:
        unmapped = outcome.errno in ("EAGAIN", "EFAULT") and self._reached_unmap(op, before)
        expected_ptes = (
            tuple(tuple(p for p in mapped if p not in op.pages) for mapped in before.ptes)
            if unmapped
            else before.ptes
        )
        changed = [
            field
            for field, a, b in zip(State._fields, before, after, strict=True)
            if (a != b if field != "ptes" else b != expected_ptes)
        ]
        if changed:
            found.append(
                Violation(
                    Property.ATOMICITY,
                    step,
                    f"{op.name} failed with {outcome.errno} but changed {', '.join(changed)}",
                    None,
                )
            )
        if isinstance(op, Convert):
            expected = self._error_offset(op, outcome.errno, before)
            if outcome.error_offset != expected:
                got = "none" if outcome.error_offset is None else f"{outcome.error_offset:#x}"
                want = "none" if expected is None else f"{expected:#x}"
                found.append(
                    Violation(
                        Property.REPORTING,
                        step,
                        f"{outcome.errno} wrote back error_offset {got}, docs/semantics.md §4 says {want}",
                        outcome.errno,
                        expected,
                    )
                )

    def _reached_unmap(self, op: Operation, before: State) -> bool:
        """Whether to-private ``op`` passed every check before the unmap (§4 steps 9-10a)
        and then found a pinned page: the only way it fails after unmapping. The
        checker's operations always carry valid arguments, so checks 1-8 pass."""
        if not isinstance(op, Convert) or op.direction is not Direction.TO_PRIVATE:
            return False
        revision, direction = self.revision, op.direction
        policy = revision.decode(self._flags(op))
        if policy is None or revision.effect(self.platform, direction, policy, before.phase) is None:
            return False
        if revision.early_return and all(before.private(p) for p in op.pages):
            return False
        if revision.needs_consent(self.platform, before.phase) and any(
            before.request(p) != REQUEST_FOR[direction] for p in op.pages
        ):
            return False
        return self._error_offset(op, "EAGAIN", before) is not None

    def _flags(self, op: Convert) -> int:
        """The ``flags`` ``op`` passes under the monitored revision."""
        return self.revision.encode(op.policy or Policy.DEFAULT) if op.flags is None else op.flags

    @staticmethod
    def _error_offset(op: Convert, errno_name: str | None, before: State) -> int | None:
        if errno_name == "EOPNOTSUPP":
            return op.offset
        if errno_name == "EPERM":
            wanted = REQUEST_FOR[op.direction]
            missing = [p for p in op.pages if before.request(p) != wanted]
            return missing[0] << PAGE_SHIFT if missing else None
        if errno_name == "EAGAIN":
            pinned = [p for p, count in before.pins if count and p in op.pages]
            return min(pinned) << PAGE_SHIFT if pinned else None
        return None

    # --- isolation of pinned pages -------------------------------------------------------------
    @staticmethod
    def pinned_private(pinned: Sequence[int], step: int = 0) -> list[Violation]:
        """Isolation after a successful conversion: ``pinned`` lists the private pages
        that hold a pin, ascending."""
        if not pinned:
            return []
        return [
            Violation(
                Property.ISOLATION,
                step,
                f"page {pinned[0]} became private while the host holds a pin on it",
                "EAGAIN",
                pinned[0] << PAGE_SHIFT,
            )
        ]

    # --- policy --------------------------------------------------------------------------------
    def promised(self, op: Convert, phase: Phase) -> Effect | None:
        """The guarantee a successful conversion ``op`` gives (None: no promise, §2)."""
        try:
            return self._promises[op, phase]
        except KeyError:
            effect = self._promises[op, phase] = self._promise(op, phase)
            return effect

    def _promise(self, op: Convert, phase: Phase) -> Effect | None:
        revision, direction = self.revision, op.direction
        decoded = revision.decode(self._flags(op))
        if decoded is None or not revision.guaranteed(self.platform, direction, decoded):
            return None
        effect = revision.effect(self.platform, direction, decoded, phase)
        return effect if effect in (Effect.ZEROS, Effect.FILL_AB, Effect.PRESERVED) else None

    def _policy(self, op: Convert, before: State, after: State, step: int, found: list[Violation]) -> None:
        """What the next reader of each allocated page will see is what was promised.

        The model's readers see a page's stored bytes, so the check reads them from the
        state right after the conversion; a counterexample then ends with that read.
        """
        effect = self.promised(op, before.phase)
        if effect is None:
            return
        for index, page in before.pages:
            if index not in op.pages:
                continue
            now = after.page(index)
            got = ZERO_BYTES if now is None else now[0]  # a dropped page reads zeros
            if effect is Effect.ZEROS:
                ok, expect = got == ZERO_BYTES, "zeros"
            elif effect is Effect.FILL_AB:
                ok, expect = got == FILL_BYTES, "fill:ab"
            else:
                ok, expect = got == page[0], page[0][:WORD].hex()
            if not ok:
                found.append(
                    Violation(
                        Property.POLICY,
                        step,
                        f"page {index}: the conversion promised {effect.value}, the next reader "
                        f"would see {got[:WORD].hex()}…",
                        expect,
                        index,
                    )
                )
                return


def open_machine(platform: str | Platform, abi: str | Revision, pages: int, init: str) -> ModelMachine:
    """A model machine of ``pages`` pages, ``init`` ``shared`` or ``private``, mapped.

    ``platform`` may be a :class:`Platform` variant (an ablation such as pKVM without the
    consent rule); the VM keeps the variant's name, so its key and ciphertext match.
    """
    flags = GUEST_MEMFD_FLAG_MMAP | (GUEST_MEMFD_FLAG_INIT_SHARED if init == "shared" else 0)
    return ModelMachine(platform, abi, pages * PAGE_SIZE, flags)


def record_trace(
    platform: str | Platform,
    abi: str | Revision,
    ops: Sequence[Operation],
    *,
    pages: int = 2,
    init: str = "shared",
) -> list[Record]:
    """Run ``ops`` on a fresh model machine and record every step."""
    machine = open_machine(platform, abi, pages, init)
    trace: list[Record] = []
    for op in ops:
        before = capture(machine)
        outcome = op.apply(machine)
        trace.append(Record(op, outcome, before, capture(machine)))
    return trace


def check_trace(trace: Sequence[Record], platform: Platform, revision: Revision) -> list[Violation]:
    """Every violation the trace shows, in step order."""
    monitor = Monitor(platform, revision)
    found: list[Violation] = []
    for step, record in enumerate(trace):
        found += monitor.observe(*record, step=step)
    return found


__all__ = [
    "Monitor",
    "Property",
    "Record",
    "State",
    "Violation",
    "capture",
    "check_trace",
    "claimed",
    "record_trace",
    "restore",
]

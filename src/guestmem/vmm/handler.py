"""The VMM's conversion handler: guest exit in, ``KVM_SET_MEMORY_ATTRIBUTES2`` out, guest resumed.

A guest asks for a conversion in one of two ways (docs/semantics.md §9): implicitly, by touching a
page as the wrong side (``KVM_EXIT_MEMORY_FAULT``: convert ``[gpa, gpa+size)`` to the
access type, then re-enter so the access runs again), or explicitly with
``KVM_HC_MAP_GPA_RANGE`` (``KVM_EXIT_HYPERCALL`` nr 12: convert, set ``ret``, re-enter).
TDX MapGPA, SNP Page State Change and pKVM ``MEM_SHARE``/``MEM_UNSHARE`` reach the VMM the
same way (docs/semantics.md §2).

:class:`ConversionHandler` does the VMM's part over any backend, applying the operations
of :mod:`guestmem.ops` to a :class:`~guestmem.backend.base.Machine`: it picks the content
policy from a :class:`VmmPolicy`, issues the ioctl with that revision's ``flags``, and
handles the two errors a VMM can fix itself:

- ``EAGAIN`` (docs/semantics.md §3 *Pins*; api.rst: "drop them and retry"): drop the pins the
  VMM itself holds in the range, then retry. Pins it does not know about are not its to
  drop, so it gives up.
- ``EOPNOTSUPP`` (docs/semantics.md §4 step 9): retry once with the configured fallback policy.

Everything else (``EPERM`` from pKVM's consent rule, ``EINVAL``) is reported, not retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from guestmem.backend.base import Machine, Outcome
from guestmem.ops import Convert, Pin, Unpin
from guestmem.spec import platforms, revisions
from guestmem.spec.platforms.base import Platform
from guestmem.spec.revisions import Revision
from guestmem.spec.terms import Direction, Phase, Policy
from guestmem.uapi.kvm import (
    KVM_HC_MAP_GPA_RANGE,
    KVM_MAP_GPA_RANGE_ENCRYPTED,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    KVM_MEMORY_EXIT_FLAG_PRIVATE,
    PAGE_SIZE,
)


@dataclass(frozen=True)
class VmmPolicy:
    """The content policy a VMM asks for in each direction, and what it retries with when
    the kernel answers ``EOPNOTSUPP`` (``None``: no fallback, report the error)."""

    to_shared: Policy
    to_private: Policy
    shared_fallback: Policy | None = None
    private_fallback: Policy | None = None
    why: str = ""

    def attempts(self, direction: Direction) -> tuple[Policy, ...]:
        """Policies to try in order for ``direction``."""
        if direction is Direction.TO_SHARED:
            first, fallback = self.to_shared, self.shared_fallback
        else:
            first, fallback = self.to_private, self.private_fallback
        return (first,) if fallback is None or fallback is first else (first, fallback)


#: Preference per direction for :func:`default_policy` (first supported wins, the next
#: supported one is the fallback).
#:
#: - **P→S** is how a guest shares a bounce buffer: the host should get the guest's bytes
#:   where the platform can hand them over (PRESERVE: pKVM by Stage-2 transfer, the
#:   software test vehicle). Where plaintext cannot cross (TDX, SNP, CCA) the next best is
#:   a known state, ZERO, rather than ciphertext or stale bytes; NONE is the last resort.
#: - **S→P** gives the guest a private page: it should read zeros where a trusted party
#:   zeroes (TDX module on accept, the RMM on CCA, the test vehicle), so host-written bytes
#:   never reach private memory unasked (docs/semantics.md §5 *Integrity*). Where zeroing comes
#:   by other means (pKVM donation) the platform's native transfer keeps the guest's view,
#:   PRESERVE. Where neither is offered at runtime (SNP) only NONE remains: the guest
#:   ``PVALIDATE``s and treats the page as garbage (docs/semantics.md §2).
_PREFERENCE: dict[Direction, tuple[Policy, ...]] = {
    Direction.TO_SHARED: (Policy.PRESERVE, Policy.ZERO, Policy.NONE, Policy.DEFAULT),
    Direction.TO_PRIVATE: (Policy.ZERO, Policy.PRESERVE, Policy.NONE, Policy.DEFAULT),
}


def _runtime_choices(platform: Platform, revision: Revision, direction: Direction) -> list[Policy]:
    """Policies the spec accepts for a running guest, in preference order, one per meaning."""
    attributes = KVM_MEMORY_ATTRIBUTE_PRIVATE if direction is Direction.TO_PRIVATE else 0
    if not revision.accepts_attributes(platform, attributes):
        return []
    out: list[Policy] = []
    seen: set[object] = set()
    for policy in _PREFERENCE[direction]:
        flags = revision.encode(policy)
        decoded = revision.decode(flags)
        if decoded is None or decoded in seen or flags in seen:
            continue
        seen.update((decoded, flags))
        if revision.effect(platform, direction, decoded, Phase.RUNNING) is not None:
            out.append(policy)
    return out


def default_policy(platform: str, abi: str = revisions.DEFAULT) -> VmmPolicy:
    """What a VMM should ask for on ``platform`` under ``abi``, derived from the spec.

    Guest-initiated conversions happen while the guest runs, so support is judged in the
    running phase. Per direction the first supported policy of the preference above is
    asked for, and the next supported one is the ``EOPNOTSUPP`` fallback. Under ``v8``
    only ``flags`` = 0 exists, so both directions ask for :attr:`Policy.DEFAULT`; on a VM
    without private memory nothing converts and the handler passes ``flags`` = 0 to
    report the kernel's ``EINVAL``.
    """
    plat = platforms.get(platform)
    revision = revisions.get(abi)
    shared = _runtime_choices(plat, revision, Direction.TO_SHARED) or [Policy.DEFAULT]
    private = _runtime_choices(plat, revision, Direction.TO_PRIVATE) or [Policy.DEFAULT]
    return VmmPolicy(
        to_shared=shared[0],
        to_private=private[0],
        shared_fallback=shared[1] if len(shared) > 1 else None,
        private_fallback=private[1] if len(private) > 1 else None,
        why=f"derived from the {revision.name} spec for {plat.name}: "
        f"P→S {'/'.join(p.value for p in shared)}, S→P {'/'.join(p.value for p in private)}",
    )


@dataclass
class Attempt:
    """One ``KVM_SET_MEMORY_ATTRIBUTES2`` the handler issued."""

    policy: Policy
    flags: int
    outcome: Outcome


@dataclass
class Resolution:
    """How the handler answered one exit: the range, every ioctl it issued, the pinned
    ranges it released, and ``refused`` when it issued none (not a valid request)."""

    exit: Mapping[str, Any]
    direction: Direction
    offset: int
    size: int
    attempts: list[Attempt] = field(default_factory=list)
    unpinned: list[tuple[int, int]] = field(default_factory=list)
    refused: str | None = None

    @property
    def outcome(self) -> Outcome:
        """The last ioctl's outcome (``EINVAL`` when the exit was refused)."""
        if self.attempts:
            return self.attempts[-1].outcome
        return Outcome(errno="EINVAL")

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @property
    def policy(self) -> Policy | None:
        """The policy of the conversion that succeeded, if any."""
        return self.attempts[-1].policy if self.ok else None


class ConversionHandler:
    """Answers conversion exits for one :class:`~guestmem.backend.base.Machine`.

    ``policy`` defaults to :func:`default_policy` for the machine's platform and ABI.
    ``pins`` are the ``(offset, size)`` ranges the VMM already pinned, one entry per pin as
    it was taken (a backend may only release a pin as the range it was taken with);
    :meth:`pin` and :meth:`unpin` keep the list current. Every answered exit is appended
    to :attr:`log`.
    """

    def __init__(
        self, machine: Machine, policy: VmmPolicy | None = None, *, pins: Iterable[tuple[int, int]] = ()
    ) -> None:
        self.machine = machine
        self.revision = revisions.get(machine.abi)
        self.policy = policy or default_policy(machine.platform, machine.abi)
        self.pins: list[tuple[int, int]] = list(pins)
        self.log: list[Resolution] = []

    # --- the VMM's own pins ----------------------------------------------------------------------
    def pin(self, offset: int, size: int) -> Outcome:
        """Pin ``[offset, offset+size)`` through the machine and remember it."""
        outcome = Pin(offset, size).apply(self.machine)
        if outcome.ok:
            self.pins.append((offset, size))
        return outcome

    def unpin(self, offset: int, size: int) -> Outcome:
        """Release the VMM's pin on exactly ``[offset, offset+size)``."""
        outcome = Unpin(offset, size).apply(self.machine)
        if (offset, size) in self.pins:
            self.pins.remove((offset, size))
        return outcome

    def _drop_pins(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Release every pin of the VMM that overlaps ``[lo, hi)``, then pin again the parts
        outside it; the ranges released, in the order taken."""
        dropped = [(a, n) for a, n in self.pins if a < hi and a + n > lo]
        for a, n in dropped:
            self.unpin(a, n)  # a failure means it is gone already
        for a, n in dropped:
            if a < lo:
                self.pin(a, lo - a)
            if a + n > hi:
                self.pin(hi, a + n - hi)
        return dropped

    # --- exits ---------------------------------------------------------------------------------
    def _request(self, exit_: Mapping[str, Any]) -> tuple[Direction, int, int]:
        """Direction and guest physical range an exit asks for (docs/semantics.md §9)."""
        reason = exit_.get("reason")
        if reason == "MEMORY_FAULT":
            private = bool(int(exit_["flags"]) & KVM_MEMORY_EXIT_FLAG_PRIVATE)
            return (Direction.TO_PRIVATE if private else Direction.TO_SHARED), exit_["gpa"], exit_["size"]
        if reason == "HYPERCALL" and exit_.get("nr") == KVM_HC_MAP_GPA_RANGE:
            private = bool(int(exit_["attributes"]) & KVM_MAP_GPA_RANGE_ENCRYPTED)
            size = int(exit_["npages"]) * PAGE_SIZE  # a1 counts 4 KiB pages whatever the size hint
            return (Direction.TO_PRIVATE if private else Direction.TO_SHARED), exit_["gpa"], size
        raise ValueError(f"not a conversion exit: {dict(exit_)!r}")

    def handle(self, exit_: Mapping[str, Any]) -> Resolution:
        """Convert what ``exit_`` asks for; ``ValueError`` if it is not a conversion exit.

        The guest physical range is turned into guest_memfd offsets (rounded out to whole
        pages); a range outside the guest_memfd is refused without an ioctl, as KVM
        refuses a bad ``KVM_HC_MAP_GPA_RANGE`` with ``-EINVAL``.
        """
        direction, gpa, size = self._request(exit_)
        machine = self.machine
        lo = gpa - machine.gpa_base
        hi = lo + size
        lo -= lo % PAGE_SIZE
        hi += -hi % PAGE_SIZE
        res = Resolution(exit_, direction, lo, hi - lo)
        self.log.append(res)
        if size <= 0 or lo < 0 or hi > machine.size:
            res.refused = f"[{gpa:#x}, +{size:#x}) is not inside the guest_memfd"
            return res
        for policy in self.policy.attempts(direction):
            flags = self.revision.encode(policy)
            conversion = Convert(lo, hi - lo, to=direction, flags=flags)
            while True:
                outcome = conversion.apply(machine)
                res.attempts.append(Attempt(policy, flags, outcome))
                if outcome.errno != "EAGAIN":
                    break
                dropped = self._drop_pins(lo, hi)
                if not dropped:
                    return res  # someone else's pin: not the VMM's to drop
                res.unpinned.extend(dropped)
            if outcome.errno != "EOPNOTSUPP":
                break
        return res

    def run(self, access: Callable[[], Outcome]) -> Outcome:
        """Run a guest operation, answer its conversion exits, and resume the guest.

        After a memory fault is converted the access runs again (KVM re-enters the guest
        at the faulting instruction), until it completes, exits for another reason, or
        faults again at a page already converted (no progress: the outcome is returned).
        A hypercall completes once answered: the result is ``Outcome()`` for ``ret`` = 0,
        else the conversion's errno as the guest's error. If a conversion fails, the
        outcome carries its errno and ``error_offset`` and the unresolved exit.
        """
        seen: set[tuple[object, ...]] = set()
        while True:
            outcome = access()
            exit_ = outcome.exit
            if exit_ is None:
                return outcome
            reason = exit_.get("reason")
            if reason == "HYPERCALL" and exit_.get("nr") == KVM_HC_MAP_GPA_RANGE:
                res = self.handle(exit_)
                return Outcome() if res.ok else _failed(res.outcome)
            if reason != "MEMORY_FAULT":
                return outcome
            key = (exit_["gpa"], exit_["size"], exit_["flags"])
            if key in seen:
                return outcome
            seen.add(key)
            res = self.handle(exit_)
            if not res.ok:
                return _failed(res.outcome, exit_)


def _failed(conversion: Outcome, exit_: Mapping[str, Any] | None = None) -> Outcome:
    """A failed (or skipped) conversion as the outcome of the guest operation."""
    return Outcome(
        errno=conversion.errno,
        error_offset=conversion.error_offset,
        skipped=conversion.skipped,
        exit=None if exit_ is None else dict(exit_),
    )

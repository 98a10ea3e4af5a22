"""An :class:`~guestmem.backend.base.Outcome` written as the scenario expectation it meets.

The inverse of the expectation grammar of docs/scenarios.md: what a counterexample, a
fixture or a printed disagreement writes as a step's ``expect``. An errno carries its
``error_offset`` (``@none``: not written back, docs/semantics.md §4); a memory-fault exit
its access kind and an MMIO exit its direction (§3 *Memslots*, §9); a read ``zeros``, a
repeated byte ``fill:XX`` or its hex. An outcome nothing but ``any`` meets (a skipped step,
an exit the grammar has no name for) is ``any``.
"""

from __future__ import annotations

from guestmem.backend.base import Outcome
from guestmem.uapi.kvm import KVM_MEMORY_EXIT_FLAG_PRIVATE


def expectation(outcome: Outcome) -> str:
    """The expectation that ``outcome`` meets and, but for ``any``, nothing else does."""
    if outcome.skipped is not None:
        return "any"
    if outcome.errno is not None:
        where = "none" if outcome.error_offset is None else f"{outcome.error_offset:#x}"
        return f"{outcome.errno}@{where}"
    if outcome.signal is not None:
        return outcome.signal
    if outcome.exit is not None:
        reason = outcome.exit.get("reason")
        if reason == "HYPERCALL":
            return "HYPERCALL"
        if reason == "MEMORY_FAULT":
            private = int(outcome.exit.get("flags", 0)) & KVM_MEMORY_EXIT_FLAG_PRIVATE
            return "MEMORY_FAULT:private" if private else "MEMORY_FAULT:shared"
        if reason == "MMIO":
            return "MMIO:write" if outcome.exit.get("is_write") else "MMIO:read"
        return "any"
    data = outcome.data
    if data is None:
        return "ok"
    if data and not any(data):
        return "zeros"
    if len(data) > 1 and data == data[:1] * len(data):
        return f"fill:{data[:1].hex()}"
    return data.hex()

"""The exploration alphabet: the operations ``guestmem explore`` tries in every state.

The operations are :mod:`guestmem.ops`'s, so a counterexample is written out as the
steps that produced it and replays through ``guestmem run`` unchanged. The alphabet is
small and symmetric under page permutations: every page-wide operation exists for every
page. The properties it is searched for are docs/semantics.md §5's.
"""

from __future__ import annotations

from guestmem.ops import (
    Convert,
    DeleteMemslot,
    GuestRead,
    GuestRequest,
    GuestWrite,
    HostRead,
    HostWrite,
    Launch,
    Operation,
    Pin,
    Populate,
    PunchHole,
    RestoreMemslot,
    Unpin,
)
from guestmem.spec import revisions
from guestmem.spec.terms import Direction, Policy
from guestmem.uapi.kvm import PAGE_SIZE

#: Bytes a read returns, from the start of a page: one 64-bit word.
WORD = 8
#: The two values a host or guest write stores (every byte of the word).
VALUES = (0x11, 0x22)
#: Policies in the order the alphabet tries them; ones decoding alike are tried once.
POLICIES = (Policy.DEFAULT, Policy.ZERO, Policy.PRESERVE, Policy.NONE)
#: Operation classes the alphabet draws from.
ALPHABET = (Launch, HostWrite, GuestWrite, GuestRequest, Convert, PunchHole, Pin, Unpin, HostRead, GuestRead)
#: Operation classes the search leaves out, and why.
NOT_EXPLORED = {
    DeleteMemslot: "the search state is the launch phase and the pages; a deleted memslot is "
    "neither, and no property of docs/semantics.md §5 depends on it",
    RestoreMemslot: "the search never deletes the memslot (above), so there is none to make again",
    Populate: "a launch ioctl of TDX and SNP that loads the initial payload before the guest runs; "
    "its rules (a source, or in place while in-place conversion is on) are errno checks the "
    "suite's populate_*.toml files pin, and it adds no guest-visible state a §5 property reads "
    "beyond what a pre-launch host write and conversion already give",
}


def alphabet(pages: int, abi: str) -> list[Operation]:
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
    ops: list[Operation] = [Launch()]
    for write in (HostWrite, GuestWrite):
        ops += [write(p * PAGE_SIZE, bytes([v]) * PAGE_SIZE) for p in range(pages) for v in VALUES]
    ops += [
        GuestRequest(p * PAGE_SIZE, PAGE_SIZE, to)
        for p in range(pages)
        for to in (Direction.TO_SHARED, Direction.TO_PRIVATE)
    ]
    for o, s in ranges:
        for to in (Direction.TO_PRIVATE, Direction.TO_SHARED):
            seen: set[object] = set()
            for policy in POLICIES:
                decoded = revision.decode(revision.encode(policy))
                if decoded not in seen:
                    seen.add(decoded)
                    ops.append(Convert(o, s, to=to, policy=policy))
    for each in (PunchHole, Pin, Unpin):
        ops += [each(p * PAGE_SIZE, PAGE_SIZE) for p in range(pages)]
    ops += [HostRead(p * PAGE_SIZE, WORD) for p in range(pages)]
    ops += [GuestRead(p * PAGE_SIZE, WORD) for p in range(pages)]
    return ops

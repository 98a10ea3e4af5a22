"""Where every byte came from, kept per page as runs: what the checker judges the
properties of docs/semantics.md §5 by.

A page is ``(data, runs)``: 4096 bytes and a tuple of ``(start, end, Origin)`` runs that
cover it. Pages produced by a policy (zeroed, filled) share one immutable object, so a
policy over a large allocated range costs one dict store per page.
"""

from __future__ import annotations

import enum
import hashlib

from guestmem.spec.terms import Direction, Effect
from guestmem.uapi.kvm import PAGE_SIZE


class Origin(enum.IntEnum):
    """The source of a byte that a reader sees."""

    INIT_ZERO = 0  # zero-on-first-use of a freshly allocated page
    HOST = 1  # written by the host (while shared)
    GUEST_PRIVATE = 2  # written by the guest into private memory, never disclosed
    GUEST_SHARED = 3  # written by the guest into shared memory
    DISCLOSED = 4  # guest-private bytes exposed by a conversion the guest asked for
    PAYLOAD = 5  # host bytes carried into private memory before launch (measured)
    ACCEPTED = 6  # host bytes carried into private memory at the guest's request
    ZEROED = 7  # zeroed by a ZERO policy or a native zeroing
    FILL = 8  # the 0xab fill of NONE on the test vehicle
    CIPHERTEXT = 9  # host view of memory under the VM key
    GARBAGE = 10  # guest view of host plaintext through the VM key
    RANDOM = 11  # rfc-v5 scramble
    LOST = 12  # guest-private bytes gone with a page a conversion unmapped without converting it

    @property
    def label(self) -> str:
        return self.name.lower()


#: Effects whose bytes are derived from the VM's key, the page's offset and the old bytes
#: (docs/semantics.md §8: never the plaintext, never all zeros), and the origin they get.
KEYED: dict[Effect, Origin] = {
    Effect.CIPHERTEXT: Origin.CIPHERTEXT,
    Effect.GARBAGE: Origin.GARBAGE,
    Effect.RANDOM: Origin.RANDOM,
}
KEYED_ORIGINS = frozenset(KEYED.values())
#: The labels of :data:`KEYED_ORIGINS` (what an outcome's ``origins`` carry).
KEYED_LABELS = frozenset(origin.label for origin in KEYED_ORIGINS)


def keyed_domain(origin: Origin, direction: Direction) -> bytes:
    """The domain :func:`keyed_bytes` derives ``origin``'s bytes in: its label, plus the
    direction for ``rfc-v5``'s scramble (a round trip of the same bytes scrambles anew)."""
    domain = origin.label.encode()
    return domain + direction.value.encode() if origin is Origin.RANDOM else domain


Runs = tuple[tuple[int, int, Origin], ...]
Page = tuple[bytes, Runs]

ZERO_BYTES = bytes(PAGE_SIZE)
INIT_PAGE: Page = (ZERO_BYTES, ((0, PAGE_SIZE, Origin.INIT_ZERO),))
ZEROED_PAGE: Page = (ZERO_BYTES, ((0, PAGE_SIZE, Origin.ZEROED),))
FILL_PAGE: Page = (b"\xab" * PAGE_SIZE, ((0, PAGE_SIZE, Origin.FILL),))
#: A private page removed from the confidential VM and handed back zeroed
#: (docs/semantics.md §3 *Mixed ranges*).
LOST_PAGE: Page = (ZERO_BYTES, ((0, PAGE_SIZE, Origin.LOST),))


def paint(runs: Runs, lo: int, hi: int, origin: Origin) -> Runs:
    """``runs`` with ``[lo, hi)`` set to ``origin``; adjacent equal runs merged."""
    out: list[tuple[int, int, Origin]] = []
    for a, b, o in runs:
        if b <= lo or a >= hi:
            out.append((a, b, o))
            continue
        if a < lo:
            out.append((a, lo, o))
        if not out or out[-1][1] <= lo:
            out.append((lo, hi, origin))
        if b > hi:
            out.append((hi, b, o))
    out.sort()
    merged: list[tuple[int, int, Origin]] = []
    for run in out:
        if merged and merged[-1][2] == run[2] and merged[-1][1] == run[0]:
            merged[-1] = (merged[-1][0], run[1], run[2])
        else:
            merged.append(run)
    return tuple(merged)


def relabel(runs: Runs, old: Origin, new: Origin) -> Runs:
    """Every ``old`` run becomes ``new`` (adjacent equal runs merged)."""
    if all(o != old for _, _, o in runs):
        return runs
    merged: list[tuple[int, int, Origin]] = []
    for a, b, o in runs:
        o = new if o == old else o
        if merged and merged[-1][2] == o:
            merged[-1] = (merged[-1][0], b, o)
        else:
            merged.append((a, b, o))
    return tuple(merged)


def clip(runs: Runs, lo: int, hi: int, shift: int = 0) -> list[tuple[int, int, Origin]]:
    """The runs inside ``[lo, hi)``, moved by ``shift``."""
    return [(max(a, lo) + shift, min(b, hi) + shift, o) for a, b, o in runs if a < hi and b > lo]


def keyed_bytes(key: bytes, domain: bytes, offset: int, old: bytes) -> bytes:
    """Deterministic pseudo-random page: never the plaintext, never all zero.

    Derived from the per-VM key, the page's file offset and its old contents
    (docs/semantics.md §2, *Ciphertext* and *garbage*).
    """
    xof = hashlib.shake_256(domain + key + offset.to_bytes(8, "little") + old)
    data = xof.digest(PAGE_SIZE)
    if data == old or not any(data):  # astronomically unlikely; keep the promise anyway
        data = bytes(b ^ 0x5A for b in data) if any(data) else b"\x5a" * PAGE_SIZE
    return data

"""What must agree between two backends' outcomes of the same operation.

Everything an outcome says — errno, ``error_offset``, signal, exit, skip reason and the
bytes read — except bytes whose origin the revision does not promise: the model's
stand-ins for random, ciphertext and garbage contents (``rfc-v5``'s unspecified mode
among them) differ from what a kernel produces, and only their being there is promised.
"""

from __future__ import annotations

from typing import Any

from guestmem.backend.base import Outcome
from guestmem.model.provenance import KEYED_LABELS

#: Origins whose bytes the revision does not promise (the model's stand-ins differ).
UNPROMISED = KEYED_LABELS


def observed(outcome: Outcome, mask: Outcome | None = None) -> dict[str, Any]:
    """What must agree; ``mask``'s origins blank out bytes the revision does not promise."""
    data = outcome.data
    if data is not None and mask is not None and mask.origins:
        buf = bytearray(data)
        base = mask.origins[0][0]
        for start, end, label in mask.origins:
            if label in UNPROMISED:
                buf[start - base : end - base] = b"?" * (end - start)
        data = bytes(buf)
    return {
        "errno": outcome.errno,
        "error_offset": outcome.error_offset,
        "signal": outcome.signal,
        "exit": outcome.exit,
        "skipped": outcome.skipped,
        "data": data,
    }


def agree(got: Outcome, want: Outcome) -> bool:
    """Whether ``got`` answers what ``want`` (the model's outcome, whose origins mask) does."""
    return observed(got, want) == observed(want, want)

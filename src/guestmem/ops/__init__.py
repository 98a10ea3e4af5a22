"""One vocabulary of operations over the backend seam (docs/architecture.md).

:mod:`~guestmem.ops.operations` holds one class per operation; scenario files parse into
them, the checker searches over them, generated tests run them and the VMM's handler
issues them. :func:`expectation` writes an outcome as the expectation it meets and
:mod:`~guestmem.ops.toml` writes scenario files.
"""

from __future__ import annotations

from guestmem.ops.expectation import expectation
from guestmem.ops.operations import (
    OPERATIONS,
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

__all__ = [
    "OPERATIONS",
    "Convert",
    "DeleteMemslot",
    "GuestRead",
    "GuestRequest",
    "GuestWrite",
    "HostRead",
    "HostWrite",
    "Launch",
    "Operation",
    "Pin",
    "Populate",
    "PunchHole",
    "RestoreMemslot",
    "Unpin",
    "expectation",
]

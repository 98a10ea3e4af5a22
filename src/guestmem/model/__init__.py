"""The executable model of guest_memfd with private/shared attributes.

``Vm`` holds the platform, ABI revision, launch phase and guest requests; ``GuestMemfd``
holds per-page attributes (a :class:`RangeMap`), sparse page contents with provenance,
pins and host mappings, and implements ``KVM_SET_MEMORY_ATTRIBUTES2`` step by step as
docs/semantics.md §4 lists it. Memory grows with touched pages only.
"""

from __future__ import annotations

from guestmem.model.gmem import GuestMemfd, HostMapping
from guestmem.model.provenance import Origin
from guestmem.model.vm import Vm

__all__ = ["GuestMemfd", "HostMapping", "Origin", "Vm"]

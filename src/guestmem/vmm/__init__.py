"""The VMM's half of a conversion: turn a guest exit into ``KVM_SET_MEMORY_ATTRIBUTES2``.

:class:`~guestmem.vmm.handler.ConversionHandler` answers ``KVM_EXIT_MEMORY_FAULT`` and
``KVM_HC_MAP_GPA_RANGE`` exits (docs/semantics.md §9) over any backend's
:class:`~guestmem.backend.base.Machine`; :func:`~guestmem.vmm.handler.default_policy`
picks the content policy a VMM would ask for per platform and direction.
"""

from __future__ import annotations

from guestmem.vmm.handler import ConversionHandler, Resolution, VmmPolicy, default_policy

__all__ = ["ConversionHandler", "Resolution", "VmmPolicy", "default_policy"]

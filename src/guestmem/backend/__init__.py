"""The backend seam: one scenario API over the model or a real kernel.

A :class:`~guestmem.backend.base.Backend` opens a
:class:`~guestmem.backend.base.Machine`: one VM, one guest_memfd bound at
:data:`~guestmem.model.vm.GPA_BASE`, one host mapping and one vCPU. Every operation
returns an :class:`~guestmem.backend.base.Outcome`, so scenarios and the VMM conversion
handler run unchanged on either backend. The checker runs on the model only: it restores
and reads the model's state between operations, which a kernel cannot offer.
"""

from __future__ import annotations

from guestmem.backend.base import Backend, Machine, Outcome, Unavailable


def get(name: str) -> Backend:
    """``model`` or ``kvm``; ``KeyError`` names the choices."""
    if name == "model":
        from guestmem.backend.model import ModelBackend

        return ModelBackend()
    if name == "kvm":
        from guestmem.backend.kernel import KernelBackend

        return KernelBackend()
    raise KeyError(f"unknown backend {name!r} (choose from model, kvm)")


__all__ = ["Backend", "Machine", "Outcome", "Unavailable", "get"]

"""Arm CCA (Realms: RME + RMM).

The RMM owns the realm's granules and scrubs them on delegate and undelegate, so the
host reads zeros after P→S and the guest reads zeros after S→P. The RMM copies the
initial payload (``RMI_DATA_CREATE`` via ``KVM_ARM_RMI_POPULATE``) only before
activation, so PRESERVE is pre-launch only. Unmapping a realm's private page destroys it
in the RMM, as the Arm host series on v8 would in a mixed range (docs/semantics.md §3
*Mixed ranges*; no revision lets CCA convert, so the model never shows it). Rules:
docs/semantics.md §2 row ``cca``; several cells are inferred (§8 item 8).
"""

from __future__ import annotations

from guestmem.spec.platforms.base import Platform
from guestmem.spec.terms import Direction, Effect, Policy, always, native, pre_launch, unsupported

S, P = Direction.TO_SHARED, Direction.TO_PRIVATE

PLATFORM = Platform(
    name="cca",
    title="Arm CCA (Realm)",
    arch="arm64",
    vm_type=None,
    private_memory=True,
    launch=True,
    consent=False,
    native={S: Effect.ZEROS, P: Effect.ZEROS},
    policies={
        (S, Policy.ZERO): always(Effect.ZEROS),
        (S, Policy.PRESERVE): unsupported("no export of realm data"),
        (S, Policy.NONE): native(Effect.ZEROS, "RMM scrubs on undelegate"),
        (P, Policy.ZERO): always(Effect.ZEROS, "RMM zeroes the granule"),
        (P, Policy.PRESERVE): pre_launch(Effect.PRESERVED, "populate before activation"),
        (P, Policy.NONE): native(Effect.ZEROS, "RMI_DATA_CREATE_UNKNOWN; TF-RMM zeroes"),
    },
    payload="KVM_ARM_RMI_POPULATE (RMI_DATA_CREATE, optional measure) before activation",
    host_access="SIGBUS (granule protection fault) through guest_memfd",
    payload_in_place=True,
    confidential=True,
    unmap_loses_private=True,
)

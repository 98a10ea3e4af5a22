"""Intel TDX.

The TDX module owns the Secure-EPT and encrypts private memory under the TD's key. It
zeroes at ``TDG.MEM.PAGE.ACCEPT`` (S→P: the guest reads zeros) and the host reads zeros
after ``PAGE.REMOVE`` (P→S). Plaintext cannot cross at runtime, so PRESERVE exists only
before finalize, for the in-place ``KVM_TDX_INIT_MEM_REGION`` (v8 23/46); without a
source it answers ``EOPNOTSUPP`` where the revision needs one (docs/semantics.md §3
*Populate*). Removing a private mapping removes the page from the TD, which is how
``v8`` loses a guest's page in a mixed range (§3 *Mixed ranges*). Rules: docs/semantics.md §2 row ``tdx``.
"""

from __future__ import annotations

from guestmem.spec.platforms.base import Platform
from guestmem.spec.terms import Direction, Effect, Policy, always, native, pre_launch, unsupported
from guestmem.uapi.kvm import KVM_X86_TDX_VM

S, P = Direction.TO_SHARED, Direction.TO_PRIVATE

PLATFORM = Platform(
    name="tdx",
    title="Intel TDX",
    arch="x86",
    vm_type=KVM_X86_TDX_VM,
    private_memory=True,
    launch=True,
    consent=False,
    native={S: Effect.ZEROS, P: Effect.ZEROS},
    policies={
        (S, Policy.ZERO): always(Effect.ZEROS),
        (S, Policy.PRESERVE): unsupported("no plaintext export of TD memory"),
        (S, Policy.NONE): native(Effect.ZEROS),
        (P, Policy.ZERO): always(Effect.ZEROS, "the TDX module zeroes on accept"),
        (P, Policy.PRESERVE): pre_launch(Effect.PRESERVED, "in-place initial payload"),
        (P, Policy.NONE): native(Effect.ZEROS),
    },
    payload="KVM_TDX_INIT_MEM_REGION (PAGE.ADD + MR.EXTEND) before finalize; in place in v8",
    host_access="SIGBUS through guest_memfd; a kernel read of the direct map gives zeros",
    payload_in_place=True,
    confidential=True,
    unmap_loses_private=True,
    populate="KVM_TDX_INIT_MEM_REGION",
    populate_no_source="EOPNOTSUPP",
)

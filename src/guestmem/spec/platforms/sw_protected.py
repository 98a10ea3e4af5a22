"""``KVM_X86_SW_PROTECTED_VM``: the software test vehicle.

No hardware protection; guest_memfd refuses host faults on private offsets. Natively
(v6+) contents are preserved both ways, and the v8 selftests rely on it. The iteration-2
text makes it zero both ways under ZERO and fill every byte with ``0xab`` under NONE.
Rules: docs/semantics.md §1 and §2 row ``sw_protected``.
"""

from __future__ import annotations

from guestmem.spec.platforms.base import Platform
from guestmem.spec.terms import Direction, Effect, Policy, always
from guestmem.uapi.kvm import KVM_X86_SW_PROTECTED_VM

S, P = Direction.TO_SHARED, Direction.TO_PRIVATE

PLATFORM = Platform(
    name="sw_protected",
    title="KVM_X86_SW_PROTECTED_VM (software test vehicle)",
    arch="x86",
    vm_type=KVM_X86_SW_PROTECTED_VM,
    private_memory=True,
    launch=False,
    consent=False,
    native={S: Effect.PRESERVED, P: Effect.PRESERVED},
    policies={
        (S, Policy.ZERO): always(Effect.ZEROS),
        (S, Policy.PRESERVE): always(Effect.PRESERVED),
        (S, Policy.NONE): always(Effect.FILL_AB, "iteration 2: every byte reads 0xab"),
        (P, Policy.ZERO): always(Effect.ZEROS, "the test vehicle zeroes both ways"),
        (P, Policy.PRESERVE): always(Effect.PRESERVED),
        (P, Policy.NONE): always(Effect.FILL_AB, "iteration 2: every byte reads 0xab"),
    },
    payload="no launch phase: the host writes while shared, then converts to private",
    host_access="SIGBUS on a private offset",
    test_vehicle=True,
)

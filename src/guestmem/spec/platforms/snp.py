"""AMD SEV-SNP.

The RMP tracks ownership and a per-VM key encrypts C-bit accesses. Nobody zeroes at
conversion: after P→S the host reads ciphertext, after S→P the guest reads host
plaintext decrypted under its key, i.e. garbage. KVM zeroes after make-shared for P→S
ZERO; there is no trusted zeroing for S→P. PRESERVE exists only before launch, for the
in-place ``KVM_SEV_SNP_LAUNCH_UPDATE``. Rules: docs/semantics.md §2 row ``snp``.
"""

from __future__ import annotations

from guestmem.spec.platforms.base import Platform
from guestmem.spec.terms import Direction, Effect, Policy, always, native, pre_launch, unsupported
from guestmem.uapi.kvm import KVM_X86_SNP_VM

S, P = Direction.TO_SHARED, Direction.TO_PRIVATE

PLATFORM = Platform(
    name="snp",
    title="AMD SEV-SNP",
    arch="x86",
    vm_type=KVM_X86_SNP_VM,
    private_memory=True,
    launch=True,
    consent=False,
    native={S: Effect.CIPHERTEXT, P: Effect.GARBAGE},
    policies={
        (S, Policy.ZERO): always(Effect.ZEROS, "KVM zeroes after make-shared"),
        (S, Policy.PRESERVE): unsupported("the host would read ciphertext"),
        (S, Policy.NONE): native(Effect.CIPHERTEXT),
        (P, Policy.ZERO): unsupported("no trusted zeroing at conversion"),
        (P, Policy.PRESERVE): pre_launch(Effect.PRESERVED, "in-place launch update"),
        (P, Policy.NONE): native(Effect.GARBAGE),
    },
    payload="KVM_SEV_SNP_LAUNCH_UPDATE encrypts and measures in place before LAUNCH_FINISH",
    host_access="SIGBUS through guest_memfd; a hypervisor read gives ciphertext",
    payload_in_place=True,
    confidential=True,
    populate="KVM_SEV_SNP_LAUNCH_UPDATE",
    populate_no_source="EINVAL",
)

"""pKVM (arm64 protected VMs).

Isolation is Stage-2 page ownership held by the EL2 hypervisor; there is no encryption,
so share and unshare flip ownership and keep the data (PRESERVE needs no crypto, as the
review says). Fresh zeroed memory comes by donation, so S→P ZERO is ``EOPNOTSUPP``; P→S
ZERO is a KVM software memset. Once running, conversions follow guest
``MEM_SHARE``/``MEM_UNSHARE`` hypercalls: the consent rule (docs/semantics.md §3, a model
assumption, §8 item 2). There is no finalize step: the first vCPU run is the launch (§3
*Launch*). Rules: docs/semantics.md §2 row ``pkvm``.
"""

from __future__ import annotations

from guestmem.spec.platforms.base import Platform
from guestmem.spec.terms import Direction, Effect, Policy, always, native, unsupported

S, P = Direction.TO_SHARED, Direction.TO_PRIVATE

PLATFORM = Platform(
    name="pkvm",
    title="pKVM (arm64 protected VM)",
    arch="arm64",
    vm_type=None,
    private_memory=True,
    launch=True,
    consent=True,
    native={S: Effect.PRESERVED, P: Effect.PRESERVED},
    policies={
        (S, Policy.ZERO): always(Effect.ZEROS, "KVM zeroes in software"),
        (S, Policy.PRESERVE): always(Effect.PRESERVED, "bounce buffer; Stage-2 transfer"),
        (S, Policy.NONE): native(Effect.PRESERVED),
        (P, Policy.ZERO): unsupported("zeroed memory comes by donation"),
        (P, Policy.PRESERVE): always(Effect.PRESERVED, "payload injection; Stage-2 transfer"),
        (P, Policy.NONE): native(Effect.PRESERVED),
    },
    payload="the VMM writes host-owned memory; the first guest fault donates it intact",
    host_access="SIGBUS if guest_memfd-backed (an EL2 abort, SIGSEGV, for anonymous memory)",
    first_run_launches=True,
    confidential=True,
)

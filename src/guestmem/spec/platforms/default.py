"""The default x86 VM (type 0): no private memory.

Every conversion is ``EINVAL`` (docs/semantics.md §2, last row; check 4 of §4). guest_memfd
still works as shared memory with ``MMAP | INIT_SHARED``; this is the only VM type a kernel
without the conversion series offers.
"""

from __future__ import annotations

from guestmem.spec.platforms.base import Platform
from guestmem.spec.terms import Direction, Effect, Policy, unsupported
from guestmem.uapi.kvm import KVM_X86_DEFAULT_VM

PLATFORM = Platform(
    name="default",
    title="default VM (no private memory)",
    arch="x86",
    vm_type=KVM_X86_DEFAULT_VM,
    private_memory=False,
    launch=False,
    consent=False,
    native={Direction.TO_SHARED: Effect.PRESERVED, Direction.TO_PRIVATE: Effect.PRESERVED},
    policies={
        (d, p): unsupported("no private memory") for d in Direction for p in Policy if p is not Policy.DEFAULT
    },
    payload="ordinary shared memory; no confidential payload",
    host_access="ordinary shared memory; SIGBUS only on a page created private",
)

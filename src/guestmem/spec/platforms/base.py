"""What a platform module declares (docs/semantics.md §2, §3, §8)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from guestmem.spec.terms import Direction, Effect, Policy, Support


@dataclass(frozen=True)
class Platform:
    """A confidential-computing platform, as data.

    ``native`` is the content effect when KVM does nothing (v6+ behaviour, and what NONE
    gives); ``policies`` is the table the review argues for (docs/semantics.md §2, ``seed``),
    keyed by direction and policy (``Policy.ZERO``, ``PRESERVE``, ``NONE``).
    """

    name: str
    title: str
    #: ``x86`` or ``arm64``: the posted series defines ``kvm_arch_has_private_mem`` on
    #: x86 only, so arm64 VMs have no PRIVATE attribute there (docs/semantics.md §1).
    arch: str
    vm_type: int | None
    private_memory: bool
    launch: bool
    consent: bool
    native: Mapping[Direction, Effect]
    policies: Mapping[tuple[Direction, Policy], Support]
    payload: str
    host_access: str
    #: A pre-launch to-private conversion keeps contents for an in-place populate
    #: (TDX ``INIT_MEM_REGION``, SNP ``LAUNCH_UPDATE``, CCA ``RMI_POPULATE``).
    payload_in_place: bool = False
    #: Removing a private page from the guest's page tables also removes it from the
    #: confidential VM, so what it held is gone (TDX ``PAGE.REMOVE``, CCA ``DATA_DESTROY``);
    #: elsewhere the next fault maps the same page again (docs/semantics.md §3 *Mixed
    #: ranges*).
    unmap_loses_private: bool = False
    #: The launch ioctl that puts an initial payload into private memory, and the answer
    #: when it is given no source under a revision or setting that needs one
    #: (docs/semantics.md §3 *Populate*); empty where the model has no such ioctl.
    populate: str = ""
    populate_no_source: str = ""
    #: The first vCPU run launches the VM (pKVM has no finalize step; docs/semantics.md §3
    #: *Launch*); elsewhere a guest cannot run before ``launch``.
    first_run_launches: bool = False
    #: The platform claims confidentiality and integrity (docs/semantics.md §5); one that
    #: does not (the test vehicle, the default VM) claims isolation and policy only.
    confidential: bool = False
    #: The software test vehicle: KVM itself does a conversion's content work, so the
    #: proposals' optional behaviours (``rfc-v5``'s PRESERVE and scramble, ``iteration2``'s
    #: S→P ZERO) are offered here first (docs/semantics.md §1).
    test_vehicle: bool = False

    def support(self, direction: Direction, policy: Policy) -> Support:
        return self.policies[(direction, policy)]

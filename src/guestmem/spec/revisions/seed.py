"""``seed``: the 2026-03-11 iteration-2 text with the review's three corrections.

- ``flags``: ``CONTENT_POLICY_ZERO = 1<<0``, ``PRESERVE = 1<<1``, ``NONE = 1<<2`` (the text
  names no values; this encoding is the project's); ``flags = 0`` means ZERO.
- S→P ZERO is defined: the trusted hypervisor or firmware zeroes before the page is
  mapped private; a platform that provisions zeroed memory another way says
  ``EOPNOTSUPP`` (docs/semantics.md §1).
- A non-zero ``error_offset`` on input is ``EINVAL`` (docs/semantics.md §4 step 3).
- Results per platform are the platform modules' ``policies`` tables (docs/semantics.md
  §2); a guaranteed cell is a policy KVM applies, so it reaches the whole range, a
  ``native`` cell only the pages that change state (§3 *Whole range*).
- Capabilities (§7): the text defines none; the model answers
  ``KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`` under v8's number (a model assumption).
"""

from __future__ import annotations

from guestmem.spec.platforms.base import Platform
from guestmem.spec.terms import Decoded, Direction, Effect, Phase, Policy
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_CAP_GUEST_MEMFD,
    KVM_CAP_GUEST_MEMFD_FLAGS,
    KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES,
    KVM_CAP_MEMORY_ATTRIBUTES,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
)

CONTENT_POLICY_ZERO = 1 << 0
CONTENT_POLICY_PRESERVE = 1 << 1
CONTENT_POLICY_NONE = 1 << 2


class Seed:
    """The reviewed proposal. Other revisions subclass this and override what differs."""

    name = "seed"
    title = "iteration 2 with the review's corrections (default)"
    #: A non-zero ``error_offset`` on input is rejected (check 3).
    rejects_error_offset_input = True
    #: A request that matches the current attributes returns 0 and does nothing.
    early_return = False
    #: ``KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`` (proposed; the number moved with every
    #: posting, docs/semantics.md §7).
    cap_gmem_attributes = KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES
    #: A to-private conversion of a range that changes state also unmaps the guest's
    #: mappings of the pages in it that are already private, because the mappings to drop
    #: are chosen from the range's current attributes; where that unmap loses a page
    #: (``Platform.unmap_loses_private``), the guest loses what it held
    #: (docs/semantics.md §3 *Mixed ranges*).
    unmaps_private_on_to_private = False
    #: The populate ioctl may be given no source and populate from the guest_memfd page
    #: itself, when in-place conversion is on (docs/semantics.md §3 *Populate*).
    populate_in_place = False

    def encode(self, policy: Policy) -> int:
        """The ``flags`` a VMM passes to ask for ``policy``."""
        return {
            Policy.ZERO: CONTENT_POLICY_ZERO,
            Policy.PRESERVE: CONTENT_POLICY_PRESERVE,
            Policy.NONE: CONTENT_POLICY_NONE,
            Policy.DEFAULT: 0,
        }[policy]

    def decode(self, flags: int) -> Decoded | None:
        """Check 2: the policy ``flags`` asks for, or None for ``EINVAL``."""
        return {
            0: Decoded.ZERO,
            CONTENT_POLICY_ZERO: Decoded.ZERO,
            CONTENT_POLICY_PRESERVE: Decoded.PRESERVE,
            CONTENT_POLICY_NONE: Decoded.NONE,
        }.get(flags)

    def has_private_memory(self, platform: Platform) -> bool:
        """Whether VMs of ``platform`` have a PRIVATE attribute under this revision."""
        return platform.private_memory

    def accepts_attributes(self, platform: Platform, attributes: int) -> bool:
        """Checks 4 and 5: the VM has private memory and ``attributes`` is 0 or PRIVATE."""
        return self.has_private_memory(platform) and attributes in (0, KVM_MEMORY_ATTRIBUTE_PRIVATE)

    def effect(
        self, platform: Platform, direction: Direction, policy: Decoded, phase: Phase
    ) -> Effect | None:
        """Check 9: what the next reader sees, or None for ``EOPNOTSUPP``."""
        return platform.support(direction, Policy(policy.value)).effect_in(phase)

    def guaranteed(self, platform: Platform, direction: Direction, policy: Decoded) -> bool:
        """Whether the effect is a promise (docs/semantics.md §5 *Policy*) or only native."""
        return platform.support(direction, Policy(policy.value)).guaranteed

    def applied_by_kvm(self, platform: Platform, direction: Direction, policy: Decoded) -> bool:
        """Whether KVM applies the effect itself (docs/semantics.md §3 *Whole range*): then
        it reaches every allocated page of the range, also pages already in the target
        state; a platform's native effect comes from the conversion and reaches only the
        pages that change state. Under ``seed`` KVM applies exactly the guaranteed cells."""
        return self.guaranteed(platform, direction, policy)

    def capabilities(self, platform: Platform, in_place_conversion: bool) -> dict[int, int]:
        """``KVM_CHECK_EXTENSION`` answers on a VM of ``platform`` (docs/semantics.md §7)."""
        private = self.has_private_memory(platform)
        return {
            KVM_CAP_GUEST_MEMFD: 1,
            KVM_CAP_GUEST_MEMFD_FLAGS: GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
            # the VM ioctl gives PRIVATE up once guest_memfd tracks it (v8 10/46, 17/46)
            KVM_CAP_MEMORY_ATTRIBUTES: KVM_MEMORY_ATTRIBUTE_PRIVATE
            if private and not in_place_conversion
            else 0,
            self.cap_gmem_attributes: KVM_MEMORY_ATTRIBUTE_PRIVATE if private and in_place_conversion else 0,
        }

    def needs_consent(self, platform: Platform, phase: Phase) -> bool:
        """Check 10: pKVM once running converts only what the guest asked for (§3 *Guest consent*)."""
        return platform.consent and phase is Phase.RUNNING

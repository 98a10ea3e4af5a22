"""``rfc-v5``: the content modes as coded in RFC v3-v5 (docs/semantics.md §1).

- ``flags``: ``ZERO = 1<<0``, ``PRESERVE = 1<<1``; 0 is ``MODE_UNSPECIFIED`` (no
  guarantees), which is also what a VMM asking for NONE passes; ``ZERO|PRESERVE`` and
  unknown bits are ``EINVAL``.
- Checks 4 and 5 are one: ``attributes`` outside what the VM supports is ``EINVAL``, so
  ``attributes = 0`` passes on a VM without private memory. PRIVATE is supported only
  where ``kvm_arch_has_private_mem`` exists, on x86: a to-private request on ``pkvm`` or
  ``cca`` is ``EINVAL``.
- ZERO on to-private is ``EOPNOTSUPP`` for every VM type; P→S ZERO is a software memset
  on ``sw_protected``, ``tdx`` and ``snp``. PRESERVE: always on ``sw_protected``; on
  ``tdx``/``snp`` only to-private before launch. arm64 (``pkvm``, ``cca``) and the
  default VM support no mode.
- Unspecified conversions on ``sw_protected`` are scrambled with random bytes; elsewhere
  contents follow the platform's native effect. KVM applies ZERO, PRESERVE and the
  scramble to the whole range, also when the range already has the attributes; a native
  effect reaches only the pages that change state (§3 *Whole range*).
- A non-zero ``error_offset`` on input is ignored.
- The mappings a conversion drops follow the range's current attributes (RFC v5 17/53),
  so a to-private conversion of a mixed range unmaps the already-private pages too: on
  TDX the guest loses them (§3 *Mixed ranges*).
- ``KVM_TDX_INIT_MEM_REGION`` and ``KVM_SEV_SNP_LAUNCH_UPDATE`` may omit the source and
  populate in place (RFC v5 24/53, 25/53; §3 *Populate*).
- Capabilities: ``KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`` and
  ``KVM_CAP_MEMORY_ATTRIBUTES2_FLAGS``, numbered 250 and 251 as on the project's RFC v5
  kernel (posted as 249 and 250; 249 is taken in the kernel it is built on; §7).
"""

from __future__ import annotations

from guestmem.spec.platforms.base import Platform
from guestmem.spec.revisions.seed import Seed
from guestmem.spec.terms import Decoded, Direction, Effect, Phase, Policy
from guestmem.uapi.kvm import (
    KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES,
    KVM_CAP_MEMORY_ATTRIBUTES2_FLAGS,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
)

MODE_UNSPECIFIED = 0
MODE_ZERO = 1 << 0
MODE_PRESERVE = 1 << 1

#: Modes each VM type's arch hook accepts (RFC v5 "Define supported content modes").
_MODES: dict[str, frozenset[Decoded]] = {
    "sw_protected": frozenset({Decoded.ZERO, Decoded.PRESERVE}),
    "tdx": frozenset({Decoded.ZERO, Decoded.PRESERVE}),
    "snp": frozenset({Decoded.ZERO, Decoded.PRESERVE}),
}


class RfcV5(Seed):
    name = "rfc-v5"
    title = "content modes as coded in RFC v3-v5 (2026-04-28)"
    rejects_error_offset_input = False
    cap_gmem_attributes = KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES
    unmaps_private_on_to_private = True
    populate_in_place = True
    #: ``KVM_CAP_MEMORY_ATTRIBUTES2_FLAGS``: the content modes a VM type supports.
    cap_flags = KVM_CAP_MEMORY_ATTRIBUTES2_FLAGS

    def encode(self, policy: Policy) -> int:
        return {Policy.ZERO: MODE_ZERO, Policy.PRESERVE: MODE_PRESERVE}.get(policy, MODE_UNSPECIFIED)

    def decode(self, flags: int) -> Decoded | None:
        return {
            MODE_UNSPECIFIED: Decoded.UNSPECIFIED,
            MODE_ZERO: Decoded.ZERO,
            MODE_PRESERVE: Decoded.PRESERVE,
        }.get(flags)

    def has_private_memory(self, platform: Platform) -> bool:
        return platform.private_memory and platform.arch == "x86"  # kvm_arch_has_private_mem

    def accepts_attributes(self, platform: Platform, attributes: int) -> bool:
        supported = KVM_MEMORY_ATTRIBUTE_PRIVATE if self.has_private_memory(platform) else 0
        return attributes & ~supported == 0

    def effect(
        self, platform: Platform, direction: Direction, policy: Decoded, phase: Phase
    ) -> Effect | None:
        if policy is Decoded.UNSPECIFIED:
            return Effect.RANDOM if platform.test_vehicle else platform.native[direction]
        if policy not in _MODES.get(platform.name, frozenset()):
            return None
        if policy is Decoded.ZERO:
            return Effect.ZEROS if direction is Direction.TO_SHARED else None
        if platform.test_vehicle:
            return Effect.PRESERVED
        pre_launch_to_private = direction is Direction.TO_PRIVATE and phase is Phase.PRE_LAUNCH
        return Effect.PRESERVED if pre_launch_to_private else None

    def guaranteed(self, platform: Platform, direction: Direction, policy: Decoded) -> bool:
        return policy is not Decoded.UNSPECIFIED

    def applied_by_kvm(self, platform: Platform, direction: Direction, policy: Decoded) -> bool:
        # the unspecified mode is KVM's only on sw_protected (the scramble); elsewhere the
        # arch hook does nothing and the platform's native effect remains
        return policy is not Decoded.UNSPECIFIED or platform.test_vehicle

    def capabilities(self, platform: Platform, in_place_conversion: bool) -> dict[int, int]:
        caps = super().capabilities(platform, in_place_conversion)
        modes = 0
        if in_place_conversion and platform.name in _MODES:  # the for_cap answer: both modes
            modes = MODE_ZERO | MODE_PRESERVE
        caps[self.cap_flags] = modes
        return caps

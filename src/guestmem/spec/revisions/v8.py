"""``v8``: the latest posted series (2026-06-18; uapi.md §0, §7, §11).

- ``flags`` must be 0, else ``EINVAL``: KVM "does not directly manipulate the memory
  contents", so every conversion shows the platform's native effect (``sw_protected``:
  preserved, which the v8 selftests rely on).
- Only VM types with private memory (``sw_protected``, ``tdx``, ``snp``) accept the
  ioctl; the others, arm64 included, get ``EINVAL`` (check 4).
- A request that matches the current attributes returns 0 and does nothing (v8 16/46).
  With no content policy, a page already in the target state keeps its contents also in
  a mixed range: only pages that convert meet the native effect (``whole_range``; KVM
  "does not directly manipulate the memory contents", v8 17/46).
- ``error_offset`` on input is ignored.
- Model assumption: a pre-launch to-private conversion on a platform with an in-place
  populate keeps its contents, because v8 22/46 and 23/46 let that populate read the
  guest_memfd page itself.
"""

from __future__ import annotations

from guestmem.spec.platforms.base import Platform
from guestmem.spec.revisions.seed import Seed
from guestmem.spec.terms import Decoded, Direction, Effect, Phase, Policy
from guestmem.uapi.kvm import KVM_MEMORY_ATTRIBUTE_PRIVATE

#: ``kvm_arch_has_private_mem()`` is true only for these (platforms.md §0).
_PRIVATE_MEMORY = frozenset({"sw_protected", "tdx", "snp"})


class V8(Seed):
    name = "v8"
    title = "in-place conversion v8: flags must be 0 (2026-06-18)"
    rejects_error_offset_input = False
    early_return = True
    whole_range = False

    def encode(self, policy: Policy) -> int:
        # v8 has no flag values; a VMM written for seed passes seed's, which v8 refuses.
        return super().encode(policy)

    def decode(self, flags: int) -> Decoded | None:
        return Decoded.UNSPECIFIED if flags == 0 else None

    def accepts_attributes(self, platform: Platform, attributes: int) -> bool:
        return platform.name in _PRIVATE_MEMORY and attributes in (0, KVM_MEMORY_ATTRIBUTE_PRIVATE)

    def effect(
        self, platform: Platform, direction: Direction, policy: Decoded, phase: Phase
    ) -> Effect | None:
        if direction is Direction.TO_PRIVATE and phase is Phase.PRE_LAUNCH and platform.payload_in_place:
            return Effect.PRESERVED
        return platform.native[direction]

    def guaranteed(self, platform: Platform, direction: Direction, policy: Decoded) -> bool:
        return False

"""``v8``: the latest posted series (2026-06-18; docs/semantics.md §1).

- ``flags`` must be 0, else ``EINVAL``: KVM leaves contents alone, so every conversion
  shows the platform's native effect (``sw_protected``: preserved, which the v8
  selftests rely on).
- Only x86 VM types with private memory (``sw_protected``, ``tdx``, ``snp``) accept the
  ioctl; the others, arm64 included, get ``EINVAL`` (check 4).
- A request that matches the current attributes returns 0 and does nothing. With no
  content policy, a page already in the target state keeps its contents also in a mixed
  range: only pages that convert meet the native effect (§3 *Whole range*).
- ``error_offset`` on input is ignored.
- Policies encode as under ``seed``: a VMM written for ``seed`` passes ``seed``'s flag
  values, which v8 refuses.
- The mappings a conversion drops follow the range's current attributes, so a
  to-private conversion of a mixed range unmaps the already-private pages too: on TDX
  (and on CCA with the Arm host series on top) the guest loses what they held (§3
  *Mixed ranges*).
- ``KVM_TDX_INIT_MEM_REGION`` and ``KVM_SEV_SNP_LAUNCH_UPDATE`` may omit the source and
  populate in place while in-place conversion is on (v8 22/46, 23/46; §3 *Populate*).
- ``KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES`` is 250 (§7).
- Model assumption: a pre-launch to-private conversion on a platform with an in-place
  populate keeps its contents, because the populate reads the guest_memfd page itself
  (§8).
"""

from __future__ import annotations

from guestmem.spec.platforms.base import Platform
from guestmem.spec.revisions.seed import Seed
from guestmem.spec.terms import Decoded, Direction, Effect, Phase


class V8(Seed):
    name = "v8"
    title = "in-place conversion v8: flags must be 0 (2026-06-18)"
    rejects_error_offset_input = False
    early_return = True
    unmaps_private_on_to_private = True
    populate_in_place = True

    def decode(self, flags: int) -> Decoded | None:
        return Decoded.UNSPECIFIED if flags == 0 else None

    def has_private_memory(self, platform: Platform) -> bool:
        return platform.private_memory and platform.arch == "x86"  # kvm_arch_has_private_mem

    def effect(
        self, platform: Platform, direction: Direction, policy: Decoded, phase: Phase
    ) -> Effect | None:
        if direction is Direction.TO_PRIVATE and phase is Phase.PRE_LAUNCH and platform.payload_in_place:
            return Effect.PRESERVED
        return platform.native[direction]

    def guaranteed(self, platform: Platform, direction: Direction, policy: Decoded) -> bool:
        return False

    def applied_by_kvm(self, platform: Platform, direction: Direction, policy: Decoded) -> bool:
        return False

"""``iteration2``: the 2026-03-11 text as first proposed, before the review.

Differs from ``seed`` in one rule: S→P ZERO is ``EOPNOTSUPP`` on every platform except
the software test vehicle, which zeroes both ways ("the guest is not expected to trust
host-provided zeroing"; docs/semantics.md §1).
"""

from __future__ import annotations

from guestmem.spec.platforms import sw_protected
from guestmem.spec.platforms.base import Platform
from guestmem.spec.revisions.seed import Seed
from guestmem.spec.terms import Decoded, Direction, Effect, Phase


class Iteration2(Seed):
    name = "iteration2"
    title = "iteration 2 as first proposed (2026-03-11)"

    def effect(
        self, platform: Platform, direction: Direction, policy: Decoded, phase: Phase
    ) -> Effect | None:
        if (
            direction is Direction.TO_PRIVATE
            and policy is Decoded.ZERO
            and platform.name != sw_protected.PLATFORM.name  # a copy or variant is the same platform
        ):
            return None
        return super().effect(platform, direction, policy, phase)

"""The vocabulary of a conversion: direction, policy, phase, content effect, support.

docs/semantics.md §2 (terms) and §1 (policies per revision).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Direction(enum.Enum):
    """Which way a conversion goes, decided by the ``attributes`` it asks for."""

    TO_SHARED = "to_shared"  # P→S: the host reads next
    TO_PRIVATE = "to_private"  # S→P: the guest reads next

    @property
    def arrow(self) -> str:
        return "P→S" if self is Direction.TO_SHARED else "S→P"

    @property
    def side(self) -> str:
        """The side the pages go to: ``shared`` or ``private`` (a scenario's ``to``)."""
        return self.value.removeprefix("to_")


class Policy(enum.Enum):
    """A content policy as the VMM asks for it (``default`` = ``flags`` 0)."""

    ZERO = "zero"
    PRESERVE = "preserve"
    NONE = "none"
    DEFAULT = "default"


class Decoded(enum.Enum):
    """A content policy as a revision reads ``flags``; ``UNSPECIFIED`` promises nothing."""

    ZERO = "zero"
    PRESERVE = "preserve"
    NONE = "none"
    UNSPECIFIED = "unspecified"


class Phase(enum.Enum):
    """Launch phase of a VM (docs/semantics.md §3 *Launch*)."""

    PRE_LAUNCH = "pre_launch"
    RUNNING = "running"


class Effect(enum.Enum):
    """What the next reader of an allocated page sees after a conversion."""

    ZEROS = "zeros"
    PRESERVED = "preserved"
    FILL_AB = "fill:ab"
    CIPHERTEXT = "ciphertext"  # host view of memory encrypted under the VM key
    GARBAGE = "garbage"  # guest view of host plaintext through the VM key
    RANDOM = "random"  # rfc-v5's scramble of unspecified conversions on sw_protected


@dataclass(frozen=True)
class Support:
    """How a platform handles one (direction, policy) cell.

    ``effect is None`` means unsupported (``EOPNOTSUPP``). ``pre_launch_only`` cells are
    ``EOPNOTSUPP`` once the VM runs. ``guaranteed`` is false for NONE cells, where the
    model shows the platform's native effect but nobody promises it.
    """

    effect: Effect | None
    pre_launch_only: bool = False
    guaranteed: bool = True
    note: str = ""

    def effect_in(self, phase: Phase) -> Effect | None:
        if self.pre_launch_only and phase is Phase.RUNNING:
            return None
        return self.effect


def always(effect: Effect, note: str = "") -> Support:
    return Support(effect, note=note)


def pre_launch(effect: Effect, note: str = "") -> Support:
    return Support(effect, pre_launch_only=True, note=note)


def native(effect: Effect, note: str = "") -> Support:
    return Support(effect, guaranteed=False, note=note)


def unsupported(note: str = "") -> Support:
    return Support(None, note=note)

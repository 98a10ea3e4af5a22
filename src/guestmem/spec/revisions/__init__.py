"""One module per ABI revision of ``KVM_SET_MEMORY_ATTRIBUTES2`` (docs/semantics.md §1).

``seed`` is the default: the iteration-2 text with the review's corrections. The others
subclass it and override only what differs, so ``diff seed.py iteration2.py`` reads like
the change between proposals.
"""

from __future__ import annotations

from typing import TypeAlias

from guestmem.spec.revisions.iteration2 import Iteration2
from guestmem.spec.revisions.rfc_v5 import RfcV5
from guestmem.spec.revisions.seed import Seed
from guestmem.spec.revisions.v8 import V8
from guestmem.spec.revisions.v13 import V13

#: The type of any revision. ``Seed`` is the root of the tree: every other revision
#: subclasses it, directly or through the revision it differs from least (``v13`` from
#: ``v8``), so a ``Seed`` annotation would read as "the seed proposal only".
Revision: TypeAlias = Seed

REVISIONS: dict[str, Revision] = {r.name: r for r in (Seed(), Iteration2(), RfcV5(), V8(), V13())}
DEFAULT = "seed"


def get(name: str) -> Revision:
    """The revision called ``name``; ``KeyError`` names the choices."""
    try:
        return REVISIONS[name]
    except KeyError:
        raise KeyError(f"unknown ABI revision {name!r} (choose from {', '.join(REVISIONS)})") from None


__all__ = ["DEFAULT", "REVISIONS", "Revision", "get"]

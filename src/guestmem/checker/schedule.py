"""Many explorations over a few workers, and explorations that need not run twice.

:func:`run_searches` runs a list of :class:`Search` es: with one worker one after the
other in this process (a single search may still shard its levels), with more as tasks
of one process pool, the largest first; given an :class:`Engine` (``--engine ray``), one
after the other, each shared over the engine's workers. Results come back in the order
asked for and do not depend on the number of workers or the engine.

:func:`relation` is the table of every answer the model and the property monitor get
from an ABI revision, over every input they can ask it with (docs/semantics.md §1-§4: flags
decoding, attribute and error_offset checks, early return, effect per direction, policy
and phase, guarantee, who applies the effect, consent, capabilities); :data:`COVERED`
names every member it asks, and a test checks that no revision has another. Two
revisions with the same table on a platform give the same transition relation, so the
same exploration: ``analyze`` runs it once and relabels it (:func:`relabel`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from guestmem.checker.explore import (
    Exploration,
    Explorer,
    Progress,
    cpu_time,
    explore,
    forked_pool,
    symmetric,
)
from guestmem.spec import revisions
from guestmem.spec.platforms.base import Platform
from guestmem.spec.revisions import Revision
from guestmem.spec.terms import Direction, Phase, Policy
from guestmem.uapi.kvm import KVM_MEMORY_ATTRIBUTE_PRIVATE

#: Every public member of a revision that :func:`relation` covers (or that names it).
COVERED = frozenset(
    {
        "name",
        "title",
        "encode",
        "decode",
        "rejects_error_offset_input",
        "accepts_attributes",
        "early_return",
        "unmaps_private_on_to_private",
        "populate_in_place",
        "effect",
        "guaranteed",
        "needs_consent",
        "has_private_memory",
        "applied_by_kvm",
        "capabilities",
        "cap_gmem_attributes",
        "cap_flags",
    }
)
#: ``flags`` values beyond the encoded policies that a VMM may pass.
_OTHER_FLAGS = (0, 1 << 3, 1 << 0 | 1 << 1, 1 << 63)


def relation(platform: Platform, revision: Revision) -> Hashable:
    """What ``revision`` answers the model about ``platform``, over all its inputs."""
    flags = sorted({revision.encode(p) for p in Policy} | set(_OTHER_FLAGS))
    decoded = sorted({d for f in flags if (d := revision.decode(f)) is not None}, key=lambda d: d.value)
    cells = [(d, dec, ph) for d in Direction for dec in decoded for ph in Phase]
    return (
        tuple((p.value, revision.encode(p)) for p in Policy),
        tuple((f, revision.decode(f)) for f in flags),
        revision.rejects_error_offset_input,
        tuple(revision.accepts_attributes(platform, a) for a in (0, KVM_MEMORY_ATTRIBUTE_PRIVATE, 1 << 5)),
        revision.early_return,
        revision.has_private_memory(platform),
        tuple(revision.effect(platform, d, dec, ph) for d, dec, ph in cells),
        tuple(revision.guaranteed(platform, d, dec) for d in Direction for dec in decoded),
        tuple(revision.applied_by_kvm(platform, d, dec) for d in Direction for dec in decoded),
        tuple(revision.needs_consent(platform, ph) for ph in Phase),
        tuple(tuple(sorted(revision.capabilities(platform, b).items())) for b in (False, True)),
        revision.cap_gmem_attributes,
        getattr(revision, "cap_flags", None),
        revision.unmaps_private_on_to_private and platform.unmap_loses_private,
        revision.populate_in_place,
    )


def relabel(result: Exploration, abi: str) -> Exploration:
    """``result`` as the exploration under ``abi`` (same transition relation)."""
    counterexamples = {p: dataclasses.replace(c, abi=abi) for p, c in result.counterexamples.items()}
    return dataclasses.replace(
        result, abi=abi, counterexamples=counterexamples, per_level=[*result.per_level]
    )


@dataclass(frozen=True)
class Search:
    """One exploration to run."""

    platform: Platform
    abi: str
    pages: int
    depth: int
    variant: str = ""
    symmetry: bool = True
    #: ``time.monotonic()`` past which the search stops (None: no limit).
    deadline: float | None = None
    #: Stop (:class:`~guestmem.checker.explore.TooManyStates`) past this many distinct states.
    max_states: int | None = None

    def explorer(self, platform: Platform | None = None, *, lookups: bool = True) -> Explorer:
        """An :class:`Explorer` for this search (on ``platform`` if given: the registered
        object a copy stands for); ``lookups`` False runs the model for every step."""
        explorer = Explorer(
            platform or self.platform,
            self.abi,
            pages=self.pages,
            depth=self.depth,
            variant=self.variant,
            symmetry=self.symmetry,
        )
        if not lookups:
            explorer.without_lookups()
        return explorer

    @property
    def label(self) -> str:
        return f"{self.platform.name}{f' ({self.variant})' if self.variant else ''} under {self.abi}"

    @property
    def weight(self) -> int:
        """A rough cost estimate, for scheduling the largest first: page symmetry
        divides the states by about the number of page orders (integers: exact at any depth)."""
        reduction = 1
        if self.symmetry and symmetric(self.platform, revisions.get(self.abi)):
            reduction = math.factorial(self.pages)
        return int(4**self.pages * 3**self.depth) // reduction


class Engine(Protocol):
    """Something other than this process and its forked workers that runs a search
    (:class:`guestmem.checker.distributed.RayEngine`)."""

    def explore(self, search: Search, progress: Progress | None = None) -> Exploration: ...


def _run(job: tuple[int, Search]) -> tuple[int, Exploration]:
    index, s = job
    return index, explore(
        s.platform,
        s.abi,
        pages=s.pages,
        depth=s.depth,
        variant=s.variant,
        symmetry=s.symmetry,
        deadline=s.deadline,
        max_states=s.max_states,
    )


def run_searches(
    searches: Sequence[Search],
    workers: int = 1,
    *,
    progress: Progress | None = None,
    done: Callable[[Search, Exploration], None] | None = None,
    engine: Engine | None = None,
) -> list[Exploration]:
    """Run every search; ``done`` is told of each as it finishes (in any order),
    ``progress`` follows the states of a search running in this process (or on
    ``engine``)."""
    results: list[Exploration | None] = [None] * len(searches)
    if engine is not None:
        for i, s in enumerate(searches):
            results[i] = engine.explore(s, progress)
            if done is not None:
                done(s, results[i])  # type: ignore[arg-type]
    elif workers <= 1 or len(searches) == 1:
        for i, s in enumerate(searches):
            results[i] = explore(
                s.platform,
                s.abi,
                pages=s.pages,
                depth=s.depth,
                workers=workers,
                variant=s.variant,
                symmetry=s.symmetry,
                progress=progress,
                deadline=s.deadline,
                max_states=s.max_states,
            )
            if done is not None:
                done(s, results[i])  # type: ignore[arg-type]
    else:
        order = sorted(range(len(searches)), key=lambda i: -searches[i].weight)
        with forked_pool(min(workers, len(searches))) as pool:
            for index, result in pool.imap_unordered(_run, [(i, searches[i]) for i in order]):
                result.workers = workers
                results[index] = result
                if done is not None:
                    done(searches[index], result)
    return [r for r in results if r is not None]


__all__ = ["COVERED", "Engine", "Search", "cpu_time", "relabel", "relation", "run_searches"]

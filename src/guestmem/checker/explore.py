"""Breadth-first exploration of every operation sequence on the model (``guestmem explore``).

From the two initial states (every page shared, every page private) the search applies
every operation of :func:`~guestmem.checker.ops.alphabet` to every state, level by level,
up to ``depth`` operations. It runs the real model: one
:class:`~guestmem.backend.model.ModelMachine` whose state is restored from a compact
snapshot before each operation, applied through the backend API, and snapshotted after
(restore-apply-snapshot; no objects are re-created). Each step is checked by the
property :class:`~guestmem.checker.properties.Monitor`.

States are canonical tuples (:meth:`Explorer.key`): launch phase, attribute and
guest-request runs, each allocated page as a content digest of its bytes and provenance,
pins and host page-table entries. A state already seen is
not expanded again, so every state is visited once.

Counting follows the usual model-checker convention: ``generated`` counts every state
the search produces (one per operation applied), ``distinct`` counts states after
canonicalisation. States per second is ``generated`` over wall time.

Determinism: each level's states are kept in the order of their lexicographically least
shortest path (parents in order, operations in alphabet order), so the counterexample
reported for a property is the least of its shortest ones. ``workers`` > 1 splits each
level into contiguous shards expanded by forked processes and merged in shard order,
which gives results identical to one worker.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from guestmem.backend.base import Outcome
from guestmem.checker.ops import WORD, Op, alphabet, bind
from guestmem.checker.properties import (
    Monitor,
    Property,
    State,
    Violation,
    capture,
    check_trace,
    claimed,
    open_machine,
    record_trace,
    restore,
)
from guestmem.model.provenance import Page
from guestmem.spec import platforms, revisions
from guestmem.spec.platforms.base import Platform
from guestmem.spec.revisions import Revision
from guestmem.spec.terms import Phase
from guestmem.uapi.kvm import PAGE_SIZE

INITS = ("shared", "private")
DEFAULT_PAGES = 2
DEFAULT_DEPTH = 6

PageId = bytes
Key = tuple[Any, ...]


@dataclass
class Counterexample:
    """The least shortest operation sequence that violates ``prop``.

    ``ops[-1]`` is where the monitor saw the violation (``detected`` is its index); for
    atomicity a ``witness`` operation follows that shows the change the failed call made.
    ``expects`` hold what every step gave (the violating step: what it should have given,
    ``error_offsets`` likewise); ``fails_at`` is the step ``guestmem run`` reports failing.
    """

    prop: Property
    claimed: bool
    platform: str
    abi: str
    pages: int
    init: str
    ops: list[Op]
    expects: list[str]
    error_offsets: list[int | None]
    message: str
    detected: int
    fails_at: int
    witness: bool = False

    @property
    def length(self) -> int:
        return self.detected + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "property": self.prop.value,
            "claimed": self.claimed,
            "init": self.init,
            "length": self.length,
            "fails_at_step": self.fails_at + 1,
            "message": self.message,
            "steps": [
                {**op.fields(), "expect": e, **({"error_offset": o} if o is not None else {})}
                for op, e, o in zip(self.ops, self.expects, self.error_offsets, strict=True)
            ],
        }


@dataclass
class Exploration:
    """What one search found."""

    platform: str
    abi: str
    pages: int
    depth: int
    workers: int
    variant: str = ""
    generated: int = 0
    distinct: int = 0
    seconds: float = 0.0
    per_level: list[int] = field(default_factory=list)
    counterexamples: dict[Property, Counterexample] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.platform + (f" ({self.variant})" if self.variant else "")

    @property
    def rate(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def violated(self, *, claimed_only: bool = False) -> list[Property]:
        return [p for p, c in self.counterexamples.items() if c.claimed or not claimed_only]

    def to_json(self, *, timing: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "platform": self.platform,
            "variant": self.variant or None,
            "abi": self.abi,
            "pages": self.pages,
            "depth": self.depth,
            "generated": self.generated,
            "distinct": self.distinct,
            "per_level": self.per_level,
        }
        if timing:
            out |= {
                "workers": self.workers,
                "seconds": round(self.seconds, 3),
                "states_per_second": round(self.rate),
            }
        out["violations"] = [c.to_json() for c in self.counterexamples.values()]
        return out


@dataclass
class _Shard:
    """What expanding one contiguous part of a level produced."""

    generated: int
    keys: list[Key]
    parents: list[int]
    ops: list[int]
    pages: dict[PageId, Page]
    found: dict[Property, tuple[int, int, Violation]]


class Explorer:
    """Searches one platform under one revision; see the module docstring."""

    def __init__(
        self,
        platform: str | Platform,
        abi: str | Revision = "seed",
        *,
        pages: int = DEFAULT_PAGES,
        depth: int = DEFAULT_DEPTH,
        variant: str = "",
    ) -> None:
        self.platform = platforms.get(platform) if isinstance(platform, str) else platform
        self.revision = revisions.get(abi) if isinstance(abi, str) else abi
        if pages < 1 or depth < 0:
            raise ValueError(f"pages must be >= 1 and depth >= 0 (got pages={pages}, depth={depth})")
        self.pages = pages
        self.depth = depth
        self.variant = variant
        self.ops = alphabet(pages, self.revision.name)
        self.machine = open_machine(self.platform, self.revision, pages, "shared")
        self.calls: list[Callable[[], Outcome]] = [bind(op, self.machine) for op in self.ops]
        self.monitor = Monitor(self.platform, self.revision)
        self.table: dict[PageId, Page] = {}
        self._ids: dict[Page, PageId] = {}
        self.roots = [capture(open_machine(self.platform, self.revision, pages, init)) for init in INITS]

    # --- canonical keys ------------------------------------------------------------------------
    def page_id(self, page: Page) -> PageId:
        """A digest of a page's bytes and provenance runs (the same in every process)."""
        pid = self._ids.get(page)
        if pid is None:
            data, runs = page
            h = hashlib.blake2b(data, digest_size=16)
            h.update(b"".join(struct.pack("<HHB", a, b, int(o)) for a, b, o in runs))
            pid = h.digest()
            self._ids[page] = pid
            self.table[pid] = page
        return pid

    def key(self, state: State) -> Key:
        """The canonical, hashable, process-independent form of a state."""
        pid = self.page_id
        return (
            state.phase is Phase.RUNNING,
            state.attributes,
            state.requests,
            tuple([(i, pid(p)) for i, p in state.pages]),
            state.pins,
            state.stale_pins,
            state.ptes,
        )

    def unkey(self, key: Key) -> State:
        running, attributes, requests, pages, pins, stale, ptes = key
        table = self.table
        return State(
            Phase.RUNNING if running else Phase.PRE_LAUNCH,
            attributes,
            requests,
            tuple([(i, table[p]) for i, p in pages]),
            pins,
            stale,
            ptes,
        )

    # --- the search ------------------------------------------------------------------------------
    def expand(self, frontier: Sequence[Key], lo: int, hi: int, seen: set[Key]) -> _Shard:
        """Apply every operation to states ``frontier[lo:hi]``; keep successors not in ``seen``."""
        machine, calls, ops, observe = self.machine, self.calls, self.ops, self.monitor.observe
        before_ids = set(self.table)
        local: set[Key] = set()
        keys: list[Key] = []
        parents: list[int] = []
        op_indices: list[int] = []
        found: dict[Property, tuple[int, int, Violation]] = {}
        generated = 0
        key_of = self.key
        for parent in range(lo, hi):
            state = self.unkey(frontier[parent])
            dirty = True
            for index, call in enumerate(calls):
                if dirty:
                    restore(machine, state)
                outcome = call()
                after = capture(machine)
                generated += 1
                for violation in observe(ops[index], outcome, state, after):
                    if violation.prop not in found:
                        found[violation.prop] = (parent, index, violation)
                dirty = after != state
                if not dirty:
                    continue  # the same state: already seen
                key = key_of(after)
                if key in seen or key in local:
                    continue
                local.add(key)
                keys.append(key)
                parents.append(parent)
                op_indices.append(index)
        new_pages = {pid: page for pid, page in self.table.items() if pid not in before_ids}
        return _Shard(generated, keys, parents, op_indices, new_pages, found)

    def run(self, workers: int = 1) -> Exploration:
        """Search to ``depth``; the result does not depend on ``workers``."""
        start = time.perf_counter()
        result = Exploration(
            self.platform.name, self.revision.name, self.pages, self.depth, workers, self.variant
        )
        frontier: list[Key] = []
        seen: set[Key] = set()
        for root in self.roots:
            key = self.key(root)
            if key not in seen:
                seen.add(key)
                frontier.append(key)
        levels: list[list[tuple[int, int]]] = [[(-1, i) for i in range(len(frontier))]]
        result.per_level.append(len(frontier))
        found: dict[Property, tuple[int, int, int, Violation]] = {}
        for level in range(self.depth):
            if not frontier:
                break
            shards = self._expand_level(frontier, seen, workers)
            next_frontier: list[Key] = []
            links: list[tuple[int, int]] = []
            for shard in shards:
                self.table.update(shard.pages)
                result.generated += shard.generated
                for prop, (parent, op_index, violation) in shard.found.items():
                    if prop not in found:
                        found[prop] = (level, parent, op_index, violation)
                for key, parent, op_index in zip(shard.keys, shard.parents, shard.ops, strict=True):
                    if key not in seen:
                        seen.add(key)
                        next_frontier.append(key)
                        links.append((parent, op_index))
            levels.append(links)
            result.per_level.append(len(next_frontier))
            frontier = next_frontier
        result.distinct = len(seen)
        result.seconds = time.perf_counter() - start
        for prop in Property:
            if prop in found:
                level, parent, op_index, violation = found[prop]
                origin, path = self._path(levels, level, parent)
                result.counterexamples[prop] = self._counterexample(origin, [*path, op_index], violation)
        return result

    def _expand_level(self, frontier: list[Key], seen: set[Key], workers: int) -> list[_Shard]:
        if workers <= 1 or len(frontier) < 2 * workers:
            return [self.expand(frontier, 0, len(frontier), seen)]
        bounds = [(len(frontier) * w // workers, len(frontier) * (w + 1) // workers) for w in range(workers)]
        global _ACTIVE
        _ACTIVE = (self, frontier, seen)
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                return pool.map(_expand_shard, bounds)
        finally:
            _ACTIVE = None

    @staticmethod
    def _path(levels: list[list[tuple[int, int]]], level: int, parent: int) -> tuple[int, list[int]]:
        ops: list[int] = []
        index = parent
        while level > 0:
            index, op_index = levels[level][index]
            ops.append(op_index)
            level -= 1
        return levels[0][index][1], ops[::-1]

    # --- counterexamples -------------------------------------------------------------------------
    def _counterexample(self, root: int, path: list[int], violation: Violation) -> Counterexample:
        """Replay the path on a fresh machine and write down every step's expectation."""
        init = INITS[root]
        ops = [self.ops[i] for i in path]
        trace = record_trace(self.platform, self.revision, ops, pages=self.pages, init=init)
        replayed = [v for v in check_trace(trace, self.platform, self.revision) if v.prop is violation.prop]
        assert replayed and replayed[0].step == len(ops) - 1, f"{violation.prop} did not replay"
        expects = [_expect(r.outcome) for r in trace]
        offsets = [r.outcome.error_offset if r.outcome.errno else None for r in trace]
        detected = len(ops) - 1
        fails_at, witness = detected, False
        if violation.prop is Property.POLICY:  # the next reader's read shows it
            assert violation.expect is not None and violation.error_offset is not None
            for op in self._next_read(ops[-1], violation.error_offset, trace[-1].after):
                ops.append(op)
                expects.append("ok")
                offsets.append(None)
            expects[-1] = violation.expect
            fails_at, witness = len(ops) - 1, True
        elif violation.expect is not None:
            expects[-1], offsets[-1] = violation.expect, violation.error_offset
        else:  # atomicity: show the change with one more operation
            found = self._witness(trace[-1].before, trace[-1].after, ops[-1])
            if found is not None:
                op, expect, offset = found
                ops.append(op)
                expects.append(expect)
                offsets.append(offset)
                fails_at, witness = detected + 1, True
        return Counterexample(
            violation.prop,
            claimed(violation.prop, self.platform.name),
            self.platform.name,
            self.revision.name,
            self.pages,
            init,
            ops,
            expects,
            offsets,
            violation.message,
            detected,
            fails_at,
            witness,
        )

    def _next_read(self, conversion: Op, page: int, after: State) -> list[Op]:
        """The next reader's read of ``page``'s first word (launching first if the guest
        reads and cannot run yet)."""
        offset = page * PAGE_SIZE
        if conversion.to == "shared":
            return [Op("host_read", offset, WORD)]
        read = Op("guest_read", offset, WORD)
        if self.platform.launch and after.phase is Phase.PRE_LAUNCH:
            return [Op("launch"), read]
        return [read]

    def _witness(self, before: State, after: State, failed: Op) -> tuple[Op, str, int | None] | None:
        """The first operation whose outcome differs between the state a failed call
        should have left (``before``, minus the host mappings ``EAGAIN`` removes) and the
        state it did leave."""
        pages = failed.pages if failed.name == "convert" and failed.to == "private" else range(0)
        expected = before._replace(ptes=tuple(tuple(p for p in m if p not in pages) for m in before.ptes))
        if expected == after:
            expected = before
        machine = self.machine
        for op, call in zip(self.ops, self.calls, strict=True):
            restore(machine, expected)
            want = call()
            restore(machine, after)
            got = call()
            if want != got:
                return op, _expect(want), want.error_offset if want.errno else None
        return None


def _expect(outcome: Outcome) -> str:
    """An outcome as a scenario ``expect``."""
    if outcome.errno is not None:
        return outcome.errno
    if outcome.signal is not None:
        return outcome.signal
    if outcome.exit is not None and outcome.exit.get("reason") == "MEMORY_FAULT":
        return "MEMORY_FAULT"
    if outcome.data is not None:
        return outcome.data.hex()
    return "ok"


_ACTIVE: tuple[Explorer, list[Key], set[Key]] | None = None


def _expand_shard(bounds: tuple[int, int]) -> _Shard:
    assert _ACTIVE is not None, "workers are forked with the level to expand"
    explorer, frontier, seen = _ACTIVE
    return explorer.expand(frontier, bounds[0], bounds[1], seen)


def explore(
    platform: str | Platform,
    abi: str | Revision = "seed",
    *,
    pages: int = DEFAULT_PAGES,
    depth: int = DEFAULT_DEPTH,
    workers: int = 1,
    variant: str = "",
) -> Exploration:
    """Search ``platform`` under ``abi``; see :class:`Explorer`."""
    return Explorer(platform, abi, pages=pages, depth=depth, variant=variant).run(workers)

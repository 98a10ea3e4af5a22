"""Breadth-first exploration of every operation sequence on the model (``guestmem explore``).

From the two initial states (every page shared, every page private) the search applies
every operation of :func:`~guestmem.checker.ops.alphabet` to every state, level by level,
up to ``depth`` operations. It runs the real model: one
:class:`~guestmem.backend.model.ModelMachine` whose state is restored before an operation,
applied through the backend API, and read back after (restore-apply-capture; no objects
are re-created). Each step is checked by the property
:class:`~guestmem.checker.properties.Monitor`.

A state is a small named tuple, :class:`Key` ``(running, rows)``: whether the VM runs,
and one :class:`~guestmem.model.gmem.PageRow` per page (attribute, guest request, contents and
provenance, pins, stale pins, host mappings). Page contents are the model's own
immutable objects, shared between states. The state is its own visited-set key.

Four reductions keep the search exact — unchanged states are not queued, local steps
are looked up, keyed pages are remembered by provenance, and states equal up to a
permutation of pages are one — and the order of each level makes the counterexample
of a property the least of its shortest ones. Why each holds: docs/bench.md, *Why the
reductions keep the search exact*.

Counting follows the usual model-checker convention: ``generated`` counts every state
the search produces (one per operation applied), ``distinct`` counts states after
canonicalisation (under page symmetry: classes of states). States per second is
``generated`` over the CPU time of the search.

Determinism: one worker and many (forked processes, shards merged in order) give the
same results; :mod:`guestmem.checker.distributed` shares the search over a Ray cluster.

``max_states`` bounds the visited set: a search whose distinct states exceed it stops
with :class:`TooManyStates` at the depth where they did, and reports nothing.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import signal
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from guestmem import progress
from guestmem.backend.base import Outcome
from guestmem.checker.ops import WORD, alphabet
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
from guestmem.errors import GuestmemError
from guestmem.model.gmem import UNALLOCATED, PageRow
from guestmem.model.provenance import FILL_PAGE, KEYED, KEYED_ORIGINS, ZEROED_PAGE, keyed_bytes, keyed_domain
from guestmem.ops import Convert, GuestRead, HostRead, Launch, Operation, expectation
from guestmem.spec import platforms, revisions
from guestmem.spec.platforms.base import Platform
from guestmem.spec.revisions import Revision
from guestmem.spec.terms import Direction, Phase, Policy
from guestmem.uapi.kvm import KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SHIFT, PAGE_SIZE

INITS = ("shared", "private")
DEFAULT_PAGES = 2
DEFAULT_DEPTH = 6
#: Bounds accepted by ``guestmem explore`` (checked before anything runs). The states of
#: a few pages are finite, so a search deeper than they reach ends when a level is empty;
#: the time limit (``--timeout``) bounds the rest.
MAX_PAGES = 8
MAX_DEPTH = 1000
#: Default ``--timeout`` of ``guestmem explore`` and ``analyze`` (seconds, the whole command).
TIMEOUT = 600.0


#: Builds a named tuple from a plain one without the Python-level ``__new__`` of
#: :class:`typing.NamedTuple` (a tenth of the search's time went there): ``_new(Key, (a, b))``.
_new = tuple.__new__


class Key(NamedTuple):
    """A state of the search, and its own visited-set key."""

    #: The VM runs (it left its launch phase).
    running: bool
    #: One row per page.
    rows: tuple[PageRow, ...]


#: What a local step gives: running after, the page's row after, violations, and
#: whether it was a successful conversion (then pinned private pages are checked).
Learned = tuple[bool, PageRow, tuple[Violation, ...], bool]
#: How a conversion of a range remade each page (:meth:`Explorer.remake`): running
#: after, and per page the row after, or (how, runs or domain, the row after) for a page
#: of keyed bytes: ``same`` page, its bytes ``relabelled``, or new bytes ``keyed`` from them.
Recipe = tuple[bool, tuple[Any, ...]]
#: Progress callback: (level, states of the level expanded, states in the level,
#: generated so far, distinct so far).
Progress = Callable[[int, int, int, int, int], None]


@dataclass
class Counterexample:
    """The least shortest operation sequence that violates ``prop``.

    ``ops[-1]`` is where the monitor saw the violation (``detected`` is its index); for
    atomicity a ``witness`` operation follows that shows the change the failed call made.
    ``expects`` hold what every step gave, as scenario expectations (the violating step:
    what it should have given); ``fails_at`` is the step ``guestmem run`` reports failing.
    """

    prop: Property
    claimed: bool
    platform: str
    abi: str
    pages: int
    init: str
    ops: list[Operation]
    expects: list[str]
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
            "steps": [{**op.fields(), "expect": e} for op, e in zip(self.ops, self.expects, strict=True)],
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
    symmetry: bool = False
    generated: int = 0
    distinct: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    per_level: list[int] = field(default_factory=list)
    counterexamples: dict[Property, Counterexample] = field(default_factory=dict)
    #: Whether local steps were looked up (False with ``memo=False``, or when the model
    #: turned out not to be local and the search ran again computing every step).
    local_lookups: bool = False
    #: What ran the search: ``local`` (this process and its forked workers) or ``ray``.
    engine: str = "local"
    #: Distinct states held by each process that held part of the visited set (one for
    #: ``local``; one per actor for ``ray``).
    shards: list[int] = field(default_factory=list)
    #: Growth of the resident memory of those processes over the search, per distinct
    #: state held (None where it cannot be read, or did not grow).
    bytes_per_state: float | None = None
    #: The search reached its deadline (``--timeout``) before ``depth``: the levels up to
    #: ``reached`` were explored whole, and the counterexamples found there are the shortest.
    timed_out: bool = False
    #: Levels explored whole (``depth``, or less when the states ran out or time did).
    reached: int = 0

    @property
    def label(self) -> str:
        return self.platform + (f" ({self.variant})" if self.variant else "")

    @property
    def rate(self) -> float:
        """Generated states per CPU-second of the search (all its processes)."""
        return self.generated / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    def violated(self, *, claimed_only: bool = False) -> list[Property]:
        return [p for p, c in self.counterexamples.items() if c.claimed or not claimed_only]

    def to_json(self, *, timing: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "platform": self.platform,
            "variant": self.variant or None,
            "abi": self.abi,
            "pages": self.pages,
            "depth": self.depth,
            "symmetry": "pages" if self.symmetry else None,
            "generated": self.generated,
            "distinct": self.distinct,
            "per_level": self.per_level,
            "complete": not self.timed_out,
            "depth_reached": self.reached,
        }
        if timing:
            out |= {
                "workers": self.workers,
                "seconds": round(self.seconds, 3),
                "cpu_seconds": round(self.cpu_seconds, 3),
                "states_per_cpu_second": round(self.rate),
                "local_lookups": self.local_lookups,
                "engine": self.engine,
                "memory": {
                    "states_per_shard": self.shards,
                    "largest_shard": max(self.shards, default=0),
                    "bytes_per_state": None if self.bytes_per_state is None else round(self.bytes_per_state),
                },
            }
        out["violations"] = [c.to_json() for c in self.counterexamples.values()]
        return out


class SearchTimeout(Exception):
    """The search passed its deadline (raised in a worker too, and carried back by the pool)."""


@dataclass
class _Shard:
    """What expanding one contiguous part of a level produced."""

    generated: int
    keys: list[Key]
    states: list[Key]
    parents: list[int]
    ops: list[int]
    found: dict[Property, tuple[int, int, Violation]]
    terms: dict[Hashable, Hashable]


def symmetric(platform: Platform, revision: Revision) -> bool:
    """Whether pages are interchangeable byte for byte: no conversion of ``platform``
    under ``revision`` gives offset-dependent bytes (:data:`KEYED`), for any direction,
    policy the alphabet asks for, and phase. (Where one does, the explorer compares such
    pages by how they were made.) The alphabet itself is symmetric by construction."""
    for direction in Direction:
        for policy in Policy:
            decoded = revision.decode(revision.encode(policy))
            if decoded is None:
                continue
            for phase in Phase:
                if revision.effect(platform, direction, decoded, phase) in KEYED:
                    return False
    return True


def keyed_page(page: Any) -> bool:
    """``page`` holds bytes of one keyed effect (:data:`KEYED_ORIGINS`) and nothing else."""
    if not page:
        return False
    runs = page[1]
    return len(runs) == 1 and runs[0][2] in KEYED_ORIGINS


def shape(row: PageRow) -> tuple[Any, ...]:
    """``row`` with its page's bytes left out (the provenance of a keyed page kept)."""
    page: Any = row.page
    return row.attributes, row.request, page[1], row.pins, row.stale_pins, row.mapped


def canonical(state: Key) -> Key:
    """The representative of ``state``'s class under page permutations: sorted rows."""
    return _new(Key, (state.running, tuple(sorted(state.rows))))


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
        symmetry: bool = True,
        memo: bool = True,
        deadline: float | None = None,
    ) -> None:
        self.platform = platforms.get(platform) if isinstance(platform, str) else platform
        #: ``time.monotonic()`` past which the search stops (None: no limit).
        self.deadline = deadline
        self.revision = revisions.get(abi) if isinstance(abi, str) else abi
        if pages < 1 or depth < 0:
            raise ValueError(f"pages must be >= 1 and depth >= 0 (got pages={pages}, depth={depth})")
        self.pages = pages
        self.depth = depth
        self.variant = variant
        self.symmetry = symmetry and pages > 1
        #: Pages made by a keyed effect, by how they were made (only where bytes depend on
        #: the offset and symmetry is on).
        self.terms: dict[Hashable, Hashable] = {}
        self.keyed = self.symmetry and not symmetric(self.platform, self.revision)
        self.ops = alphabet(pages, self.revision.name)
        self.machine = open_machine(self.platform, self.revision, pages, "shared")
        self.calls: list[Callable[[], Outcome]] = [op.bind(self.machine) for op in self.ops]
        #: The page a local operation names (None: the step runs the model every time).
        self.local: list[int | None] = [
            op.pages[0] if memo and len(op.pages) == 1 else None for op in self.ops
        ]
        #: Conversions of a range, remembered by the state with keyed bytes left out
        #: (:meth:`remake`); off with ``memo=False``.
        self.recipes: dict[tuple[int, bool, tuple[Any, ...]], Recipe | None] = {}
        self.monitor = Monitor(self.platform, self.revision)
        #: Conversions of more than one page.
        self.ranged = frozenset(
            i for i, op in enumerate(self.ops) if isinstance(op, Convert) and len(op.pages) > 1
        )
        self.memo: dict[tuple[int, bool, PageRow], Learned] = {}
        #: Local steps on a keyed page that kept the page and saw no violation, by the row
        #: with the page's bytes left out (:meth:`learn`): the running flag and row after.
        self.kept: dict[tuple[int, bool, tuple[Any, ...]], tuple[bool, PageRow, bool]] = {}
        self._loaded: Key | None = None
        self._captured: Key | None = None
        self._before: State | None = None
        self.roots = [self.state(open_machine(self.platform, self.revision, pages, init)) for init in INITS]

    # --- states --------------------------------------------------------------------------------
    @staticmethod
    def state(machine: Any) -> Key:
        """The search state of a model machine."""
        return _new(Key, (machine.vm.phase is Phase.RUNNING, machine.gmem.rows()))

    def key(self, state: Key) -> Key:
        """The visited-set key of ``state``: itself, or its class under page symmetry."""
        if not self.symmetry:
            return state
        if not self.keyed:
            return canonical(state)
        terms = self.terms
        # rows whose page is named by how it was made (a row-shaped tuple: only compared)
        rows = [
            (r.attributes, r.request, terms.get(r.page) or (0, r.page), r.pins, r.stale_pins, r.mapped)
            for r in state.rows
        ]
        return _new(Key, (state.running, tuple(sorted(rows))))

    def term(self, index: int, before: tuple[PageRow, ...], after: tuple[PageRow, ...]) -> None:
        """Name each page that operation ``index`` made with a keyed effect by how it was
        made: (origin, direction, the bytes it replaced, or their name if they were made
        so too). Keyed bytes depend on the old bytes only, so the name is a function of
        the page, the same in every process."""
        to = getattr(self.ops[index], "to", None)
        direction = "" if to is None else to.side
        for old, new in zip(before, after, strict=True):
            page = new.page
            if page is old.page or not page or page in self.terms:
                continue
            runs = page[1]
            if len(runs) == 1 and runs[0][2] in KEYED_ORIGINS:
                source = old.page
                made = (runs[0][2], direction, self.terms.get(source) or (0, source[:1]))
                self.terms[page] = (1, made)  # (0, page) for every other page

    def load(self, state: Key) -> State:
        """Put ``state`` into the machine; its :class:`State` (what the monitor reads)."""
        if self._loaded is not state or self._before is None:
            machine = self.machine
            machine.vm.phase = Phase.RUNNING if state.running else Phase.PRE_LAUNCH
            machine.gmem.restore_rows(state.rows)
            if self._captured is not state or self._before is None:  # the parent again: same capture
                self._captured, self._before = state, capture(machine)
            self._loaded = state
        return self._before

    def step(self, state: Key, index: int, *, pins: bool = True) -> tuple[Key, list[Violation], Outcome]:
        """Apply operation ``index`` to ``state`` on the model: the state after, the
        violations the monitor sees, the outcome."""
        before = self.load(state)
        outcome = self.calls[index]()
        machine = self.machine
        after = capture(machine)
        violations = self.monitor.observe(self.ops[index], outcome, before, after, pins=pins)
        new = self.state(machine)
        if new == state:
            return state, violations, outcome  # the machine still holds ``state``
        if self.keyed:
            self.term(index, state.rows, new.rows)
        self._loaded = None
        return new, violations, outcome

    def learn(self, state: Key, index: int, page: int) -> Learned:
        """Run a local step on the model and remember what it gives for its page's row."""
        running, rows = state
        new, violations, outcome = self.step(state, index, pins=False)
        new_rows = new.rows
        for q, (a, b) in enumerate(zip(rows, new_rows, strict=True)):
            if q != page and a != b:
                raise NotLocal(f"{self.ops[index]} changed page {q}, outside its range")
        row = rows[page] if new_rows[page] == rows[page] else new_rows[page]
        ok_convert = isinstance(self.ops[index], Convert) and outcome.errno is None
        learned = (new.running, row, tuple(violations), ok_convert)
        old = rows[page]
        self.memo[index, running, old] = learned
        if not violations and row.page is old.page and keyed_page(old.page):
            self.kept[index, running, shape(old)] = (new.running, row, ok_convert)
        return learned

    def shape_of(self, index: int, state: Key) -> tuple[int, bool, tuple[Any, ...]] | None:
        """The :attr:`recipes` key of a step: None if no page holds keyed bytes."""
        rows = state.rows
        if not any(keyed_page(r.page) for r in rows):
            return None
        return index, state.running, tuple(shape(r) if keyed_page(r.page) else r for r in rows)

    def recipe(self, index: int, state: Key, new: Key, violations: Sequence[Violation]) -> Recipe | None:
        """How conversion ``index`` took ``state`` to ``new``, for any bytes of the same
        provenance in its keyed pages, or None. The model and the monitor only copy such
        bytes (into a new keyed page, a read's data, a violation's message), or derive new
        keyed bytes from them, which :func:`keyed_bytes` redoes; so a step without
        violations whose every keyed page was kept, relabelled, replaced by a constant page
        or keyed anew has a recipe."""
        if violations:
            return None
        key = self.machine.vm.key
        op = self.ops[index]
        assert isinstance(op, Convert), "only conversions of a range have recipes"
        pages: list[Any] = []
        for i, (old, now) in enumerate(zip(state.rows, new.rows, strict=True)):
            was: Any = old.page
            page: Any = now.page
            if not keyed_page(was) or page is UNALLOCATED or page is ZEROED_PAGE or page is FILL_PAGE:
                pages.append(now)
            elif page is was:
                pages.append(("same", None, now))
            elif page[0] is was[0]:
                pages.append(("relabelled", page[1], now))
            elif keyed_page(page):
                origin = page[1][0][2]
                domain = keyed_domain(origin, op.direction)
                if page[0] != keyed_bytes(key, domain, i << PAGE_SHIFT, was[0]):
                    return None
                pages.append(("keyed", domain, now))
            else:
                return None
        return new.running, tuple(pages)

    def remake(self, recipe: Recipe, index: int, state: Key) -> Key:
        """The state conversion ``index`` gives from ``state`` by ``recipe``."""
        key = self.machine.vm.key
        rows: list[PageRow] = []
        for i, (old, how) in enumerate(zip(state.rows, recipe[1], strict=True)):
            if len(how) != 3:
                rows.append(how)
                continue
            kind, what, now = how
            was: Any = old.page
            if kind == "same":
                page = was
            elif kind == "relabelled":
                page = (was[0], what)
            else:
                page = (keyed_bytes(key, what, i << PAGE_SHIFT, was[0]), now.page[1])
            row = (now.attributes, now.request, page, now.pins, now.stale_pins, now.mapped)
            rows.append(_new(PageRow, row))
        new = _new(Key, (recipe[0], tuple(rows)))
        if new == state:
            return state
        if self.keyed:
            self.term(index, state.rows, new.rows)
        return new

    def recall(self, index: int, running: bool, row: PageRow) -> Learned | None:
        """A local step on a page of keyed bytes, from one on other bytes made the same
        way (:attr:`kept`). Neither the model nor the monitor looks at such bytes except
        to copy them (into a new keyed page, a read's data, or a violation's message), so
        a step that kept its page and saw no violation does the same for any bytes of the
        same provenance: the row after is the remembered one with these bytes in it."""
        page = row.page
        if not keyed_page(page):
            return None
        kept = self.kept.get((index, running, shape(row)))
        if kept is None:
            return None
        now_running, now, ok_convert = kept
        now_row = _new(PageRow, (now.attributes, now.request, page, now.pins, now.stale_pins, now.mapped))
        return now_running, row if now_row == row else now_row, (), ok_convert

    # --- the search ------------------------------------------------------------------------------
    def expand(
        self,
        frontier: Sequence[Key],
        lo: int,
        hi: int,
        seen: set[Key],
        tick: Callable[[int], None] | None = None,
    ) -> _Shard:
        """Apply every operation to states ``frontier[lo:hi]``; keep successors not in ``seen``."""
        memo, local_page, key_of, recall = self.memo, self.local, self.key, self.recall
        recipes, ranged = self.recipes, self.ranged
        pinned_private = self.monitor.pinned_private
        n = len(self.ops)
        local: set[Key] = set()
        keys: list[Key] = []
        states: list[Key] = []
        parents: list[int] = []
        op_indices: list[int] = []
        found: dict[Property, tuple[int, int, Violation]] = {}
        generated = 0
        known = set(self.terms)
        deadline = self.deadline
        for parent in range(lo, hi):
            state = frontier[parent]
            running, rows = state
            if not (parent - lo) & 255:
                if deadline is not None and time.monotonic() > deadline:
                    raise SearchTimeout()
                if tick is not None:
                    tick(parent - lo)
            for index in range(n):
                page = local_page[index]
                violations: Sequence[Violation]
                if page is None:
                    shaped = None if index not in ranged else self.shape_of(index, state)
                    recipe = None if shaped is None else recipes.get(shaped)
                    if recipe is not None:
                        after, violations = self.remake(recipe, index, state), ()
                    else:
                        after, violations, _ = self.step(state, index)
                        if shaped is not None and shaped not in recipes:
                            recipes[shaped] = self.recipe(index, state, after, violations)
                else:
                    row = rows[page]
                    learned = memo.get((index, running, row)) or recall(index, running, row)
                    if learned is None:
                        learned = self.learn(state, index, page)
                    now_running, now_row, violations, ok_convert = learned
                    if now_row is row and now_running is running:
                        after = state
                    else:
                        after = _new(Key, (now_running, (*rows[:page], now_row, *rows[page + 1 :])))
                    if ok_convert:
                        pinned = [
                            i
                            for i, r in enumerate(after.rows)
                            if r.pins and r.attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE
                        ]
                        if pinned:
                            violations = [*violations, *pinned_private(pinned)]
                generated += 1
                for violation in violations:
                    if violation.prop not in found:
                        found[violation.prop] = (parent, index, violation)
                if after is state or after == state:
                    continue  # the same state: already seen
                key = key_of(after)
                if key in seen or key in local:
                    continue
                local.add(key)
                keys.append(key)
                states.append(after)
                parents.append(parent)
                op_indices.append(index)
        terms = {page: term for page, term in self.terms.items() if page not in known}
        return _Shard(generated, keys, states, parents, op_indices, found, terms)

    def run(
        self, workers: int = 1, progress: Progress | None = None, max_states: int | None = None
    ) -> Exploration:
        """Search to ``depth``; the result does not depend on ``workers``.

        If the model turns out not to be local (an operation on one page changed another,
        as a deliberately broken model may), the search starts again running the model
        for every step."""
        try:
            return self._run(workers, progress, max_states)
        except NotLocal:
            self.without_lookups()
            return self._run(workers, progress, max_states)

    def without_lookups(self) -> None:
        """From now on run the model for every step (the model is not local)."""
        self.local = [None] * len(self.ops)
        self.memo.clear()
        self.kept.clear()
        self.recipes.clear()
        self.ranged = frozenset()
        self._loaded = None

    def title(self) -> str:
        """The search as messages name it: ``snp under seed``."""
        variant = f" ({self.variant})" if self.variant else ""
        return f"{self.platform.name}{variant} under {self.revision.name}"

    def _run(self, workers: int, progress: Progress | None, max_states: int | None) -> Exploration:
        start, cpu_start, rss_start = time.perf_counter(), cpu_time(), resident_bytes()
        result = Exploration(
            self.platform.name,
            self.revision.name,
            self.pages,
            self.depth,
            workers,
            self.variant,
            self.symmetry,
            local_lookups=any(page is not None for page in self.local),
        )
        frontier: list[Key] = []
        seen: set[Key] = set()
        for root in self.roots:
            key = self.key(root)
            if key not in seen:
                seen.add(key)
                frontier.append(root)
        levels: list[list[tuple[int, int]]] = [[(-1, i) for i in range(len(frontier))]]
        result.per_level.append(len(frontier))
        found: dict[Property, tuple[int, int, int, Violation]] = {}
        for level in range(self.depth):
            if not frontier:
                break
            tick = None if progress is None else _ticker(progress, level + 1, len(frontier), result, seen)
            try:
                shards = self._expand_level(frontier, seen, workers, tick)
            except SearchTimeout:
                result.timed_out = True
                break
            next_frontier: list[Key] = []
            links: list[tuple[int, int]] = []
            for shard in shards:
                self.terms.update(shard.terms)
                result.generated += shard.generated
                for prop, (parent, op_index, violation) in shard.found.items():
                    if prop not in found:
                        found[prop] = (level, parent, op_index, violation)
                for key, state, parent, op_index in zip(
                    shard.keys, shard.states, shard.parents, shard.ops, strict=True
                ):
                    if key not in seen:
                        seen.add(key)
                        next_frontier.append(state)
                        links.append((parent, op_index))
            if max_states is not None and len(seen) > max_states:
                raise TooManyStates(self.title(), max_states, level + 1)
            levels.append(links)
            result.per_level.append(len(next_frontier))
            frontier = next_frontier
        result.reached = len(levels) - 1
        result.distinct = len(seen)
        if progress is not None:
            progress(len(levels) - 1, 0, 0, result.generated, result.distinct)
        for prop in Property:
            if prop in found:
                level, parent, op_index, violation = found[prop]
                origin, path = self._path(levels, level, parent)
                result.counterexamples[prop] = self._counterexample(origin, [*path, op_index], violation)
        result.seconds = time.perf_counter() - start
        result.cpu_seconds = cpu_time() - cpu_start
        result.shards = [result.distinct]
        result.bytes_per_state = per_state(resident_bytes(), rss_start, result.distinct)
        return result

    def _expand_level(
        self, frontier: list[Key], seen: set[Key], workers: int, tick: Callable[[int], None] | None
    ) -> list[_Shard]:
        if workers <= 1 or len(frontier) < 64 * workers:
            return [self.expand(frontier, 0, len(frontier), seen, tick)]
        bounds = [(len(frontier) * w // workers, len(frontier) * (w + 1) // workers) for w in range(workers)]
        global _ACTIVE
        _ACTIVE = (self, frontier, seen)
        try:
            with forked_pool(workers) as pool:
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
        expects = [expectation(r.outcome) for r in trace]
        detected = len(ops) - 1
        fails_at, witness = detected, False
        if violation.prop is Property.POLICY:  # the next reader's read shows it
            assert violation.expect is not None and violation.error_offset is not None
            conversion = ops[-1]
            assert isinstance(conversion, Convert)
            for op in self._next_read(conversion, violation.error_offset, trace[-1].after):
                ops.append(op)
                expects.append("ok")
            expects[-1] = violation.expect
            fails_at, witness = len(ops) - 1, True
        elif violation.expect is not None:
            expects[-1] = violation.expect
            if violation.error_offset is not None:
                expects[-1] += f"@{violation.error_offset:#x}"
            elif violation.prop is Property.REPORTING:  # no error_offset may be written back
                expects[-1] += "@none"
        else:  # atomicity: show the change with one more operation
            found = self._witness(trace[-1].before, trace[-1].after, ops[-1])
            if found is not None:
                op, expect = found
                ops.append(op)
                expects.append(expect)
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
            violation.message,
            detected,
            fails_at,
            witness,
        )

    def _next_read(self, conversion: Convert, page: int, after: State) -> list[Operation]:
        """The next reader's read of ``page``'s first word (launching first if the guest
        reads and cannot run yet)."""
        offset = page * PAGE_SIZE
        if conversion.direction is Direction.TO_SHARED:
            return [HostRead(offset, WORD)]
        read = GuestRead(offset, WORD)
        if self.platform.launch and after.phase is Phase.PRE_LAUNCH:
            return [Launch(), read]
        return [read]

    def _witness(self, before: State, after: State, failed: Operation) -> tuple[Operation, str] | None:
        """The first operation whose outcome differs between the state a failed call
        should have left (``before``, minus the host mappings ``EAGAIN`` removes) and the
        state it did leave."""
        converts = isinstance(failed, Convert) and failed.direction is Direction.TO_PRIVATE
        pages = failed.pages if converts else range(0)
        expected = before._replace(ptes=tuple(tuple(p for p in m if p not in pages) for m in before.ptes))
        if expected == after:
            expected = before
        machine = self.machine
        self._loaded = None
        for op, call in zip(self.ops, self.calls, strict=True):
            restore(machine, expected)
            want = call()
            restore(machine, after)
            got = call()
            if want != got:
                return op, expectation(want)
        return None


def _ticker(
    progress: Progress, level: int, size: int, result: Exploration, seen: set[Key]
) -> Callable[[int], None]:
    """Progress within one level: how many of its ``size`` states are expanded."""
    done, total = result.generated, len(seen)

    def tick(expanded: int) -> None:
        progress(level, expanded, size, done, total)

    tick(0)
    return tick


_ACTIVE: tuple[Explorer, list[Key], set[Key]] | None = None


class NotLocal(Exception):
    """An operation on one page changed another page (the model is not local)."""


class Incomplete(GuestmemError):
    """A search stopped before its end: no result, no verdict (``guestmem`` exits 3)."""


class TooManyStates(Incomplete):
    """The visited set outgrew ``max_states``."""

    def __init__(self, label: str, max_states: int, depth: int) -> None:
        super().__init__(
            f"{label}: more than {max_states} distinct states by depth {depth} (--max-states "
            f"{max_states}); the search stopped there and reports no result"
        )
        self.max_states = max_states
        self.depth = depth


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc/self/statm``), or None."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def per_state(after: int | None, before: int | None, states: int) -> float | None:
    """Resident memory grown from ``before`` to ``after``, per state (None if unknown or
    not grown)."""
    if after is None or before is None or states <= 0 or after <= before:
        return None
    return (after - before) / states


def ignore_interrupts() -> None:
    """In a worker: leave Ctrl-C to the parent, which stops the pool and reports; the
    pool's ``terminate`` (SIGTERM) ends the worker."""
    progress.default_stop_signals()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # also drops one that came while blocked
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def forked_pool(workers: int) -> multiprocessing.pool.Pool:
    """A pool of ``workers`` forked processes that leave Ctrl-C to this one.

    ``SIGINT`` is blocked while the pool forks them (its own threads keep it blocked, for
    the workers they fork later), so a Ctrl-C at that moment cannot reach a child before
    :func:`ignore_interrupts` runs in it (it would print a traceback from the child's
    start-up); in this process it is delivered as soon as the pool exists."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return multiprocessing.get_context("fork").Pool(workers, initializer=ignore_interrupts)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def cpu_time() -> float:
    """CPU seconds of this process and of its finished children (forked workers)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


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
    symmetry: bool = True,
    memo: bool = True,
    progress: Progress | None = None,
    max_states: int | None = None,
    deadline: float | None = None,
) -> Exploration:
    """Search ``platform`` under ``abi``; see :class:`Explorer`. Past ``deadline``
    (``time.monotonic()``) the search stops after the last whole level (``timed_out``)."""
    explorer = Explorer(
        platform,
        abi,
        pages=pages,
        depth=depth,
        variant=variant,
        symmetry=symmetry,
        memo=memo,
        deadline=deadline,
    )
    return explorer.run(workers, progress, max_states)

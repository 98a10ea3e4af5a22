"""The breadth-first search shared over the processes of a Ray cluster (``--engine ray``).

The search is :class:`~guestmem.checker.explore.Explorer`'s: the same states, successors,
reductions and counterexamples. What changes is where the states live. The visited set
is partitioned over ``workers`` Ray actors (:class:`Shard`) by the hash of each state's
visited-set key (the state reduced by page symmetry, :meth:`Explorer.key`): actor ``i``
holds the keys whose hash is ``i`` modulo ``workers``, and the states of the frontier
they stand for. Level by level:

1. every actor expands its part of the frontier with :meth:`Explorer.expand` and sorts
   the successors not yet seen by their owner (those it owns itself are checked against
   its own visited set at once);
2. every actor takes the successors sent to it (Ray passes each actor's outgoing batches
   straight to their owners, through the object store), keeps those not in its visited
   set, one per key, and adds them as its part of the next level.

Which concrete state stands for a class, and which counterexample is reported, must not
depend on how the states are spread. Each state carries its least path as one integer,
its *tag*: the index of the initial state, followed by the indices of the operations
(in alphabet order) as digits in base ``len(alphabet)``. A successor's tag is its
parent's tag times that base plus the operation; its parent is the tag divided by the
base, so the path, and from it the counterexample, is rebuilt exactly. All paths of one
level have the same length, so comparing tags compares paths lexicographically: an owner
keeps, for each key, the candidate with the least tag, and a property's counterexample
is the violating step with the least tag at the first level where one occurs. That is
what the local search keeps, so the two engines report the same distinct states,
levels, verdicts and least shortest counterexamples.

Keys are hashed with Python's ``hash``, which is the same in every process only with the
same ``PYTHONHASHSEED``: the actors are started with it set, and each reports the hash
of one probe value before a search, which must agree. Pages made by offset-keyed effects
are compared by how they were made (:meth:`Explorer.term`); an actor sends the names of
such pages with the states that hold them.

A worker that dies, or a batch the object store loses, stops the search with
:class:`WorkerFailed` (``guestmem`` exits 3): nothing is reported for a search that did
not finish. ``max_states`` bounds the distinct states of all actors together, checked
after every level. The CPU seconds reported are those of the calling process and of
every actor process (the Ray daemons are not counted there; ``guestmem bench`` counts
them too).

Ray is imported only here, and only when the engine is asked for.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

from guestmem.checker.explore import (
    Exploration,
    Explorer,
    Incomplete,
    Key,
    NotLocal,
    Progress,
    TooManyStates,
    per_state,
    resident_bytes,
)
from guestmem.checker.properties import Property, Violation
from guestmem.checker.schedule import Engine, Search
from guestmem.errors import GuestmemError
from guestmem.model.gmem import PageRow
from guestmem.spec import platforms

ENGINES = ("local", "ray")
#: The optional dependency that provides the engine.
EXTRA = "guestmem[ray]"
#: ``PYTHONHASHSEED`` of every actor: one partition of the keys in every process.
HASH_SEED = "0"
#: A value of the types keys are made of, whose hash every actor must agree on.
PROBE = (True, ((8, 0, (b"guestmem", ((0, 4096, 3),)), 0, 0, 1), (1, ("private", (0, ())))))
#: Seconds between looks at the actors' progress while a level runs.
POLL = 0.2
#: Attempts to start Ray on this machine.
STARTS = 3
#: Seconds to wait for the CPUs of actors being stopped to become free.
FREEING = 10.0

#: Successors sent to one owner: (key, state, tag) each, and the names of keyed pages
#: among them (:attr:`Explorer.terms`).
Batch = tuple[list[tuple[Key, Key, int]], dict[Any, Any]]
#: What an actor reports after expanding: generated states and, per property, the least
#: tag of a violating step with its violation; None if the model turned out not local.
Expansion = tuple[int, dict[Property, tuple[int, Violation]]] | None


class _PastDeadline(Exception):
    """The search's deadline passed while a level ran."""


class EngineUnavailable(GuestmemError):
    """The engine cannot run here (Ray is not installed, or the cluster cannot take the
    workers asked for); ``guestmem`` reports it as bad input."""


class WorkerFailed(Incomplete):
    """A Ray worker died (or its results were lost) before the search finished."""


def import_ray() -> Any:
    """The ``ray`` module, or :class:`EngineUnavailable` naming the extra to install."""
    try:
        import ray
    except ImportError as err:
        raise EngineUnavailable(
            f"--engine ray needs Ray, which cannot be imported here ({err}): pip install '{EXTRA}'"
        ) from None
    return ray


_SEEDED = False


def start_ray(ray: Any, address: str | None = None, cpus: int | None = None) -> None:
    """``ray.init`` quietly: a new Ray on this machine with ``cpus`` CPUs (whose processes
    all get :data:`HASH_SEED`), or, given ``address``, the cluster there (which gets this
    copy of guestmem with the job)."""
    global _SEEDED
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": False,
    }
    if address is None:
        options["num_cpus"] = cpus or os.cpu_count() or 1
    else:
        import guestmem

        options["runtime_env"] = {"py_modules": [guestmem]}
    # Inherited by the processes Ray starts here: one hash seed, and workers at the
    # caller's priority (Ray's default, niceness 15, starves a search on a busy machine).
    settings = {"PYTHONHASHSEED": HASH_SEED, "RAY_worker_niceness": "0"} if address is None else {}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        for attempt in range(STARTS):
            try:
                ray.init(address=address, **options)
                break
            except Exception as err:  # Ray raises bare Exception when its node does not come up
                ray.shutdown()
                if attempt + 1 < STARTS and address is None:
                    continue  # its processes get 30 s to start, which a busy machine can miss
                where = "start on this machine" if address is None else f"be joined at {address}"
                reason = " ".join(str(err).split())
                raise EngineUnavailable(f"--engine ray: Ray could not {where}: {reason}") from None
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    _SEEDED = address is None
    # Ray's copy of colorama, set up while Ray starts, would write a colour reset
    # (ESC [0m) to the terminal when this process exits, after guestmem's last line.
    colorama = sys.modules.get("colorama.initialise")
    if colorama is not None:
        atexit.unregister(colorama.reset_all)


class Shard:
    """One actor's part of the search: the states whose key hashes to ``index`` modulo
    ``count``. Plain Python: :class:`RayEngine` makes it a Ray actor.

    ``prepare``, if given, runs first in the actor's process (a test uses it to put a
    deliberately broken model in place there)."""

    def __init__(self, index: int, count: int, prepare: Callable[[], object] | None = None) -> None:
        if prepare is not None:
            prepare()
        self.index = index
        self.count = count
        self.explorer: Explorer | None = None
        self.seen: set[Key] = set()
        self.frontier: list[Key] = []
        self.tags: list[int] = []
        self.own: list[tuple[Key, Key, int]] = []
        #: Rows and pages of states from other processes, one object per value.
        self.rows: dict[Any, Any] = {}
        self.pages: dict[Any, Any] = {}
        self.expanded = 0
        self.cpu_start = 0.0
        self.rss_start: int | None = None

    def probe(self) -> int:
        return hash(PROBE)

    def start(self, search: Search, lookups: bool) -> int:
        """Begin ``search``: keep the initial states this actor owns (the same ones the
        local search keeps, in the same order); how many."""
        self.clear()
        # The search makes no cyclic garbage worth collecting, while the collector would
        # walk every state held each time it ran (a fifth of the search's CPU time, most
        # of it unpickling the states other actors send): off until finish().
        gc.disable()
        self.rss_start = resident_bytes()
        self.cpu_start = time.process_time()
        platform = search.platform  # a copy, unpickled: the registered one if it is that
        if platforms.PLATFORMS.get(platform.name) == platform:
            platform = platforms.PLATFORMS[platform.name]
        explorer = search.explorer(platform, lookups=lookups)
        self.explorer = explorer
        roots: set[Key] = set()
        for i, root in enumerate(explorer.roots):
            key = explorer.key(root)
            if key in roots:
                continue
            roots.add(key)
            if hash(key) % self.count == self.index:
                self.seen.add(key)
                self.frontier.append(root)
                self.tags.append(i)
        return len(self.frontier)

    def _tick(self, expanded: int) -> None:
        self.expanded = expanded

    def expand(self) -> list[Any]:
        """Expand this actor's part of the level: one :data:`Batch` per other owner (None
        for itself: it keeps its own successors), then the :data:`Expansion`."""
        explorer = self.explorer
        assert explorer is not None, "start() comes first"
        self.expanded = 0
        count, tags, n = self.count, self.tags, len(explorer.ops)
        try:
            shard = explorer.expand(self.frontier, 0, len(self.frontier), self.seen, self._tick)
        except NotLocal:
            return [None] * (count + 1)
        outgoing: list[list[tuple[Key, Key, int]]] = [[] for _ in range(count)]
        for key, state, parent, op in zip(shard.keys, shard.states, shard.parents, shard.ops, strict=True):
            outgoing[hash(key) % count].append((key, state, tags[parent] * n + op))
        self.own = outgoing[self.index]
        terms = explorer.terms if explorer.keyed else {}
        batches: list[Batch | None] = []
        for owner, items in enumerate(outgoing):
            if owner == self.index:
                batches.append(None)
                continue
            named: dict[Any, Any] = {}
            if terms:
                for _, state, _ in items:
                    for row in state.rows:
                        term = terms.get(row.page)
                        if term is not None:
                            named[row.page] = term
            batches.append((items, named))
        found = {prop: (tags[parent] * n + op, v) for prop, (parent, op, v) in shard.found.items()}
        self.frontier, self.tags = [], []
        return [*batches, (shard.generated, found)]

    def absorb(self, *batches: Batch | None) -> tuple[int, int]:
        """Take the successors sent to this actor: the next level's part, in tag order.
        (new states, states held)."""
        explorer = self.explorer
        assert explorer is not None, "start() comes first"
        seen, terms = self.seen, explorer.terms
        best: dict[Key, tuple[int, Key]] = {key: (tag, state) for key, state, tag in self.own}
        for batch in batches:
            if batch is None:
                continue
            items, named = batch
            for page, term in named.items():
                if page not in terms:
                    terms[self.pages.setdefault(page, page)] = term
            for key, state, tag in items:
                if key in seen:
                    continue
                held = best.get(key)
                if held is None or tag < held[0]:
                    best[key] = (tag, state)
        ordered = sorted(best.values(), key=itemgetter(0))
        own = {id(state) for _, state, _ in self.own}
        frontier: list[Key] = []
        for _, state in ordered:
            if id(state) not in own:  # made in another process: share its parts with ours
                state = self.interned(state)
            seen.add(explorer.key(state))
            frontier.append(state)
        self.tags = [tag for tag, _ in ordered]
        self.frontier = frontier
        self.own = []
        return len(ordered), len(seen)

    def interned(self, state: Key) -> Key:
        """``state`` made of this process's row and page objects where it has equal ones.
        States that come from another process are copies, down to their 4 KiB pages; the
        local search shares rows and pages between states, which is what keeps a state
        small, and what lets the explorer compare and hash them by identity."""
        rows, pages = self.rows, self.pages
        made: list[PageRow] = []
        for row in state.rows:
            kept = rows.get(row)
            if kept is None:
                kept = row._replace(page=pages.setdefault(row.page, row.page))
                rows[kept] = kept
            made.append(kept)
        return Key(state.running, tuple(made))

    def progress(self) -> tuple[int, int]:
        """(states of this actor's part of the level expanded so far, its size)."""
        return self.expanded, len(self.frontier)

    def finish(self) -> tuple[int, float, int | None]:
        """End the search: (states held, CPU seconds of this process since it began,
        growth of its resident memory); the states are dropped."""
        held, cpu = len(self.seen), time.process_time() - self.cpu_start
        now, before = resident_bytes(), self.rss_start
        self.clear()
        gc.enable()
        gc.collect()
        return held, cpu, None if now is None or before is None else now - before

    def clear(self) -> None:
        self.explorer = None
        self.seen, self.frontier, self.tags, self.own = set(), [], [], []
        self.rows, self.pages = {}, {}


class RayEngine:
    """Runs searches over ``workers`` Ray actors (default: one per CPU of the cluster).

    With no ``address`` and Ray not yet started in this process, a Ray instance is
    started on this machine for the engine's lifetime; ``address`` (``auto``, a GCS
    address ``host:port`` or ``ray://host:port``) joins an existing cluster, whose nodes
    get this copy of guestmem with the job. A search may also be asked on a Ray that the
    caller started (the engine then leaves it running)."""

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        prepare: Callable[[], object] | None = None,
    ) -> None:
        self.address = address
        self.asked = workers
        self.prepare = prepare
        self.ray: Any = None
        self.started = False
        self.actors: list[Any] = []
        self.failed: str | None = None

    @property
    def workers(self) -> int:
        return len(self.actors)

    def __enter__(self) -> RayEngine:
        ray = import_ray()
        self.ray = ray
        if not ray.is_initialized():
            start_ray(ray, self.address, max(self.asked or 0, os.cpu_count() or 1))
            self.started = True
        try:
            self._start_actors()
        except BaseException:
            self.close()
            raise
        return self

    def _start_actors(self) -> None:
        ray = self.ray
        cpus = int(ray.cluster_resources().get("CPU", 0))
        count = self.asked or cpus
        free = int(ray.available_resources().get("CPU", 0))
        deadline = time.monotonic() + FREEING
        while count > free and count <= cpus and time.monotonic() < deadline:
            time.sleep(0.1)  # actors stopped just before (an earlier engine's) free their CPUs
            free = int(ray.available_resources().get("CPU", 0))
        if count < 1 or count > free:
            raise EngineUnavailable(
                f"--workers: {count} Ray workers need {count} free CPUs; the cluster has {cpus}, "
                f"{free} of them free"
            )
        remote = ray.remote(num_cpus=1, max_restarts=0, concurrency_groups={"progress": 1})(Shard)
        # Workers of a Ray started by start_ray() have the seed already (and start sooner).
        seeded = {} if _SEEDED else {"runtime_env": {"env_vars": {"PYTHONHASHSEED": HASH_SEED}}}
        self.actors = [
            remote.options(scheduling_strategy="SPREAD", **seeded).remote(i, count, self.prepare)
            for i in range(count)
        ]
        probes = self._get([a.probe.remote() for a in self.actors], "starting the Ray workers")
        if len(set(probes)) > 1:
            raise EngineUnavailable(
                "the Ray workers hash states differently (PYTHONHASHSEED did not reach them), "
                "so they cannot share one visited set"
            )

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop_actors(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(actor, no_restart=True)
        self.actors = []

    def close(self) -> None:
        """Stop the actors, and the Ray instance if this engine started it."""
        ray = self.ray
        if ray is None:
            return
        self._stop_actors()
        if self.started:
            global _SEEDED
            ray.shutdown()
            self.started = _SEEDED = False

    # --- one search ------------------------------------------------------------------------------
    def explore(self, search: Search, progress: Progress | None = None) -> Exploration:
        """Run ``search`` over the actors; the result is the local engine's."""
        try:
            return self._explore(search, progress, lookups=True)
        except NotLocal:  # an actor saw an operation on one page change another
            return self._explore(search, progress, lookups=False)

    def _explore(self, search: Search, progress: Progress | None, *, lookups: bool) -> Exploration:
        if self.failed is not None:
            raise WorkerFailed(self.failed)
        if not self.actors:  # stopped in the middle of a level by an earlier deadline
            self._start_actors()
        start, cpu_start = time.perf_counter(), time.process_time()
        # This process's own explorer: the alphabet, and the replay of counterexamples.
        here = search.explorer(lookups=lookups)
        label, actors, count, base = here.title(), self.actors, self.workers, len(here.ops)
        result = Exploration(
            here.platform.name,
            here.revision.name,
            search.pages,
            search.depth,
            count,
            search.variant,
            here.symmetry,
            local_lookups=any(page is not None for page in here.local),
            engine="ray",
        )
        held = self._get([a.start.remote(search, lookups) for a in actors], f"{label}: depth 0")
        result.per_level.append(sum(held))
        distinct = sum(held)
        found: dict[Property, tuple[int, int, Violation]] = {}
        for level in range(1, search.depth + 1):
            size = result.per_level[-1]
            if size == 0:
                break
            if search.deadline is not None and time.monotonic() > search.deadline:
                result.timed_out = True
                break
            outs = [a.expand.options(num_returns=count + 1).remote() for a in actors]
            taken = [actors[j].absorb.remote(*[outs[i][j] for i in range(count)]) for j in range(count)]
            if progress is not None:
                progress(level, 0, size, result.generated, distinct)
            where = f"{label}: depth {level}"
            try:
                expansions: list[Expansion] = self._wait(
                    [out[count] for out in outs],
                    where,
                    progress,
                    level,
                    size,
                    result.generated,
                    distinct,
                    search.deadline,
                )
                absorbed: list[tuple[int, int]] = self._get(taken, where)
            except _PastDeadline:  # the levels before are whole: report them, as the local engine
                result.timed_out = True
                self._stop_actors()  # they are in the middle of this level
                break
            if any(e is None for e in expansions):
                raise NotLocal(label)
            least: dict[Property, tuple[int, Violation]] = {}
            for expansion in expansions:
                assert expansion is not None
                generated, violations = expansion
                result.generated += generated
                for prop, (tag, violation) in violations.items():
                    if prop not in least or tag < least[prop][0]:
                        least[prop] = (tag, violation)
            for prop, (tag, violation) in least.items():
                found.setdefault(prop, (level, tag, violation))
            result.per_level.append(sum(new for new, _ in absorbed))
            distinct = sum(total for _, total in absorbed)
            if search.max_states is not None and distinct > search.max_states:
                raise TooManyStates(label, search.max_states, level)
        result.reached = len(result.per_level) - 1
        finished: list[tuple[int, float, int | None]] = (
            self._get([a.finish.remote() for a in actors], f"{label}: the end")
            if self.actors
            else [(0, 0.0, None)] * count
        )
        result.distinct = distinct
        if progress is not None:
            progress(len(result.per_level) - 1, 0, 0, result.generated, result.distinct)
        for prop in Property:
            if prop in found:
                level, tag, violation = found[prop]
                root, path = unpack(tag, level, base)
                result.counterexamples[prop] = here._counterexample(root, path, violation)
        result.shards = [shard for shard, _, _ in finished] if self.actors else []
        growth = [grown for _, _, grown in finished]
        if None not in growth:
            result.bytes_per_state = per_state(sum(g for g in growth if g is not None), 0, distinct)
        result.seconds = time.perf_counter() - start
        result.cpu_seconds = time.process_time() - cpu_start + sum(cpu for _, cpu, _ in finished)
        return result

    def _wait(
        self,
        refs: list[Any],
        where: str,
        progress: Progress | None,
        level: int,
        size: int,
        generated: int,
        distinct: int,
        deadline: float | None = None,
    ) -> list[Any]:
        """The values of ``refs`` (one per actor), showing progress while they run; past
        ``deadline``, :class:`_PastDeadline`."""
        ray = self.ray
        while True:
            _, running = ray.wait(refs, num_returns=len(refs), timeout=POLL)
            if not running:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise _PastDeadline()
            if progress is not None:
                polls = [a.progress.options(concurrency_group="progress").remote() for a in self.actors]
                done = self._get(polls, where)
                progress(level, sum(expanded for expanded, _ in done), size, generated, distinct)
        return self._get(refs, where)

    def _get(self, refs: Sequence[Any], where: str) -> list[Any]:
        """``ray.get`` of one call per actor; a failure names the actor and stops the engine."""
        ray = self.ray
        try:
            return list(ray.get(list(refs)))
        except ray.exceptions.RayError as err:
            worker = "?"
            for i, ref in enumerate(refs):
                try:
                    ray.get(ref)
                except ray.exceptions.RayError:
                    worker = str(i)
                    break
            reason = " ".join(str(err).split())
            if len(reason) > 160:
                reason = reason[:157] + "..."
            self.failed = (
                f"{where}: Ray worker {worker} of {len(self.actors)} failed ({type(err).__name__}: "
                f"{reason}); the search did not finish and reports no result"
            )
            self.close()
            raise WorkerFailed(self.failed) from None


def unpack(tag: int, level: int, base: int) -> tuple[int, list[int]]:
    """The initial state's index and the operations of a state's tag at ``level``."""
    ops: list[int] = []
    for _ in range(level):
        tag, op = divmod(tag, base)
        ops.append(op)
    return tag, ops[::-1]


@contextmanager
def engine(name: str, address: str | None = None, workers: int | None = None) -> Iterator[Engine | None]:
    """The engine ``--engine name`` asks for: None for ``local`` (this process and its
    forked workers), a running :class:`RayEngine` for ``ray``."""
    if name == "local":
        yield None
        return
    with RayEngine(address, workers) as running:
        yield running

"""The explorer's reductions change no result.

- With page symmetry off, every count, level size and counterexample equals what a plain
  search gives (:func:`reference_search`: the model's own snapshots as states, every step
  run on the model), on every platform and revision at 1, 2 and 3 pages.
- Looking up local steps (``memo``) gives exactly what running the model for every step
  gives.
- Page symmetry keeps every counterexample (the same least shortest path, step for step);
  it is sound because the model commutes with a permutation of pages wherever
  :func:`~guestmem.checker.explore.symmetric` says so, checked here on every reachable
  state up to a small depth.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest

from guestmem.checker.explore import INITS, Exploration, Explorer, Key, canonical, explore, symmetric
from guestmem.checker.ops import alphabet
from guestmem.checker.properties import Monitor, Property, State, capture, open_machine, restore
from guestmem.checker.schedule import COVERED
from guestmem.cli import main
from guestmem.errors import IoctlError
from guestmem.model.gmem import GuestMemfd
from guestmem.ops import Operation
from guestmem.spec import platforms, revisions
from guestmem.spec.platforms.base import Platform
from guestmem.uapi.kvm import PAGE_SIZE

COMBOS = [(p, abi) for abi in revisions.REVISIONS for p in platforms.PLATFORMS]
BOUNDS = ((1, 4), (2, 3), (3, 2))


def reference_search(platform: Platform, abi: str, pages: int, depth: int) -> dict[str, Any]:
    """The plain search: every step run on a fresh restore of the model's own snapshot,
    states compared whole, no lookup, no symmetry; the least shortest path to the first
    violation of each property."""
    revision = revisions.get(abi)
    ops = alphabet(pages, abi)
    machine = open_machine(platform, revision, pages, "shared")
    calls = [op.bind(machine) for op in ops]
    monitor = Monitor(platform, revision)
    frontier: list[tuple[State, tuple[int, ...], str]] = []
    seen: set[State] = set()
    for init in INITS:
        root = capture(open_machine(platform, revision, pages, init))
        if root not in seen:
            seen.add(root)
            frontier.append((root, (), init))
    per_level, generated = [len(frontier)], 0
    found: dict[Property, tuple[str, tuple[int, ...], str]] = {}
    for _ in range(depth):
        following = []
        for state, path, init in frontier:
            for index, call in enumerate(calls):
                restore(machine, state)
                outcome = call()
                after = capture(machine)
                generated += 1
                for v in monitor.observe(ops[index], outcome, state, after):
                    found.setdefault(v.prop, (init, (*path, index), v.message))
                if after not in seen:
                    seen.add(after)
                    following.append((after, (*path, index), init))
        frontier = following
        per_level.append(len(frontier))
        if not frontier:
            break
    return {
        "generated": generated,
        "distinct": len(seen),
        "per_level": per_level,
        "violations": {p: (i, [ops[k] for k in path], m) for p, (i, path, m) in found.items()},
    }


def summary(result: Exploration) -> dict[str, Any]:
    return {
        "generated": result.generated,
        "distinct": result.distinct,
        "per_level": result.per_level,
        "violations": {
            p: (c.init, c.ops[: c.detected + 1], c.message) for p, c in result.counterexamples.items()
        },
    }


@pytest.mark.parametrize(("platform", "abi"), COMBOS)
def test_without_symmetry_every_result_equals_the_plain_search(platform: str, abi: str) -> None:
    for pages, depth in BOUNDS:
        want = reference_search(platforms.get(platform), abi, pages, depth)
        got = explore(platform, abi, pages=pages, depth=depth, symmetry=False)
        assert summary(got) == want, (pages, depth)
        # the model is local here: no search had to start again computing every step
        assert got.local_lookups, (pages, depth)
        if pages > 1:
            reduced = explore(platform, abi, pages=pages, depth=depth)
            assert summary(reduced)["violations"] == want["violations"], (pages, depth)
            assert reduced.distinct < got.distinct and reduced.generated < got.generated
            assert reduced.local_lookups, (pages, depth)


@pytest.mark.parametrize("abi", list(revisions.REVISIONS))
def test_local_steps_looked_up_equal_the_model_run_every_time(abi: str) -> None:
    ablated = dataclasses.replace(platforms.get("pkvm"), consent=False)
    for platform in [*platforms.PLATFORMS.values(), ablated]:
        for symmetry in (False, True):
            fast = explore(platform, abi, depth=2, symmetry=symmetry)
            slow = explore(platform, abi, depth=2, symmetry=symmetry, memo=False)
            assert fast.to_json(timing=False) == slow.to_json(timing=False), (platform.name, symmetry)
            assert fast.local_lookups and not slow.local_lookups


def pin_the_next_page_too(mp: pytest.MonkeyPatch) -> None:
    """A model whose pin of one page also pins the next: an operation that changes a row
    outside its range (the model is then not local)."""
    original = GuestMemfd.pin

    def pin_and_the_next_page(self: GuestMemfd, offset: int, size: int) -> None:
        original(self, offset, size)
        following = offset + size
        if following + PAGE_SIZE <= self.size:
            with contextlib.suppress(IoctlError):  # a private page cannot be pinned
                original(self, following, PAGE_SIZE)

    mp.setattr(GuestMemfd, "pin", pin_and_the_next_page)


def test_a_model_that_is_not_local_is_searched_again_without_lookups(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model whose pin of one page also pins the next (an operation that changes a row
    outside its range) is caught on the first such step: the search starts again running
    the model for every step, and its result is the plain search's."""
    pin_the_next_page_too(monkeypatch)
    mutant = explore("sw_protected", "seed", pages=2, depth=3, symmetry=False)
    assert not mutant.local_lookups
    assert summary(mutant) == reference_search(platforms.get("sw_protected"), "seed", 2, 3)
    assert main(["explore", "--platform", "sw_protected", "--pages", "2", "--depth", "3"]) in (0, 1)
    note = capsys.readouterr().err
    assert "sw_protected [seed]: an operation on one page changed another page" in note
    monkeypatch.undo()
    assert summary(mutant) != summary(explore("sw_protected", "seed", pages=2, depth=3, symmetry=False))
    assert main(["explore", "--platform", "sw_protected", "--pages", "2", "--depth", "3"]) in (0, 1)
    assert "changed another page" not in capsys.readouterr().err


def test_symmetry_keeps_the_ablation_counterexample() -> None:
    ablated = dataclasses.replace(platforms.get("pkvm"), consent=False)
    reduced = explore(ablated, "seed", depth=4)
    full = explore(ablated, "seed", depth=4, symmetry=False)
    assert reduced.symmetry and not full.symmetry
    assert reduced.counterexamples and {p: c.ops for p, c in reduced.counterexamples.items()} == {
        p: c.ops for p, c in full.counterexamples.items()
    }


def _permuted_op(op: Operation, perm: tuple[int, ...]) -> Operation:
    if len(op.pages) != 1:
        return op  # launch, or the whole range: maps onto itself
    offset = op.span[0]
    page = offset // PAGE_SIZE
    return dataclasses.replace(op, offset=perm[page] * PAGE_SIZE + offset % PAGE_SIZE)  # type: ignore[call-arg]


def _permuted(state: Key, perm: tuple[int, ...]) -> Key:
    rows = [state.rows[0]] * len(perm)
    for page, row in enumerate(state.rows):
        rows[perm[page]] = row
    return Key(state.running, tuple(rows))


@pytest.mark.parametrize(("pages", "perm", "depth"), [(2, (1, 0), 2), (3, (1, 2, 0), 1)])
@pytest.mark.parametrize(("platform", "abi"), COMBOS)
def test_the_model_commutes_with_page_permutations(
    platform: str, abi: str, pages: int, perm: tuple[int, ...], depth: int
) -> None:
    """For every state reachable within ``depth`` and every operation: permuting the
    pages, then applying the permuted operation, gives the permuted successor (where bytes
    depend on the offset: a successor with the same key) and the same violated properties."""
    explorer = Explorer(platform, abi, pages=pages, depth=depth, memo=False)
    index = {op: i for i, op in enumerate(explorer.ops)}
    frontier, seen = list(explorer.roots), set(explorer.roots)
    for _ in range(depth):
        following = []
        for state in frontier:
            for i, op in enumerate(explorer.ops):
                after, violations, _ = explorer.step(state, i)
                image, image_violations, _ = explorer.step(
                    _permuted(state, perm), index[_permuted_op(op, perm)]
                )
                if symmetric(platforms.get(platform), revisions.get(abi)):
                    assert image == _permuted(after, perm), (state, op)
                    assert canonical(image) == canonical(after)
                assert explorer.key(image) == explorer.key(after), (state, op)
                assert {v.prop for v in image_violations} == {v.prop for v in violations}, (state, op)
                if after not in seen:
                    seen.add(after)
                    following.append(after)
        frontier = following


def test_every_revision_member_is_in_the_relation_analyze_compares() -> None:
    """A revision hook the model asks but ``relation`` does not compare could make two
    revisions look alike to ``analyze`` when they are not."""
    for revision in revisions.REVISIONS.values():
        members = {name for name in dir(revision) if not name.startswith("_")}
        assert members <= COVERED, members - COVERED


def test_symmetric_says_where_contents_depend_on_the_offset() -> None:
    assert not symmetric(platforms.get("snp"), revisions.get("seed"))  # ciphertext, garbage
    assert not symmetric(platforms.get("sw_protected"), revisions.get("rfc-v5"))  # scramble
    assert symmetric(platforms.get("pkvm"), revisions.get("seed"))
    assert symmetric(platforms.get("sw_protected"), revisions.get("seed"))

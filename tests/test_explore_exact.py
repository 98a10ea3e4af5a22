"""The explorer's reductions change no result.

- With page symmetry off, every count, level size and counterexample equals what the
  explorer gave before states became per-page rows and local steps were looked up
  (``data/explore_reference.json``, recorded from that explorer on every platform and
  revision at 1, 2 and 3 pages).
- Looking up local steps (``memo``) gives exactly what running the model for every step
  gives.
- Page symmetry keeps every counterexample (the same least shortest path, step for step);
  it is sound because the model commutes with a permutation of pages wherever
  :func:`~guestmem.checker.explore.symmetric` says so, checked here on every reachable
  state up to a small depth.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import pytest

from guestmem.checker.explore import Explorer, Key, canonical, explore, symmetric
from guestmem.checker.ops import Op
from guestmem.spec import platforms, revisions
from guestmem.uapi.kvm import PAGE_SIZE

REFERENCE = Path(__file__).parent / "data" / "explore_reference.json"
COMBOS = [(p, abi) for abi in revisions.REVISIONS for p in platforms.PLATFORMS]


@functools.cache
def reference() -> dict[tuple[str, str, int], dict[str, Any]]:
    entries = json.loads(REFERENCE.read_text())
    return {(e["platform"], e["abi"], e["pages"]): e for e in entries}


def _result(platform: str, abi: str, pages: int, **kw: Any) -> dict[str, Any]:
    depth = reference()[platform, abi, pages]["depth"]
    out = explore(platform, abi, pages=pages, depth=depth, **kw).to_json(timing=False)
    out.pop("symmetry")
    return out


@pytest.mark.parametrize(("platform", "abi"), COMBOS)
def test_without_symmetry_results_equal_the_recorded_ones(platform: str, abi: str) -> None:
    for pages in (1, 2, 3):
        assert _result(platform, abi, pages, symmetry=False) == reference()[platform, abi, pages], pages


@pytest.mark.parametrize(("platform", "abi"), COMBOS)
def test_symmetry_keeps_every_counterexample_and_only_merges_states(platform: str, abi: str) -> None:
    reducible = symmetric(platforms.get(platform), revisions.get(abi))
    for pages in (2, 3) if reducible else (2,):
        got = _result(platform, abi, pages)
        want = reference()[platform, abi, pages]
        assert got["violations"] == want["violations"]
        assert got["generated"] <= want["generated"] and got["distinct"] <= want["distinct"]
        if reducible:
            assert got["distinct"] < want["distinct"], "pages are interchangeable: classes merge"
        else:
            assert got == want


@pytest.mark.parametrize("abi", list(revisions.REVISIONS))
def test_local_steps_looked_up_equal_the_model_run_every_time(abi: str) -> None:
    ablated = dataclasses.replace(platforms.get("pkvm"), consent=False)
    for platform in [*platforms.PLATFORMS.values(), ablated]:
        for symmetry in (False, True):
            fast = explore(platform, abi, depth=2, symmetry=symmetry).to_json(timing=False)
            slow = explore(platform, abi, depth=2, symmetry=symmetry, memo=False).to_json(timing=False)
            assert fast == slow, (platform.name, symmetry)


def test_symmetry_keeps_the_ablation_counterexample() -> None:
    ablated = dataclasses.replace(platforms.get("pkvm"), consent=False)
    reduced = explore(ablated, "seed", depth=4)
    full = explore(ablated, "seed", depth=4, symmetry=False)
    assert reduced.symmetry and not full.symmetry
    assert reduced.counterexamples and {p: c.ops for p, c in reduced.counterexamples.items()} == {
        p: c.ops for p, c in full.counterexamples.items()
    }


def _permuted_op(op: Op, perm: tuple[int, ...]) -> Op:
    if op.name == "launch" or len(op.pages) != 1:
        return op  # the whole range maps onto itself
    page = op.offset // PAGE_SIZE
    return op._replace(offset=perm[page] * PAGE_SIZE + op.offset % PAGE_SIZE)


def _permuted(state: Key, perm: tuple[int, ...]) -> Key:
    rows = [state[1][0]] * len(perm)
    for page, row in enumerate(state[1]):
        rows[perm[page]] = row
    return state[0], tuple(rows)


@pytest.mark.parametrize(("pages", "perm", "depth"), [(2, (1, 0), 2), (3, (1, 2, 0), 1)])
@pytest.mark.parametrize(
    ("platform", "abi"), [c for c in COMBOS if symmetric(platforms.get(c[0]), revisions.get(c[1]))]
)
def test_the_model_commutes_with_page_permutations(
    platform: str, abi: str, pages: int, perm: tuple[int, ...], depth: int
) -> None:
    """For every state reachable within ``depth`` and every operation: permuting the
    pages, then applying the permuted operation, gives the permuted successor and the same
    violated properties."""
    explorer = Explorer(platform, abi, pages=pages, depth=depth, symmetry=False, memo=False)
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
                assert image == _permuted(after, perm), (state, op)
                assert canonical(image) == canonical(after)
                assert {v.prop for v in image_violations} == {v.prop for v in violations}, (state, op)
                if after not in seen:
                    seen.add(after)
                    following.append(after)
        frontier = following


def test_symmetric_says_where_contents_depend_on_the_offset() -> None:
    assert not symmetric(platforms.get("snp"), revisions.get("seed"))  # ciphertext, garbage
    assert not symmetric(platforms.get("sw_protected"), revisions.get("rfc-v5"))  # scramble
    assert symmetric(platforms.get("pkvm"), revisions.get("seed"))
    assert symmetric(platforms.get("sw_protected"), revisions.get("seed"))

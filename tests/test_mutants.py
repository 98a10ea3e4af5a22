"""Mutation self-test: deliberate bugs in the model, each of which the explorer must catch.

Every mutant is applied by monkeypatching the real model; the explorer then has to find
a counterexample to the property the bug breaks, that counterexample has to fail on
replay exactly where the explorer said (with the bug in place), and the unmutated model
must show no such violation under the same bounds (so the catch is the bug's doing).
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from guestmem.checker import counterexample
from guestmem.checker.explore import Exploration, explore
from guestmem.checker.properties import Property
from guestmem.cli import main
from guestmem.model.gmem import GuestMemfd
from guestmem.model.provenance import ZEROED_PAGE
from guestmem.outfile import Directory
from guestmem.spec.revisions.seed import Seed
from guestmem.spec.terms import Effect
from guestmem.uapi.kvm import PAGE_SIZE

DEPTH = 4
Patch = Callable[[pytest.MonkeyPatch], None]


def forget_unmap(mp: pytest.MonkeyPatch) -> None:
    """A to-private conversion leaves every host mapping in place."""
    original = GuestMemfd.set_memory_attributes2

    def mutant(self: GuestMemfd, arg: Any) -> None:
        kept = [set(m.ptes) for m in self.mappings]
        try:
            original(self, arg)
        finally:
            for mapping, ptes in zip(self.mappings, kept, strict=True):
                mapping.ptes = ptes

    mp.setattr(GuestMemfd, "set_memory_attributes2", mutant)


def ignore_pins(mp: pytest.MonkeyPatch) -> None:
    """The refcount check does not see pins."""
    original = GuestMemfd.set_memory_attributes2

    def mutant(self: GuestMemfd, arg: Any) -> None:
        pins = dict(self.pins)
        self.pins.clear()
        try:
            original(self, arg)
        finally:
            self.pins.update(pins)

    mp.setattr(GuestMemfd, "set_memory_attributes2", mutant)


def _skip_effect(effect: Effect) -> Patch:
    def patch(mp: pytest.MonkeyPatch) -> None:
        original = GuestMemfd._apply

        def mutant(self: GuestMemfd, applied: Effect, *args: Any) -> None:
            if applied is not effect:
                original(self, applied, *args)

        mp.setattr(GuestMemfd, "_apply", mutant)

    return patch


def off_by_one_error_offset(mp: pytest.MonkeyPatch) -> None:
    """``error_offset`` names the page after the one that failed."""
    original = GuestMemfd._fail

    def mutant(self: GuestMemfd, view: memoryview, code: int, error_offset: int) -> None:
        original(self, view, code, error_offset + PAGE_SIZE)

    mp.setattr(GuestMemfd, "_fail", mutant)


def consent_not_checked(mp: pytest.MonkeyPatch) -> None:
    """pKVM converts pages the guest never asked to share or unshare."""
    mp.setattr(Seed, "needs_consent", lambda self, platform, phase: False)


def failed_call_changes_state(mp: pytest.MonkeyPatch) -> None:
    """A failing conversion has already zeroed the page it reports (inside its range)."""
    original = GuestMemfd._fail

    def mutant(self: GuestMemfd, view: memoryview, code: int, error_offset: int) -> None:
        index = error_offset // PAGE_SIZE
        if index in self.pages:
            self.pages[index] = ZEROED_PAGE
        original(self, view, code, error_offset)

    mp.setattr(GuestMemfd, "_fail", mutant)


#: name: (patch, platform it shows on, property it breaks)
MUTANTS: dict[str, tuple[Patch, str, Property]] = {
    "forget to unmap host mappings on to-private": (forget_unmap, "tdx", Property.ISOLATION),
    "ignore pins": (ignore_pins, "sw_protected", Property.ISOLATION),
    "ZERO that does not zero": (_skip_effect(Effect.ZEROS), "tdx", Property.POLICY),
    "off-by-one error_offset": (off_by_one_error_offset, "snp", Property.REPORTING),
    "NONE that does not fill": (_skip_effect(Effect.FILL_AB), "sw_protected", Property.POLICY),
    "consent not checked": (consent_not_checked, "pkvm", Property.CONFIDENTIALITY),
    "a failed call that changes state": (failed_call_changes_state, "cca", Property.ATOMICITY),
}


@functools.cache
def unmutated(platform: str) -> Exploration:
    return explore(platform, "seed", depth=DEPTH, workers=1)


def _failing_steps(path: Path) -> list[int]:
    out = io.StringIO()
    with redirect_stdout(out):
        main(["run", str(path), "--format", "json"])
    [run] = json.loads(out.getvalue())["runs"]
    return [s["index"] for s in run["steps"] if s["passed"] is False]


@pytest.mark.parametrize("name", list(MUTANTS))
def test_explorer_catches_mutant(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    patch, platform, prop = MUTANTS[name]
    assert prop not in unmutated(platform).counterexamples
    patch(monkeypatch)
    result = explore(platform, "seed", depth=DEPTH, workers=1)
    assert prop in result.counterexamples, f"{name}: found only {[p.value for p in result.counterexamples]}"
    cx = result.counterexamples[prop]
    path = Path(counterexample.write(result, cx, Directory(tmp_path)))
    assert _failing_steps(path) == [cx.fails_at + 1]
    monkeypatch.undo()
    on_real_model = _failing_steps(path)
    if name == "consent not checked":  # pKVM refuses the unrequested conversion earlier
        assert on_real_model and on_real_model[0] < cx.fails_at + 1
        assert [op.name for op in cx.ops][on_real_model[0] - 1] == "convert"
    else:
        assert on_real_model == []

"""The built-in suite: every packaged scenario file is a test, on each of its platforms.

Expectations in the files are written from semantics.md; a failure here means the model
and semantics.md disagree (or the file is wrong), never a reason to edit the expectation
to the model's output.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import guestmem
from guestmem import backend as backends
from guestmem.scenario import Scenario, load, run, suite_dir, suite_files
from guestmem.spec import platforms

FILES = suite_files()
CASES = [(path, name) for path in FILES for name in load(path).platforms]


def test_suite_is_packaged() -> None:
    assert FILES, "no scenario files under guestmem/suite"
    assert suite_dir() == Path(guestmem.__file__).parent / "suite"
    assert all(p.suffix == ".toml" for p in FILES)
    names = [load(p).name for p in FILES]
    assert len(set(names)) == len(names), "two suite files share a scenario name"
    assert all(load(p).name == p.stem for p in FILES), "a suite file is named after its scenario"


@pytest.mark.parametrize(("path", "platform"), CASES, ids=[f"{p.stem}[{n}]" for p, n in CASES])
def test_suite_case_passes_on_model(path: Path, platform: str) -> None:
    result = run(load(path), platform, backends.get("model"))
    failures = [
        f"step {s.step.index} {s.step.label()}: expected {' or '.join(map(str, s.expect))}, saw {s.outcome}"
        for s in result.failures
    ]
    assert result.status == "pass", "\n".join(failures) or result.skipped or result.error


def _covering(prefix: str) -> list[Scenario]:
    return [load(p) for p in FILES if p.stem.startswith(prefix)]


def test_every_matrix_cell_has_a_case_on_every_platform() -> None:
    """semantics.md §2: both directions × ZERO/PRESERVE/NONE, every platform with private
    memory, plus flags = 0 and the default VM's row."""
    private = {n for n, p in platforms.PLATFORMS.items() if p.private_memory}
    for direction in ("to_private", "to_shared"):
        for policy in ("zero", "preserve", "none"):
            (case,) = _covering(f"matrix_{direction}_{policy}")
            assert set(case.platforms) == private
            launches = [s for s in case.steps if s.op == "launch"]
            assert len(launches) == 1, "each matrix case converts both before and after launch"
    assert _covering("matrix_default_vm")[0].platforms == ("default",)
    assert _covering("matrix_default_policy")


def test_selftest_cases_are_all_there() -> None:
    """uapi.md §14: the nine guest_memfd_conversions_test cases."""
    expected = {
        "init_private",
        "init_shared",
        "indexing",
        "before_allocation_shared",
        "before_allocation_private",
        "unallocated_folios",
        "truncate",
        "forked_accesses",
        "elevated_refcount",
    }
    assert {s.name.removeprefix("selftest_") for s in _covering("selftest_")} == expected


KVM_FILES = [p for p in FILES if p.stem.startswith("gmem_")]


@pytest.mark.kvm
@pytest.mark.parametrize("path", KVM_FILES, ids=[p.stem for p in KVM_FILES])
def test_gmem_cases_on_the_kernel(path: Path) -> None:
    """The guest_memfd_test cases need no conversion ioctl, so they run on today's kernel
    (a default VM, kvm-here.md §3); other platforms skip with the backend's reason."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is not usable here")
    result = run(load(path), "default", backends.get("kvm"))
    if result.skipped:
        pytest.skip(result.skipped)
    failures = [f"step {s.step.index} {s.step.label()}: saw {s.outcome}" for s in result.failures]
    assert result.status == "pass", "\n".join(failures) or result.error

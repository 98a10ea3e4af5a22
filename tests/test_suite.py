"""The built-in suite: every packaged scenario file is a test, on each of its platforms.

Expectations in the files are written from semantics.md; a failure here means the model
and semantics.md disagree (or the file is wrong), never a reason to edit the expectation
to the model's output.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import guestmem
from guestmem import backend as backends
from guestmem.ops import Convert
from guestmem.scenario import Scenario, load_all, run, suite_dir, suite_files
from guestmem.spec import platforms, revisions
from guestmem.spec.terms import Policy
from kvm_support import needs

FILES = suite_files()
#: Every scenario of the suite (a parametrised file gives one per run).
SCENARIOS = [scenario for path in FILES for scenario in load_all(path)]
#: Every scenario on each of its platforms under each revision it states.
CASES = [(case, name, abi) for case in SCENARIOS for abi in case.revisions for name in case.platforms]


def test_suite_is_packaged() -> None:
    assert FILES, "no scenario files under guestmem/suite"
    assert suite_dir() == Path(guestmem.__file__).parent / "suite"
    assert all(p.suffix == ".toml" for p in FILES)
    names = [s.name for s in SCENARIOS]
    assert len(set(names)) == len(names), "two suite runs share a scenario name"
    for scenario in SCENARIOS:
        stem = Path(scenario.file).stem
        if scenario.params:  # a parametrised file: every run's name starts with the file's
            assert scenario.name.startswith(stem) and scenario.name != stem, scenario.name
        else:
            assert scenario.name == stem, "a suite file is named after its scenario"


def test_every_file_states_the_revisions_it_holds_for() -> None:
    """Each suite file says which revisions its expectations hold for."""
    for path in FILES:
        assert "abi" in tomllib.loads(path.read_text()), f"{path.name} does not state 'abi'"


@pytest.mark.parametrize("abi", list(revisions.REVISIONS))
def test_every_revision_has_cases_on_every_platform(abi: str) -> None:
    """The kernel backend needs cases to run under v8 and rfc-v5 on sw_protected and the
    default VM; every revision has some on every platform."""
    for platform in platforms.PLATFORMS:
        applicable = [s for s in SCENARIOS if s.applies_to(abi) and platform in s.platforms]
        assert len(applicable) >= 3, (abi, platform, applicable)


@pytest.mark.parametrize(("case", "platform", "abi"), CASES, ids=[f"{c.name}[{n}-{a}]" for c, n, a in CASES])
def test_suite_case_passes_on_model(case: Scenario, platform: str, abi: str) -> None:
    result = run(case, platform, backends.get("model"), abi)
    failures = [
        f"step {s.step.index} {s.step.label()}: expected {' or '.join(map(str, s.expect))}, saw {s.outcome}"
        for s in result.failures
    ]
    assert result.status == "pass", "\n".join(failures) or result.skipped or result.error


def _covering(prefix: str) -> list[Scenario]:
    return [s for s in SCENARIOS if s.name.startswith(prefix)]


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
    """The nine guest_memfd_conversions_test cases (v8 31-39/46), the multi-page ones once
    per test_page as the selftest repeats them, private_mem_conversions_test's two guest
    tests and private_mem_kvm_exits_test's memslot deletion, all in v8 form (flags = 0)."""
    expected = {
        "init_private",
        "init_shared",
        *(f"indexing_page{t}" for t in range(4)),
        "before_allocation_shared",
        "before_allocation_private",
        *(f"unallocated_folios_page{t}" for t in range(8)),
        "truncate",
        "forked_accesses",
        *(f"elevated_refcount_page{t}" for t in range(4)),
        "private_mem_conversions",
        "private_mem_conversions_punch_hole",
        "private_mem_kvm_exits",
    }
    selftests = _covering("selftest_")
    assert {s.name.removeprefix("selftest_") for s in selftests} == expected
    for case in selftests:
        # written for v8; v13 runs the same selftests (docs/semantics.md §1a)
        assert case.revisions[0] == "v8" and set(case.revisions) <= {"v8", "v13"}
        assert case.platforms[0] == "sw_protected"
        converts = [s for s in case.steps if isinstance(s.operation, Convert)]
        assert all(
            isinstance(c, Convert) and c.flags is None and c.policy is Policy.DEFAULT
            for c in (s.operation for s in converts)
        )
        if not converts:  # private_mem_kvm_exits needs none: the page starts private
            assert case.name.endswith("kvm_exits") and case.init == "private"
            continue
        if "private_mem" not in case.name:  # each round ends with the host's check
            assert any(s.op.startswith("host_") for s in case.steps[case.steps.index(converts[-1]) :])


def test_forked_accesses_uses_a_second_mapping() -> None:
    (case,) = _covering("selftest_forked_accesses")
    child = [s for s in case.steps if getattr(s.operation, "mapping", 0) == 1]
    assert [s.op for s in child] == ["host_read", "host_write", "host_read", "host_write"]
    assert [str(s.expect_for("sw_protected")[0]) for s in child[2:]] == ["SIGBUS", "SIGBUS"]


KVM_CASES = [s for s in SCENARIOS if s.name.startswith("gmem_")]


@pytest.mark.kvm
@needs("kvm", "guest_memfd", "guest_memfd_mmap", "guest_memfd_init_shared")
@pytest.mark.parametrize("case", KVM_CASES, ids=[s.name for s in KVM_CASES])
def test_gmem_cases_on_the_kernel(case: Scenario) -> None:
    """The guest_memfd_test cases need no conversion ioctl, so they run on today's kernel
    (a default VM, docs/kernel.md §3); other platforms skip with the backend's reason."""
    result = run(case, "default", backends.get("kvm"))
    if result.skipped:
        pytest.skip(result.skipped)
    failures = [f"step {s.step.index} {s.step.label()}: saw {s.outcome}" for s in result.failures]
    assert result.status == "pass", "\n".join(failures) or result.error

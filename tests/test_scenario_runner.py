"""The runner: policy → flags from the revision, skips, backend errors, all steps run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guestmem.backend.base import MAX_PAGES, Machine, Outcome, Unavailable
from guestmem.backend.model import ModelBackend
from guestmem.scenario import load, run
from guestmem.spec import revisions
from guestmem.spec.terms import Direction, Policy
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
)


class Recorder:
    """A machine that records calls and answers from a script."""

    backend = "fake"
    gpa_base = 1 << 32

    def __init__(self, platform: str, abi: str, size: int, answers: dict[str, Outcome]) -> None:
        self.platform, self.abi, self.size = platform, abi, size
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.answers = answers
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Outcome:
            self.calls.append((name, args, kwargs))
            answer = self.answers.get(name, Outcome())
            if isinstance(answer, BaseException):
                raise answer
            return answer

        return call

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    name = "fake"

    def __init__(self, answers: dict[str, Any] | None = None, unavailable: str | None = None) -> None:
        self.answers = answers or {}
        self.unavailable = unavailable
        self.opened: list[tuple[str, str, int, int]] = []
        self.machine: Recorder | None = None

    def max_pages(self) -> tuple[int, str]:
        return MAX_PAGES, "a fake accepts what any backend does"

    def open(self, platform: str, abi: str, size: int, flags: int) -> Machine:
        if self.unavailable:
            raise Unavailable(self.unavailable)
        self.opened.append((platform, abi, size, flags))
        self.machine = Recorder(platform, abi, size, self.answers)
        return self.machine


SCENARIO = """\
name = "t"
pages = 2
init = "{init}"
abi = "{abi}"

[[step]]
op = "convert"
offset = 0
size = "4K"
to = "private"
policy = "{policy}"

[[step]]
op = "convert"
offset = 0
size = "4K"
to = "shared"
flags = 6

[[step]]
op = "host_read"
offset = 0
size = 2
expect = "0102"

[[step]]
op = "launch"
"""


def scenario(tmp_path: Path, init: str = "shared", abi: str = "seed", policy: str = "preserve") -> Any:
    path = tmp_path / "t.toml"
    path.write_text(SCENARIO.format(init=init, abi=abi, policy=policy))
    return load(path)


#: The ``flags`` each revision's VMM passes per policy, stated from docs/semantics.md §1
#: (not computed by the code under test): seed's encoding; RFC v5's modes, where NONE is
#: MODE_UNSPECIFIED = 0; v8 has no values, so a VMM written for seed passes seed's.
FLAGS = {
    "seed": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
    "iteration2": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
    "rfc-v5": {"zero": 1, "preserve": 2, "none": 0, "default": 0},
    "v8": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
    "v13": {"zero": 1, "preserve": 2, "none": 4, "default": 0},
}


@pytest.mark.parametrize("abi", list(revisions.REVISIONS))
@pytest.mark.parametrize("policy", [p.value for p in Policy])
def test_policy_flags_come_from_the_revision(tmp_path: Path, abi: str, policy: str) -> None:
    backend = FakeBackend({"host_read": Outcome(data=b"\x01\x02")})
    result = run(scenario(tmp_path, abi=abi, policy=policy), "tdx", backend)
    assert result.passed
    machine = backend.machine
    assert machine is not None
    converts = [c for c in machine.calls if c[0] == "convert"]
    assert converts[0][1] == (
        0,
        4096,
        KVM_MEMORY_ATTRIBUTE_PRIVATE,
        FLAGS[abi][policy],
    )
    assert converts[1][1] == (0, 4096, 0, 6)  # raw flags override
    assert machine.closed


def test_abi_override_and_gmem_flags(tmp_path: Path) -> None:
    backend = FakeBackend({"host_read": Outcome(data=b"\x01\x02")})
    path = tmp_path / "t.toml"
    path.write_text(
        SCENARIO.format(init="private", abi="seed", policy="zero").replace(
            'abi = "seed"', 'abi = ["seed", "rfc-v5"]'
        )
    )
    result = run(load(path), "snp", backend, abi="rfc-v5")
    assert result.abi == "rfc-v5"
    assert backend.opened == [("snp", "rfc-v5", 8192, GUEST_MEMFD_FLAG_MMAP)]
    assert run(load(path), "snp", backend).abi == "seed"  # the first listed is the file's own
    run(scenario(tmp_path, init="shared"), "snp", backend)
    assert backend.opened[-1][3] == GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED


@pytest.mark.parametrize("abi", ["iteration2", "rfc-v5", "v8"])
def test_a_revision_the_file_does_not_list_is_not_applicable(tmp_path: Path, abi: str) -> None:
    backend = FakeBackend({"host_read": Outcome(data=b"\x09\x09")})
    result = run(scenario(tmp_path, abi="seed"), "tdx", backend, abi=abi)
    assert backend.opened == []  # nothing ran
    assert result.status == "n/a" and not result.passed
    assert result.not_applicable == f"its expectations hold for seed, not {abi}"
    assert all(s.passed is None and s.outcome is None for s in result.steps)
    assert result.to_json()["status"] == "n/a"


def test_a_file_without_abi_runs_under_every_revision(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(SCENARIO.format(init="shared", abi="seed", policy="zero").replace('abi = "seed"\n', ""))
    for abi in revisions.REVISIONS:
        backend = FakeBackend({"host_read": Outcome(data=b"\x01\x02")})
        assert run(load(path), "tdx", backend, abi=abi).status == "pass"
    assert load(path).abi == revisions.DEFAULT


def test_expect_abi_replaces_the_expectation_under_that_revision(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        SCENARIO.format(init="shared", abi="seed", policy="zero")
        .replace('abi = "seed"', 'abi = ["seed", "v8"]')
        .replace('expect = "0102"', 'expect = "0102"\nexpect_abi = { v8 = { tdx = "0909", "*" = "0102" } }')
    )
    answers = {"host_read": Outcome(data=b"\x09\x09")}
    assert run(load(path), "tdx", FakeBackend(answers), abi="v8").status == "pass"
    assert run(load(path), "tdx", FakeBackend(answers), abi="seed").status == "fail"
    assert run(load(path), "snp", FakeBackend(answers), abi="v8").status == "fail"


def test_failed_step_does_not_stop_the_run(tmp_path: Path) -> None:
    backend = FakeBackend({"host_read": Outcome(data=b"\x09\x09")})
    result = run(scenario(tmp_path), "tdx", backend)
    assert [s.passed for s in result.steps] == [True, True, False, True]
    assert result.status == "fail" and not result.passed


def test_skipped_step_skips_the_rest_never_passes(tmp_path: Path) -> None:
    backend = FakeBackend({"convert": Outcome(skipped="no conversion ioctl here")})
    result = run(scenario(tmp_path), "tdx", backend)
    assert result.status == "skip" and not result.passed
    assert result.skipped == "step 1 (convert): no conversion ioctl here"
    assert [s.passed for s in result.steps] == [None, None, None, None]
    assert backend.machine is not None and len(backend.machine.calls) == 1


def test_unavailable_backend_skips_the_run(tmp_path: Path) -> None:
    result = run(scenario(tmp_path), "tdx", FakeBackend(unavailable="no /dev/kvm"))
    assert (result.status, result.skipped, result.passed) == ("skip", "no /dev/kvm", False)
    assert result.to_json()["skipped"] == "no /dev/kvm"


def test_backend_exception_fails_the_run(tmp_path: Path) -> None:
    backend = FakeBackend({"host_read": RuntimeError("boom")})
    result = run(scenario(tmp_path), "tdx", backend)
    assert result.status == "fail"
    assert result.error == "step 3 (host_read): RuntimeError: boom"
    assert [s.passed for s in result.steps] == [True, True, False, None]
    assert backend.machine is not None and backend.machine.closed


def test_json_shape(tmp_path: Path) -> None:
    backend = FakeBackend({"host_read": Outcome(data=b"\x01\x02")})
    doc = run(scenario(tmp_path), "cca", backend).to_json()
    assert set(doc) >= {"scenario", "file", "platform", "abi", "backend", "passed", "skipped", "steps"}
    step = doc["steps"][2]
    assert set(step) == {"index", "op", "passed", "expect", "outcome"}
    assert set(step["outcome"]) == {"errno", "error_offset", "signal", "data", "exit"}
    assert (step["index"], step["op"], step["expect"], step["outcome"]["data"]) == (
        3,
        "host_read",
        "0102",
        "0102",
    )


def test_guest_request_direction(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        'name = "g"\npages = 1\ninit = "private"\n[[step]]\nop = "guest_request"\noffset = 0\n'
        'size = "4K"\nto = "shared"\n'
    )
    backend = FakeBackend()
    assert run(load(path), "pkvm", backend).passed
    assert backend.machine is not None
    assert backend.machine.calls == [("guest_request", (0, 4096, Direction.TO_SHARED), {})]


def test_a_second_mapping_is_another_process(tmp_path: Path) -> None:
    """``mapping = 1``: the model's second mapping has its own page tables, and a
    to-private conversion removes the page from both (forked_accesses)."""
    path = tmp_path / "m.toml"
    path.write_text(
        'name = "m"\npages = 1\ninit = "shared"\nplatforms = ["sw_protected"]\n'
        '[[step]]\nop = "host_write"\noffset = 0\ndata = "0b"\n'
        '[[step]]\nop = "host_read"\noffset = 0\nsize = 1\nmapping = 1\nexpect = "0b"\n'
        '[[step]]\nop = "convert"\noffset = 0\nsize = "4K"\nto = "private"\npolicy = "preserve"\n'
        '[[step]]\nop = "host_write"\noffset = 0\ndata = "0c"\nmapping = 1\nexpect = "SIGBUS"\n'
        '[[step]]\nop = "host_read"\noffset = 0\nsize = 1\nexpect = "SIGBUS"\n'
    )
    backend = FakeBackend({"host_read": Outcome(data=b"\x0b")})
    run(load(path), "sw_protected", backend)
    assert backend.machine is not None
    reads = [(c[1], c[2]) for c in backend.machine.calls if c[0] == "host_read"]
    assert reads == [((0, 1), {"mapping": 1}), ((0, 1), {})]
    result = run(load(path), "sw_protected", ModelBackend())
    assert result.status == "pass", [f.to_json() for f in result.failures]

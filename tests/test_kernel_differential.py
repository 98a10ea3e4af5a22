"""The model against a kernel that has ``KVM_SET_MEMORY_ATTRIBUTES2``, on generated scenarios.

Each example is one guest_memfd of 1-4 pages on ``sw_protected`` (or, less often, the
default VM) under the revision the kernel implements, and a few operations of every
kind: host and guest reads and writes, conversions with raw ``flags``, ``attributes``,
reserved words and ``error_offset`` on input, punch hole, pins through
``CONFIG_GUP_TEST``, guest requests. Model and kernel must agree on every step: errno,
``error_offset``, signal, exit and the bytes read, except bytes the model marks as
scrambled (``rfc-v5``'s unspecified mode promises nothing about them). A final read of
every page through both views compares the end state. A disagreement is shrunk and
printed as a scenario file whose expectations are the kernel's outcomes.

The number of examples is 500 on ``v8`` and 200 on ``rfc-v5``
(``GUESTMEM_DIFF_EXAMPLES`` overrides it). These tests run inside the test kernels
(``tests/test_vm.py`` boots them); elsewhere they skip with the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from guestmem.backend.base import Outcome
from guestmem.backend.compare import observed
from guestmem.backend.kernel import KernelBackend
from guestmem.backend.model import ModelBackend
from guestmem.ops import (
    Convert,
    GuestRead,
    GuestRequest,
    GuestWrite,
    HostRead,
    HostWrite,
    Operation,
    Pin,
    PunchHole,
    Unpin,
    expectation,
    toml,
)
from guestmem.scenario import load, run
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    PAGE_SIZE,
)
from kvm_support import SERIES, SERIES_REASON, TEST_KERNELS, series

U64 = (1 << 64) - 1


def _examples() -> int:
    if os.environ.get("GUESTMEM_DIFF_EXAMPLES"):
        return int(os.environ["GUESTMEM_DIFF_EXAMPLES"])
    return TEST_KERNELS[SERIES].examples if SERIES in TEST_KERNELS else 0


# --- generation ---------------------------------------------------------------------------------
def _aligned(size: int) -> st.SearchStrategy[int]:
    """Page offsets inside the file, now and then an edge case."""
    pages = size // PAGE_SIZE
    edges = [size, size + PAGE_SIZE, 1, PAGE_SIZE - 1, U64 & ~(PAGE_SIZE - 1)]
    inside = st.integers(0, pages - 1).map(lambda p: p * PAGE_SIZE)
    return st.one_of(inside, inside, inside, st.sampled_from(edges))


def _length(size: int) -> st.SearchStrategy[int]:
    pages = size // PAGE_SIZE
    edges = [0, 100, PAGE_SIZE + 1, U64 & ~(PAGE_SIZE - 1), size + PAGE_SIZE]
    whole = st.integers(1, pages).map(lambda p: p * PAGE_SIZE)
    return st.one_of(whole, whole, whole, st.sampled_from(edges))


def _flags(series: str) -> st.SearchStrategy[int]:
    odd = st.sampled_from([1, 2, 3, 4, 1 << 63])
    if series == "rfc-v5":
        return st.sampled_from([0, 1, 2, 2]) | odd  # unspecified, ZERO, PRESERVE
    return st.just(0) | st.just(0) | st.just(0) | odd


@st.composite
def _convert(draw: st.DrawFn, size: int, series: str) -> Convert:
    offset = draw(_aligned(size))
    length = draw(_length(size))
    attributes = draw(
        st.sampled_from([KVM_MEMORY_ATTRIBUTE_PRIVATE, 0]) | st.sampled_from([1, 1 << 63, 0x18])
        if draw(st.integers(0, 9)) == 0
        else st.sampled_from([KVM_MEMORY_ATTRIBUTE_PRIVATE, 0])
    )
    flags = draw(_flags(series))
    reserved: tuple[int, ...] = ()
    if draw(st.integers(0, 9)) == 0:
        word = draw(st.integers(0, 10))
        reserved = (0,) * word + (draw(st.sampled_from([1, 1 << 63])),)
    error_offset_in = 0 if draw(st.integers(0, 7)) else draw(st.sampled_from([PAGE_SIZE, 1, U64]))
    standard = attributes in (0, KVM_MEMORY_ATTRIBUTE_PRIVATE)
    to = (Direction.TO_PRIVATE if attributes else Direction.TO_SHARED) if standard else None
    return Convert(
        offset,
        length,
        to=to,
        flags=flags,
        attributes=None if standard else attributes,
        reserved=reserved,
        error_offset_in=error_offset_in,
    )


@st.composite
def scenarios(draw: st.DrawFn, series: str) -> dict[str, Any]:
    platform = draw(st.sampled_from(["sw_protected"] * 5 + ["default"]))
    pages = draw(st.integers(1, 4))
    size = pages * PAGE_SIZE
    init = draw(st.sampled_from(["shared", "shared", "private"]))
    if platform == "default":
        init = "shared"  # a default VM has no private memory to start from
    ops: list[Operation] = []
    pinned: tuple[int, int] | None = None
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(
            st.sampled_from(
                ["convert"] * 4
                + ["host_write", "host_read", "guest_write", "guest_read"] * 2
                + ["punch_hole", "pin", "guest_request"]
            )
        )
        if kind == "convert":
            ops.append(draw(_convert(size, series)))
        elif kind.startswith("host"):
            offset = draw(st.integers(0, size + PAGE_SIZE - 1))
            length = draw(st.integers(1, 2 * PAGE_SIZE + 8))
            if kind == "host_write":
                ops.append(HostWrite(offset, draw(_payload(length))))
            else:
                ops.append(HostRead(offset, length))
        elif kind.startswith("guest_") and kind != "guest_request":
            offset = draw(st.integers(0, size - 1))
            length = draw(st.integers(1, min(size - offset, 2 * PAGE_SIZE + 8)))
            if kind == "guest_write":
                ops.append(GuestWrite(offset, draw(_payload(length))))
            else:
                ops.append(GuestRead(offset, length))
        elif kind == "punch_hole":
            ops.append(PunchHole(draw(_aligned(size)), draw(_length(size))))
        elif kind == "pin":
            if pinned is None:  # gup_test holds one pinned range at a time
                first = draw(st.integers(0, pages - 1))
                count = draw(st.integers(1, pages - first))
                pinned = (first * PAGE_SIZE, count * PAGE_SIZE)
                ops.append(Pin(*pinned))
            else:
                ops.append(Unpin(*pinned))
                pinned = None
        else:
            first = draw(st.integers(0, pages - 1))
            count = draw(st.integers(1, pages - first))
            to = draw(st.sampled_from([Direction.TO_PRIVATE, Direction.TO_SHARED]))
            ops.append(GuestRequest(first * PAGE_SIZE, count * PAGE_SIZE, to))
    return {"platform": platform, "pages": pages, "init": init, "ops": ops}


def _payload(length: int) -> st.SearchStrategy[bytes]:
    """``length`` bytes: a short random pattern repeated (cheap to draw and to shrink)."""
    return st.binary(min_size=1, max_size=16).map(lambda b: (b * (length // len(b) + 1))[:length])


# --- running and comparing ----------------------------------------------------------------------
def _finals(pages: int) -> list[Operation]:
    size = pages * PAGE_SIZE
    return [HostRead(0, size), *(GuestRead(p * PAGE_SIZE, PAGE_SIZE) for p in range(pages))]


# --- a disagreement as a scenario file ----------------------------------------------------------
def scenario_toml(case: dict[str, Any], ops: list[Operation], outcomes: list[Outcome], series: str) -> str:
    """A scenario file replaying ``ops`` whose expectations are the kernel's outcomes."""
    head = {
        "name": f"differential_{case['platform']}_{series}",
        "about": f"A disagreement between the model and the {series} kernel, found by "
        "tests/test_kernel_differential.py; expectations are what the kernel did.",
        "platforms": [case["platform"]],
        "abi": series,
        "pages": case["pages"],
        "init": case["init"],
    }
    steps = [{**op.fields(), "expect": expectation(o)} for op, o in zip(ops, outcomes, strict=False)]
    return toml.document({**head, "step": steps})


def run_both(case: dict[str, Any], series: str) -> None:
    flags = GUEST_MEMFD_FLAG_MMAP | (GUEST_MEMFD_FLAG_INIT_SHARED if case["init"] == "shared" else 0)
    size = case["pages"] * PAGE_SIZE
    model = ModelBackend().open(case["platform"], series, size, flags)
    kernel = KernelBackend().open(case["platform"], series, size, flags)
    ops: list[Operation] = [*case["ops"], *_finals(case["pages"])]
    outcomes: list[Outcome] = []
    try:
        for number, op in enumerate(ops, start=1):
            want = op.apply(model)
            got = op.apply(kernel)
            outcomes.append(got)
            if observed(got, want) != observed(want, want):
                text = scenario_toml(case, ops[:number], outcomes, series)
                note(text)
                raise AssertionError(
                    f"step {number} ({op.label()}): kernel {observed(got, want)} "
                    f"!= model {observed(want, want)}\n"
                    f"--- scenario (expectations are the kernel's) ---\n{text}"
                )
    finally:
        model.close()
        kernel.close()


def _settings() -> settings:
    return settings(
        max_examples=max(_examples(), 1),
        deadline=None,
        database=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=list(HealthCheck),
    )


@pytest.mark.timeout(3000)
@pytest.mark.kvm
@pytest.mark.skipif(SERIES is None, reason=SERIES_REASON)
@_settings()
@given(scenarios(SERIES or "v8"))
def test_model_and_kernel_agree(case: dict[str, Any]) -> None:
    run_both(case, series())
    _count_example()


_RAN = {"examples": 0}


def _count_example() -> None:
    """Record how many examples ran, for the boot that collects it (tests/test_vm.py)."""
    _RAN["examples"] += 1
    scratch = os.environ.get("GUESTMEM_SCRATCH")
    if scratch:
        with open(os.path.join(scratch, "differential.json"), "w") as out:
            json.dump({"series": SERIES, "examples": _RAN["examples"]}, out)


def test_a_disagreement_prints_as_a_scenario_that_replays(tmp_path: Path) -> None:
    """The printed file loads, and replaying it where the outcomes came from passes."""
    to_private, to_shared = Direction.TO_PRIVATE, Direction.TO_SHARED
    ops: list[Operation] = [
        HostWrite(10, b"\x41" * 20),
        Convert(0, PAGE_SIZE, to=to_private, flags=0, error_offset_in=PAGE_SIZE),
        HostRead(0, 8),
        Convert(PAGE_SIZE, PAGE_SIZE, to=to_shared, flags=1 << 63, reserved=(0, 0, 7)),
        Pin(PAGE_SIZE, PAGE_SIZE),
        Convert(0, 2 * PAGE_SIZE, to=to_private, flags=0),
        GuestRequest(0, PAGE_SIZE, to_shared),
        GuestRead(8, 16),
    ]
    case: dict[str, Any] = {"platform": "sw_protected", "pages": 2, "init": "shared", "ops": ops}
    shared = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
    model = ModelBackend().open("sw_protected", "v8", 2 * PAGE_SIZE, shared)
    outcomes = [op.apply(model) for op in ops]
    model.close()
    path = tmp_path / "disagreement.toml"
    path.write_text(scenario_toml(case, ops, outcomes, "v8"))
    scenario = load(path)
    assert [s.operation for s in scenario.steps] == ops
    result = run(scenario, "sw_protected", ModelBackend(), "v8")
    assert result.passed, [(f.step.index, f.outcome) for f in result.failures]
    assert [expectation(o) for o in outcomes][2:6] == ["SIGBUS", "EINVAL@none", "ok", "EAGAIN@0x1000"]

"""The kernel backend against the model backend on the default VM, plus its bookkeeping,
skip reasons and resource hygiene.

The differential test runs random shared-memory scenarios on both backends and requires
identical outcomes: bytes, errno and signal. Guest accesses are drawn only for a
guest_memfd created ``MMAP | INIT_SHARED`` (the only one the emulated guest reaches here,
kvm-here.md §1); host accesses, hole punches and creation arguments cover every flag.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guestmem.backend import Unavailable
from guestmem.backend.base import Machine, Outcome
from guestmem.backend.kernel import HOST_SLACK, KernelBackend
from guestmem.backend.model import ModelBackend
from guestmem.errors import IoctlError
from guestmem.spec.terms import Direction
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, PAGE_SIZE
from kvm_support import requires_guest_memfd

pytestmark = requires_guest_memfd
SHARED = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
U64 = (1 << 64) - 1

Op = tuple[Any, ...]


def _offsets(size: int, past: int) -> st.SearchStrategy[int]:
    """Offsets biased to page boundaries, up to ``past`` bytes beyond the end."""
    edge = st.integers(0, (size + past) // PAGE_SIZE).flatmap(
        lambda p: st.sampled_from([p * PAGE_SIZE, max(p * PAGE_SIZE - 1, 0), p * PAGE_SIZE + 1])
    )
    return st.one_of(edge, st.integers(0, size + past - 1))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, list[Op]]:
    pages = draw(st.integers(1, 4))
    size = pages * PAGE_SIZE
    flags = draw(st.sampled_from([SHARED, SHARED, SHARED, GUEST_MEMFD_FLAG_MMAP, 0]))
    kinds = ["host_write", "host_read", "punch_hole"]
    if flags == SHARED:
        kinds += ["guest_write", "guest_read", "guest_write", "guest_read"]
    ops: list[Op] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(kinds))
        if kind.startswith("host"):
            offset = draw(_offsets(size, 3 * PAGE_SIZE))
            length = draw(st.integers(0, 2 * PAGE_SIZE + 8))
            if kind == "host_write":
                ops.append((kind, offset, draw(st.binary(min_size=length, max_size=length))))
            else:
                ops.append((kind, offset, length))
        elif kind.startswith("guest"):
            offset = draw(_offsets(size, 0).filter(lambda o: o < size))
            length = draw(st.integers(0, min(size - offset, 2 * PAGE_SIZE + 8)))
            if kind == "guest_write":
                ops.append((kind, offset, draw(st.binary(min_size=length, max_size=length))))
            else:
                ops.append((kind, offset, length))
        else:
            offset = draw(st.sampled_from([0, PAGE_SIZE, 2 * PAGE_SIZE, size, size + PAGE_SIZE, 7]))
            length = draw(st.sampled_from([PAGE_SIZE, 2 * PAGE_SIZE, size, 0, 100, 5 * PAGE_SIZE]))
            ops.append((kind, offset, length))
    return size, flags, ops


def apply(machine: Machine, op: Op) -> Outcome:
    kind, *args = op
    result: Outcome = getattr(machine, kind)(*args)
    return result


def observable(outcome: Outcome) -> tuple[Any, ...]:
    return (outcome.errno, outcome.error_offset, outcome.signal, outcome.data, outcome.exit, outcome.skipped)


def open_both(size: int, flags: int) -> tuple[Machine, Machine]:
    return ModelBackend().open("default", "v8", size, flags), KernelBackend().open(
        "default", "v8", size, flags
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_differential_shared_memory(scenario: tuple[int, int, list[Op]]) -> None:
    size, flags, ops = scenario
    model, kernel = open_both(size, flags)
    try:
        for step, op in enumerate(ops):
            want, got = apply(model, op), apply(kernel, op)
            assert observable(got) == observable(want), f"step {step}: {op[0]}{op[1:3]}"
        if flags == SHARED:  # the whole file, through both views, agrees at the end
            for kind in ("host_read", "guest_read"):
                assert observable(apply(kernel, (kind, 0, size))) == observable(apply(model, (kind, 0, size)))
    finally:
        model.close()
        kernel.close()


SIZES = [0, 100, PAGE_SIZE + 1, (-4096) & U64, 1 << 63]
FLAGS = [1 << 2, 1 << 3, 1 << 63, 1 << 2 | SHARED]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(SIZES) | st.integers(1, 1 << 20), st.sampled_from([*FLAGS, SHARED, 0, 1]))
def test_differential_creation_arguments(size: int, flags: int) -> None:
    def create(backend: ModelBackend | KernelBackend) -> str | None:
        try:
            backend.open("default", "v8", size, flags).close()
        except IoctlError as err:
            return err.name
        return None

    assert create(KernelBackend()) == create(ModelBackend())


def test_creation_errors_are_einval() -> None:
    for size in SIZES:
        with pytest.raises(IoctlError) as info:
            KernelBackend().open("default", "seed", size, SHARED)
        assert info.value.code == errno.EINVAL
    for flags in FLAGS:
        with pytest.raises(IoctlError) as info:
            KernelBackend().open("default", "seed", PAGE_SIZE, flags)
        assert info.value.code == errno.EINVAL


# --- what the kernel backend cannot do is skipped with the reason -----------------------------
@pytest.mark.parametrize("platform", ["pkvm", "cca"])
def test_arm64_platforms_are_unavailable(platform: str) -> None:
    with pytest.raises(Unavailable, match="not an x86 VM type"):
        KernelBackend().open(platform, "seed", PAGE_SIZE, SHARED)


@pytest.mark.parametrize("platform", ["sw_protected", "tdx", "snp"])
def test_x86_platforms_follow_vm_types(platform: str) -> None:
    from guestmem.kvm import Kvm
    from guestmem.spec import platforms

    with Kvm() as kvm:
        offered = kvm.vm_types() & (1 << (platforms.get(platform).vm_type or 0))
    if offered:
        KernelBackend().open(platform, "v8", PAGE_SIZE, GUEST_MEMFD_FLAG_MMAP).close()
    else:
        with pytest.raises(Unavailable, match="KVM_CAP_VM_TYPES"):
            KernelBackend().open(platform, "v8", PAGE_SIZE, SHARED)


def test_missing_device_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="/dev/missing-kvm"):
        KernelBackend("/dev/missing-kvm").open("default", "seed", PAGE_SIZE, SHARED)


def test_conversion_is_skipped_with_the_kernels_reason() -> None:
    with KernelBackend().open("default", "v8", 2 * PAGE_SIZE, SHARED) as machine:
        if machine.facts.conversion_ioctl:
            pytest.skip("this kernel has KVM_SET_MEMORY_ATTRIBUTES2")
        outcome = machine.convert(0, PAGE_SIZE, 8)
        assert outcome.skipped is not None and "ENOTTY" in outcome.skipped
        assert not outcome.ok
        # nothing changed: the page is still shared
        assert machine.host_write(0, b"still shared").ok
        assert machine.guest_read(0, 12).data == b"still shared"


def test_pin_without_gup_test_is_skipped() -> None:
    if os.path.exists("/sys/kernel/debug/gup_test"):
        pytest.skip("CONFIG_GUP_TEST is present")
    with KernelBackend().open("default", "seed", PAGE_SIZE, SHARED) as machine:
        for outcome in (machine.pin(0, PAGE_SIZE), machine.unpin(0, PAGE_SIZE)):
            assert outcome.skipped is not None and "CONFIG_GUP_TEST" in outcome.skipped


def test_guest_request_is_issued_or_skipped_with_reason() -> None:
    with KernelBackend().open("default", "seed", 2 * PAGE_SIZE, SHARED) as machine:
        outcome = machine.guest_request(0, PAGE_SIZE, Direction.TO_SHARED)
        if machine.facts.hypercall_exit.get("works"):
            assert outcome.exit is not None and outcome.exit["reason"] == "HYPERCALL"
        else:
            assert outcome.skipped is not None and "KVM_EXIT_HYPERCALL" in outcome.skipped


def test_private_guest_access_is_skipped_on_the_default_vm() -> None:
    with KernelBackend().open("default", "seed", PAGE_SIZE, SHARED) as machine:
        outcome = machine.guest_read(0, 4, access="private")
        assert outcome.skipped is not None and "no private memory" in outcome.skipped
        assert machine.guest_read(0, 4, access="shared").data == bytes(4)


def test_launch_mirrors_the_model() -> None:
    model, kernel = open_both(PAGE_SIZE, SHARED)
    try:
        for _ in range(3):
            assert observable(kernel.launch()) == observable(model.launch())
        assert kernel.launch().errno == "EINVAL"
    finally:
        model.close()
        kernel.close()


def test_outside_the_memslot_is_bad_input_on_both() -> None:
    model, kernel = open_both(PAGE_SIZE, SHARED)
    try:
        for machine in (model, kernel):
            with pytest.raises(ValueError, match="outside the memslot"):
                machine.guest_read(PAGE_SIZE - 1, 2)
    finally:
        model.close()
        kernel.close()


# --- resource hygiene ---------------------------------------------------------------------------
def _resources() -> tuple[list[str], list[str]]:
    fds = sorted(os.listdir("/proc/self/fd"))
    with open("/proc/self/maps") as maps:
        lines = [line.split(None, 5)[-1].strip() if line.count(" ") >= 5 else "" for line in maps]
    return fds, [name for name in lines if "kvm" in name or "gmem" in name]


def _count_maps() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


@pytest.mark.slow
def test_thousand_machines_leave_nothing_behind() -> None:
    backend = KernelBackend()
    with backend.open("default", "seed", PAGE_SIZE, SHARED) as warm:  # facts probe, imports
        warm.guest_write(0, b"warm")
        warm.host_read(0, 4)
    fds, named = _resources()
    maps = _count_maps()
    for cycle in range(1000):
        with backend.open("default", "seed", 2 * PAGE_SIZE, SHARED) as machine:
            if cycle % 10 == 0:
                assert machine.guest_write(PAGE_SIZE - 2, b"cycle").ok
            if cycle % 100 == 0:
                assert machine.host_read(PAGE_SIZE - 2, 5).data == b"cycle"
                assert machine.host_read(2 * PAGE_SIZE + HOST_SLACK // 2, 1).signal == "SIGBUS"
    assert _resources() == (fds, named)
    assert _count_maps() == maps

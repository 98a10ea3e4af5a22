"""The kernel backend under stress: bounded host accesses, one answer past the end and
past 64 GiB on both backends, runs cut at their time limit, and a guest that survives
any number of stops (real KVM with guest_memfd; skipped with the reason elsewhere)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from guestmem.backend.base import Machine
from guestmem.backend.kernel import HOST_SLACK, KernelBackend
from guestmem.backend.model import ModelBackend
from guestmem.cli import main
from guestmem.kvm.vcpu import GuestTimeout
from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, PAGE_SIZE
from kvm_support import requires_guest_memfd

pytestmark = [*requires_guest_memfd, pytest.mark.timeout(120)]

SHARED = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED


def _both(size: int) -> list[Machine]:
    return [
        ModelBackend().open("default", "seed", size, SHARED),
        KernelBackend().open("default", "seed", size, SHARED),
    ]


def test_a_1_tib_host_read_streams_and_faults_past_the_end() -> None:
    """The access is cut into bounded requests: a 1 TiB read of a one-page file costs one
    request's memory and ends in SIGBUS at the first page past the end (under a 1 GiB
    address-space limit, so a list of every page would fail)."""
    code = textwrap.dedent(
        """
        import resource
        from guestmem.backend.kernel import KernelBackend
        from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED as SHARED, GUEST_MEMFD_FLAG_MMAP as MMAP
        machine = KernelBackend().open("default", "seed", 4096, MMAP | SHARED)
        machine.host_write(0, b"A" * 4096)
        with open("/proc/self/statm") as statm:
            used = int(statm.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.RLIM_INFINITY))
        read = machine.host_read(0, 1 << 40)
        write = machine.host_write(4096 - 2, b"BB" * (1 << 20))
        print(read.signal, write.signal, machine.host_read(4094, 2).data)
        machine.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["SIGBUS", "SIGBUS", "b'BB'"]


@pytest.mark.parametrize("past", [0, HOST_SLACK // 2, HOST_SLACK, HOST_SLACK + PAGE_SIZE, 1 << 40])
def test_host_access_past_the_end_is_sigbus_on_both_backends(past: int) -> None:
    """However far past the end (also beyond the mapping's slack), a host access faults
    with SIGBUS, and the pages before the end are done, as on the model."""
    for machine in _both(2 * PAGE_SIZE):
        try:
            assert machine.host_read(2 * PAGE_SIZE + past, 1).signal == "SIGBUS", machine.backend
            assert machine.host_write(2 * PAGE_SIZE + past, b"x").signal == "SIGBUS", machine.backend
            spanning = machine.host_write(PAGE_SIZE, b"y" * (PAGE_SIZE + min(past, 2 * HOST_SLACK) + 1))
            assert spanning.signal == "SIGBUS", machine.backend
            assert machine.host_read(PAGE_SIZE, 2).data == b"yy", machine.backend
        finally:
            machine.close()


def test_guest_access_past_64_gib_has_one_answer_on_both_backends() -> None:
    """A guest reaches any page of the guest_memfd on both backends (the kernel backend's
    guest maps all of it), here past the 64 GiB that once bounded it."""
    size = (64 << 30) + 2 * PAGE_SIZE
    for machine in _both(size):
        try:
            machine.launch()
            assert machine.guest_write((64 << 30) - 2, b"ok").ok, machine.backend
            assert machine.guest_write(size - 1, b"Z").ok, machine.backend
            assert machine.guest_read((64 << 30) - 2, 2).data == b"ok", machine.backend
            assert machine.guest_read(size - 2, 2).data == b"\x00Z", machine.backend
            with pytest.raises(ValueError, match="outside the memslot"):
                machine.guest_read(size - 1, 2)
        finally:
            machine.close()


def test_a_stopped_guest_reuses_its_vcpu() -> None:
    """KVM frees a vCPU only with its VM: 1100 stopped commands in one VM (more than the
    1024 vCPUs a VM may have) leave one vCPU, and the guest still works."""
    machine = KernelBackend().open("default", "seed", PAGE_SIZE, SHARED)
    try:
        assert machine.guest_write(0, b"live").ok
        guest = machine.guest
        assert guest is not None
        for _ in range(1100):
            with pytest.raises(GuestTimeout):
                guest.spin(0.001)
        assert len(machine.vm.vcpus) == 1
        assert machine.guest_read(0, 4).data == b"live"
    finally:
        machine.close()


def test_timeout_cuts_a_slow_kernel_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Megabyte guest reads, one KVM_RUN per page: --timeout ends the run within about a
    guest command of the limit, reported as timed out (exit 1)."""
    steps = '[[step]]\nop = "guest_read"\noffset = 0\nsize = "1M"\n' * 200
    path = tmp_path / "slow.toml"
    path.write_text('name = "slow"\nplatforms = ["default"]\npages = 256\ninit = "shared"\n' + steps)
    start = time.monotonic()
    code = main(["run", str(path), "--backend", "kvm", "--timeout", "0.3", "--format", "json"])
    elapsed = time.monotonic() - start
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert code == 1
    assert run["error"].startswith("timed out: the run took more than 0.3 s (--timeout)")
    assert elapsed < 20
    assert sum(s["outcome"] is not None for s in run["steps"]) < 200


def test_deadline_bounds_a_runaway_guest_command() -> None:
    """A guest command never runs past the run's deadline (nor past the guest's own limit)."""
    machine = KernelBackend().open("default", "seed", PAGE_SIZE, SHARED)
    try:
        machine.deadline = time.monotonic() + 0.2
        assert machine.guest_read(0, 1).ok
        guest = machine.guest
        assert guest is not None and 0 < guest.limit <= 0.2
        start = time.monotonic()
        with pytest.raises(GuestTimeout):
            guest.spin(guest.limit)
        assert time.monotonic() - start < 2
    finally:
        machine.close()

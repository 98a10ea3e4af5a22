"""``guestmem stress`` on the model backend: the machine under test is a model with a
planted bug, the oracle the true model, and each invariant must catch its bug; the
schedules are the seed's; the kernel-log reader finds every kind of report in a fake log;
fault injection arms the debugfs knobs (a fake debugfs here).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from guestmem.backend.base import Outcome
from guestmem.backend.model import ModelBackend, ModelMachine
from guestmem.cli import main
from guestmem.errors import IoctlError
from guestmem.kvm import syscalls
from guestmem.scenario import load, run
from guestmem.stress.engine import INVARIANTS, Action, Report, Settings, Stress, Violation, reproducer_toml
from guestmem.stress.inject import Injector
from guestmem.stress.kmsg import find_splats
from guestmem.stress.poison import Injection, MemoryErrors
from guestmem.stress.schedule import HOST_OPS, VCPU_OPS, Op, first_ops
from guestmem.uapi.kvm import KVM_SET_MEMORY_ATTRIBUTES2, PAGE_SIZE

ROOT = Path(__file__).resolve().parent.parent


class Planted(ModelBackend):
    """A model backend whose machines carry one bug (``machine`` subclasses ModelMachine)."""

    name = "planted"

    def __init__(self, machine: type[ModelMachine]) -> None:
        super().__init__()
        self.machine = machine

    def open(self, platform: str, abi: str, size: int, flags: int) -> ModelMachine:
        return self.machine(platform, abi, size, flags)


class ReadsPrivate(ModelMachine):
    """A host read of a private page returns zeros instead of faulting."""

    def host_read(self, offset: int, size: int, mapping: int = 0) -> Outcome:
        got = super().host_read(offset, size, mapping)
        return Outcome(data=bytes(size)) if got.signal else got


class HalfConverts(ModelMachine):
    """A conversion that fails has converted the pages before the failing one."""

    def convert(self, offset: int, size: int, attributes: int, flags: int = 0, **kw: Any) -> Outcome:
        got = super().convert(offset, size, attributes, flags, **kw)
        if got.errno == "EAGAIN" and got.error_offset is not None and got.error_offset > offset:
            super().convert(offset, got.error_offset - offset, attributes, flags)
        return got


class OffByOnePage(ModelMachine):
    """``error_offset`` one page past the page that failed."""

    def convert(self, offset: int, size: int, attributes: int, flags: int = 0, **kw: Any) -> Outcome:
        got = super().convert(offset, size, attributes, flags, **kw)
        if got.error_offset is not None:
            got.error_offset += PAGE_SIZE
        return got


class LosesHostWrites(ModelMachine):
    """A host write reports success but changes nothing."""

    def host_write(self, offset: int, data: bytes, mapping: int = 0) -> Outcome:
        got = super().host_read(offset, len(data), mapping)
        return Outcome(signal=got.signal)


class GuestReadsZeros(ModelMachine):
    """The guest reads zeros wherever it reads (the host sees the right bytes)."""

    def guest_read(self, offset: int, size: int, access: str | None = None) -> Outcome:
        got = super().guest_read(offset, size, access)
        return Outcome(data=bytes(size)) if got.data is not None else got


HANG = threading.Event()


class HangsOnPunch(ModelMachine):
    """A punch hole that never returns (until the test lets it go)."""

    def punch_hole(self, offset: int, size: int) -> Outcome:
        HANG.wait(60)
        return super().punch_hole(offset, size)


def stress(
    machine: type[ModelMachine] | None, seed: int = 1, operations: int = 400, **kw: Any
) -> tuple[Stress, Report]:
    backend = ModelBackend() if machine is None else Planted(machine)
    settings = Settings(seed=seed, seconds=None, operations=operations, **{"minimize_seconds": 30, **kw})
    runner = Stress(settings, backend)
    return runner, runner.run()


# --- schedules ----------------------------------------------------------------------------------
def test_a_seed_gives_each_thread_the_same_schedule() -> None:
    shape = {"vcpus": 1, "targets": 2, "pages": 16}
    for thread in range(5):
        assert first_ops(7, thread, 200, **shape) == first_ops(7, thread, 200, **shape)
    assert first_ops(7, 1, 50, **shape) != first_ops(8, 1, 50, **shape)
    assert first_ops(7, 1, 50, **shape) != first_ops(7, 2, 50, **shape)


def test_schedules_draw_every_kind_of_operation() -> None:
    shape = {"vcpus": 1, "targets": 2, "pages": 16}
    host = {op.kind for op in first_ops(3, 1, 2000, **shape)}
    assert host == set(HOST_OPS)
    vcpu = first_ops(3, 0, 500, **shape)
    assert {op.kind for op in vcpu} == set(VCPU_OPS)
    assert {op.target for op in vcpu} == {0}  # a vCPU drives its own guest_memfd
    converts = [op for op in first_ops(3, 1, 2000, **shape) if op.kind == "convert"]
    assert {op.to for op in converts} == {"private", "shared"}
    assert {op.inject for op in converts} == {"", "failslab", "fail_page_alloc"}
    assert any(op.size > PAGE_SIZE for op in converts)  # ranges, which may mix attributes
    for op in first_ops(3, 1, 2000, **shape):
        assert op.offset >= 0 and op.offset + op.size <= 16 * PAGE_SIZE


# --- the true model passes ----------------------------------------------------------------------
def test_the_model_against_itself_is_clean() -> None:
    _runner, report = stress(None, operations=300)
    assert report.violation is None, report.violation.describe()
    assert report.operations == 5 * 300
    kinds = set(report.kinds)
    assert {"convert", "host_read", "host_write", "guest_read", "guest_write", "punch_hole"} <= kinds
    assert {"pin", "unpin", "splice", "unsplice", "reopen"} <= kinds
    assert kinds & {"delete_memslot", "restore_memslot"}
    for invariant in ("private_host_access", "failed_conversion_atomic", "error_offset", "shared_bytes"):
        assert report.checks[invariant] > 0, invariant
    assert report.checks["no_hang"] == report.operations


# --- each invariant catches its planted bug -----------------------------------------------------
@pytest.mark.parametrize(
    ("machine", "invariant"),
    [
        (ReadsPrivate, "private_host_access"),
        (HalfConverts, "failed_conversion_atomic"),
        (OffByOnePage, "error_offset"),
        (LosesHostWrites, "shared_bytes"),  # no vCPU below: the guest would see it too
        (GuestReadsZeros, "model_agreement"),
    ],
)
def test_a_planted_bug_is_caught_by_its_invariant(machine: type[ModelMachine], invariant: str) -> None:
    vcpus = 0 if machine is LosesHostWrites else 1
    _runner, report = stress(machine, operations=400, vcpus=vcpus)
    violation = report.violation
    assert violation is not None and violation.invariant == invariant, violation and violation.describe()
    assert violation.action is not None
    assert report.last  # each thread's last operations, for the report
    # what the failing guest_memfd went through, every thread's operations, ending with it
    history = report.to_json()["target_history"]
    assert history and history[-1].startswith(violation.action.describe() + ": ")
    assert all(f"gmem{violation.action.target} " in line for line in history)
    # a sequential replay reproduces it, and its scenario file fails on the planted machine
    # where the model passes it
    assert report.reproducer and report.reproducer[-1] == violation.action
    assert report.reproducer_toml is not None


def test_the_reproducer_is_a_scenario_the_bug_fails(tmp_path: Path) -> None:
    _runner, report = stress(ReadsPrivate, operations=400)
    assert report.reproducer_toml is not None
    path = tmp_path / "repro.toml"
    path.write_text(report.reproducer_toml)
    scenario = load(path)
    assert run(scenario, "sw_protected", ModelBackend(), "v8").passed
    assert not run(scenario, "sw_protected", Planted(ReadsPrivate), "v8").passed
    assert len(scenario.steps) <= 6  # shrunk to the few steps that matter


def test_the_reproducer_keeps_every_action_as_a_step(tmp_path: Path) -> None:
    """Making the memslot again is a step too: without it the guest's next access would
    be an MMIO exit in the file where the run had a memory access."""
    op = Op(thread=1, index=0, kind="memslot", target=0)
    read = Op(thread=0, index=1, kind="guest_read", target=0, offset=0x40, size=8)
    actions = [
        Action(op, "delete_memslot", 0, 0),
        Action(op, "restore_memslot", 0, 0),
        Action(read, "guest_read", 0x40, 8),
    ]
    settings = Settings(seed=1, seconds=None, operations=1)
    violation = Violation("shared_bytes", "planted", actions[-1])
    path = tmp_path / "repro.toml"
    path.write_text(reproducer_toml(actions, settings, violation))
    scenario = load(path)
    assert [step.operation.name for step in scenario.steps] == [
        "delete_memslot",
        "restore_memslot",
        "guest_read",
    ]
    result = run(scenario, "sw_protected", ModelBackend(), "v8")
    last = result.steps[-1].outcome
    assert result.passed and last is not None and last.data == bytes(8)  # memory, not MMIO


def test_shrinking_keeps_to_its_time() -> None:
    """A replay stops at the deadline (a long history replays for minutes on a kernel):
    with none left the report has no reproducer rather than a late one."""
    runner, report = stress(ReadsPrivate, operations=400, minimize_seconds=0.0)
    assert report.violation is not None and report.reproducer is None
    assert runner.replay(runner.sequence_for(report.violation), time.monotonic() - 1) is None


def test_a_failing_seed_replays_the_same_schedule() -> None:
    """Two runs of one seed: every thread ran a prefix of the seed's schedule, the same one."""
    one, first = stress(ReadsPrivate, seed=11, operations=400)
    two, second = stress(ReadsPrivate, seed=11, operations=400)
    assert first.violation is not None and second.violation is not None
    assert first.violation.invariant == second.violation.invariant == "private_host_access"
    shape = {"vcpus": 1, "targets": 2, "pages": 16}
    for runner in (one, two):
        for thread in range(5):
            ran = [a.op for _t, _g, a, _answer in runner.history if a.op.thread == thread]
            ran = list(dict.fromkeys(ran))  # an unpin and its pin are one drawn op
            assert ran == first_ops(11, thread, len(ran), **shape)


def test_an_operation_past_its_limit_is_a_hang() -> None:
    HANG.clear()
    try:
        _runner, report = stress(HangsOnPunch, operations=400, op_limit=0.5)
    finally:
        HANG.set()
    assert report.violation is not None and report.violation.invariant == "no_hang"
    assert report.violation.action is not None and report.violation.action.kind == "punch_hole"
    assert "limit 0.5 s" in report.violation.message


class FakeLog:
    """A kernel log that logs ``text`` at its ``at``-th read."""

    unavailable: str | None = None

    def __init__(self, text: str, at: int = 2) -> None:
        self.text, self.at, self.reads = text, at, 0

    def read(self) -> str:
        self.reads += 1
        return self.text if self.reads == self.at else ""

    def close(self) -> None:
        pass


def test_a_kernel_report_during_the_run_fails_it() -> None:
    log = FakeLog(SPLATS["KASAN"])
    runner = Stress(Settings(seed=1, seconds=30, operations=None), ModelBackend(), log=log)
    report = runner.run()
    assert report.violation is not None and report.violation.invariant == "kernel_log"
    assert [s.kind for s in report.violation.splats] == ["KASAN"]
    assert report.seconds < 30  # it stopped the run


def test_a_kernel_report_after_the_run_fails_it() -> None:
    log = FakeLog(SPLATS["lockdep"], at=10**9)
    log.read = lambda: SPLATS["lockdep"]  # type: ignore[method-assign]
    runner = Stress(Settings(seed=1, seconds=None, operations=5), ModelBackend(), log=log)
    report = runner.run()
    assert report.violation is not None and report.violation.invariant == "kernel_log"


# --- the kernel-log reader ----------------------------------------------------------------------
SPLATS = {
    "KASAN": """[  101.5] ==================================================================
[  101.5] BUG: KASAN: slab-use-after-free in kvm_gmem_release+0x1a/0x2b0
[  101.5] Read of size 8 at addr ffff888004a1b2c0 by task python3/311
[  101.5] Call Trace:
[  101.5]  kvm_gmem_release+0x1a/0x2b0
[  101.5] ==================================================================""",
    "KFENCE": """[   12.0] BUG: KFENCE: out-of-bounds read in kvm_gmem_get_folio+0x40/0x90
[   12.0] Out-of-bounds read at 0x0000000012345678""",
    "lockdep": """[  200.1] ======================================================
[  200.1] WARNING: possible circular locking dependency detected
[  200.1] 7.2.13 #1 Not tainted
[  200.1] ------------------------------------------------------
[  200.1] python3/412 is trying to acquire lock:
[  200.1] ffff8880 (&mapping->invalidate_lock){++++}-{4:4}, at: kvm_gmem_fault+0x30/0x100""",
    "WARNING": """[   55.2] ------------[ cut here ]------------
[   55.2] WARNING: CPU: 1 PID: 300 at virt/kvm/guest_memfd.c:412 kvm_gmem_convert+0x99/0x200
[   55.2] Modules linked in:
[   55.2] ---[ end trace 0000000000000000 ]---""",
    "BUG": """[   77.0] kernel BUG at mm/filemap.c:1540!
[   77.0] Oops: invalid opcode: 0000 [#1] SMP KASAN""",
    "RCU stall": """[  300.0] rcu: INFO: rcu_preempt self-detected stall on CPU
[  300.0] rcu: \t1-....: (21002 ticks this GP)""",
    "hung task": """[  480.0] INFO: task python3:512 blocked for more than 120 seconds.
[  480.0]       Not tainted 7.2.13 #1""",
}
QUIET = """[    0.000000] Linux version 7.2.13 (root@build) #1 SMP
[    1.2] kvm_amd: Nested Paging enabled
[    3.4] Memory failure: 0x12345: Sending SIGBUS to python3:311 due to hardware memory corruption
[    3.4] Injecting memory failure for pfn 0x12345 at process virtual address 0x7f0000000000
[    5.0] KernelAddressSanitizer initialized (generic)
[    5.1] RCU lockdep checking is enabled."""


@pytest.mark.parametrize("kind", list(SPLATS))
def test_each_kind_of_kernel_report_is_found(kind: str) -> None:
    found = find_splats(QUIET + "\n" + SPLATS[kind] + "\n" + QUIET)
    assert [s.kind for s in found] == [kind]
    assert found[0].text.startswith(found[0].line)


def test_a_quiet_log_has_no_report() -> None:
    assert find_splats(QUIET) == []


def test_reports_are_found_one_by_one() -> None:
    found = find_splats("\n".join(SPLATS.values()))
    assert [s.kind for s in found] == list(SPLATS)


# --- fault injection ----------------------------------------------------------------------------
def test_injection_arms_the_knobs_for_this_thread_only(tmp_path: Path) -> None:
    debugfs, tasks = tmp_path / "debug", tmp_path / "task"
    for kind in ("failslab", "fail_page_alloc"):
        (debugfs / kind).mkdir(parents=True)
        for knob in ("task-filter", "probability", "interval", "times", "ignore-gfp-wait", "verbose"):
            (debugfs / kind / knob).write_text("0\n")
    (debugfs / "fail_page_alloc" / "min-order").write_text("1\n")
    (debugfs / "fail_page_alloc" / "ignore-gfp-highmem").write_text("N\n")
    mark = tasks / str(threading.get_native_id()) / "make-it-fail"
    mark.parent.mkdir(parents=True)
    mark.write_text("0")
    injector = Injector(str(debugfs), str(tasks))
    assert injector.available == ["failslab", "fail_page_alloc"] and injector.reason is None
    seen: dict[str, str] = {}

    def call(fails: bool) -> Callable[[int | None], str]:
        def inner(fd: int | None) -> str:
            assert fd is not None
            seen.update({p.name: p.read_text() for p in (debugfs / "fail_page_alloc").iterdir()})
            os.pwrite(fd, b"1", 0)
            seen["mark"] = mark.read_text()
            if fails:  # the kernel counts ``times`` down when it fails an allocation
                (debugfs / "fail_page_alloc" / "times").write_text("0\n")
            os.pwrite(fd, b"0", 0)
            return "done"

        return inner

    assert injector.during("fail_page_alloc", call(True)) == ("done", True)
    assert seen["mark"] == "1" and mark.read_text() == "0"  # the call's fd is this thread's mark
    assert (seen["task-filter"], seen["probability"], seen["times"]) == ("Y", "100", "1")
    assert (seen["ignore-gfp-wait"], seen["min-order"], seen["ignore-gfp-highmem"]) == ("N", "0", "Y")
    assert (debugfs / "fail_page_alloc" / "times").read_text() == "0"  # disarmed afterwards
    assert injector.during("fail_page_alloc", call(False)) == ("done", False)
    assert injector.injected == {"failslab": 0, "fail_page_alloc": 1}


def test_the_thread_is_unmarked_without_opening_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the thread is marked and ``times`` is not used up, the kernel fails the
    thread's next allocation, and opening a file allocates: a call that allocated nothing
    must still be able to unmark the thread (seen on v8-debug: ENOMEM opening
    ``make-it-fail``, stress seed 171527579)."""
    debugfs, tasks = tmp_path / "debug", tmp_path / "task"
    (debugfs / "failslab").mkdir(parents=True)
    (debugfs / "failslab" / "times").write_text("0\n")
    mark = tasks / str(threading.get_native_id()) / "make-it-fail"
    mark.parent.mkdir(parents=True)
    mark.write_text("0")
    real_open, real_builtin_open = os.open, builtins.open

    def allocation() -> None:  # what the kernel does to an allocation of this thread
        armed = real_builtin_open(debugfs / "failslab" / "times").read().strip() != "0"
        if armed and real_builtin_open(mark).read().strip() == "1":
            raise OSError(12, "Cannot allocate memory")

    def kernel_open(path: Any, flags: int, *args: Any) -> int:
        allocation()
        return real_open(path, flags, *args)

    def kernel_builtin_open(path: Any, *args: Any, **kw: Any) -> Any:
        allocation()
        return real_builtin_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", kernel_open)
    monkeypatch.setattr(builtins, "open", kernel_builtin_open)
    injector = Injector(str(debugfs), str(tasks))
    read, write = os.pipe()
    try:
        count = bytearray(4)
        nothing = injector.during(
            "failslab", lambda mark_fd: syscalls.ioctl_marked(read, termios.FIONREAD, count, mark_fd)
        )
        assert nothing == (0, False) and count == bytes(4)
    finally:
        for fd in (read, write):
            os.close(fd)
    assert mark.read_text() == "0"


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    for fd in (read, write):
        os.close(fd)


def test_a_marked_ioctl_marks_the_thread_around_it_alone(pipe: tuple[int, int], tmp_path: Path) -> None:
    """The mark is 1 for the ioctl and 0 after it; the ioctl writes its buffer in place.
    (With ``O_APPEND``, Linux's ``pwrite`` appends: the file keeps every write in order.)"""
    read, write = pipe
    os.write(write, b"abc")
    mark = os.open(tmp_path / "make-it-fail", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    count = bytearray(4)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        assert syscalls.ioctl_marked(read, termios.FIONREAD, count, mark) == 0
    finally:
        os.close(mark)
    assert int.from_bytes(count, sys.byteorder) == 3
    assert (tmp_path / "make-it-fail").read_bytes() == b"10"
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before  # the signal mask is restored


def test_a_marked_ioctl_that_fails_is_named_after_the_unmark(tmp_path: Path) -> None:
    mark = os.open(tmp_path / "make-it-fail", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        with pytest.raises(IoctlError) as failed:
            syscalls.ioctl_marked(null, KVM_SET_MEMORY_ATTRIBUTES2, bytearray(128), mark)
    finally:
        for fd in (mark, null):
            os.close(fd)
    assert (failed.value.name, failed.value.call) == ("ENOTTY", "KVM_SET_MEMORY_ATTRIBUTES2")
    assert (tmp_path / "make-it-fail").read_bytes() == b"10"


def test_a_mark_that_cannot_be_written_issues_no_ioctl(pipe: tuple[int, int], tmp_path: Path) -> None:
    read, write = pipe
    os.write(write, b"abc")
    (tmp_path / "make-it-fail").write_text("")
    mark = os.open(tmp_path / "make-it-fail", os.O_RDONLY)
    count = bytearray(4)
    try:
        with pytest.raises(OSError, match="writing make-it-fail") as failed:
            syscalls.ioctl_marked(read, termios.FIONREAD, count, mark)
    finally:
        os.close(mark)
    assert failed.value.errno == errno.EBADF and count == bytes(4)


def test_no_injection_without_the_knobs(tmp_path: Path) -> None:
    injector = Injector(str(tmp_path))
    assert injector.available == []
    assert injector.reason is not None and "FAILSLAB" in injector.reason


# --- the command --------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _saves_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that fails saves its report; here never into the tree."""
    monkeypatch.setenv("GUESTMEM_SCRATCH", str(tmp_path))


def test_command_reports_rate_faults_and_checks(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["stress", "--backend", "model", "--operations", "100", "--seed", "5"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "seed 5: 500 operations in" in out and "ops/s) by 4 host threads and 1 vCPU" in out
    assert "injected faults: none" in out
    for invariant in INVARIANTS:
        assert f"{invariant} " in out
    assert "no violation" in out


def test_command_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["stress", "--backend", "model", "--operations", "50", "--seed", "5", "--format", "json"]) == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["schema"] == "guestmem.stress/1" and record["violation"] is None
    assert record["operations"] == 250 and set(record["checks"]) == set(INVARIANTS)


@pytest.mark.parametrize(
    "args",
    [["--seconds", "0"], ["--seconds", "nan"], ["--threads", "0"], ["--vcpus", "3"], ["--abi", "nope"]],
)
def test_command_bad_input(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["stress", "--backend", "model", *args])
    except SystemExit as stop:
        code = int(stop.code or 0)
    assert code == 2


def test_command_ctrl_c_ends_with_130_and_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen(
        [sys.executable, "-m", "guestmem", "stress", "--backend", "model", "--seconds", "600", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stderr is not None
    first = child.stderr.readline()  # the run has started
    assert first.startswith("guestmem stress: seed 1")
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("guestmem: ") and "interrupted" in lines[0], err
    assert "Traceback" not in err and out == ""


# --- the ENOMEM rule under injected allocation failures ------------------------------------------
class FakeInjector:
    """Says every injected call had an allocation failed; the machine decides what it does."""

    reason = None

    def __init__(self) -> None:
        self.available = ["failslab", "fail_page_alloc"]
        self.injected = {"failslab": 0, "fail_page_alloc": 0}
        self.attempts = {"failslab": 0, "fail_page_alloc": 0}

    @property
    def total(self) -> int:
        return sum(self.injected.values())

    def during(self, kind: str, call: Callable[[int | None], Any]) -> tuple[Any, bool]:
        INJECTING.on = True
        try:
            result = call(None)
        finally:
            INJECTING.on = False
        self.injected[kind] += 1
        self.attempts[kind] += 1
        return result, True


class _Injecting(threading.local):
    """Per thread, as the kernel's ``make-it-fail`` is per task: another thread's
    conversion while one is armed must not fail."""

    on = False


INJECTING = _Injecting()


class FailsWithEnomem(ModelMachine):
    """An injected allocation failure fails the conversion, changing nothing (the rule)."""

    shift = 0

    def convert(self, offset: int, size: int, attributes: int, flags: int = 0, **kw: Any) -> Outcome:
        if INJECTING.on:
            return Outcome(errno="ENOMEM", error_offset=offset + self.shift)
        return super().convert(offset, size, attributes, flags, **kw)


class EnomemOffByOnePage(FailsWithEnomem):
    shift = PAGE_SIZE


@pytest.mark.parametrize(
    ("machine", "invariant"),
    [(FailsWithEnomem, None), (ModelMachine, None), (EnomemOffByOnePage, "error_offset")],
)
def test_injected_failures_follow_the_enomem_rule(machine: type[ModelMachine], invariant: str | None) -> None:
    """ENOMEM at the start with nothing changed, or — a failure the kernel absorbed — the
    model's own answer; an ENOMEM elsewhere breaks the rule."""
    settings = Settings(seed=3, seconds=None, operations=300, vcpus=0)
    runner = Stress(settings, Planted(machine), injector=FakeInjector())  # type: ignore[arg-type]
    report = runner.run()
    assert (report.violation and report.violation.invariant) == invariant, (
        report.violation and report.violation.describe()
    )
    assert report.injected and sum(report.injected.values()) > 0
    assert report.injection_attempts == report.injected  # the fake fails every armed call


# --- references the model does not hold ----------------------------------------------------------
class BriefReference(ModelMachine):
    """Every third to-private conversion meets a reference on its first page that is gone
    ``tries`` calls later (the memory manager's own, say): ``EAGAIN`` there, nothing changed."""

    tries = 2

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls = 0
        self.busy = 0

    def convert(self, offset: int, size: int, attributes: int, flags: int = 0, **kw: Any) -> Outcome:
        if attributes:
            self.calls += 1
            if self.calls % 3 == 0 and not self.busy:
                self.busy = self.tries
            if self.busy:
                self.busy -= 1
                return Outcome(errno="EAGAIN", error_offset=offset)
        return super().convert(offset, size, attributes, flags, **kw)


class LeakedReference(BriefReference):
    """The reference is never dropped: a leak."""

    tries = 1000


@pytest.mark.parametrize(
    ("machine", "invariant"), [(BriefReference, None), (LeakedReference, "model_agreement")]
)
def test_a_reference_the_model_does_not_hold_is_retried_until_it_is_gone(
    machine: type[ModelMachine], invariant: str | None
) -> None:
    # pauses of 0.1 ms (a VMM's, and the kernel runs', are 1 ms to 200 ms): the leak's
    # every retry, and those of its replays while the reproducer shrinks, take no time
    _runner, report = stress(machine, operations=200, vcpus=0, transient_pause=(0.0001, 0.0001))
    found = report.violation
    if invariant is None:
        assert found is None, found.describe()
        assert report.transient > 0
    else:
        # EAGAIN at the first page where the model converts (or refuses further on), after
        # every retry: the model answered otherwise
        assert found is not None, "a leaked reference went unnoticed"
        assert found.invariant in (invariant, "error_offset"), found.describe()
        assert found.got is not None and found.got.errno == "EAGAIN"
        assert found.action is not None and found.got.error_offset == found.action.offset
    assert report.to_json()["transient_references"] == report.transient


def test_a_refusal_on_the_page_the_model_refuses_is_not_retried() -> None:
    from guestmem.stress.engine import transient_reference

    model = Outcome(errno="EAGAIN", error_offset=5 * PAGE_SIZE)
    assert transient_reference(Outcome(errno="EAGAIN", error_offset=0), model)
    assert transient_reference(Outcome(errno="EAGAIN", error_offset=0), Outcome())
    assert not transient_reference(Outcome(errno="EAGAIN", error_offset=5 * PAGE_SIZE), model)
    assert not transient_reference(Outcome(errno="EAGAIN", error_offset=6 * PAGE_SIZE), model)
    assert not transient_reference(Outcome(errno="EINVAL", error_offset=0), Outcome())


# --- a known kernel answer: the stale MMIO entry ---------------------------------------------------
class StaleMmio(ModelMachine):
    """x86 KVM's answer for ``sw_protected``: a page the guest touched while the memslot was
    gone keeps an MMIO entry until a shared access maps it, and a guest access to it while
    it is private exits as a shared memory fault (docs/stress.md, *Findings*)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stale: set[int] = set()
        self.slot = True

    def delete_memslot(self) -> Outcome:
        got = super().delete_memslot()
        self.slot = self.slot and not got.ok
        return got

    def restore_memslot(self) -> Outcome:
        got = super().restore_memslot()
        self.slot = self.slot or got.ok
        return got

    def _access(self, offset: int, size: int, act: Callable[[int, int], Outcome]) -> Outcome:
        first, last = offset // PAGE_SIZE, (offset + size - 1) // PAGE_SIZE
        for page in range(first, last + 1):
            if self.slot and page in self.stale and self.gmem.is_private(page * PAGE_SIZE):
                if page > first:
                    act(offset, page * PAGE_SIZE - offset)
                self.stale.difference_update(range(first, page))
                gpa = self.gpa_base + page * PAGE_SIZE
                return Outcome(exit={"reason": "MEMORY_FAULT", "gpa": gpa, "size": PAGE_SIZE, "flags": 0})
        got = act(offset, size)
        if got.exit is not None and got.exit.get("reason") == "MMIO":
            self.stale.add((got.exit["gpa"] - self.gpa_base) // PAGE_SIZE)
        elif got.exit is None:
            self.stale.difference_update(range(first, last + 1))
        return got

    def guest_read(self, offset: int, size: int, access: str | None = None) -> Outcome:
        return self._access(offset, size, lambda o, n: super(StaleMmio, self).guest_read(o, n, access))

    def guest_write(self, offset: int, data: bytes, access: str | None = None) -> Outcome:
        def write(o: int, n: int) -> Outcome:
            return super(StaleMmio, self).guest_write(o, data[o - offset : o - offset + n], access)

        return self._access(offset, len(data), write)


class FaultsOnPrivate(StaleMmio):
    """The same exit on any private page, touched while the memslot was gone or not."""

    def _access(self, offset: int, size: int, act: Callable[[int, int], Outcome]) -> Outcome:
        self.stale = set(range(self.size // PAGE_SIZE))
        return super()._access(offset, size, act)


def test_the_pages_a_guest_read_did_before_a_stale_entry_are_read_on_the_model_too() -> None:
    """The read faulted those pages in: on rfc-v5 the next unspecified conversion scrambles
    them, and a model that had left them unallocated promised zeros there (a 600 s run on
    the rfc-v5 kernel, seed 2691971094, stopped on exactly this)."""
    settings = Settings(seed=1, seconds=None, operations=1, threads=1, vcpus=1, targets=1, abi="rfc-v5")
    runner = Stress(settings, Planted(StaleMmio))
    memslot = Op(thread=1, index=0, kind="memslot", target=0)

    def act(kind: str, offset: int = 0, size: int = 0, to: str = "") -> Action:
        thread = 0 if kind.startswith("guest") else 1
        op = Op(thread=thread, index=0, kind=kind, target=0, offset=offset, size=size, to=to)
        return Action(memslot if "memslot" in kind else op, kind, offset, size)

    actions = [
        act("delete_memslot"),
        act("guest_read", 14 * PAGE_SIZE, 64),  # an MMIO exit: page 14 keeps an MMIO entry
        act("restore_memslot"),
        act("convert", 12 * PAGE_SIZE, 4 * PAGE_SIZE, to="private"),
        act("guest_read", 14 * PAGE_SIZE - 170, 3693),  # page 13, then the stale entry
        act("convert", 9 * PAGE_SIZE, 7 * PAGE_SIZE, to="shared"),  # unspecified: scrambled
        act("host_read", 14 * PAGE_SIZE - 46, 64),
    ]
    try:
        assert runner.replay(actions, deadline=time.monotonic() + 60) is None
    finally:
        for target in runner.targets:
            target.close()


@pytest.mark.parametrize(("machine", "invariant"), [(StaleMmio, None), (FaultsOnPrivate, "model_agreement")])
def test_the_stale_mmio_answer_is_counted_only_where_it_can_happen(
    machine: type[ModelMachine], invariant: str | None
) -> None:
    report = None
    for seed in range(1, 40):  # the first seeds whose vCPU meets the case
        _runner, report = stress(machine, seed=seed, operations=300, threads=2)
        if report.known["stale_mmio_private_access"] or report.violation:
            break
    assert report is not None
    found = report.violation
    if invariant is None:
        assert found is None, found.describe()
        assert report.known["stale_mmio_private_access"] > 0
        assert report.to_json()["known_findings"] == {
            "stale_mmio_private_access": report.known["stale_mmio_private_access"],
            "stale_hwpoison_entry": 0,
        }
    else:
        assert found is not None and found.invariant == invariant, found and found.describe()
        assert found.got is not None and found.got.exit is not None
        assert found.got.exit["reason"] == "MEMORY_FAULT"


# --- memory errors --------------------------------------------------------------------------------
#: Seed 7, thread 1's first operations as they were drawn before memory errors were among
#: them (docs cite seeds: their operations must not change).
SEED_7_THREAD_1 = [
    "t1#0 host_read gmem1 [0x154c, +0x40)",
    "t1#1 host_write gmem0 [0x7741, +0x8) data 45314531…",
    "t1#2 convert gmem1 [0xa000, +0x1000) to shared (zero)",
    "t1#3 convert gmem0 [0xd000, +0x1000) to private (zero)",
    "t1#4 memslot gmem1 [0x0, +0x10000)",
    "t1#5 host_read gmem1 [0x491b, +0x1)",
    "t1#6 host_read gmem0 [0x90be, +0x8)",
    "t1#7 pin gmem1 [0xc000, +0x4000)",
    "t1#8 convert gmem1 [0x1000, +0x6000) to private (default) with failslab",
    "t1#9 convert gmem0 [0x0, +0x4000) to private (preserve)",
    "t1#10 punch_hole gmem1 [0x5000, +0x8000)",
    "t1#11 convert gmem0 [0xe000, +0x1000) to private (zero) with failslab",
    "t1#12 convert gmem1 [0x1000, +0x4000) to private (default)",
    "t1#13 convert gmem1 [0x7000, +0x2000) to shared (default)",
    "t1#14 convert gmem0 [0x5000, +0x8000) to shared (default)",
    "t1#15 punch_hole gmem1 [0x1000, +0x3000)",
    "t1#16 host_write gmem0 [0x6000, +0x8) data 71d3eb71…",
    "t1#17 convert gmem1 [0x0, +0x2000) to private (default)",
    "t1#18 host_read gmem0 [0x11f5, +0x1)",
    "t1#19 pin gmem1 [0x0, +0x8000)",
    "t1#20 splice gmem1 [0x8000, +0x3000)",
    "t1#21 convert gmem0 [0xf000, +0x1000) to shared (default)",
    "t1#22 convert gmem0 [0x5000, +0x2000) to private (preserve)",
    "t1#23 host_read gmem0 [0xe04b, +0x40)",
    "t1#24 convert gmem1 [0x6000, +0x6000) to shared (default)",
    "t1#25 convert gmem0 [0x3000, +0x2000) to shared (preserve)",
    "t1#26 host_write gmem1 [0xdb41, +0x40) data 32e5bead…",
    "t1#27 convert gmem1 [0x7000, +0x1000) to private (zero)",
    "t1#28 convert gmem0 [0xc000, +0x2000) to shared (preserve)",
    "t1#29 memslot gmem0 [0x0, +0x10000)",
    "t1#30 convert gmem1 [0xd000, +0x1000) to private (zero)",
    "t1#31 convert gmem0 [0x4000, +0x5000) to shared (default)",
    "t1#32 convert gmem1 [0x5000, +0x4000) to private (default) with fail_page_alloc",
    "t1#33 punch_hole gmem1 [0x3000, +0x7000)",
    "t1#34 host_read gmem0 [0xcd84, +0x1)",
    "t1#35 pin gmem1 [0x5000, +0x8000)",
    "t1#36 convert gmem0 [0x3000, +0x8000) to private (default)",
    "t1#37 convert gmem1 [0x6000, +0x7000) to private (zero)",
    "t1#38 host_read gmem1 [0x482b, +0x40)",
    "t1#39 host_read gmem0 [0x3000, +0x1e4d)",
]
#: SHA-256 of every field of seed 7's first 500 operations of threads 0 to 4, as drawn
#: before memory errors were among them.
SEED_7_DIGEST = "481b65c7eb4e3033632ddbec1760c44c52f534e58de3bbcced49c57bac48ae63"


def test_memory_errors_leave_every_seed_s_operations_as_they_were() -> None:
    shape = {"vcpus": 1, "targets": 2, "pages": 16}
    ops = first_ops(7, 1, 40, **shape)
    assert [replace(op, memory_error=False).describe() for op in ops] == SEED_7_THREAD_1
    digest = hashlib.sha256()
    for thread in range(5):
        for op in first_ops(7, thread, 500, **shape):
            fields = (op.thread, op.index, op.kind, op.target, op.offset, op.size, op.data.hex())
            digest.update(repr((*fields, op.to, op.mode, op.inject)).encode())
    assert digest.hexdigest() == SEED_7_DIGEST


def test_some_punch_holes_come_after_a_memory_error() -> None:
    shape = {"vcpus": 1, "targets": 2, "pages": 16}
    ops = first_ops(3, 1, 2000, **shape)
    assert {op.kind for op in ops if op.memory_error} == {"punch_hole"}
    punches = [op for op in ops if op.kind == "punch_hole"]
    assert 0 < sum(op.memory_error for op in punches) < len(punches)
    error = next(op for op in punches if op.memory_error)
    assert error.describe().endswith(" after a memory error")
    assert first_ops(3, 1, 2000, **shape) == ops  # the seed draws them again


def test_an_action_names_a_fault_only_where_one_was_made() -> None:
    """A report reads what was done: on a kernel without fault injection or memory-failure
    handling, the faults the schedule asks for are not there."""
    convert = Op(1, 0, "convert", 0, 0, PAGE_SIZE, to="private", inject="failslab")
    punch = Op(1, 1, "punch_hole", 0, 0, PAGE_SIZE, memory_error=True)
    assert Action(convert, "convert", 0, PAGE_SIZE).describe().endswith("to private (default)")
    armed = Action(convert, "convert", 0, PAGE_SIZE, armed=True)
    assert armed.describe().endswith("to private (default) with failslab")
    assert Action(punch, "punch_hole", 0, PAGE_SIZE).describe().endswith("punch_hole gmem0 [0x0, +0x1000)")
    poisoned = Action(punch, "punch_hole", 0, PAGE_SIZE, poisoned=0)
    assert poisoned.describe().endswith(" after a memory error (at 0x0)")


class Poisonable(ModelMachine):
    """The kernel's answers to a memory error on a shared page (docs/semantics.md §3
    *Memory errors*): a host access to it faults with SIGBUS, a to-private conversion of a
    range holding it fails with EAGAIN at it, a punch hole removes it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.poisoned: set[int] = set()

    def poison(self, offset: int) -> None:
        self.poisoned.add(offset // PAGE_SIZE)

    def _first(self, offset: int, size: int) -> int | None:
        pages = range(offset // PAGE_SIZE, (offset + max(size, 1) - 1) // PAGE_SIZE + 1)
        return next((p for p in pages if p in self.poisoned), None)

    def host_read(self, offset: int, size: int, mapping: int = 0) -> Outcome:
        if self._first(offset, size) is not None:
            return Outcome(signal="SIGBUS")
        return super().host_read(offset, size, mapping)

    def host_write(self, offset: int, data: bytes, mapping: int = 0) -> Outcome:
        bad = self._first(offset, len(data))
        if bad is None:
            return super().host_write(offset, data, mapping)
        if bad * PAGE_SIZE > offset:
            super().host_write(offset, data[: bad * PAGE_SIZE - offset], mapping)
        return Outcome(signal="SIGBUS")

    def convert(self, offset: int, size: int, attributes: int, flags: int = 0, **kw: Any) -> Outcome:
        bad = self._first(offset, size)
        if attributes and bad is not None:
            return Outcome(errno="EAGAIN", error_offset=bad * PAGE_SIZE)
        return super().convert(offset, size, attributes, flags, **kw)

    def punch_hole(self, offset: int, size: int) -> Outcome:
        got = super().punch_hole(offset, size)
        if got.ok:
            self.poisoned -= set(range(offset // PAGE_SIZE, (offset + size) // PAGE_SIZE))
        return got


class ReadsThroughPoison(Poisonable):
    """A host read of a poisoned page returns its bytes."""

    def host_read(self, offset: int, size: int, mapping: int = 0) -> Outcome:
        return ModelMachine.host_read(self, offset, size, mapping)


class ConvertsPoison(Poisonable):
    """A to-private conversion converts a poisoned page."""

    def convert(self, offset: int, size: int, attributes: int, flags: int = 0, **kw: Any) -> Outcome:
        return ModelMachine.convert(self, offset, size, attributes, flags, **kw)


class RefusesOffThePage(Poisonable):
    """The conversion is refused with EAGAIN one page past the poisoned one."""

    def convert(self, offset: int, size: int, attributes: int, flags: int = 0, **kw: Any) -> Outcome:
        got = super().convert(offset, size, attributes, flags, **kw)
        if got.errno == "EAGAIN" and got.error_offset is not None and self._first(offset, size) is not None:
            got.error_offset += PAGE_SIZE
        return got


class StaysPoisoned(Poisonable):
    """A punch hole leaves the poisoned page faulting."""

    def punch_hole(self, offset: int, size: int) -> Outcome:
        return ModelMachine.punch_hole(self, offset, size)


class FakePoisoner:
    """Poisons a page of a :class:`Poisonable` machine under test."""

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason
        self.calls = 0

    def inject(self, machine: Any, offset: int) -> Injection:
        self.calls += 1
        machine.poison(offset)
        return Injection(True)


@pytest.mark.parametrize(
    ("machine", "invariant"),
    [
        (Poisonable, None),
        (ReadsThroughPoison, "memory_error"),
        (ConvertsPoison, "memory_error"),
        (RefusesOffThePage, "memory_error"),
        (StaysPoisoned, "memory_error"),
    ],
)
def test_memory_errors_follow_the_rules_while_other_threads_run(
    machine: type[ModelMachine], invariant: str | None
) -> None:
    """docs/semantics.md §3 *Memory errors*, checked in a punch hole while the other
    threads convert, pin and access: the kernel's answers pass, each wrong one is caught."""
    poisoner = FakePoisoner()
    settings = Settings(seed=2, seconds=None, operations=300, minimize_seconds=5)
    report = Stress(settings, Planted(machine), poisoner=poisoner).run()
    found = report.violation
    if invariant is None:
        assert found is None, found.describe()
        assert report.memory_errors == poisoner.calls > 0
        assert report.checks["memory_error"] > 0
        assert report.memory_errors_plain["private"] > 0  # ranges with no shared page
        record = report.to_json()
        assert record["memory_errors"] == report.memory_errors
        assert record["memory_errors_unavailable"] is None
    else:
        assert found is not None and found.invariant == invariant, found and found.describe()
        assert found.action is not None and found.action.op.memory_error
        assert found.action.poisoned >= 0 and "after a memory error (at " in found.action.describe()


def test_memory_errors_are_capped_and_plain_where_unavailable() -> None:
    capped = Stress(
        Settings(seed=2, seconds=None, operations=300, memory_errors=2),
        Planted(Poisonable),
        poisoner=FakePoisoner(),
    ).run()
    assert capped.violation is None and capped.memory_errors == 2
    assert capped.memory_errors_plain["limit"] > 0
    none = Stress(Settings(seed=2, seconds=None, operations=100), ModelBackend()).run()
    assert none.memory_errors == 0 and none.memory_errors_plain["unavailable"] > 0
    assert none.to_json()["memory_errors_unavailable"] == "the model backend has no poisoned pages"
    refused = FakePoisoner("madvise(MADV_HWPOISON) answers EINVAL: the kernel lacks MEMORY_FAILURE")
    off = Stress(Settings(seed=2, seconds=None, operations=100), Planted(Poisonable), poisoner=refused).run()
    assert off.memory_errors == 0 and refused.calls == 0
    assert off.to_json()["memory_errors_unavailable"] == refused.reason


def test_a_seed_replays_its_memory_errors() -> None:
    runs = [
        Stress(Settings(seed=4, seconds=None, operations=200), Planted(Poisonable), poisoner=FakePoisoner())
        for _ in range(2)
    ]
    for runner in runs:
        report = runner.run()
        assert report.violation is None and report.memory_errors > 0
    drawn = [{a.op for _t, _g, a, _answer in r.history if a.op.memory_error} for r in runs]
    assert drawn[0] == drawn[1] and drawn[0]


def test_the_poisoner_reads_the_child_s_report(tmp_path: Path) -> None:
    """What the injecting child said (one byte a step) and how it ended, read as the
    kernel's answer (no memory error is injected here)."""
    sysctl = tmp_path / "memory_failure_recovery"
    sysctl.write_text("1\n")
    poisoner = MemoryErrors(str(sysctl))
    poisoner.reason = None  # as root
    assert poisoner._result(b"t", "SIGBUS") == Injection(True)
    assert poisoner._result(b"td", None) == Injection(True)
    assert poisoner._result(b"te" + bytes([errno.EBUSY]), None) == Injection(True)
    assert poisoner._result(b"", "SIGBUS").faulted
    assert poisoner.injected == 3 and poisoner.reason is None
    refused = poisoner._result(b"te" + bytes([errno.EINVAL]), None)
    assert not refused.done and not refused.faulted and "MEMORY_FAILURE" in refused.why
    assert poisoner.reason == refused.why
    assert poisoner.inject(object(), 0).why == refused.why  # unavailable from then on
    assert MemoryErrors(str(tmp_path / "none")).reason is not None


class StaleEntries(Poisonable):
    """As the kernel was measured (docs/stress.md *Findings*): a process that lived when a
    memory error came may keep a stale hwpoison entry for the page, and faults on it, even
    after the punch hole, until the process dies (any fault kills a helper)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.alive: set[int] = set()
        self.stale: dict[int, set[int]] = {}

    def poison(self, offset: int) -> None:
        super().poison(offset)
        for mapping in self.alive:
            self.stale.setdefault(mapping, set()).add(offset // PAGE_SIZE)

    def _stale(self, offset: int, size: int, mapping: int) -> int | None:
        pages = range(offset // PAGE_SIZE, (offset + max(size, 1) - 1) // PAGE_SIZE + 1)
        return next((p for p in pages if p in self.stale.get(mapping, ())), None)

    def _after(self, mapping: int, got: Outcome) -> Outcome:
        if got.signal is not None:  # the process died: a new one has a clean page table
            self.alive.discard(mapping)
            self.stale.pop(mapping, None)
        else:
            self.alive.add(mapping)
        return got

    def host_read(self, offset: int, size: int, mapping: int = 0) -> Outcome:
        if self._stale(offset, size, mapping) is not None and self._first(offset, size) is None:
            return self._after(mapping, Outcome(signal="SIGBUS"))
        return self._after(mapping, super().host_read(offset, size, mapping))

    def host_write(self, offset: int, data: bytes, mapping: int = 0) -> Outcome:
        bad = self._stale(offset, len(data), mapping)
        if bad is not None and self._first(offset, len(data)) is None:
            if bad * PAGE_SIZE > offset:
                ModelMachine.host_write(self, offset, data[: bad * PAGE_SIZE - offset], mapping)
            return self._after(mapping, Outcome(signal="SIGBUS"))
        return self._after(mapping, super().host_write(offset, data, mapping))


class StaleForGood(StaleEntries):
    """A stale entry that a new process meets too (no kernel was seen doing this)."""

    def _after(self, mapping: int, got: Outcome) -> Outcome:
        self.alive.add(mapping)
        return got


def poisoned_run(machine: type[ModelMachine], seed: int) -> Report:
    """300 operations of ``seed`` on a planted ``machine`` with memory errors injected."""
    settings = Settings(seed=seed, seconds=None, operations=300, minimize_seconds=5)
    return Stress(settings, Planted(machine), poisoner=FakePoisoner()).run()


def test_a_stale_hwpoison_entry_is_a_known_answer_that_a_new_process_does_not_give() -> None:
    """docs/stress.md *Findings*: the access is counted and made again by the thread's new
    process, whose answer is checked; the runs stay clean."""
    found = 0
    for seed in range(1, 8):
        report = poisoned_run(StaleEntries, seed)
        assert report.violation is None, report.violation.describe()
        found += report.known["stale_hwpoison_entry"]
    assert found > 0
    assert report.to_json()["known_findings"]["stale_hwpoison_entry"] == report.known["stale_hwpoison_entry"]


def test_a_fault_on_a_page_punched_after_a_memory_error_is_a_violation_that_names_it() -> None:
    """The same fault again from the thread's new process is not the known answer."""
    report = None
    for seed in range(1, 20):
        report = poisoned_run(StaleForGood, seed)
        if report.violation is not None:
            break
    assert report is not None and report.violation is not None
    found = report.violation
    assert found.invariant in ("model_agreement", "memory_error", "failed_conversion_atomic"), (
        found.describe()
    )
    assert found.got is not None and found.got.signal == "SIGBUS"
    assert "after a memory error (at " in found.describe()


class RefusingPoisoner(FakePoisoner):
    """``madvise`` refused (the probe), or the page faulted when the child touched it."""

    def __init__(self, faulted: bool) -> None:
        super().__init__()
        self.faulted = faulted

    def inject(self, machine: Any, offset: int) -> Injection:
        self.calls += 1
        if self.faulted:
            return Injection(False, faulted=True, why="the page faulted when touched (SIGBUS)")
        self.reason = "madvise(MADV_HWPOISON) answers EPERM: CAP_SYS_ADMIN is needed"
        return Injection(False, why=self.reason)


def test_a_refused_injection_is_a_plain_punch_hole_and_a_faulting_page_a_violation() -> None:
    refused = RefusingPoisoner(faulted=False)
    report = Stress(
        Settings(seed=2, seconds=None, operations=200), Planted(Poisonable), poisoner=refused
    ).run()
    assert report.violation is None and report.memory_errors == 0 and refused.calls == 1
    assert report.memory_errors_plain["unavailable"] > 1
    assert report.memory_errors_unavailable == refused.reason
    faulted = RefusingPoisoner(faulted=True)
    report = Stress(
        Settings(seed=2, seconds=None, operations=200), Planted(Poisonable), poisoner=faulted
    ).run()
    found = report.violation
    assert found is not None and found.invariant == "model_agreement" and "faulted" in found.message
    assert found.action is not None and found.action.op.memory_error

"""The time limit of ``Vcpu.run`` (:mod:`guestmem.kvm.watchdog`) on real KVM: a guest
that never exits is stopped after its limit and never before, other users of ``SIGALRM``
keep their handler and timer, other signals re-enter the guest, nothing stays armed
after the VM closes, and a forked child gets a timer of its own."""

from __future__ import annotations

import ctypes
import errno
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from guestmem.errors import IoctlError
from guestmem.kvm import GuestTimeout, Kvm, Vcpu, syscalls, vcpu, watchdog
from guestmem.kvm.vm import Vm
from guestmem.uapi.kvm import KvmRegs
from kvm_support import kvm, requires_kvm

pytestmark = requires_kvm
__all__ = ["kvm"]  # the fixture, imported for pytest

MEMORY = 1 << 20
PORT = 0x10
#: ``out 0x10, al; inc al; jmp -6``: an IO exit per entry.
OUT_LOOP = 0x1000, bytes.fromhex("e610fec0ebfa")
#: ``jmp $``: never exits.
SPIN = 0x2000, bytes.fromhex("ebfe")
#: ``inc ax; jmp -3``: never exits, counts in ``ax`` while it runs.
COUNT = 0x3000, bytes.fromhex("40ebfd")


class RealMode:
    """One vCPU in real mode over 1 MiB of anonymous memory holding both programs."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.memory = syscalls.anonymous(MEMORY)
        vm.set_user_memory_region(0, 0, MEMORY, self.memory)
        for address, code in (OUT_LOOP, SPIN, COUNT):
            ctypes.memmove(self.memory + address, code, len(code))
        self.vcpu = vm.create_vcpu()
        sregs = self.vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0, 0
        self.vcpu.set_sregs(sregs)

    def start(self, program: tuple[int, bytes]) -> Vcpu:
        self.vcpu.set_regs(KvmRegs(rip=program[0], rflags=2))
        return self.vcpu

    def out(self, limit: float | None) -> None:
        """One run of the out loop: an IO exit on the port."""
        exit_ = self.vcpu.run(limit)
        assert (exit_.reason, exit_.fields["port"]) == ("IO", PORT), str(exit_)

    def spin(self, limit: float) -> float:
        """Run the spinning program with ``limit``: the seconds until ``GuestTimeout``."""
        vcpu = self.start(SPIN)
        start = time.monotonic()
        with pytest.raises(GuestTimeout) as info:
            vcpu.run(limit)
        elapsed = time.monotonic() - start
        assert info.value.limit == limit
        self.vcpu.complete_pending()
        self.start(OUT_LOOP)
        return elapsed

    def close(self) -> None:
        self.vm.close()
        syscalls.munmap(self.memory, MEMORY)


@pytest.fixture
def guest(kvm: Kvm) -> Iterator[RealMode]:
    g = RealMode(kvm.create_vm())
    g.start(OUT_LOOP)
    yield g
    g.close()


class Counter:
    """A signal handler that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.calls += 1


@pytest.fixture
def sigalrm() -> Iterator[Counter]:
    """A SIGALRM handler of the test's own; pytest-timeout's handler and timer are put back."""
    counter = Counter()
    old_handler = signal.signal(signal.SIGALRM, counter)
    old_timer = signal.setitimer(signal.ITIMER_REAL, 0)
    yield counter
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old_handler)
    if old_timer[0] > 0:
        signal.setitimer(signal.ITIMER_REAL, *old_timer)


def test_a_guest_that_never_exits_is_stopped_after_its_limit(guest: RealMode) -> None:
    elapsed = guest.spin(0.05)
    assert 0.05 <= elapsed < 2
    guest.out(None)  # the vCPU runs on: immediate_exit was cleared
    guest.out(1.0)


def test_a_zero_limit_stops_the_run_at_once_and_a_negative_one_is_refused(guest: RealMode) -> None:
    guest.start(COUNT)
    with pytest.raises(GuestTimeout):
        guest.vcpu.run(0)
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="time limit"):
            guest.vcpu.run(bad)
    assert watchdog.watchdog().running is None
    guest.start(OUT_LOOP)
    guest.out(1.0)


def test_a_later_deadline_is_not_cut_by_a_timer_set_for_an_earlier_one(guest: RealMode) -> None:
    """The timer still set for an earlier run fires while a later run is in the guest:
    the handler arms it again for the later deadline, and the guest runs on."""
    dog = watchdog.watchdog()
    for _ in range(5):
        dog.arm(time.monotonic() + 0.002)  # as a run with a 2 ms limit would leave it
        assert 0.03 <= guest.spin(0.03) < 2  # stopped: not cut early, not left spinning


def test_an_expiry_handled_while_arming_never_leaves_the_timer_believed_armed(
    guest: RealMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler of an earlier expiry (no vCPU running: it disarms) runs at the first
    bytecode after ``timer_settime`` in ``arm``. Afterwards the timer is armed or believed
    disarmed, never believed armed while it is not: a run would then wait for a signal
    that never comes and its guest would spin on."""
    dog = watchdog.watchdog()
    settime = syscalls.timer_settime

    def settime_then_an_earlier_expiry(timer: int, when: float, interval: float = 0.0) -> None:
        settime(timer, when, interval)
        if when:
            dog._expired(dog.signo, None)

    dog.arm(time.monotonic() + 60)  # as a run that timed out leaves it: armed, repeating
    monkeypatch.setattr(syscalls, "timer_settime", settime_then_an_earlier_expiry)
    dog.arm(time.monotonic() + 0.002)
    monkeypatch.undo()
    assert dog.timer is not None
    assert dog.armed == math.inf or syscalls.timer_gettime(dog.timer)[0] > 0
    assert 0.03 <= guest.spin(0.03) < 2


def test_many_consecutive_runs_are_never_stopped_early(guest: RealMode) -> None:
    """Thousands of short runs, while the timer (set as for an earlier, shorter run)
    keeps expiring, during a run or between runs."""
    dog = watchdog.watchdog()
    for runs in range(3000):
        if runs % 100 == 0:
            dog.arm(time.monotonic() + 0.0002)
        guest.out(10.0)
    assert dog.running is None
    dog.arm(time.monotonic() + 0.001)
    time.sleep(0.02)  # it expires with no vCPU running: the handler disarms it
    assert dog.armed == math.inf
    assert dog.timer is not None and syscalls.timer_gettime(dog.timer) == (0.0, 0.0)
    guest.out(10.0)
    assert dog.armed < math.inf


def test_a_deadline_that_passes_before_entry_stops_the_run_at_entry(
    guest: RealMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timer fires after the run has begun but before ``KVM_RUN`` enters the guest:
    its handler sets ``immediate_exit``, so the guest is not entered at all (the counting
    guest's ``ax`` stays 0) and the run ends with ``GuestTimeout``."""
    entries: list[int] = []

    def late_entry(fd: int, request: int) -> object:
        if not entries:
            time.sleep(0.05)  # past the deadline; the timer's handler runs meanwhile
        entries.append(guest.vcpu.run_struct.immediate_exit)
        return syscalls.raw_ioctl(fd, request)

    guest.start(COUNT)
    monkeypatch.setattr(vcpu, "_raw_ioctl", late_entry)
    with pytest.raises(GuestTimeout):
        guest.vcpu.run(0.01)
    assert entries == [1]
    assert guest.vcpu.get_regs().rax == 0
    assert guest.vcpu.run_struct.immediate_exit == 0
    monkeypatch.undo()
    guest.start(OUT_LOOP)
    guest.out(1.0)


def test_another_sigalrm_user_keeps_its_handler_and_timer(guest: RealMode, sigalrm: Counter) -> None:
    signal.setitimer(signal.ITIMER_REAL, 30.0, 7.0)
    start = time.monotonic()
    for _ in range(100):
        guest.out(1.0)
    guest.spin(0.02)
    elapsed = time.monotonic() - start
    remaining, interval = signal.getitimer(signal.ITIMER_REAL)
    assert sigalrm.calls == 0
    assert signal.getsignal(signal.SIGALRM) is sigalrm
    assert 30.0 - elapsed - 0.5 < remaining <= 30.0 - elapsed + 0.05  # it ran on, untouched
    assert interval == 7.0
    assert watchdog.watchdog().signo not in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM)


def test_an_unrelated_signal_during_kvm_run_re_enters_the_guest(guest: RealMode, sigalrm: Counter) -> None:
    signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
    try:
        elapsed = guest.spin(0.2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    assert elapsed >= 0.2
    assert sigalrm.calls >= 2  # each interrupted KVM_RUN (EINTR) and the guest went on


def test_nothing_is_left_armed_after_the_vm_closes(kvm: Kvm) -> None:
    g = RealMode(kvm.create_vm())
    g.start(OUT_LOOP)
    g.out(30.0)
    dog = watchdog.watchdog()
    assert dog.timer is not None and dog.armed < math.inf
    assert syscalls.timer_gettime(dog.timer)[0] > 0
    g.close()
    assert dog.armed == math.inf
    assert syscalls.timer_gettime(dog.timer) == (0.0, 0.0)


def test_a_limit_needs_the_main_thread(guest: RealMode) -> None:
    errors: list[BaseException] = []

    def other() -> None:
        try:
            guest.out(None)  # no limit: any thread
            guest.out(1.0)
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError) and "main thread" in str(errors[0])


def test_a_failing_kvm_run_is_a_named_ioctl_error(guest: RealMode) -> None:
    """``KVM_RUN`` on an fd that is not a vCPU's fails; the error is typed and named."""
    vcpu = guest.vcpu
    fd, vcpu.fd = vcpu.fd, os.open(os.devnull, os.O_RDONLY)
    try:
        with pytest.raises(IoctlError) as info:
            vcpu.run()
    finally:
        os.close(vcpu.fd)
        vcpu.fd = fd
    assert (info.value.code, info.value.call) == (errno.ENOTTY, "KVM_RUN")
    assert watchdog.watchdog().running is None
    guest.out(1.0)


def test_a_forked_child_has_a_timer_of_its_own(guest: RealMode) -> None:
    """Timers are not inherited (timer_create(2)): the child's first limited run makes one."""
    guest.out(30.0)  # the parent's timer exists and is armed
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            with Kvm() as child_kvm:
                child = RealMode(child_kvm.create_vm())
                status = 0 if child.spin(0.02) >= 0.02 else 2
                child.close()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    guest.out(30.0)  # the parent's timer still works

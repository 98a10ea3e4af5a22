"""The time limit of ``KVM_RUN``: a watchdog timer that stops a vCPU past its deadline.

A signal makes ``KVM_RUN`` fail with ``EINTR``, and ``kvm_run.immediate_exit`` = 1 makes
the next entry fail with ``EINTR`` at once (api.rst §5 ``immediate_exit``; docs/kernel.md §10
item 9). Arming ``SIGALRM`` with ``setitimer`` around every run costs four syscalls plus
saving and restoring the previous handler and timer (about 10 µs a run on the measured
machine, more than the round trip itself; docs/bench.md ``kvm_run_vs_c``). Instead:

* one POSIX timer (``timer_create`` on ``CLOCK_MONOTONIC``, ``SIGEV_THREAD_ID``) signals
  the main thread with a real-time signal of its own, whose handler is installed once.
  ``SIGALRM`` and ``ITIMER_REAL`` stay their other users' (pytest-timeout's, say);
* each limited run only records its deadline and its ``kvm_run`` (:func:`start`)
  and arms the timer when it is not armed already to fire at or before that deadline: a
  run of a few microseconds under a 30 s limit makes no syscall for it;
* when the timer fires, the handler stops the running vCPU if its deadline has passed
  (``immediate_exit`` = 1, so a signal that landed just before entry still stops it), arms
  the timer again for the deadline if it has not (the timer was set for an earlier run),
  and disarms it if no vCPU runs;
* the timer repeats every :data:`RETRY` seconds until the handler re-arms or disarms
  it, so a signal that slips in between the handler's last chance and the entry into the
  guest is followed by another one: a vCPU is stopped no earlier than its deadline and at
  most :data:`RETRY` later (plus the signal's latency);
* the timer is deleted at exit, before Python gives the signal back its default action
  (which would end the process).

The run itself decides: ``EINTR`` from ``KVM_RUN`` is a timeout when the deadline has
passed, and any other signal's interruption re-enters the guest. Python runs signal
handlers in the main thread only, so only the main thread may run with a limit.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import threading
import time
from threading import get_ident
from time import monotonic
from types import FrameType

from guestmem.kvm import syscalls
from guestmem.uapi.kvm import KvmRun

#: Period of the timer's repeats after an expiry nobody answered (see the module text).
RETRY = 0.01
_NEVER = math.inf


def _free_signal() -> int:
    """The highest real-time signal nobody handles (default action, not ignored)."""
    for signo in range(signal.SIGRTMAX, signal.SIGRTMIN - 1, -1):
        if signal.getsignal(signo) == signal.SIG_DFL:
            return signo
    raise RuntimeError("no free real-time signal for the guest time limit")


class Watchdog:
    """The process's one ``KVM_RUN`` timer (:func:`watchdog` makes it on first use)."""

    __slots__ = ("armed", "deadline", "running", "signo", "thread", "tid", "timer")

    def __init__(self) -> None:
        main = threading.main_thread()
        if threading.current_thread() is not main:
            raise RuntimeError("a guest time limit needs the main thread (signal handlers run there)")
        self.thread = main.ident
        #: The main thread's kernel id, which the timer signals.
        self.tid = threading.get_native_id()
        self.signo = _free_signal()
        #: The POSIX timer's id (the kernel's first is 0), None until first armed.
        self.timer: int | None = None
        #: When the timer fires next (``time.monotonic()`` seconds); inf when disarmed.
        self.armed = _NEVER
        #: The ``kvm_run`` of the vCPU in a limited run, and that run's deadline.
        self.running: KvmRun | None = None
        self.deadline = _NEVER
        signal.signal(self.signo, self._expired)

    def arm(self, when: float) -> None:
        """Fire at ``when`` (monotonic seconds), then every :data:`RETRY` seconds.

        ``armed`` is set first: the handler of an earlier expiry may run between any two
        statements here and disarm the timer, and it must then leave it believed disarmed
        (the next run arms it again), never believed armed while it is not (a run would
        then wait for a signal that never comes)."""
        if self.timer is None:
            self.timer = syscalls.timer_create(syscalls.CLOCK_MONOTONIC, self.signo, self.tid)
        self.armed = when
        syscalls.timer_settime(self.timer, when, RETRY)

    def disarm(self) -> None:
        if self.armed != _NEVER:
            self.armed = _NEVER  # first: an interruption now leaves it believed disarmed
            assert self.timer is not None
            syscalls.timer_settime(self.timer, 0)

    def close(self) -> None:
        """Delete the timer (at exit: Python puts the default action of the signal,
        which ends the process, back before it ends)."""
        if self.timer is not None:
            self.armed = _NEVER
            timer, self.timer = self.timer, None
            syscalls.timer_delete(timer)

    def _expired(self, signum: int, frame: FrameType | None) -> None:
        run = self.running
        now = time.monotonic()
        if run is None:
            self.disarm()
        elif now >= self.deadline:
            run.immediate_exit = 1  # the run sees EINTR, now or at its next entry
            self.armed = now + RETRY
        else:
            self.arm(self.deadline)

    def _forked(self) -> None:
        """A child inherits no timer (timer_create(2)); its next limited run makes one."""
        self.thread = threading.get_ident()  # the forking thread is the child's only one
        self.tid = threading.get_native_id()
        self.timer = None
        self.armed = _NEVER
        self.running = None


_watchdog: Watchdog | None = None


def watchdog() -> Watchdog:
    """The process's :class:`Watchdog`, created (and its handler installed) on first use."""
    global _watchdog
    if _watchdog is None:
        _watchdog = Watchdog()
        os.register_at_fork(after_in_child=_watchdog._forked)
        atexit.register(_watchdog.close)
    return _watchdog


def start(run: KvmRun, limit: float) -> Watchdog:
    """A limited run of the vCPU whose ``kvm_run`` is ``run`` begins: the watchdog, with
    the run's deadline (``limit`` seconds from now; 0 stops it at once) recorded. The
    run ends by setting ``running`` back to None."""
    if not limit >= 0:  # also NaN
        raise ValueError(f"a guest time limit is >= 0 seconds, not {limit!r}")
    dog = _watchdog or watchdog()
    if get_ident() != dog.thread:
        raise RuntimeError("a guest time limit needs the main thread (signal handlers run there)")
    dog.deadline = deadline = monotonic() + limit
    dog.running = run
    if deadline < dog.armed:
        dog.arm(deadline)
    return dog


def disarm() -> None:
    """Disarm the timer if there is one (a vCPU is closing; the next run arms it again)."""
    if _watchdog is not None:
        _watchdog.disarm()

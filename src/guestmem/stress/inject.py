"""Kernel fault injection (``CONFIG_FAULT_INJECTION_DEBUG_FS``) aimed at one thread's call.

``failslab`` fails slab allocations, ``fail_page_alloc`` page allocations. With
``task-filter`` set, only tasks whose ``/proc/<pid>/task/<tid>/make-it-fail`` is 1 see a
failure, so a stress thread marks itself for one conversion ioctl and unmarks itself
straight after (:func:`guestmem.kvm.syscalls.ioctl_marked`); the other threads and the rest
of the system allocate as usual. ``times`` = 1 fails the first allocation that call makes,
at any gfp mask that may sleep or not (``ignore-gfp-wait`` off; for page allocations also
``min-order`` 0). Whether an allocation was failed is read back from ``times``: the kernel
counts it down.

Page allocations for user memory (``__GFP_HIGHMEM``: a copy-on-write copy, an anonymous
page, a guest_memfd folio) are left alone (``ignore-gfp-highmem`` on). A conversion makes
none: its own allocations are the attribute tree's nodes and the unmap's batches. But the
marked thread makes them on its way back to user space: after another thread forks (a
host-access helper), the thread's pages are copy-on-write, and when the kernel then fails
to copy the page of the thread's restartable-sequence area it writes on return, it kills
the process with ``SIGSEGV`` (docs/stress.md, *Fault injection*).

The debugfs knobs are global, so one injection runs at a time (:class:`Injector` holds a
lock across it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

DEBUGFS = "/sys/kernel/debug"
KINDS = ("failslab", "fail_page_alloc")
T = TypeVar("T")


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as knob:
        knob.write(value)


def _read(path: str) -> str:
    with open(path, encoding="ascii") as knob:
        return knob.read().strip()


class Injector:
    """Fails one allocation of one call, where the kernel offers it.

    ``available`` lists the kinds this kernel has; ``reason`` says why there are none."""

    def __init__(self, debugfs: str = DEBUGFS, tasks: str = "/proc/self/task") -> None:
        self.debugfs = debugfs
        self.tasks = tasks
        self.lock = threading.Lock()
        self.available = [k for k in KINDS if os.path.isdir(os.path.join(debugfs, k))]
        self.reason: str | None = None
        if not self.available:
            self.reason = (
                f"no {' or '.join(KINDS)} in {debugfs} (the kernel lacks CONFIG_FAULT_INJECTION_DEBUG_FS, "
                "FAILSLAB, FAIL_PAGE_ALLOC, or debugfs is not mounted)"
            )
        self.injected = {k: 0 for k in KINDS}
        self.attempts = {k: 0 for k in KINDS}

    def _knob(self, kind: str, name: str) -> str:
        return os.path.join(self.debugfs, kind, name)

    def _arm(self, kind: str) -> None:
        settings = {
            "task-filter": "Y",
            "probability": "100",
            "interval": "1",
            "space": "0",
            "verbose": "0",
            "ignore-gfp-wait": "N",
        }
        if kind == "fail_page_alloc":
            settings.update({"min-order": "0", "ignore-gfp-highmem": "Y"})
        for name, value in settings.items():
            if os.path.exists(self._knob(kind, name)):
                _write(self._knob(kind, name), value)
        _write(self._knob(kind, "times"), "1")

    def during(self, kind: str, call: Callable[[int], T]) -> tuple[T, bool]:
        """``call(mark)`` with the first allocation of kind ``kind`` failing, on this
        thread only; returns its result and whether an allocation was failed.

        ``mark`` is this thread's ``make-it-fail``, open for writing: ``call`` sets it for
        the one system call it aims at (:func:`guestmem.kvm.syscalls.ioctl_marked`) and
        for nothing else, since while the thread is marked any allocation it makes can be
        the one that fails, even one made to run Python or to deliver a signal.
        """
        if kind not in self.available:
            raise ValueError(f"{kind} is not available here")
        mark = os.path.join(self.tasks, str(threading.get_native_id()), "make-it-fail")
        with self.lock:
            self._arm(kind)
            self.attempts[kind] += 1
            # opened before the thread is marked: opening a file allocates; a write to an
            # open file allocates nothing
            fd = os.open(mark, os.O_WRONLY)
            try:
                result = call(fd)
            finally:
                os.close(fd)
            left = int(_read(self._knob(kind, "times")))
            _write(self._knob(kind, "times"), "0")
            failed = left == 0
            if failed:
                self.injected[kind] += 1
            return result, failed

    @property
    def total(self) -> int:
        return sum(self.injected.values())

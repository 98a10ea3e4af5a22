"""Kernel fault injection (``CONFIG_FAULT_INJECTION_DEBUG_FS``) aimed at one thread's call.

``failslab`` fails slab allocations, ``fail_page_alloc`` page allocations. With
``task-filter`` set, only tasks whose ``/proc/<pid>/task/<tid>/make-it-fail`` is 1 see a
failure, so a stress thread marks itself, makes one conversion, and unmarks itself; the
other threads and the rest of the system allocate as usual. ``times`` = 1 fails the first
allocation that call makes, at any gfp mask (``ignore-gfp-wait`` off; for page allocations
also ``min-order`` 0 and ``ignore-gfp-highmem`` off). Whether an allocation was failed is
read back from ``times``: the kernel counts it down.

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
            settings.update({"min-order": "0", "ignore-gfp-highmem": "N"})
        for name, value in settings.items():
            if os.path.exists(self._knob(kind, name)):
                _write(self._knob(kind, name), value)
        _write(self._knob(kind, "times"), "1")

    def during(self, kind: str, call: Callable[[], T]) -> tuple[T, bool]:
        """``call()`` with the first allocation of kind ``kind`` failing, on this thread
        only; returns its result and whether an allocation was failed."""
        if kind not in self.available:
            raise ValueError(f"{kind} is not available here")
        mark = os.path.join(self.tasks, str(threading.get_native_id()), "make-it-fail")
        with self.lock:
            self._arm(kind)
            self.attempts[kind] += 1
            # opened before the thread is marked: opening a file allocates, and while the
            # thread is marked and the call has not used up ``times``, that allocation is
            # the one that fails; a write to an open file allocates nothing
            fd = os.open(mark, os.O_WRONLY)
            try:
                os.pwrite(fd, b"1", 0)
                try:
                    result = call()
                finally:
                    os.pwrite(fd, b"0", 0)
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

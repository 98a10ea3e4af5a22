"""Memory errors on guest_memfd pages, as the kernel answers them (run inside ``v8-debug``,
which has ``MEMORY_FAILURE`` and ``HWPOISON_INJECT``; tests/kernel_boots.py runs it there).

``python3 tests/hwpoison_inside.py OUT.json``: for a shared page that was written and one
never touched, a child process maps the guest_memfd and injects a memory error with
``madvise(MADV_HWPOISON)``; then the page is read by the host and the guest, converted
both ways alone and in a range, punched out, and read again. Each answer goes into
OUT.json with the kernel's log lines it caused; ``tests/test_vm_stress.py`` holds them to
the rules of docs/semantics.md §3 *Memory errors*.

One more case is a finding (docs/stress.md *Findings*): a second host process reads the
page before the memory error and does not touch it again until after the punch hole;
its read then faults, while a new process reads zeros.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from guestmem.backend.base import Outcome
from guestmem.backend.kernel import KernelBackend, KernelMachine
from guestmem.stress.engine import FLAGS
from guestmem.uapi.kvm import KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE

MADV_HWPOISON = 100
PAGES = 16


def _kmsg(fd: int) -> list[str]:
    lines: list[str] = []
    while True:
        try:
            record = os.read(fd, 8192).decode(errors="replace")
        except BlockingIOError:
            return lines
        lines.append(record.split(";", 1)[-1].strip())


def _poison(fd: int, page: int, touch: bool) -> str:
    """A child maps the file, touches the page if asked, and poisons it."""
    pid = os.fork()
    if pid == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        area = mmap.mmap(fd, PAGES * PAGE_SIZE, mmap.MAP_SHARED)
        if touch:
            area[page * PAGE_SIZE]
        address = ctypes.addressof(ctypes.c_char.from_buffer(area))
        done = libc.madvise(address + page * PAGE_SIZE, PAGE_SIZE, MADV_HWPOISON)
        os._exit(0 if done == 0 else min(ctypes.get_errno(), 255))
    _pid, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return f"exit {os.WEXITSTATUS(status)}"


def _recorder(
    kmsg: int,
) -> tuple[KernelMachine, list[dict[str, Any]], Callable[[str, Callable[[], Outcome]], None]]:
    """A fresh machine, the steps recorded on it, and the function that records one (its
    outcome and the kernel's log lines it caused)."""
    machine = KernelBackend().open("sw_protected", "v8", PAGES * PAGE_SIZE, FLAGS)
    steps: list[dict[str, Any]] = []

    def step(name: str, act: Callable[[], Outcome]) -> None:
        steps.append({"step": name, "outcome": act().to_json(), "log": _kmsg(kmsg)})

    return machine, steps, step


def case(page: int, written: bool, kmsg: int) -> dict[str, Any]:
    machine, steps, step = _recorder(kmsg)
    offset = page * PAGE_SIZE
    try:
        if written:
            step("host_write", lambda: machine.host_write(offset, b"\x5a" * 16))
        assert machine.gmem is not None
        steps.append({"step": "poison", "child": _poison(machine.gmem.fd, page, written), "log": _kmsg(kmsg)})
        step("host_read", lambda: machine.host_read(offset, 1))
        step("host_read_next_page", lambda: machine.host_read(offset + PAGE_SIZE, 1))
        step("guest_read", lambda: machine.guest_read(offset, 1))
        step("to_private", lambda: machine.convert(offset, PAGE_SIZE, KVM_MEMORY_ATTRIBUTE_PRIVATE))
        step("to_shared", lambda: machine.convert(offset, PAGE_SIZE, 0))
        step("range_to_private", lambda: machine.convert(0, 8 * PAGE_SIZE, KVM_MEMORY_ATTRIBUTE_PRIVATE))
        step("range_to_shared", lambda: machine.convert(0, 8 * PAGE_SIZE, 0))
        step("host_read_again", lambda: machine.host_read(offset, 1))
        step("punch_hole", lambda: machine.punch_hole(offset, PAGE_SIZE))
        step("host_read_after_punch", lambda: machine.host_read(offset, 1))
        step("guest_read_after_punch", lambda: machine.guest_read(offset, 1))
    finally:
        machine.close()
    return {"page": page, "written": written, "steps": steps}


def mapped_elsewhere(page: int, kmsg: int) -> dict[str, Any]:
    """A memory error on a page another process has mapped; that process's reads after
    the punch hole (its helper, ``mapping=1``, replaced after a fault)."""
    machine, steps, step = _recorder(kmsg)
    offset = page * PAGE_SIZE
    try:
        step("other_process_read", lambda: machine.host_read(offset, 1, mapping=1))
        assert machine.gmem is not None
        steps.append({"step": "poison", "child": _poison(machine.gmem.fd, page, True), "log": _kmsg(kmsg)})
        step("host_read", lambda: machine.host_read(offset, 1))
        step("punch_hole", lambda: machine.punch_hole(offset, PAGE_SIZE))
        step("host_read_after_punch", lambda: machine.host_read(offset, 1))
        step("other_process_read_after_punch", lambda: machine.host_read(offset, 1, mapping=1))
        step("other_process_read_again", lambda: machine.host_read(offset, 1, mapping=1))
        step("guest_read_after_punch", lambda: machine.guest_read(offset, 1))
    finally:
        machine.close()
    return {"page": page, "steps": steps}


def main(out: str) -> None:
    kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(kmsg, 0, os.SEEK_END)
    record: dict[str, Any] = {"unavailable": None, "cases": [], "mapped_elsewhere": None}
    if not os.path.exists("/proc/sys/vm/memory_failure_recovery"):
        record["unavailable"] = "the kernel has no MEMORY_FAILURE"
    else:
        record["cases"] = [case(2, True, kmsg), case(5, False, kmsg)]
        record["mapped_elsewhere"] = mapped_elsewhere(3, kmsg)
    with open(out, "w", encoding="utf-8") as file:
        json.dump(record, file, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])

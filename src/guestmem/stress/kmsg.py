"""The kernel log as a bug detector: reports of KASAN, KFENCE, lockdep, ``WARNING``,
``BUG``/oops, RCU stalls and hung tasks found in its text, and a reader of ``/dev/kmsg``
that returns what the kernel logged since it was opened.

A debug kernel (the test kernel ``v8-debug``: KASAN, lockdep, ``DEBUG_VM``) says what went
wrong in its log and carries on, so a stress run that looked only at its own results would
pass over a use-after-free or a lock inversion. :func:`find_splats` is a plain function of
the text (testable on a fake log); :class:`KernelLog` feeds it.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

#: (kind, pattern of the report's first line), checked in this order: a KASAN or lockdep
#: report also starts with ``BUG:`` or ``WARNING:``, and is named by its own kind.
KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("KASAN", re.compile(r"BUG: KASAN: ")),
    ("KFENCE", re.compile(r"BUG: KFENCE: ")),
    (
        "lockdep",
        re.compile(
            r"WARNING: (possible circular locking dependency detected|possible recursive locking detected"
            r"|inconsistent lock state|suspicious RCU usage|bad unlock balance detected"
            r"|lock held when returning to user space|held lock freed|possible irq lock inversion"
            r"|Nested lock was not taken|.*still has locks held)"
        ),
    ),
    ("lockdep", re.compile(r"BUG: (sleeping function called from invalid context|scheduling while atomic)")),
    ("RCU stall", re.compile(r"rcu: INFO: \S+ (self-)?detected stalls?|rcu_\w+ (self-)?detected stall")),
    ("hung task", re.compile(r"INFO: task \S+ blocked for more than \d+ seconds")),
    ("WARNING", re.compile(r"WARNING: CPU: \d+ PID: \d+ at |WARNING: at |------------\[ cut here \]")),
    ("BUG", re.compile(r"kernel BUG at |BUG: |Oops: |general protection fault|Kernel panic")),
    ("UBSAN", re.compile(r"UBSAN: ")),
]
#: Lines after a report's first that are kept with it.
CONTEXT_LINES = 40
#: Lines the kernel prints on purpose that look like a report but are none.
BENIGN = [
    re.compile(r"Injecting memory failure"),  # hwpoison injection, asked for
]
_PREFIX = re.compile(r"^(?:<\d+>)?(?:\[\s*\d+\.\d+\]\s*)?")


@dataclass(frozen=True)
class Splat:
    """One report: its kind, its first line and the lines that followed it."""

    kind: str
    line: str
    text: str


def _kind(line: str) -> str | None:
    if any(p.search(line) for p in BENIGN):
        return None
    for kind, pattern in KINDS:
        if pattern.search(line):
            return kind
    return None


def find_splats(log: str) -> list[Splat]:
    """The reports in ``log`` (the text of ``dmesg`` or ``/dev/kmsg`` records), in order.

    A ``[ cut here ]`` marker and the ``WARNING`` line it introduces make one report, and the
    lines a report's first line is followed by (its stack, up to :data:`CONTEXT_LINES`, until
    a report of another kind starts) belong to it."""
    lines = [_PREFIX.sub("", x) for x in log.splitlines()]
    found: list[Splat] = []
    i = 0
    while i < len(lines):
        kind = _kind(lines[i])
        if kind is None:
            i += 1
            continue
        first = i
        if "[ cut here ]" in lines[i]:  # the report proper is on the next line with a kind
            for j in range(i + 1, min(i + 4, len(lines))):
                inner = _kind(lines[j])
                if inner is not None and "[ cut here ]" not in lines[j]:
                    kind, first = inner, j
                    break
        end = first + 1
        while end < len(lines) and end - first < CONTEXT_LINES:
            if "---[ end trace" in lines[end]:
                end += 1
                break
            following = _kind(lines[end])
            if following is not None and (following != kind or "[ cut here ]" in lines[end]):
                break  # the next report (an oops after a BUG line is the same one)
            end += 1
        found.append(Splat(kind, lines[first].strip(), "\n".join(lines[first:end])))
        i = end
    return found


class KernelLog:
    """What the kernel logs from now on, read from ``/dev/kmsg`` without blocking.

    ``unavailable`` says why the log cannot be read here (not root, no ``/dev/kmsg``);
    the reader then returns nothing, and a run says it did not watch the log."""

    def __init__(self, path: str = "/dev/kmsg") -> None:
        self.fd = -1
        self.unavailable: str | None = None
        self.text: list[str] = []
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)  # only what comes after
        except OSError as err:
            self.unavailable = f"{path}: {err.strerror}"
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def read(self) -> str:
        """The records logged since the last read, as ``dmesg`` prints them (message only)."""
        if self.fd < 0:
            return ""
        new: list[str] = []
        while True:
            try:
                record = os.read(self.fd, 8192)
            except OSError as err:
                if err.errno == errno.EPIPE:  # overwritten before we read it: go on
                    continue
                if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                raise
            if not record:
                break
            _head, _, message = record.decode("utf-8", "replace").partition(";")
            # continuation lines of a record start with a space and carry KEY=value
            body = message.split("\n")[0]
            new.append(body)
        self.text.extend(new)
        return "\n".join(new)

    def all(self) -> str:
        return "\n".join(self.text)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

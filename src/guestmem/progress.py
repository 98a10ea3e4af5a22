"""Progress of long work on a terminal, and what was finished when Ctrl-C stops it.

A :class:`Status` redraws one line on stderr (at most ten times a second) while work
runs, and only when stderr is a terminal and the command's output is for people (not
``--format json``); otherwise it draws nothing. Whatever runs records what it has
finished with :meth:`Status.finish`; when Ctrl-C stops the command, ``guestmem`` prints
:func:`summary` as one line and exits with status 130. ``SIGTERM`` and ``SIGHUP`` stop it
the same way (:func:`stop_on_signals`), with status 128 + the signal's number, so what the
command started (a VM, worker processes, helpers) is stopped with it. Standard library only.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from types import FrameType, TracebackType
from typing import TextIO

#: Exit status after Ctrl-C (128 + SIGINT), as a shell reports it.
INTERRUPTED = 130
#: Exit status when a time limit stopped the work (as ``timeout(1)``): ``guestmem explore``
#: and ``analyze`` past ``--timeout``, ``guestmem vm`` past its ``--timeout``.
TIMED_OUT = 124
_ACTIVE: list[Status] = []
#: Signals that stop a command as Ctrl-C does.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """One of :data:`STOP_SIGNALS`, raised in the main thread: the work unwinds as after
    Ctrl-C, and the command exits with 128 + ``signo``."""

    def __init__(self, signo: int) -> None:
        super().__init__(signal.Signals(signo).name)
        self.signo = signo


def _stop(signo: int, _frame: FrameType | None) -> None:
    for name in STOP_SIGNALS:  # a second one must not cut the first one's cleanup short
        signal.signal(name, signal.SIG_IGN)
    raise Stopped(signo)


def stop_on_signals() -> None:
    """From now on :data:`STOP_SIGNALS` raise :class:`Stopped` in the main thread (where
    the caller is). A signal someone else handles or ignores is left as it is."""
    for name in STOP_SIGNALS:
        if signal.getsignal(name) == signal.SIG_DFL:
            signal.signal(name, _stop)


def default_stop_signals() -> None:
    """In a forked child (a worker, a helper): :data:`STOP_SIGNALS` end it again, as a
    pool's ``terminate`` and a parent's death expect."""
    for name in STOP_SIGNALS:
        signal.signal(name, signal.SIG_DFL)


def exit_status(stop: KeyboardInterrupt) -> int:
    """130 after Ctrl-C, 128 + the signal's number after :class:`Stopped`."""
    return 128 + stop.signo if isinstance(stop, Stopped) else INTERRUPTED


class Status:
    """One command's progress line and its list of finished parts."""

    def __init__(self, what: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.what = what
        self.stream = stream or sys.stderr
        self.enabled = enabled and _isatty(self.stream)
        self.finished: list[str] = []
        self.current = ""
        self.started = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    def __enter__(self) -> Status:
        _ACTIVE.append(self)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.clear()
        if kind is None or not issubclass(kind, KeyboardInterrupt):
            _ACTIVE.remove(self)  # kept after Ctrl-C, so the summary can name what was done

    def update(self, text: str, *, force: bool = False) -> None:
        """Show ``text`` as the current line (rate-limited unless ``force``)."""
        self.current = text
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        columns = shutil.get_terminal_size((80, 24)).columns
        line = f"{self.what}: {text}  [{_clock(now - self.started)}]"[: columns - 1]
        self.stream.write("\r" + line + " " * max(0, self._width - len(line)))
        self.stream.flush()
        self._width = len(line)

    def finish(self, part: str) -> None:
        """Record ``part`` as done (named in the summary if Ctrl-C comes later)."""
        self.finished.append(part)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def summary() -> str:
    """One line: what the interrupted command had finished, and what it was doing."""
    if not _ACTIVE:
        return "interrupted"
    status = _ACTIVE[-1]
    done = ", ".join(status.finished) if status.finished else "nothing"
    during = f" (stopped during: {status.current})" if status.current else ""
    elapsed = _clock(time.monotonic() - status.started)
    _ACTIVE.clear()
    return f"{status.what} interrupted after {elapsed}; finished: {done}{during}"


def rate(count: float, seconds: float) -> str:
    """``count`` per second, short (``12.3k/s``)."""
    per = count / seconds if seconds > 0 else 0.0
    return f"{per / 1000:.1f}k/s" if per >= 1000 else f"{per:.0f}/s"


def eta(done: float, total: float, seconds: float) -> str:
    """Time left at the rate so far (``?`` before anything is done)."""
    if done <= 0 or total <= done:
        return "?" if done <= 0 else "0s"
    return _clock(seconds * (total - done) / done)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

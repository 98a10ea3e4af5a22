"""Progress on a terminal, silence elsewhere, and Ctrl-C: exit 130, one line, no traceback.

The terminal is a real pseudo-terminal: the command runs as the session leader with the
pty as its controlling terminal, and Ctrl-C is the byte ``^C`` typed into it, so the
kernel's line discipline sends SIGINT to the whole foreground process group (workers
included), as it does for a person at a keyboard.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

from guestmem import progress
from guestmem.checker.explore import forked_pool
from guestmem.scenario import suite_dir
from process_support import new_tag, tagged

COMMAND = [sys.executable, "-m", "guestmem"]
SUITE = str(suite_dir())


def _read(fd: int, until: bytes | None, timeout: float) -> bytes:
    """Read from the pty master until ``until`` appears, EOF, or ``timeout``."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
        if until is not None and until in out:
            break
    return out


def _spawn(argv: list[str]) -> tuple[int, int]:
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    return pid, fd


def _reap(pid: int, timeout: float = 60) -> int:
    """The child's exit status; killed (and the test failed) if it does not end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"{pid} did not end within {timeout} s")


def _interrupt(argv: list[str], shown: bytes) -> tuple[int, str, str]:
    """Run ``argv`` on a pty, wait until it shows ``shown``, type ^C; (status, before, after)."""
    pid, fd = _spawn(argv)
    after = b""
    try:
        before = _read(fd, shown, timeout=120)
        if shown in before:
            os.write(fd, b"\x03")
            after = _read(fd, None, timeout=60)
    finally:
        code = _reap(pid, timeout=1 if shown not in before else 60)
        os.close(fd)
    assert shown in before, before.decode(errors="replace")
    return code, before.decode(errors="replace"), after.decode(errors="replace")


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["explore", "--platform", "all", "--depth", "12", "--workers", "1"], b"generated"),
        (["explore", "--platform", "snp", "--pages", "3", "--depth", "12", "--workers", "2"], b"depth"),
        (["analyze", "--abi", "all", "--workers", "2"], b"analyze: "),
    ],
)
def test_ctrl_c_ends_with_130_and_one_line_naming_what_was_finished(argv: list[str], shown: bytes) -> None:
    code, before, after = _interrupt([*COMMAND, *argv], shown)
    assert code == progress.INTERRUPTED
    assert "Traceback" not in before + after
    lines = [line for line in after.replace("\r", "\n").splitlines() if line.strip() and line.strip() != "^C"]
    assert len(lines) == 1, after
    assert lines[0].startswith(f"guestmem: {argv[0]} interrupted after ") and "finished: " in lines[0]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_the_work_as_ctrl_c_does(stop: signal.Signals) -> None:
    """128 + the signal's number, one line, no traceback, and no worker left running (a
    pool's workers must still die of the pool's own SIGTERM)."""
    tag = new_tag()
    proc = subprocess.Popen(
        [*COMMAND, "explore", "--platform", "snp", "--pages", "3", "--depth", "12", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **tag},
    )
    deadline = time.monotonic() + 60
    while len(tagged(tag)) < 3 and time.monotonic() < deadline:  # the command and its 2 workers
        time.sleep(0.1)
    time.sleep(1)
    proc.send_signal(stop)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + stop, err
    assert out == b"" and b"Traceback" not in err and err.count(b"\n") == 1, err
    assert err.decode().startswith(f"guestmem: {stop.name} received: explore interrupted after ")
    deadline = time.monotonic() + 10
    while tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tagged(tag) == []


def test_progress_shows_states_rate_and_level_on_a_terminal() -> None:
    code, before, _ = _interrupt(
        [*COMMAND, "explore", "--platform", "all", "--depth", "12", "--workers", "1"], b"/s)"
    )
    assert code == progress.INTERRUPTED
    line = before.replace("\r", "\n").splitlines()[-1]
    assert line.startswith("explore: sw_protected: depth ") and "distinct" in line and "generated (" in line


def test_json_on_a_terminal_and_output_to_a_pipe_show_no_progress() -> None:
    pid, fd = _spawn([*COMMAND, "explore", "--platform", "pkvm", "--depth", "3", "--format", "json"])
    try:
        shown = _read(fd, None, timeout=120)
    finally:
        code = _reap(pid)
        os.close(fd)
    assert code == 0
    assert b"\r" not in shown.replace(b"\r\n", b"\n") and shown.lstrip().startswith(b"{")
    piped = subprocess.run(
        [*COMMAND, "explore", "--platform", "pkvm", "--depth", "3"], capture_output=True, check=False
    )
    assert piped.returncode == 0 and piped.stderr == b"" and b"pkvm" in piped.stdout


def test_ctrl_c_without_a_terminal_still_ends_cleanly() -> None:
    proc = subprocess.Popen(
        [*COMMAND, "explore", "--platform", "all", "--depth", "12", "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == progress.INTERRUPTED
    assert out == b""
    assert err.decode().startswith("guestmem: explore interrupted after ") and err.count(b"\n") == 1


def test_status_draws_only_on_a_terminal_and_summarises() -> None:
    stream = io.StringIO()
    with progress.Status("work", stream=stream) as status:
        status.update("step 1", force=True)
        status.finish("part a")
    assert stream.getvalue() == ""  # not a terminal
    assert progress.eta(1, 4, 10.0) == "30s" and progress.rate(2500, 1.0) == "2.5k/s"
    with pytest.raises(KeyboardInterrupt), progress.Status("work", stream=stream) as status:
        status.finish("part a")
        status.update("part b")
        raise KeyboardInterrupt
    line = progress.summary()
    assert line.startswith("work interrupted after 0s; finished: part a (stopped during: part b)")
    assert progress.summary() == "interrupted"  # reported once


@pytest.mark.parametrize(
    ("argv", "small", "word"),
    [
        (["check", "--abi", "all"], ["check", "-k", "selftest_truncate"], "check: "),
        (
            ["run", f"{SUITE}/review_payload_injection.toml", "--abi", "all"],
            ["run", f"{SUITE}/selftest_truncate.toml"],
            "run: ",
        ),
    ],
)
def test_check_and_run_count_runs_on_a_terminal_and_stay_silent_elsewhere(
    argv: list[str], small: list[str], word: str
) -> None:
    pid, fd = _spawn([*COMMAND, *argv])
    try:
        shown = _read(fd, None, timeout=120).decode(errors="replace")
    finally:
        code = _reap(pid)
        os.close(fd)
    assert code == 0, shown
    drawn = [part for part in shown.split("\r") if part.startswith(word)]
    assert drawn and " runs; " in drawn[0], shown
    assert "Traceback" not in shown
    pid, fd = _spawn([*COMMAND, *small, "--format", "json"])
    try:
        shown = _read(fd, None, timeout=120).decode(errors="replace")
    finally:
        code = _reap(pid)
        os.close(fd)
    assert code == 0 and word not in shown and shown.lstrip().startswith("{"), shown
    piped = subprocess.run([*COMMAND, *small], capture_output=True, check=False)
    assert piped.returncode == 0 and piped.stderr == b"" and piped.stdout


def _sigint_in_worker() -> tuple[bool, bool]:
    """(SIGINT ignored, SIGINT blocked) in the calling process."""
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN, signal.SIGINT in signal.pthread_sigmask(
        signal.SIG_BLOCK, set()
    )


def test_forked_workers_ignore_ctrl_c_and_the_parent_still_gets_it() -> None:
    """Workers are forked with SIGINT blocked (a Ctrl-C during their start-up cannot reach
    them), then ignore it unblocked; the parent's mask is as it was, so its Ctrl-C
    arrives as KeyboardInterrupt."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    with forked_pool(2) as pool:
        assert pool.apply(_sigint_in_worker) == (True, False)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)

"""Boot a kernel under QEMU with virtme-ng and run one command inside (``guestmem vm``).

The host's root filesystem is shared read-only (virtme-ng's default), so this checkout,
its Python and its virtualenv run inside unchanged. A host directory made for the run is
shared read-write as the scratch directory: ``$GUESTMEM_SCRATCH`` inside, also
``$TMPDIR``. The command's output streams to this process's stdout; its exit status
comes back through the scratch directory (not through QEMU), so a VM that dies is told
apart from a command that fails.

QEMU uses KVM when the host can nest (a usable ``/dev/kvm`` and a CPU with ``vmx`` or
``svm``); otherwise TCG, which emulates an AMD CPU with SVM, so the kernel's ``kvm_amd``
runs guests inside either way (the test kernels' README, *Booting*).

Before the command the runner checks inside that ``/dev/kvm`` works and that
``KVM_SET_MEMORY_ATTRIBUTES2`` exists (``require_ioctl``). Every failure of the runner
itself has its own exit status (:data:`EXIT_STATUS`) and a message naming what was wrong;
nothing waits without a time limit. This module needs nothing beyond the standard
library: virtme-ng (the ``vm`` extra) and QEMU are found on ``PATH`` when a VM is booted.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from guestmem import outfile, progress

QEMU = "qemu-system-x86_64"
VNG = "vng"
#: Exit statuses of the runner's own failures (the command's status passes through). They sit
#: in 120-125, with timeout(1)'s 124 meaning "did not finish in time" as it does for
#: ``guestmem explore`` and ``analyze``, apart from guestmem's other statuses (0, 1, 2,
#: 4 = KSFT_SKIP, 130) and those of a kselftest run inside.
EXIT_BAD_KERNEL = 120
EXIT_NO_QEMU = 121
EXIT_NO_VIRTME = 122
EXIT_NO_IOCTL = 123
EXIT_TIMEOUT = progress.TIMED_OUT
EXIT_BOOT = 125
EXIT_STATUS = {
    "bad kernel file": EXIT_BAD_KERNEL,
    "QEMU missing": EXIT_NO_QEMU,
    "virtme-ng missing": EXIT_NO_VIRTME,
    "no KVM_SET_MEMORY_ATTRIBUTES2 (or no usable /dev/kvm) inside": EXIT_NO_IOCTL,
    "boot failed or did not finish in time": EXIT_BOOT,
    "command did not finish in time": EXIT_TIMEOUT,
}
DEFAULT_TIMEOUT = 3600.0
DEFAULT_BOOT_TIMEOUT = 300.0
DEFAULT_MEMORY = "2G"
#: The line the VM prints when it has booted and is about to run the command.
BOOTED = "guestmem-vm: booted"
STATUS_FILE = "status"
#: What the check before the command said (its stderr).
CHECK_FILE = "check.txt"
#: Host environment variables the command sees inside too.
PASSED_ON = ("CI", "GUESTMEM_DIFF_EXAMPLES", "GUESTMEM_TIMEOUT", "HYPOTHESIS_PROFILE")
#: Seconds a scenario run may take inside a VM under software emulation (guestmem's
#: ``--timeout`` default there, ``$GUESTMEM_TIMEOUT``): the long selftests take minutes.
EMULATED_RUN_TIMEOUT = 900
#: How much of a failed boot's console output the error message quotes.
TAIL_LINES = 15


class VmError(Exception):
    """The runner could not run the command; ``status`` is the exit status to use."""

    status = 1


class BadKernel(VmError):
    status = EXIT_BAD_KERNEL


class NoQemu(VmError):
    status = EXIT_NO_QEMU


class NoVirtme(VmError):
    status = EXIT_NO_VIRTME


class NoIoctl(VmError):
    status = EXIT_NO_IOCTL


class BootFailed(VmError):
    status = EXIT_BOOT


class TimedOut(VmError):
    status = EXIT_TIMEOUT


class Cancelled(VmError):
    """:attr:`VmRun.cancel` was set (by another thread); the VM was stopped."""

    status = 130


# --- the kernel file ----------------------------------------------------------------------------
def kernel_version(path: str | os.PathLike[str]) -> str:
    """The version string of an x86 ``bzImage``; :class:`BadKernel` names what is wrong.

    The boot header (Documentation/arch/x86/boot.rst) has the magic ``HdrS`` at 0x202 and,
    from protocol 2.00 on, a pointer at 0x20e to the version string (offset by 0x200).
    """
    file = Path(path)
    if not file.exists():
        raise BadKernel(f"{file}: no such kernel file")
    if not file.is_file():
        raise BadKernel(f"{file}: not a regular file (give the built bzImage, e.g. arch/x86/boot/bzImage)")
    try:
        with file.open("rb") as f:
            head = f.read(0x10000)
    except OSError as err:
        raise BadKernel(f"{file}: cannot read: {err.strerror}") from None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        raise BadKernel(f"{file}: not an x86 bzImage (no 'HdrS' boot header at 0x202)")
    (pointer,) = struct.unpack_from("<H", head, 0x20E)
    start = pointer + 0x200
    version = head[start : head.find(b"\0", start)] if 0 < start < len(head) else b""
    return version.decode("ascii", "replace").strip() or "unknown version"


# --- what the host has --------------------------------------------------------------------------
def find_qemu(env: dict[str, str] | None = None) -> str:
    """Path of ``qemu-system-x86_64`` on ``PATH``, else :class:`NoQemu` with the fix."""
    found = shutil.which(QEMU, path=(env or os.environ).get("PATH", os.defpath))
    if found is None:
        raise NoQemu(
            f"{QEMU} not found on PATH: install QEMU (Debian: apt-get install qemu-system-x86; "
            "./scripts/test does this when run as root)"
        )
    return found


def find_vng(env: dict[str, str] | None = None) -> str:
    """Path of virtme-ng's ``vng``: beside this Python first (a virtualenv), then ``PATH``."""
    path = os.pathsep.join([str(Path(sys.executable).parent), (env or os.environ).get("PATH", os.defpath)])
    found = shutil.which(VNG, path=path)
    if found is None:
        raise NoVirtme(
            "virtme-ng (vng) not found: install the extra, pip install -e '.[vm]' (./scripts/test does this)"
        )
    return found


def host_can_nest() -> bool:
    """Whether QEMU can use KVM here: a usable ``/dev/kvm`` and hardware virtualization
    (``vmx``/``svm``) in the host CPU's flags, which a nested kernel needs too."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"vmx", "svm"})


# --- inside the VM ----------------------------------------------------------------------------
def inside_check() -> int:
    """Run inside the VM before the command: 0 when ``/dev/kvm`` works and the guest_memfd
    answers ``KVM_SET_MEMORY_ATTRIBUTES2`` (anything but ``ENOTTY``), else print why and
    return :data:`EXIT_NO_IOCTL`."""
    import errno

    from guestmem.errors import IoctlError
    from guestmem.kvm.system import Kvm, KvmUnavailable
    from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_MMAP, PAGE_SIZE

    try:
        with (
            Kvm() as kvm,
            kvm.create_vm() as vm,
            vm.create_guest_memfd(PAGE_SIZE, GUEST_MEMFD_FLAG_MMAP) as g,
        ):
            code = g.conversion_errno()
    except (KvmUnavailable, IoctlError) as err:
        print(f"guestmem vm: no usable KVM inside the VM: {err}", file=sys.stderr)
        return EXIT_NO_IOCTL
    if code == errno.ENOTTY:
        print(
            "guestmem vm: this kernel has no KVM_SET_MEMORY_ATTRIBUTES2 (ENOTTY on a guest_memfd): "
            "boot a kernel with the in-place conversion series (or pass --any-kernel)",
            file=sys.stderr,
        )
        return EXIT_NO_IOCTL
    return 0


def _python_path() -> str:
    """The directory holding the ``guestmem`` package (a checkout's ``src`` or site-packages)."""
    return str(Path(__file__).resolve().parent.parent)


def _command_argv(command: Sequence[str]) -> list[str]:
    """``guestmem ...`` becomes this Python's ``-m guestmem ...`` (a bare checkout has no script)."""
    if command and command[0] == "guestmem":
        return [sys.executable, "-m", "guestmem", *command[1:]]
    return list(command)


def inside_script(
    command: Sequence[str], scratch: str, cwd: str, *, require_ioctl: bool, emulated: bool = False
) -> str:
    """The shell script the VM runs: environment, the boot marker, the check, the command;
    the command's exit status goes to ``$GUESTMEM_SCRATCH/status``. ``emulated`` (TCG)
    raises guestmem's per-run time limit to :data:`EMULATED_RUN_TIMEOUT` unless the host
    sets ``$GUESTMEM_TIMEOUT``."""
    q = shlex.quote
    python = q(sys.executable)
    lines = [
        "#!/bin/sh",
        f"export GUESTMEM_SCRATCH={q(scratch)} TMPDIR={q(scratch)} GUESTMEM_IN_VM=1",
        f'export PYTHONPATH={q(_python_path())}"${{PYTHONPATH:+:$PYTHONPATH}}"',
        f'export PATH={q(str(Path(sys.executable).parent))}:"$PATH"',
        "export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1",
        'export HYPOTHESIS_STORAGE_DIRECTORY="$GUESTMEM_SCRATCH/.hypothesis"',
        *(f"export {name}={q(os.environ[name])}" for name in PASSED_ON if name in os.environ),
        *(
            [f"export GUESTMEM_TIMEOUT={EMULATED_RUN_TIMEOUT}"]
            if emulated and "GUESTMEM_TIMEOUT" not in os.environ
            else []
        ),
        f"cd {q(cwd)} || exit 1",
        f'echo "{BOOTED} $(cut -d" " -f1 /proc/uptime) s after power-on, $(uname -r)"',
    ]
    if require_ioctl:
        lines.append(
            f"{python} -c 'import sys; from guestmem.vmrun import inside_check; sys.exit(inside_check())' "
            f"2> {q(scratch)}/{CHECK_FILE} "
            f"|| {{ echo {EXIT_NO_IOCTL} > {q(scratch)}/{STATUS_FILE}.check; exit 0; }}"
        )
    lines += [shlex.join(_command_argv(command)), f"echo $? > {q(scratch)}/{STATUS_FILE}"]
    return "\n".join(lines) + "\n"


# --- the run ------------------------------------------------------------------------------------
@dataclass
class VmRun:
    """One boot: ``kernel`` runs ``command``; see :func:`run`."""

    kernel: str
    command: Sequence[str]
    timeout: float = DEFAULT_TIMEOUT
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    memory: str = DEFAULT_MEMORY
    cpus: int = 2
    append: Sequence[str] = ()
    require_ioctl: bool = True
    #: A host directory to share read-write; None: a fresh temporary one, removed afterwards.
    scratch: str | None = None
    cwd: str = field(default_factory=os.getcwd)
    accel: str | None = None  # "kvm" or "tcg"; None: KVM when the host can nest
    #: Set from another thread to stop the VM (within a second): :class:`Cancelled`.
    cancel: threading.Event | None = None
    out: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    progress: Callable[[str], None] = field(default=lambda msg: print(f"guestmem vm: {msg}", file=sys.stderr))

    def argv(self, vng: str, scratch: str, accel: str) -> list[str]:
        argv = [vng, "--run", self.kernel, "--memory", self.memory, "--cpus", str(self.cpus)]
        argv += ["--rwdir", scratch, "--cwd", "/"]
        if accel == "tcg":
            argv.append("--disable-kvm")
        for option in self.append:
            argv += ["--append", option]
        return [*argv, "--exec", f"sh {shlex.quote(os.path.join(scratch, 'run.sh'))}"]

    def execute(self) -> int:
        """Boot, stream, and return the command's exit status; :class:`VmError` otherwise."""
        if not self.command:
            raise VmError("no command given (guestmem vm [options] -- COMMAND ...)")
        version = kernel_version(self.kernel)
        env = dict(os.environ)
        find_qemu(env)
        vng = find_vng(env)
        env["PATH"] = os.pathsep.join([str(Path(vng).parent), env.get("PATH", os.defpath)])
        accel = self.accel or ("kvm" if host_can_nest() else "tcg")
        with contextlib.ExitStack() as stack:
            scratch = self.scratch or stack.enter_context(tempfile.TemporaryDirectory(prefix="guestmem-vm-"))
            directory = stack.enter_context(outfile.Directory(scratch, create=True, what="--scratch"))
            for name in (STATUS_FILE, STATUS_FILE + ".check", CHECK_FILE):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(scratch, name))
            script = inside_script(
                self.command, scratch, self.cwd, require_ioctl=self.require_ioctl, emulated=accel == "tcg"
            )
            directory.write("run.sh", script)
            self.progress(f"booting {self.kernel} ({version}) with {accel.upper()}")
            return self._boot(self.argv(vng, scratch, accel), env, scratch)
        raise AssertionError("unreachable")

    def _boot(self, argv: list[str], env: dict[str, str], scratch: str) -> int:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip
        assert proc.stdout is not None
        started = time.monotonic()
        booted_at: float | None = None
        tail: list[bytes] = []
        pending = b""
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                now = time.monotonic()
                if booted_at is None and now - started > self.boot_timeout:
                    raise BootFailed(
                        f"{self.kernel} did not boot within {self.boot_timeout:g} s (the VM was stopped)"
                        + _quote_tail(tail)
                    )
                if booted_at is not None and now - booted_at > self.timeout:
                    raise TimedOut(
                        f"the command did not finish within {self.timeout:g} s (the VM was stopped): "
                        f"{shlex.join(self.command)}"
                    )
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled(
                        f"the run of {shlex.join(self.command)} was cancelled (the VM was stopped)"
                    )
                if not selector.select(timeout=1.0):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                if booted_at is not None:  # the command's output: pass it on as it comes
                    self.out.write(chunk.replace(b"\r\n", b"\n"))
                    self.out.flush()
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for number, raw in enumerate(lines):
                    line = raw.rstrip(b"\r").rstrip()
                    text = line.decode("utf-8", "replace")
                    if BOOTED in text:
                        booted_at = time.monotonic()
                        self.progress("booted" + text.split(BOOTED, 1)[1])
                        rest = b"\n".join([*lines[number + 1 :], pending])
                        self.out.write(rest.replace(b"\r\n", b"\n"))
                        self.out.flush()
                        break
                    tail = [*tail[-TAIL_LINES:], line]
            proc.wait(timeout=30)
        except BaseException:
            _stop(proc)
            raise
        finally:
            selector.close()
            proc.stdout.close()
        return self._status(scratch, booted_at is not None, proc.returncode, tail)

    def _status(self, scratch: str, booted: bool, vng_status: int, tail: list[bytes]) -> int:
        check = _read_status(os.path.join(scratch, STATUS_FILE + ".check"))
        if check is not None:
            try:
                said = Path(scratch, CHECK_FILE).read_text().strip().removeprefix("guestmem vm: ")
            except OSError:
                said = "the check inside the VM failed"
            raise NoIoctl(f"{self.kernel}: {said}")
        status = _read_status(os.path.join(scratch, STATUS_FILE))
        if status is not None:
            return status
        if not booted:
            raise BootFailed(
                f"{self.kernel} did not boot to the command (vng exited with {vng_status})"
                + _quote_tail(tail)
            )
        raise BootFailed(
            f"the VM stopped before the command finished (vng exited with {vng_status}; "
            "a kernel panic or a crash of the VM)"
        )


def _read_status(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _quote_tail(tail: list[bytes]) -> str:
    text = b"\n".join(line for line in tail if line.strip()).decode("utf-8", "replace")
    return f"; last output:\n{text}" if text else ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop virtme-ng and QEMU (their own process group): TERM, then KILL."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def default_kernel() -> str | None:
    """``$GUESTMEM_KERNEL``, else the v8 test kernel of :func:`test_kernel`."""
    return os.environ.get("GUESTMEM_KERNEL") or test_kernel("v8")


def test_kernel(revision: str) -> str | None:
    """The project's test kernel for ``revision`` (``v8``, ``rfc-v5``): ``shared/kernel/``
    beside the checkout or one level further up; None when neither has it."""
    repo = Path(__file__).resolve().parents[2]
    for base in (repo.parent, repo.parent.parent):
        candidate = base / "shared" / "kernel" / revision / "bzImage"
        if candidate.is_file():
            return str(candidate)
    return None

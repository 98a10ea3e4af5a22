"""Boot a kernel under QEMU with virtme-ng and run one command inside (``guestmem vm``).

The host's root filesystem is shared read-only over 9p, so this checkout, its Python and
its virtualenv run inside unchanged. The guest caches what it reads of it (``cache=loose``,
:data:`ROOT_FLAGS`): without that every ``stat`` and ``open`` is a round trip to QEMU,
which under emulation costs milliseconds, and a Python start that imports the project
took 10 to 80 s instead of 3 to 4 s (``docs/bench.md``, *Inside a test kernel*). The
price: a file the host changes while the VM runs may look unchanged inside, once the
guest has read it (``no_root_cache`` / ``--no-root-cache`` turns the cache off). A host
directory made for the run is shared read-write, uncached, as the scratch directory:
``$GUESTMEM_SCRATCH`` inside, also ``$TMPDIR``. The command's exit status comes back
through the scratch directory (not through QEMU), so a VM that dies is told apart from a
command that fails.

The command's output travels on a channel of the runner's own: two virtio-serial ports,
``guestmem.stdout`` and ``guestmem.stderr``, each backed on the host by a Unix socket the
runner listens on. Inside, the script finds each port by its name in
``/sys/class/virtio-ports/*/name`` and writes to its ``/dev/vportNpM`` node, which the
kernel's devtmpfs makes without help. The host relays each socket to its own stream as
bytes arrive, so stdout and stderr stay apart and a long run's progress shows as it
happens, whether the caller's stdout is a terminal, a pipe or a file. virtme-ng's own
ports are not used: their ``/dev/virtio-ports/virtme.*`` names are made by udev, and on a
host without ``systemd-udevd`` its init falls back to the serial console, which vng shows
only with ``--verbose`` and mixed with the kernel's messages. Files in the scratch
directory could carry output too, but the host would have to poll them and could not tell
a finished stream from a stalled one; a socket wakes the reader and ends when QEMU does.

Nothing is lost silently. The first line on ``guestmem.stdout`` is the boot marker
(:data:`BOOTED`) and the last bytes on each port are an end mark unique to the run, which
the host takes out of the stream. A VM without the ports, a command that ran but whose
marker never arrived, or a stream cut off before its end mark is :class:`OutputLost`
(:data:`EXIT_OUTPUT_LOST`), with the reason. vng runs with ``--verbose``, so the kernel's
console reaches the runner too: it is kept only for the messages of a boot that fails.

QEMU uses KVM when the host can nest (a usable ``/dev/kvm`` and a CPU with ``vmx`` or
``svm``); otherwise TCG, which emulates an AMD CPU with SVM, so the kernel's ``kvm_amd``
runs guests inside either way (the test kernels' README, *Booting*). The machine is
QEMU's PC (``--disable-microvm``), so the ports sit on a PCI virtio-serial device.

Before the command the runner checks inside that ``/dev/kvm`` works and that
``KVM_SET_MEMORY_ATTRIBUTES2`` exists (``require_ioctl``). Every failure of the runner
itself has its own exit status (:data:`EXIT_STATUS`) and a message naming what was wrong;
nothing waits without a time limit. This module needs nothing beyond the standard
library: virtme-ng (the ``vm`` extra) and QEMU are found on ``PATH`` when a VM is booted.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from guestmem import outfile, progress

QEMU = "qemu-system-x86_64"
VNG = "vng"
#: Exit statuses of the runner's own failures (the command's status passes through). They sit
#: in 119-125, with timeout(1)'s 124 meaning "did not finish in time" as it does for
#: ``guestmem explore`` and ``analyze``, apart from guestmem's other statuses (0, 1, 2,
#: 4 = KSFT_SKIP, 130), those of a kselftest run inside and the shell's (126, 127).
#: The 9p mount options of the guest's root: virtme-ng's own (``--force-9p``) and the
#: guest's cache (the module's docstring). They reach the kernel as a later ``rootflags=``
#: than virtme-ng's, which is the one it uses.
ROOT_FLAGS = "version=9p2000.L,trans=virtio,access=any,msize=524288"
ROOT_CACHE = "cache=loose"
EXIT_OUTPUT_LOST = 119
EXIT_BAD_KERNEL = 120
EXIT_NO_QEMU = 121
EXIT_NO_VIRTME = 122
EXIT_NO_IOCTL = 123
EXIT_TIMEOUT = progress.TIMED_OUT
EXIT_BOOT = 125
EXIT_STATUS = {
    "the command's output did not reach the host": EXIT_OUTPUT_LOST,
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
#: The runner's own files, in a directory made for the run in the scratch directory
#: (named with this prefix) and removed after it: the script, and what it leaves for the
#: host. The command's exit status:
STATUS_FILE = "status"
#: The script the VM runs.
SCRIPT_FILE = "run.sh"
CONTROL_PREFIX = ".guestmem-vm-"
#: What the check before the command said (its stderr).
CHECK_FILE = "check.txt"
#: Why the script inside found no output channel (written instead of running the command).
NO_CHANNEL_FILE = "channel.txt"
#: The virtio-serial ports that carry the command's stdout and stderr, by stream.
PORTS = {"stdout": "guestmem.stdout", "stderr": "guestmem.stderr"}
#: Seconds the script inside waits for the ports to appear with their names.
PORT_WAIT = 5
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


class OutputLost(VmError):
    """The command's output could not be delivered (no channel, or a channel cut off)."""

    status = EXIT_OUTPUT_LOST


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
    command: Sequence[str],
    scratch: str,
    cwd: str,
    *,
    require_ioctl: bool,
    end: bytes,
    emulated: bool = False,
    control: str | None = None,
) -> str:
    """The shell script the VM runs: environment, the output channel (:data:`PORTS`), the
    boot marker, the check, the command, and ``end`` on each port; the command's exit
    status goes to :data:`STATUS_FILE` in ``control``, the runner's own directory (default:
    ``scratch``). Without the ports it writes why to :data:`NO_CHANNEL_FILE` and runs
    nothing. ``emulated`` (TCG) raises guestmem's per-run time limit to
    :data:`EMULATED_RUN_TIMEOUT` unless the host sets ``$GUESTMEM_TIMEOUT``."""
    q = shlex.quote
    own = q(control or scratch)
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
        "port() {  # the device node of the virtio-serial port named $1, once it has its name",
        "    i=0",
        f"    while [ $i -lt {PORT_WAIT * 10} ]; do",
        "        for name in /sys/class/virtio-ports/*/name; do",
        '            [ "$(cat "$name" 2>/dev/null)" = "$1" ] || continue',
        '            node=/dev/$(basename "$(dirname "$name")")',
        '            [ -c "$node" ] && echo "$node" && return 0',
        "        done",
        "        i=$((i + 1)); sleep 0.1",
        "    done",
        "    return 1",
        "}",
        f"out=$(port {PORTS['stdout']}) && err=$(port {PORTS['stderr']}) || {{",
        "    names=$(cat /sys/class/virtio-ports/*/name 2>/dev/null | tr '\\n' ' ')",
        f'    echo "no virtio-serial ports {PORTS["stdout"]} and {PORTS["stderr"]} with device nodes '
        '(named ports: ${names:-none}); the kernel needs CONFIG_VIRTIO_CONSOLE and CONFIG_DEVTMPFS" '
        f"> {own}/{NO_CHANNEL_FILE}",
        "    exit 0",
        "}",
        'exec < /dev/null > "$out" 2> "$err"',
        f"cd {q(cwd)} || exit 1",
        f'echo "{BOOTED} $(cut -d" " -f1 /proc/uptime) s after power-on, $(uname -r)"',
    ]
    if require_ioctl:
        lines.append(
            f"{python} -c 'import sys; from guestmem.vmrun import inside_check; sys.exit(inside_check())' "
            f"2> {own}/{CHECK_FILE} "
            f"|| {{ echo {EXIT_NO_IOCTL} > {own}/{STATUS_FILE}.check; exit 0; }}"
        )
    mark = _printf(end)
    lines += [
        shlex.join(_command_argv(command)),
        "status=$?",
        f"{mark}; {mark} >&2",
        f"echo $status > {own}/{STATUS_FILE}",
    ]
    return "\n".join(lines) + "\n"


def end_mark() -> bytes:
    """A fresh end mark: ASCII record separators around a random name, never text a
    command prints by chance."""
    return b"\x1eguestmem-vm-end-" + secrets.token_hex(8).encode() + b"\x1e"


def _printf(data: bytes) -> str:
    """A ``printf`` command that writes exactly ``data`` (octal escapes for the rest)."""
    plain = {*range(0x20, 0x7F)} - {ord("'"), ord("\\"), ord("%")}
    return "printf '" + "".join(chr(b) if b in plain else f"\\{b:03o}" for b in data) + "'"


class Relay:
    """One port's bytes on their way to the caller: passed on as they come, except the run's
    end mark, which is taken out and noted. Only a tail that could be the start of the mark
    is held back until the next bytes show what it is."""

    def __init__(self, sink: BinaryIO, end: bytes) -> None:
        self.sink = sink
        self.end = end
        self.held = b""
        self.ended = False

    def feed(self, chunk: bytes) -> None:
        data = self.held + chunk
        at = data.find(self.end)
        keep = 0
        if at >= 0:
            self.ended = True
            data = data[:at] + data[at + len(self.end) :]
        else:
            keep = next(
                (n for n in range(min(len(self.end) - 1, len(data)), 0, -1) if data.endswith(self.end[:n])), 0
            )
        self.held = data[len(data) - keep :] if keep else b""
        self._write(data[: len(data) - keep])

    def close(self) -> None:
        """The port closed: what was held back was output after all."""
        self._write(self.held)
        self.held = b""

    def _write(self, data: bytes) -> None:
        if data:
            self.sink.write(data)
            self.sink.flush()


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
    #: Whether the guest caches the host's root filesystem (the module's docstring).
    root_cache: bool = True
    #: Set from another thread to stop the VM (within a second): :class:`Cancelled`.
    cancel: threading.Event | None = None
    #: Where the command's stdout and stderr go, as they come.
    out: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    err: BinaryIO = field(default_factory=lambda: sys.stderr.buffer)
    progress: Callable[[str], None] = field(default=lambda msg: print(f"guestmem vm: {msg}", file=sys.stderr))

    def argv(self, vng: str, scratch: str, accel: str, sockets: dict[str, str], control: str) -> list[str]:
        """vng's arguments; ``sockets`` are the host ends of :data:`PORTS`, by stream;
        ``control`` holds the script."""
        argv = [vng, "--run", self.kernel, "--memory", self.memory, "--cpus", str(self.cpus)]
        argv += ["--rwdir", scratch, "--cwd", "/", "--verbose", "--disable-microvm", "--force-9p"]
        if accel == "tcg":
            argv.append("--disable-kvm")
        flags = f"{ROOT_FLAGS},{ROOT_CACHE}" if self.root_cache else ROOT_FLAGS
        argv += ["--append", f"rootflags={flags}"]
        for option in self.append:
            argv += ["--append", option]
        qemu = ["-device", "virtio-serial-pci,id=guestmem-serial"]
        for stream, path in sockets.items():
            qemu += ["-chardev", f"socket,id=guestmem-{stream},path={path}"]
            qemu += [
                "-device",
                f"virtserialport,bus=guestmem-serial.0,chardev=guestmem-{stream},name={PORTS[stream]}",
            ]
        argv += [f"--qemu-opts={arg}" for arg in qemu]
        return [*argv, "--exec", f"sh {shlex.quote(os.path.join(control, SCRIPT_FILE))}"]

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
            # the runner's own files go in a fresh directory of their own, removed afterwards:
            # never over a file of the command's, nor left among them
            with outfile.Directory(scratch, create=True, what="--scratch") as shared:
                control = shared.fresh(CONTROL_PREFIX)
            stack.callback(shutil.rmtree, control, ignore_errors=True)
            end = end_mark()
            script = inside_script(
                self.command,
                scratch,
                self.cwd,
                require_ioctl=self.require_ioctl,
                end=end,
                emulated=accel == "tcg",
                control=control,
            )
            with outfile.Directory(control) as directory:
                directory.write(SCRIPT_FILE, script)
            sockets = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="guestmem-vm-io-", dir=_socket_dir())
            )
            paths = {stream: os.path.join(sockets, stream) for stream in PORTS}
            listeners = {stream: stack.enter_context(_listen(path)) for stream, path in paths.items()}
            self.progress(f"booting {self.kernel} ({version}) with {accel.upper()}")
            return self._boot(self.argv(vng, scratch, accel, paths, control), env, control, listeners, end)
        raise AssertionError("unreachable")

    def _boot(
        self,
        argv: list[str],
        env: dict[str, str],
        control: str,
        listeners: dict[str, socket.socket],
        end: bytes,
    ) -> int:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip
        assert proc.stdout is not None
        console = proc.stdout
        started = time.monotonic()
        booted_at: float | None = None
        tail: list[bytes] = []  # the console's last lines
        pending = b""  # the console's unfinished line
        first = b""  # the stdout port's bytes while its first line (the boot marker) is awaited
        relays = {stream: Relay(sink, end) for stream, sink in (("stdout", self.out), ("stderr", self.err))}
        waiting = dict(listeners)  # the sockets QEMU has not connected yet
        connections: dict[str, socket.socket] = {}
        selector = selectors.DefaultSelector()

        def connect(stream: str, listener: socket.socket) -> None:
            connections[stream] = listener.accept()[0]
            selector.register(connections[stream], selectors.EVENT_READ, stream)

        selector.register(console, selectors.EVENT_READ)
        for stream, listener in listeners.items():
            selector.register(listener, selectors.EVENT_READ, stream)
        try:
            while selector.get_map():
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
                for key, _events in selector.select(timeout=1.0):
                    if key.fileobj is console:
                        chunk = os.read(console.fileno(), 65536)
                        if chunk:
                            *lines, pending = (pending + chunk).split(b"\n")
                            tail = [*tail, *(line.rstrip() for line in lines)][-TAIL_LINES:]
                            continue
                        # QEMU has exited: take a connection it left waiting, then stop listening
                        selector.unregister(console)
                        for stream, listener in list(waiting.items()):
                            selector.unregister(listener)
                            del waiting[stream]
                            with contextlib.suppress(BlockingIOError):
                                connect(stream, listener)
                        continue
                    stream = key.data
                    if stream in waiting:
                        selector.unregister(waiting.pop(stream))
                        connect(stream, listeners[stream])
                        continue
                    if key.fileobj is not connections.get(stream):  # a listener accepted above
                        continue
                    chunk = connections[stream].recv(65536)
                    if not chunk:
                        selector.unregister(connections[stream])
                        if stream == "stdout" and first:  # an unfinished first line: output too
                            relays[stream].feed(first)
                        relays[stream].close()
                        continue
                    if stream == "stdout" and booted_at is None:
                        first += chunk
                        while booted_at is None and b"\n" in first:
                            line, _, first = first.partition(b"\n")
                            text = line.decode("utf-8", "replace")
                            if BOOTED in text:
                                booted_at = time.monotonic()
                                self.progress("booted" + text.split(BOOTED, 1)[1])
                            else:
                                relays[stream].feed(line + b"\n")
                        if booted_at is None:
                            continue
                        chunk, first = first, b""
                    relays[stream].feed(chunk)
            proc.wait(timeout=30)
        except BaseException:
            _stop(proc)
            raise
        finally:
            selector.close()
            console.close()
            for connection in connections.values():
                connection.close()
        return self._status(control, booted_at is not None, proc.returncode, tail, relays)

    def _status(
        self, control: str, booted: bool, vng_status: int, tail: list[bytes], relays: dict[str, Relay]
    ) -> int:
        check = _read_status(os.path.join(control, STATUS_FILE + ".check"))
        if check is not None:
            try:
                said = Path(control, CHECK_FILE).read_text().strip().removeprefix("guestmem vm: ")
            except OSError:
                said = "the check inside the VM failed"
            raise NoIoctl(f"{self.kernel}: {said}")
        with contextlib.suppress(FileNotFoundError):
            why = Path(control, NO_CHANNEL_FILE).read_text(errors="replace").strip()
            raise OutputLost(
                f"{self.kernel}: the command was not run, since its output could not reach the host: {why}"
            )
        status = _read_status(os.path.join(control, STATUS_FILE))
        if status is not None:
            if not booted:
                raise OutputLost(
                    f"the command exited with {status}, but its output never reached the host: "
                    f"nothing came through the VM's {PORTS['stdout']} port, not even the boot marker"
                )
            cut = [PORTS[stream] for stream, relay in relays.items() if not relay.ended]
            if cut:
                raise OutputLost(
                    f"the command exited with {status}, but {' and '.join(cut)} closed before the end "
                    "of its output: the rest was lost"
                )
            return status
        if not booted:
            raise BootFailed(
                f"{self.kernel} did not boot to the command (vng exited with {vng_status})"
                + _quote_tail(tail)
            )
        raise BootFailed(
            f"the VM stopped before the command finished (vng exited with {vng_status}; "
            "a kernel panic or a crash of the VM)" + _quote_tail(tail)
        )


def _socket_dir() -> str:
    """Where the output sockets go: the temporary directory, unless its path is one that
    QEMU's option syntax or vng's shell command line would split (or too long for a socket)."""
    base = tempfile.gettempdir()
    return base if re.fullmatch(r"[\w./+-]{1,60}", base) else "/tmp"


@contextlib.contextmanager
def _listen(path: str) -> Iterator[socket.socket]:
    """A Unix socket listening at ``path`` for QEMU, which connects as the VM starts."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        listener.setblocking(False)
        yield listener


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

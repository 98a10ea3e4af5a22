"""``guestmem vm`` and the real kernels: the runner's bad paths, then what each test kernel's
one boot produced (``guestmem probe``, ``guestmem check --backend kvm`` and the in-kernel
tests ``tests/test_kernel_*.py``). The boots run in the background from the end of
collection (tests/kernel_boots.py); where QEMU or a kernel is missing these tests skip with
the reason, and under CI (``CI`` set) fail.
"""

from __future__ import annotations

import ast
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import kernel_boots
from guestmem import vmrun
from kernel_boots import ROOT, Inside
from kvm_support import TEST_KERNELS
from process_support import new_tag, tagged
from test_kernel_suite import _cases as suite_cases

KERNELS = kernel_boots.KERNELS
needs_boot = kernel_boots.needs_boot


def guestmem_vm(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guestmem", "vm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )


def fake_bzimage(path: Path) -> Path:
    """A file with an x86 boot header and a version string, but no kernel behind it."""
    data = bytearray(0x400)
    data[0x202:0x206] = b"HdrS"
    data[0x20E:0x210] = (0x100).to_bytes(2, "little")
    data[0x300:0x310] = b"6.0-not-a-kernel"
    path.write_bytes(bytes(data))
    return path


# --- bad paths that need no boot --------------------------------------------------------------
def test_kernel_file_missing_is_bad_input(tmp_path: Path) -> None:
    done = guestmem_vm("--kernel", str(tmp_path / "nope"), "--", "true", timeout=60)
    assert done.returncode == vmrun.EXIT_BAD_KERNEL
    assert f"{tmp_path / 'nope'}: no such kernel file" in done.stderr


@pytest.mark.parametrize("content", [b"not a kernel\n", b"\x7fELF" + bytes(2000)])
def test_kernel_file_that_is_no_bzimage_is_bad_input(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(content)
    done = guestmem_vm("--kernel", str(path), "--", "true", timeout=60)
    assert done.returncode == vmrun.EXIT_BAD_KERNEL
    assert "not an x86 bzImage (no 'HdrS' boot header at 0x202)" in done.stderr


def test_kernel_directory_is_bad_input(tmp_path: Path) -> None:
    done = guestmem_vm("--kernel", str(tmp_path), "--", "true", timeout=60)
    assert done.returncode == vmrun.EXIT_BAD_KERNEL
    assert "not a regular file" in done.stderr


@pytest.mark.parametrize("option", ["--timeout", "--boot-timeout"])
@pytest.mark.parametrize("value", ["-5", "nan", "inf", "0", "soon"])
def test_bad_time_limit_is_bad_input(tmp_path: Path, option: str, value: str) -> None:
    """A VM's time limits are finite and positive: a NaN limit would never stop it."""
    done = guestmem_vm(
        "--kernel", str(fake_bzimage(tmp_path / "bzImage")), option, value, "--", "true", timeout=60
    )
    assert done.returncode == 2
    assert f"argument {option}: " in done.stderr and repr(value) in done.stderr


def test_no_command_is_bad_input(tmp_path: Path) -> None:
    done = guestmem_vm("--kernel", str(fake_bzimage(tmp_path / "bzImage")), timeout=60)
    assert done.returncode == 2
    assert "no command given" in done.stderr


def test_no_qemu_names_the_package(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing on PATH: no QEMU
    done = guestmem_vm("--kernel", str(fake_bzimage(tmp_path / "bzImage")), "--", "true", env=env, timeout=60)
    assert done.returncode == vmrun.EXIT_NO_QEMU
    assert "qemu-system-x86_64 not found on PATH" in done.stderr
    assert "apt-get install qemu-system-x86" in done.stderr


def test_no_virtme_ng_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python3"))
    with pytest.raises(vmrun.NoVirtme, match=r"pip install -e '\.\[vm\]'") as info:
        vmrun.find_vng({"PATH": str(tmp_path)})
    assert info.value.status == vmrun.EXIT_NO_VIRTME


def test_exit_statuses_are_distinct() -> None:
    assert len(set(vmrun.EXIT_STATUS.values())) == len(vmrun.EXIT_STATUS)
    # none may be read as a status of guestmem itself (pass, fail, bad input, KSFT_SKIP,
    # Ctrl-C) when the command inside is a guestmem command
    assert set(vmrun.EXIT_STATUS.values()).isdisjoint({0, 1, 2, 4, 130})


def test_kernel_version_is_read_from_the_header(tmp_path: Path) -> None:
    assert vmrun.kernel_version(fake_bzimage(tmp_path / "bzImage")) == "6.0-not-a-kernel"
    for path in KERNELS.values():
        if path is not None:
            assert vmrun.kernel_version(path).startswith("7.2.13")


END = vmrun.end_mark()


def test_inside_script_reports_the_status_through_scratch() -> None:
    script = vmrun.inside_script(["guestmem", "probe"], "/s", "/w", require_ioctl=True, end=END)
    assert "-m guestmem probe\nstatus=$?\n" in script
    assert script.endswith(f"echo $status > /s/{vmrun.STATUS_FILE}\n")
    assert "inside_check" in script and vmrun.BOOTED in script
    assert "GUESTMEM_TIMEOUT" not in script


def test_emulation_raises_the_run_time_limit_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under TCG guestmem's per-run limit inside is 900 s, unless the host sets its own."""
    monkeypatch.delenv("GUESTMEM_TIMEOUT", raising=False)
    script = vmrun.inside_script(
        ["guestmem", "check"], "/s", "/w", require_ioctl=True, end=END, emulated=True
    )
    assert f"export GUESTMEM_TIMEOUT={vmrun.EMULATED_RUN_TIMEOUT}\n" in script
    monkeypatch.setenv("GUESTMEM_TIMEOUT", "42")
    script = vmrun.inside_script(
        ["guestmem", "check"], "/s", "/w", require_ioctl=True, end=END, emulated=True
    )
    assert "export GUESTMEM_TIMEOUT=42\n" in script and "GUESTMEM_TIMEOUT=900" not in script


# --- the output channel, without a boot -----------------------------------------------------------
def test_the_script_writes_the_end_mark_exactly() -> None:
    """The mark the script prints after the command is byte for byte the one the host awaits,
    on both ports; the command's own output comes before it."""
    script = vmrun.inside_script(["printf", "a%sb"], "/s", "/w", require_ioctl=False, end=END)
    lines = script.splitlines()
    at = lines.index("status=$?")  # after the command, before the status file
    body = "\n".join(lines[at - 1 : at + 2])
    done = subprocess.run(["sh", "-c", body], capture_output=True, check=True)
    assert done.stdout == b"ab" + END
    assert done.stderr == END
    assert vmrun.end_mark() != END  # unique to each run


def test_end_marks_are_taken_out_wherever_the_stream_splits() -> None:
    """Whatever chunks the socket hands over, the caller gets exactly the command's bytes
    (a partial mark that is not one included), and the end is noticed."""
    output = b"progress \x1eguest\x1e 50%\r" + bytes(range(256)) + b"no newline"
    stream = output + END
    for cut in range(len(stream) + 1):
        for second in (cut, min(cut + 7, len(stream))):
            sink = io.BytesIO()
            relay = vmrun.Relay(sink, END)
            for chunk in (stream[:cut], stream[cut:second], stream[second:]):
                relay.feed(chunk)
            relay.close()
            assert sink.getvalue() == output, (cut, second)
            assert relay.ended


def test_relayed_output_is_passed_on_at_once() -> None:
    """Progress shows as it comes: only bytes that could begin the end mark wait."""
    sink = io.BytesIO()
    relay = vmrun.Relay(sink, END)
    relay.feed(b"....")
    assert sink.getvalue() == b"...."
    relay.feed(b"[ 10%]" + END[:5])
    assert sink.getvalue() == b"....[ 10%]"
    relay.feed(b"x")  # not the mark after all
    assert sink.getvalue() == b"....[ 10%]" + END[:5] + b"x"
    relay.feed(END[:3])
    relay.close()  # cut off: what was held back is output, and the end never came
    assert sink.getvalue() == b"....[ 10%]" + END[:5] + b"x" + END[:3]
    assert not relay.ended


FAKE_VNG = """#!{python}
# Plays vng and the VM for the runner: MODE says what reaches the host.
import os, re, shlex, socket, sys, time
argv = sys.argv[1:]
mode = os.environ["FAKE_VNG_MODE"]
run_sh = shlex.split(argv[argv.index("--exec") + 1])[1]
control = os.path.dirname(run_sh)
script = open(run_sh).read()
end = re.search(r"printf '([^']*)'; ", script).group(1).encode().decode("unicode_escape").encode("latin-1")
sockets = dict(re.findall(r"socket,id=guestmem-(\\w+),path=([^,\\s]+)", " ".join(argv)))
def exited(status):
    with open(os.path.join(control, "status"), "w") as f:
        f.write(f"{{status}}\\n")
if mode == "console":  # the command ran, its output went where the host does not read
    print("virtme-init: cannot find script I/O ports; make sure virtio-serial is available")
    exited(0)
elif mode == "host":  # the real script, on a machine without the ports
    os.execvp("sh", ["sh", run_sh])
else:
    out, err = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    out.connect(sockets["stdout"])
    err.connect(sockets["stderr"])
    out.sendall(b"{booted} 1.5 s after power-on, fake\\nhello\\n" + (end if mode == "whole" else b""))
    err.sendall(b"warn\\n" + end)
    if mode == "hang":  # a command that runs on
        time.sleep(600)
    exited(3)
"""


def fake_vm(tmp_path: Path, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``guestmem vm`` with a fake vng (:data:`FAKE_VNG`) and a fake QEMU: no boot."""
    argv, env = fake_vm_command(tmp_path, mode, *args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=False)


def fake_vm_command(tmp_path: Path, mode: str, *args: str) -> tuple[list[str], dict[str, str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vng = bin_dir / "vng"
    vng.write_text(FAKE_VNG.format(python=sys.executable, booted=vmrun.BOOTED))
    qemu = bin_dir / vmrun.QEMU
    qemu.write_text("#!/bin/sh\nexit 1\n")
    for path in (vng, qemu):
        path.chmod(0o755)
    code = (
        "import sys; from guestmem import vmrun; from guestmem.cli import main; "
        f"vmrun.find_vng = lambda env=None: {str(vng)!r}; "
        "vmrun.PORT_WAIT = 1; "  # seconds the script waits for ports that never come here
        "sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "FAKE_VNG_MODE": mode, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    kernel = fake_bzimage(tmp_path / "bzImage")
    return [sys.executable, "-c", code, "vm", "--kernel", str(kernel), *args], env


def test_sigterm_stops_the_vm_and_ends_with_143(tmp_path: Path) -> None:
    """As ``timeout(1)`` or a CI runner ends a command: the VM (its own process group)
    must not outlive the runner."""
    argv, env = fake_vm_command(tmp_path, "hang", "--", "sleep", "600")
    tag = new_tag()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**env, **tag}, cwd=ROOT
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"hello\n"  # booted and running
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.decode().splitlines()[-1] == "guestmem vm: SIGTERM received; the VM was stopped"
    assert b"Traceback" not in err
    assert tagged(tag) == []


def test_output_through_the_channel_reaches_the_caller(tmp_path: Path) -> None:
    """The fake's protocol is the VM's: the same run with nothing lost passes the status on
    (so the lost-output tests below fail for the reason they name)."""
    done = fake_vm(tmp_path, "whole", "--", "true")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "hello\n"
    assert "guestmem vm: booted 1.5 s after power-on, fake\nwarn\n" in done.stderr


def test_the_runner_keeps_its_files_out_of_the_scratch_directorys_own(tmp_path: Path) -> None:
    """Files of the user's named as the runner's are not touched, and the runner leaves
    nothing behind: its script and status live in a directory of their own, removed after."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mine = {name: f"the user's {name}\n" for name in ("run.sh", "status", "check.txt", "channel.txt")}
    for name, text in mine.items():
        (scratch / name).write_text(text)
    done = fake_vm(tmp_path, "whole", "--scratch", str(scratch), "--", "true")
    assert done.returncode == 3, done.stderr
    assert {p.name: p.read_text() for p in scratch.iterdir()} == mine


def test_output_that_never_arrives_is_not_a_success(tmp_path: Path) -> None:
    """The command ran and said 0, but nothing came through the channel (as when virtme-ng's
    init, finding no udev, runs the command on the serial console)."""
    done = fake_vm(tmp_path, "console", "--", "sh", "-c", "echo hi")
    assert done.returncode == vmrun.EXIT_OUTPUT_LOST, done.stderr
    assert (
        "the command exited with 0, but its output never reached the host: nothing came "
        "through the VM's guestmem.stdout port, not even the boot marker"
    ) in done.stderr
    assert done.stdout == ""


def test_output_cut_off_before_its_end_is_lost(tmp_path: Path) -> None:
    done = fake_vm(tmp_path, "cut", "--", "true")
    assert done.returncode == vmrun.EXIT_OUTPUT_LOST, done.stderr
    assert "the command exited with 3, but guestmem.stdout closed before the end of its output" in done.stderr
    assert done.stdout == "hello\n"  # what did arrive is passed on


def test_a_vm_without_the_ports_runs_nothing(tmp_path: Path) -> None:
    """The real script, where no virtio-serial port has the channel's names (this host)."""
    ran = tmp_path / "ran"
    done = fake_vm(
        tmp_path, "host", "--any-kernel", "--scratch", str(tmp_path / "s"), "--", "touch", str(ran)
    )
    assert done.returncode == vmrun.EXIT_OUTPUT_LOST, done.stderr
    assert (
        "the command was not run, since its output could not reach the host: no virtio-serial ports "
        "guestmem.stdout and guestmem.stderr with device nodes"
    ) in done.stderr
    assert "CONFIG_VIRTIO_CONSOLE" in done.stderr
    assert not ran.exists()


# --- bad paths that boot ------------------------------------------------------------------------
@pytest.mark.vm
def test_boot_that_does_not_finish_in_time_is_stopped() -> None:
    needs_boot()
    start = time.monotonic()
    done = guestmem_vm("--kernel", str(KERNELS["v8"]), "--boot-timeout", "2", "--", "true", timeout=120)
    assert done.returncode == vmrun.EXIT_BOOT, done.stderr
    assert "did not boot within 2 s (the VM was stopped)" in done.stderr
    assert time.monotonic() - start < 60


@pytest.mark.vm
def test_hanging_command_is_stopped() -> None:
    needs_boot()
    start = time.monotonic()
    done = guestmem_vm(
        "--kernel", str(KERNELS["v8"]), "--timeout", "5", "--any-kernel", "--", "sleep", "600", timeout=600
    )
    assert done.returncode == vmrun.EXIT_TIMEOUT, done.stderr
    assert "the command did not finish within 5 s (the VM was stopped): sleep 600" in done.stderr
    assert time.monotonic() - start < vmrun.DEFAULT_BOOT_TIMEOUT + 60


@pytest.mark.vm
def test_kernel_without_the_ioctl_is_refused() -> None:
    """v8 with in-place conversion turned off answers ``ENOTTY``, as a kernel without the series."""
    needs_boot()
    done = guestmem_vm(
        "--kernel",
        str(KERNELS["v8"]),
        "--append",
        "kvm.gmem_in_place_conversion=0",
        "--",
        "true",
        timeout=600,
    )
    assert done.returncode == vmrun.EXIT_NO_IOCTL, done.stderr
    assert "this kernel has no KVM_SET_MEMORY_ATTRIBUTES2 (ENOTTY on a guest_memfd)" in done.stderr


@pytest.mark.vm
def test_a_cancelled_run_stops_its_vm(tmp_path: Path) -> None:
    """``VmRun.cancel`` set from another thread stops the VM within seconds (how a test
    session that ends early stops the kernels still booting in the background)."""
    needs_boot()
    cancel = threading.Event()
    run = vmrun.VmRun(
        kernel=str(KERNELS["v8"]),
        command=["sleep", "600"],
        require_ioctl=False,
        scratch=str(tmp_path),
        cancel=cancel,
        out=open(os.devnull, "wb"),  # noqa: SIM115 - closed below
        progress=lambda _msg: None,
    )
    timer = threading.Timer(3.0, cancel.set)
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(
            vmrun.Cancelled, match=r"the run of sleep 600 was cancelled \(the VM was stopped\)"
        ):
            run.execute()
    finally:
        timer.cancel()
        run.out.close()
    assert time.monotonic() - start < 60
    assert vmrun.Cancelled.status == 130
    deadline = time.monotonic() + 15  # virtme-ng's own children end after their TERM
    while _running_with(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running_with(str(tmp_path)), "a process of the cancelled VM is still running"


def _running_with(text: str) -> list[str]:
    """Live processes (zombies aside) whose command line names ``text``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text.encode() in cmdline and state != "Z":
            found.append(pid)
    return found


# --- output through a pipe -----------------------------------------------------------------------
@pytest.mark.vm
def test_output_reaches_a_pipe() -> None:
    """``guestmem vm --kernel v8 -- sh -c 'echo marker' | cat``: the marker arrives, status 0.
    The guest's root is the host's over 9p, cached (``vmrun.ROOT_CACHE``)."""
    needs_boot()
    root = "grep '^[^ ]* / 9p ' /proc/mounts | sed 's/^/root: /' >&2"
    done = guestmem_vm("--kernel", str(KERNELS["v8"]), "--", "sh", "-c", f"echo marker; {root}", timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "marker\n", done.stderr
    mounted = [line for line in done.stderr.splitlines() if line.startswith("root: ")]
    assert len(mounted) == 1 and ",cache=" in mounted[0] and "ro," in mounted[0], done.stderr


def test_the_guest_caches_the_host_root_unless_told_not_to() -> None:
    def flags(run: vmrun.VmRun) -> list[str]:
        argv = run.argv("vng", "/s", "tcg", {}, "/s/.guestmem-vm-x")
        assert "--force-9p" in argv  # the flags below are 9p's
        return [a for a in argv if a.startswith("rootflags=")]

    cached = vmrun.VmRun(kernel="k", command=["true"], append=["rootflags=mine"])
    assert flags(cached) == [f"rootflags={vmrun.ROOT_FLAGS},cache=loose", "rootflags=mine"]  # the user's last
    assert flags(vmrun.VmRun(kernel="k", command=["true"], root_cache=False)) == [
        f"rootflags={vmrun.ROOT_FLAGS}"
    ]


@pytest.mark.vm
def test_output_reaches_a_pipe_without_udev(tmp_path: Path) -> None:
    """The same on a host without systemd-udevd (hidden from the VM by an empty directory
    over /usr/lib/systemd in a mount namespace): virtme-ng's init finds no udev, so its own
    ports get no names in /dev/virtio-ports, and the output still arrives, stdout and stderr
    apart, byte for byte."""
    needs_boot()
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        why = "hiding udev from the VM needs root and unshare(1) for a mount namespace"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run this: {why}")
        pytest.skip(why)
    inner = (
        "echo out; echo err >&2; "
        "test -e /dev/virtio-ports/virtme.stdout && echo 'udev named the ports' >&2; printf 'no newline'"
    )
    hide = 'mount -t tmpfs none /usr/lib/systemd && exec "$@"'
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh",
         sys.executable, "-m", "guestmem", "vm", "--kernel", str(KERNELS["v8"]), "--any-kernel",
         "--", "sh", "-c", inner],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )  # fmt: skip
    assert "udev named the ports" not in done.stderr, "udev ran inside: the test's premise failed"
    assert done.returncode == 0, done.stderr
    assert done.stdout == "out\nno newline", done.stderr
    assert "\nerr\n" in done.stderr


@pytest.mark.vm
def test_a_command_that_destroys_the_channel_loses_its_output() -> None:
    """The command unbinds the virtio-serial device that carries its output: what it wrote
    before arrives, the rest cannot, and the run is not a success."""
    needs_boot()
    unbind = (
        "echo before; for port in /sys/class/virtio-ports/*; do "
        '[ "$(cat $port/name)" = guestmem.stdout ] && basename "$(readlink -f $port/device)" '
        "> /sys/bus/virtio/drivers/virtio_console/unbind; done; echo after"
    )
    done = guestmem_vm("--kernel", str(KERNELS["v8"]), "--any-kernel", "--", "sh", "-c", unbind, timeout=600)
    assert done.returncode == vmrun.EXIT_OUTPUT_LOST, done.stderr
    assert "but guestmem.stdout and guestmem.stderr closed before the end of its output" in done.stderr
    assert done.stdout == "before\n"


# --- one boot per kernel: probe and the in-kernel tests -----------------------------------------
@pytest.fixture(scope="module", params=list(TEST_KERNELS))
def inside(request: pytest.FixtureRequest) -> Inside:
    series: str = request.param
    return kernel_boots.result(series)


@pytest.mark.vm
@pytest.mark.timeout(3000)
def test_probe_inside_finds_the_series(inside: Inside) -> None:
    facts = inside.json("probe.json")
    assert facts["conversion_ioctl"] is True
    assert facts["set_memory_attributes2"]["guest_memfd"] != "ENOTTY"
    assert facts["proposed_capabilities"]["250"] == 8  # KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES: PRIVATE
    assert "sw_protected" in facts["vm_types"]
    assert facts["vm_type_facts"]["sw_protected"]["private_memory"] is True
    assert facts["vm_type_facts"]["default"]["private_memory"] is False
    kernel = TEST_KERNELS[inside.series]
    assert facts["series"] == kernel.probed
    assert facts["proposed_capabilities"]["251"] == kernel.flags_cap
    assert facts["hypercall_exit"]["works"] is True
    assert facts["gup_test"] is None


@pytest.mark.vm
@pytest.mark.timeout(3000)
def test_check_command_passes_inside(inside: Inside) -> None:
    """``guestmem check --backend kvm --abi SERIES`` inside: no failure; skips only where the
    kernel lacks the platform (no such VM type) or the access, each with its reason."""
    status = int((inside.scratch / "check.status").read_text())
    report = inside.json("check.json")
    failed = [(r["scenario"], r["platform"]) for r in report["runs"] if r["status"] == "fail"]
    assert status == 0 and not failed, failed
    ran = [r for r in report["runs"] if r["status"] == "pass" and r["platform"] == "sw_protected"]
    assert len(ran) >= 10, f"only {len(ran)} runs passed on sw_protected"
    for r in report["runs"]:
        if r["status"] == "skip":
            assert r["skipped"], r


@pytest.mark.vm
@pytest.mark.timeout(3000)
def test_kernel_tests_pass_inside(inside: Inside) -> None:
    root = ET.parse(inside.scratch / "junit.xml").getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        case.get("name", "?")
        for s in suites
        for case in s.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    assert inside.status == 0 and not failed, (
        f"{inside.series}: failed inside: {failed}\n{inside.log[-6000:]}"
    )
    skips = [
        (case.get("name", "?"), (case.find("skipped").get("message") or ""))  # type: ignore[union-attr]
        for s in suites
        for case in s.iter("testcase")
        if case.find("skipped") is not None
    ]
    sys.stderr.write(f"[{inside.series}: {total}; skipped inside: {skips}]\n")
    # every suite case on sw_protected and the default VM, and the differential test, ran
    assert total["tests"] >= len(suite_cases()) + 1, total
    # the only skips allowed inside: a selection that is empty for this revision
    assert all("empty parameter set" in why for _name, why in skips), skips


@pytest.mark.vm
@pytest.mark.timeout(3000)
def test_differential_reached_its_count(inside: Inside) -> None:
    ran = inside.json("differential.json")
    assert ran["series"] == inside.series
    assert ran["examples"] >= TEST_KERNELS[inside.series].examples


def test_every_test_that_boots_is_marked_vm() -> None:
    """``-m 'not vm'`` (the README's quick subset) must leave out every boot."""
    tree = ast.parse(Path(__file__).read_text())
    unmarked = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
            continue
        boots = any(a.arg == "inside" for a in node.args.args) or any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "needs_boot"
            for n in ast.walk(node)
        )
        marked = any(ast.unparse(d) == "pytest.mark.vm" for d in node.decorator_list)
        if boots and not marked:
            unmarked.append(node.name)
    assert not unmarked

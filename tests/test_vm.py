"""``guestmem vm`` and the real kernels: the runner's bad paths, then what each test kernel's
one boot produced (``guestmem probe``, ``guestmem check --backend kvm`` and the in-kernel
tests ``tests/test_kernel_*.py``). The boots run in the background from the end of
collection (tests/kernel_boots.py); where QEMU or a kernel is missing these tests skip with
the reason, and under CI (``CI`` set) fail.
"""

from __future__ import annotations

import ast
import os
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


def test_inside_script_reports_the_status_through_scratch() -> None:
    script = vmrun.inside_script(["guestmem", "probe"], "/s", "/w", require_ioctl=True)
    assert f"-m guestmem probe\necho $? > /s/{vmrun.STATUS_FILE}\n" in script
    assert "inside_check" in script and vmrun.BOOTED in script
    assert "GUESTMEM_TIMEOUT" not in script


def test_emulation_raises_the_run_time_limit_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under TCG guestmem's per-run limit inside is 900 s, unless the host sets its own."""
    monkeypatch.delenv("GUESTMEM_TIMEOUT", raising=False)
    script = vmrun.inside_script(["guestmem", "check"], "/s", "/w", require_ioctl=True, emulated=True)
    assert f"export GUESTMEM_TIMEOUT={vmrun.EMULATED_RUN_TIMEOUT}\n" in script
    monkeypatch.setenv("GUESTMEM_TIMEOUT", "42")
    script = vmrun.inside_script(["guestmem", "check"], "/s", "/w", require_ioctl=True, emulated=True)
    assert "export GUESTMEM_TIMEOUT=42\n" in script and "GUESTMEM_TIMEOUT=900" not in script


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

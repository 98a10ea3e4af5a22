"""``guestmem vm`` and the real kernels: the runner's bad paths, then each test kernel
booted once to run ``guestmem probe``, ``guestmem check --backend kvm`` and the in-kernel
tests (``tests/test_kernel_*.py``). The two kernels boot side by side, from the start of
the module, while the bad paths run.

The boots need QEMU and virtme-ng (``./scripts/test`` installs both) and the kernels in
``shared/kernel/`` beside the checkout. Where QEMU cannot be had they skip with that
reason; under CI (``CI`` set) a missing piece is a failure, since CI must run them.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from guestmem import vmrun
from test_kernel_suite import _cases as suite_cases

ROOT = Path(__file__).resolve().parent.parent
KERNELS = {name: vmrun.test_kernel(name) for name in ("v8", "rfc-v5")}
#: The in-kernel tests each boot runs, and what the differential test must reach there.
INSIDE_TESTS = ["tests/test_kernel_suite.py", "tests/test_kernel_differential.py"]
MIN_EXAMPLES = {"v8": 500, "rfc-v5": 200}


def _missing() -> str | None:
    try:
        vmrun.find_qemu()
        vmrun.find_vng()
    except vmrun.VmError as err:
        return str(err)
    absent = [name for name, path in KERNELS.items() if path is None]
    if absent:
        return f"test kernels {', '.join(absent)} not found in shared/kernel/ beside the checkout"
    return None


MISSING = _missing()


def needs_boot() -> None:
    if MISSING is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must boot the test kernels: {MISSING}")
        pytest.skip(MISSING)


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


# --- one boot per kernel: probe and the in-kernel tests -----------------------------------------
class Inside:
    """What one boot of a test kernel produced (files in its scratch directory)."""

    def __init__(self, series: str, scratch: Path, status: int, log: str, seconds: float) -> None:
        self.series = series
        self.scratch = scratch
        self.status = status
        self.log = log
        self.seconds = seconds

    def json(self, name: str) -> Any:
        path = self.scratch / name
        assert path.exists(), f"{name} was not written inside the {self.series} VM; log:\n{self.log[-4000:]}"
        return json.loads(path.read_text())


def _boot(series: str, scratch: Path) -> Inside:
    inner = (
        'guestmem probe --format json > "$GUESTMEM_SCRATCH/probe.json" || exit 90; '
        f"guestmem check --backend kvm --abi {series} --format json "
        '> "$GUESTMEM_SCRATCH/check.json"; '
        'echo $? > "$GUESTMEM_SCRATCH/check.status"; '
        "exec python3 -m pytest -p no:cacheprovider -q -rs "
        '--junitxml="$GUESTMEM_SCRATCH/junit.xml" ' + " ".join(INSIDE_TESTS)
    )
    log = scratch / "console.log"
    start = time.monotonic()
    with log.open("wb") as out:
        status = vmrun.VmRun(
            kernel=str(KERNELS[series]),
            command=["sh", "-c", inner],
            timeout=2400,
            scratch=str(scratch),
            cwd=str(ROOT),
            out=out,
        ).execute()
    seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    sys.stderr.write(f"\n[{series} VM: exit {status} after {seconds:.0f} s]\n{text[-3000:]}\n")
    return Inside(series, scratch, status, text, seconds)


@pytest.fixture(scope="module", autouse=True)
def boots(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Inside]]]:
    """The selected kernels booted side by side, one thread each, from the start of this
    module, so the boots above run meanwhile. Each QEMU keeps about one core busy, so two
    boots take about as long as the longer one."""
    wanted = sorted(
        {
            item.callspec.params["inside"]
            for item in request.session.items
            if hasattr(item, "callspec") and "inside" in item.callspec.params
        }
    )
    if MISSING is not None or not wanted:
        yield {}
        return
    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        yield {
            series: pool.submit(_boot, series, tmp_path_factory.mktemp(f"vm-{series}")) for series in wanted
        }


@pytest.fixture(scope="module", params=["v8", "rfc-v5"])
def inside(request: pytest.FixtureRequest, boots: dict[str, Future[Inside]]) -> Inside:
    needs_boot()
    series: str = request.param
    return boots[series].result()


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
    assert facts["series"] == inside.series
    flags_cap = facts["proposed_capabilities"]["251"]
    assert flags_cap == (3 if inside.series == "rfc-v5" else 0)
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
    assert ran["examples"] >= MIN_EXAMPLES[inside.series]


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

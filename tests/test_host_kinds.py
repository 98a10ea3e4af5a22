"""The CLI on every kind of host: no ``/dev/kvm``, no permission to open it, ``/dev/kvm``
without guest_memfd, guest_memfd without ``KVM_SET_MEMORY_ATTRIBUTES2``, and this host as
it is. A missing feature is a skip with the reason, never a failure or a traceback.

The kinds are made from the host at hand by fault injection at the two points where the
package reaches the kernel (:func:`guestmem.kvm.syscalls.open_device` and
:func:`guestmem.kvm.syscalls.ioctl`): the device open fails, or the one ioctl a kernel
without the feature does not know answers ``ENOTTY`` (and ``KVM_CHECK_EXTENSION`` reports
the feature's capability as 0). Everything else is the real kernel. A kind that removes a
feature this host does not have to begin with skips, naming it. The commands run
in-process through :func:`guestmem.cli.main`.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guestmem.cli import main
from guestmem.errors import IoctlError
from guestmem.kvm import facts as kernel_facts
from guestmem.kvm import syscalls
from guestmem.scenario import suite_dir
from guestmem.uapi.kvm import (
    KVM_CAP_GUEST_MEMFD,
    KVM_CAP_GUEST_MEMFD_FLAGS,
    KVM_CHECK_EXTENSION,
    KVM_CREATE_GUEST_MEMFD,
    KVM_SET_MEMORY_ATTRIBUTES2,
)
from kvm_support import missing

PAYLOAD = str(suite_dir() / "review_payload_injection.toml")


class Kind:
    """One kind of host: what it lacks (a :data:`~guestmem.kvm.facts.FEATURES` key), the
    words its reason must contain, and what the real host must have for it to be made."""

    def __init__(
        self,
        name: str,
        lacks: str | None,
        reason: str,
        needs: tuple[str, ...] = (),
        open_error: int | None = None,
        unknown: tuple[int, ...] = (),
        zero_caps: tuple[int, ...] = (),
    ) -> None:
        self.name = name
        self.lacks = lacks
        self.reason = reason
        self.needs = needs
        self.open_error = open_error
        self.unknown = unknown
        self.zero_caps = zero_caps

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open: Callable[[str], int] = syscalls.open_device
        real_ioctl = syscalls.ioctl
        open_error = self.open_error

        def open_device(path: str) -> int:
            if open_error is not None and path == "/dev/kvm":
                raise OSError(open_error, os.strerror(open_error), path)
            return real_open(path)

        def ioctl(fd: int, request: int, arg: syscalls.Arg = 0) -> int:
            if request in self.unknown:
                raise IoctlError(errno.ENOTTY, syscalls.ioctl_name(request))
            if request == KVM_CHECK_EXTENSION and arg in self.zero_caps:
                return 0
            return real_ioctl(fd, request, arg)

        monkeypatch.setattr(syscalls, "open_device", open_device)
        monkeypatch.setattr(syscalls, "ioctl", ioctl)


KINDS = [
    Kind("no_dev_kvm", "kvm", "/dev/kvm: No such file or directory", open_error=errno.ENOENT),
    Kind("no_permission", "kvm", "/dev/kvm: Permission denied", open_error=errno.EACCES),
    Kind(
        "no_guest_memfd",
        "guest_memfd",
        "KVM_CREATE_GUEST_MEMFD answers ENOTTY",
        needs=("kvm",),
        unknown=(KVM_CREATE_GUEST_MEMFD,),
        zero_caps=(KVM_CAP_GUEST_MEMFD, KVM_CAP_GUEST_MEMFD_FLAGS),
    ),
    Kind(
        "no_conversion",
        "set_memory_attributes2",
        "KVM_SET_MEMORY_ATTRIBUTES2: ENOTTY",
        needs=("kvm", "guest_memfd", "guest_memfd_mmap", "guest_memfd_init_shared"),
        unknown=(KVM_SET_MEMORY_ATTRIBUTES2,),
    ),
    Kind("this_host", None, ""),
]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kind]:
    """The host of ``request.param``, with the probe's cache emptied before and after."""
    made: Kind = request.param
    why = missing(*made.needs)
    if why is not None:
        pytest.skip(f"{made.name} is made by removing a feature from this host, but {why}")
    kernel_facts.cached.cache_clear()
    made.install(monkeypatch)
    yield made
    monkeypatch.undo()
    kernel_facts.cached.cache_clear()


def _lacked(made: Kind) -> dict[str, str]:
    """What the host of ``made`` lacks, as its facts say (with the injection in place)."""
    return kernel_facts.cached("/dev/kvm").missing


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _runs_skip_for_the_reason(doc: dict[str, Any], made: Kind, code: int) -> None:
    """Runs on the kernel: never a failure for a missing feature; skipped runs say why;
    exit 4 when nothing ran."""
    runs = doc["runs"]
    assert runs
    for r in runs:
        assert r["error"] is None or "creating the guest_memfd failed" not in r["error"], r["error"]
        if r["status"] == "skip":
            assert r["skipped"], r
    if made.lacks is None:
        ran = [r for r in runs if r["status"] in ("pass", "fail")]
        assert code == (4 if not ran else doc["exit_status"])
        return
    assert all(r["status"] in ("skip", "n/a") for r in runs), [(r["platform"], r["status"]) for r in runs]
    reasons = {r["skipped"] for r in runs if r["status"] == "skip"}
    assert any(made.reason in why for why in reasons), reasons
    assert code == 4 == doc["exit_status"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_probe_names_what_is_missing_and_exits_0(
    kind: Kind, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "probe", "--format", fmt)
    assert code == 0, err
    lacked = _lacked(kind)
    if kind.lacks is not None:
        assert kind.reason in lacked[kind.lacks]
    if fmt == "json":
        doc = json.loads(out)
        assert doc["missing"] == lacked
        assert doc["usable"] == ("kvm" not in lacked)
    else:
        for feature, why in lacked.items():
            assert f"missing: {feature}" in out
            assert why.split(":")[0] in out


def test_run_skips_with_the_reason(kind: Kind, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "run", PAYLOAD, "--backend", "kvm", "--format", "json")
    _runs_skip_for_the_reason(json.loads(out), kind, code)


def test_check_skips_with_the_reason(kind: Kind, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "check", "--backend", "kvm", "-k", "review_", "--format", "json")
    _runs_skip_for_the_reason(json.loads(out), kind, code)
    text_code, text, _ = cli(capsys, "check", "--backend", "kvm", "-k", "review_")
    assert text_code == code
    if kind.lacks is not None:
        assert "FAIL" not in text and kind.reason in text


def test_consume_skips_with_the_reason(
    kind: Kind, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fill", str(tmp_path), PAYLOAD]) == 0
    capsys.readouterr()
    code, out, _ = cli(capsys, "consume", str(tmp_path), "--backend", "kvm", "--format", "json")
    _runs_skip_for_the_reason(json.loads(out), kind, code)


@pytest.mark.slow
def test_bench_lists_what_it_cannot_measure_as_skipped(
    kind: Kind, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(
        capsys,
        "bench",
        "--quick",
        "--only",
        "zero_vs_punch_hole",
        "--only",
        "kvm_run_vs_c",
        "--format",
        "json",
    )
    figures = json.loads(out)["figures"]
    assert code == (1 if any(f["met"] is False for f in figures.values()) else 0)
    for name, figure in figures.items():
        if "skipped" in figure:
            assert figure["skipped"] and figure["met"] is None, name
        else:
            assert figure["model"] > 0 and figure["baseline"] > 0 and isinstance(figure["met"], bool), name
    lacked = _lacked(kind)
    punch, loop = figures["zero_vs_punch_hole"], figures["kvm_run_vs_c"]
    if {"kvm", "guest_memfd"} & lacked.keys():
        assert "needs a guest_memfd" in punch["skipped"] and kind.reason in punch["skipped"]
    else:
        assert "punch of a guest_memfd" in punch["note"]
    if "kvm" in lacked:
        assert kind.reason in loop["skipped"]
    elif "skipped" not in loop:  # measured: on guest_memfd where there is one, else ordinary memory
        memory = "anonymous" if "guest_memfd" in lacked else "guest_memfd"
        assert f"memslot on {memory}" in loop["note"]
    else:
        assert "cc" in loop["skipped"]  # the only reason left: no C compiler


def test_collecting_the_tests_never_reaches_the_kernel(tmp_path: Path) -> None:
    """Collection with both entry points to the kernel refusing: any test module that
    probed ``/dev/kvm`` at import would fail to collect."""
    (tmp_path / "refuse_kernel.py").write_text(
        "from guestmem.kvm import syscalls\n"
        "def _refuse(*args, **kwargs):\n"
        "    raise AssertionError('the kernel was reached during collection')\n"
        "syscalls.open_device = _refuse\n"
        "syscalls.ioctl = _refuse\n"
    )
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "refuse_kernel",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            "-q",
        ],
        cwd=tests.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "error" not in proc.stdout.splitlines()[-1], proc.stdout[-3000:]
    assert " tests collected" in proc.stdout

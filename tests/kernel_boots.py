"""The test kernels in ``shared/kernel/``, each booted once per test session.

A boot of ``v8`` or ``rfc-v5`` runs ``guestmem probe``, ``guestmem check --backend kvm``, the
upstream C selftests beside the port of each case (``tests/selftest_pairs.py``), a short
``guestmem stress`` run and the in-kernel tests (``tests/test_kernel_*.py``) inside the
kernel; a boot of ``v8-debug`` (KASAN, lockdep, fault injection; slow to boot) runs only a
longer stress run (the C selftests' harness stops a case after 30 s, which a case under
KASAN and emulation can exceed: a verdict of the machine's speed, not of the kernel). Each
leaves its results in its scratch directory (:class:`Inside`). The boots start in the
background as soon as collection has chosen a test that reads them (``tests/conftest.py``),
side by side, so they run while the rest of the suite does; a test waits for its kernel's
boot with :func:`result`. Under software emulation a boot takes minutes and keeps about one
core busy.

The boots need QEMU and virtme-ng (``./scripts/test`` installs both) and the kernels beside
the checkout. Where one cannot be had the tests skip with the reason (:func:`needs_boot`);
under CI (``CI`` set) that is a failure, since CI must run them.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from guestmem import vmrun
from guestmem.stress.engine import Settings
from guestmem.stress.schedule import first_ops
from kvm_support import TEST_KERNELS

ROOT = Path(__file__).resolve().parent.parent
#: The revision kernels (kvm_support.TEST_KERNELS) and the debug build of v8, which runs only
#: the selftest pairs and stress.
KERNELS = {name: vmrun.test_kernel(name) for name in (*TEST_KERNELS, "v8-debug")}
#: Seconds of ``guestmem stress`` inside each kernel (the debug kernel's run is the one
#: that matters most: KASAN, lockdep and injected allocation failures watch it).
STRESS_SECONDS = {"v8": 20, "rfc-v5": 20, "v8-debug": 45}
#: Virtual CPUs per boot. Emulated CPUs of VMs that share two cores waste time waiting
#: for each other (an IPI or a spinning lock waits for a CPU whose thread is not running),
#: so only the debug kernel, whose stress run matters most, gets two; elsewhere stress's
#: threads interleave on one CPU (docs/bench.md, *Test time*).
CPUS = {"v8-debug": 2}
#: The stress runs' seed: ``$GUESTMEM_STRESS_SEED``, else a new one each session (printed
#: with the results, so a failing run can be replayed).
STRESS_SEED = int(os.environ.get("GUESTMEM_STRESS_SEED") or random.SystemRandom().randrange(1 << 32))
#: Early punch holes after a memory error the debug kernel's seed has (:func:`stress_seed`).
EARLY_MEMORY_ERRORS = 3


def stress_seed(series: str) -> int:
    """The seed of ``series``'s stress run: :data:`STRESS_SEED`, except on ``v8-debug``,
    the first seed from it whose host threads open (within their first two operations) with
    :data:`EARLY_MEMORY_ERRORS` punch holes after a memory error.

    A memory error needs a punch hole whose range still has a shared page no pin or splice
    holds: about one operation in 180 of a long run becomes one (a 600 s campaign: 64 in
    18 501). A CI run on a loaded machine makes 100 to 200 operations, so it met none in
    about half of its runs. At the start every page is shared and unheld, so punch holes
    drawn first get their memory errors while the other threads start, as stress is meant
    to show. The interleaving is still the scheduler's."""
    if series != "v8-debug":
        return STRESS_SEED
    for seed in range(STRESS_SEED, STRESS_SEED + 100_000):
        if early_memory_errors(seed % (1 << 32)) >= EARLY_MEMORY_ERRORS:
            return seed % (1 << 32)
    return STRESS_SEED


def early_memory_errors(seed: int) -> int:
    """How many of the host threads' first two operations are punch holes after a memory
    error, under ``seed`` and the command's defaults (which the boots use)."""
    run = Settings(seed=seed)
    shape = {"vcpus": run.vcpus, "targets": run.targets, "pages": run.pages}
    threads = range(run.vcpus, run.vcpus + run.threads)
    ops = [op for thread in threads for op in first_ops(seed, thread, 2, **shape)]
    return sum(op.kind == "punch_hole" and op.memory_error for op in ops)


#: The in-kernel tests each boot runs.
INSIDE_TESTS = [
    "tests/test_kernel_suite.py",
    "tests/test_kernel_differential.py",
    "tests/test_kernel_findings.py",
]
#: The fixture whose parameter names the kernel a test reads (tests/test_vm.py).
FIXTURE = "inside"


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


class Inside:
    """What one boot of a test kernel produced (files in its scratch directory)."""

    def __init__(self, series: str, scratch: Path, status: int, log: str, seconds: float) -> None:
        self.series = series
        self.scratch = scratch
        self.status = status
        self.log = log
        self.seconds = seconds

    def phases(self) -> str:
        """How long each phase inside took (``probe 11 s, check 101 s, …``), from the
        marks the script left; empty when it left none."""
        path = self.scratch / "phases"
        if not path.exists():
            return ""
        marks = [line.split(" ", 1) for line in path.read_text().splitlines() if " " in line]
        spans = [
            f"{name} {float(end) - float(start):.0f} s"
            for (start, name), (end, _next) in itertools.pairwise(marks)
        ]
        return ", ".join(spans)

    def json(self, name: str) -> Any:
        path = self.scratch / name
        assert path.exists(), f"{name} was not written inside the {self.series} VM; log:\n{self.log[-4000:]}"
        return json.loads(path.read_text())


def _mark(phase: str) -> str:
    """Shell that notes when ``phase`` starts (the VM's clock; :meth:`Inside.phases`)."""
    return f'echo "$(date +%s.%N) {phase}" >> "$GUESTMEM_SCRATCH/phases"; '


def inner_script(series: str) -> str:
    """What a boot of ``series`` runs inside (``$GUESTMEM_SCRATCH`` is the scratch directory)."""
    pairs = (
        _mark("pairs") + 'PYTHONPATH="$PWD/tests:$PYTHONPATH" python3 tests/selftest_pairs.py '
        '"$GUESTMEM_SCRATCH/pairs.json" > "$GUESTMEM_SCRATCH/pairs.txt" 2>&1; '
    )
    stress = (
        _mark("stress")
        + f"guestmem stress --seconds {STRESS_SECONDS[series]} --seed {stress_seed(series)} --format json "
        '--save "$GUESTMEM_SCRATCH" > "$GUESTMEM_SCRATCH/stress.json" 2> "$GUESTMEM_SCRATCH/stress.txt"; '
        'echo $? > "$GUESTMEM_SCRATCH/stress.status"; '
    )
    if series == "v8-debug":
        hwpoison = (
            _mark("hwpoison") + 'PYTHONPATH="$PWD/tests:$PYTHONPATH" python3 tests/hwpoison_inside.py '
            '"$GUESTMEM_SCRATCH/hwpoison.json" > "$GUESTMEM_SCRATCH/hwpoison.txt" 2>&1; '
        )
        debugfs = "mount -t debugfs none /sys/kernel/debug 2>/dev/null; "
        return debugfs + stress + hwpoison + _mark("end") + "true"
    return (
        _mark("probe")
        + 'guestmem probe --format json > "$GUESTMEM_SCRATCH/probe.json" || exit 90; '
        + _mark("check")
        + f"guestmem check --backend kvm --abi {series} --format json "
        '> "$GUESTMEM_SCRATCH/check.json"; '
        'echo $? > "$GUESTMEM_SCRATCH/check.status"; '
        + pairs
        + stress
        + _mark("pytest")
        + f"env GUESTMEM_TEST_SERIES={series} python3 -m pytest -p no:cacheprovider -q -rs "
        '--junitxml="$GUESTMEM_SCRATCH/junit.xml" ' + " ".join(INSIDE_TESTS) + "; "
        "status=$?; " + _mark("end") + "exit $status"
    )


def boot(series: str, scratch: Path, cancel: threading.Event | None = None) -> Inside:
    """Boot ``series`` and run everything inside; returns when the VM has stopped."""
    inner = inner_script(series)
    log = scratch / "console.log"
    start = time.monotonic()
    with log.open("wb") as out:
        status = vmrun.VmRun(
            kernel=str(KERNELS[series]),
            command=["sh", "-c", inner],
            timeout=2400,
            boot_timeout=900,  # the debug kernel boots in a minute when idle, far longer when not
            cpus=CPUS.get(series, 1),
            scratch=str(scratch),
            cwd=str(ROOT),
            out=out,
            err=out,
            cancel=cancel,
            progress=lambda _msg: None,
        ).execute()
    return Inside(series, scratch, status, log.read_text(errors="replace"), time.monotonic() - start)


class Boots:
    """The session's boots: one thread each, stopped by :meth:`stop` if still running."""

    def __init__(self, series: list[str]) -> None:
        self.cancel = threading.Event()
        self.base = Path(tempfile.mkdtemp(prefix="guestmem-test-vm-"))
        self.pool = ThreadPoolExecutor(max_workers=max(len(series), 1), thread_name_prefix="boot")
        self.futures: dict[str, Future[Inside]] = {}
        self.shown: set[str] = set()
        for name in series:
            scratch = self.base / name
            scratch.mkdir()
            self.futures[name] = self.pool.submit(boot, name, scratch, self.cancel)

    def result(self, series: str) -> Inside:
        if series not in self.futures:  # not chosen at collection: boot it now
            scratch = self.base / series
            scratch.mkdir(exist_ok=True)
            self.futures[series] = self.pool.submit(boot, series, scratch, self.cancel)
        inside = self.futures[series].result()
        if series not in self.shown:  # in the waiting test's output, not a bystander's
            self.shown.add(series)
            sys.stderr.write(
                f"\n[{series} VM: exit {inside.status} after {inside.seconds:.0f} s; "
                f"inside: {inside.phases()}]\n"
                f"{inside.log[-3000:]}\n"
            )
        return inside

    def stop(self, keep: bool) -> None:
        """Stop what still runs (a session ended early) and remove the scratch directories,
        unless ``keep`` (a failed session: they hold the consoles and results)."""
        self.cancel.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if keep:
            sys.stderr.write(f"\n[the test kernels' scratch directories are kept in {self.base}]\n")
        else:
            shutil.rmtree(self.base, ignore_errors=True)


_SESSION: list[Boots] = []


def chosen(items: list[pytest.Item]) -> list[str]:
    """The kernels that the selected tests read."""
    found = set()
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and FIXTURE in callspec.params:
            found.add(callspec.params[FIXTURE])
    return sorted(found)


def start(items: list[pytest.Item]) -> None:
    """Start the boots the selected tests need (nothing when QEMU or a kernel is missing)."""
    series = chosen(items)
    if series and MISSING is None and not _SESSION:
        _SESSION.append(Boots(series))


def result(series: str) -> Inside:
    needs_boot()
    if not _SESSION:
        _SESSION.append(Boots([]))
    return _SESSION[0].result(series)


def stop(failed: bool) -> None:
    while _SESSION:
        _SESSION.pop().stop(keep=failed)

"""The upstream v8 selftests beside the project's port of them, case by case.

Inside a test kernel (``tests/kernel_boots.py`` runs this module there), each C binary of
``shared/kernel/v8/selftests/`` runs, and so does the port of the same case: the
``selftest_*`` scenario files on the kernel backend under v8's expectations (the C tests
are v8's, so the RFC v5 kernel is a control on which both must fail the same cases), and
``tests/test_guest_memfd_test.py``'s kernel side for ``guest_memfd_test``. Each side gets
a verdict per case — ``pass``, ``fail`` or ``skip`` with a reason — and the pair agrees
when the verdicts are equal. ``python3 tests/selftest_pairs.py OUT.json`` writes the
pairs; ``tests/test_vm.py`` reads them and fails on a disagreement, naming the case.

The C side's verdict: for ``guest_memfd_conversions_test`` (kselftest harness, TAP), each
``ok``/``not ok`` line, ``# SKIP`` a skip; for the other binaries the exit status (0 pass,
4 = ``KSFT_SKIP`` skip, with the last line of output as the reason, anything else a
failure).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from guestmem import vmrun

ROOT = Path(__file__).resolve().parent.parent
_V8 = vmrun.test_kernel("v8")
#: The built C selftests, beside the v8 test kernel.
SELFTESTS = Path(_V8).parent / "selftests" if _V8 else ROOT.parent / "shared" / "kernel" / "v8" / "selftests"
KSFT_SKIP = 4
#: A C binary runs at most this long inside (they take seconds under emulation).
C_TIMEOUT = 600.0
#: The port of ``guest_memfd_test`` (12 288 guest_memfd creations among others) takes
#: minutes under KASAN and emulation on a busy machine.
PORT_TIMEOUT = 1800.0
CONVERSIONS = "guest_memfd_conversions_test"
#: The cases of guest_memfd_conversions_test (kselftest harness names) and the runs of the
#: port that make up each (a case looped over pages is one run per page, all from one
#: parametrised file).
CONVERSION_CASES = {
    "init_private": ["selftest_init_private"],
    "init_shared": ["selftest_init_shared"],
    "indexing": [f"selftest_indexing_page{i}" for i in range(4)],
    "before_allocation_shared": ["selftest_before_allocation_shared"],
    "before_allocation_private": ["selftest_before_allocation_private"],
    "unallocated_folios": [f"selftest_unallocated_folios_page{i}" for i in range(8)],
    "truncate": ["selftest_truncate"],
    "forked_accesses": ["selftest_forked_accesses"],
    "elevated_refcount": [f"selftest_elevated_refcount_page{i}" for i in range(4)],
}
#: Whole binaries and their port.
BINARY_CASES = {
    "private_mem_conversions_test": [
        "selftest_private_mem_conversions",
        "selftest_private_mem_conversions_punch_hole",
    ],
    "private_mem_kvm_exits_test": ["selftest_private_mem_kvm_exits"],
}
GUEST_MEMFD_TEST = "guest_memfd_test"
PORT_OF_GUEST_MEMFD_TEST = "tests/test_guest_memfd_test.py"
TAP = re.compile(r"^(not )?ok \d+ (?:[\w-]+\.)?([\w-]+)(?:\s*#\s*(SKIP)\b\s*(.*))?$")


@dataclass(frozen=True)
class Verdict:
    """``pass``, ``fail`` or ``skip``; ``why`` says what failed or was missing."""

    verdict: str
    why: str = ""


@dataclass(frozen=True)
class Pair:
    case: str
    c: Verdict
    port: Verdict
    #: How often the case ran again because the two sides disagreed (:func:`rerun`).
    reruns: int = 0

    @property
    def agree(self) -> bool:
        return self.c.verdict == self.port.verdict

    def line(self) -> str:
        c = self.c.verdict + (f" ({self.c.why})" if self.c.verdict != "pass" and self.c.why else "")
        port = self.port.verdict + (
            f" ({self.port.why})" if self.port.verdict != "pass" and self.port.why else ""
        )
        mark = "same" if self.agree else "DIFFERENT"
        again = f" (after {self.reruns} rerun{'s' * (self.reruns > 1)})" if self.reruns else ""
        return f"{self.case}: C {c}; port {port}: {mark}{again}"


def all_cases() -> list[str]:
    return [f"{CONVERSIONS}.{name}" for name in CONVERSION_CASES] + list(BINARY_CASES) + [GUEST_MEMFD_TEST]


def parse_tap(output: str) -> dict[str, Verdict]:
    """The per-case verdicts of a kselftest-harness run (``ok 3 fixture.case``)."""
    found: dict[str, Verdict] = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        m = TAP.match(line.strip())
        if m is None:
            continue
        failed, name, skip, reason = m.groups()
        if skip:
            found[name] = Verdict("skip", reason.strip())
        elif failed:
            # the harness prints the failed assertion between the case's RUN and its verdict
            start = max((j for j in range(i) if "RUN " in lines[j]), default=max(0, i - 4))
            context = [x.lstrip("# ").strip() for x in lines[start + 1 : i] if x.startswith("#")]
            why = [c for c in context if c and not c.startswith(("OK ", "FAIL "))]
            found[name] = Verdict("fail", "; ".join(why)[:300])
        else:
            found[name] = Verdict("pass")
    return found


#: What a C test asserts the kernel has before it tests anything else, as the message of
#: its failed assertion: a kernel without it skips the test (the port skips it too).
REQUIREMENTS = {"THP is not configured in host kernel": "no transparent huge pages"}


def exit_verdict(status: int, output: str) -> Verdict:
    """A plain kselftest binary's verdict from its exit status; a failed assertion that
    the kernel has something the test needs (:data:`REQUIREMENTS`) is a skip."""
    last = next((x.strip() for x in reversed(output.splitlines()) if x.strip()), "")
    if status == 0:
        return Verdict("pass")
    if status == KSFT_SKIP:
        return Verdict("skip", last)
    for message, reason in REQUIREMENTS.items():
        if message in output:
            return Verdict("skip", f"{reason} ({message})")
    return Verdict("fail", f"exit {status}: {last}"[:300])


def run_c(binary: str, directory: Path = SELFTESTS, *args: str) -> tuple[int, str]:
    path = directory / binary
    try:
        done = subprocess.run(
            [str(path), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # in order: an assertion's message before the verdict
            text=True,
            errors="replace",
            timeout=C_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return 124, f"did not finish within {C_TIMEOUT:g} s"
    return done.returncode, done.stdout


def c_verdicts(directory: Path = SELFTESTS) -> dict[str, Verdict]:
    verdicts: dict[str, Verdict] = {}
    status, output = run_c(CONVERSIONS, directory)
    tap = parse_tap(output)
    for name in CONVERSION_CASES:
        verdicts[f"{CONVERSIONS}.{name}"] = tap.get(
            name, Verdict("fail", f"no verdict for {name} (exit {status}): {output[-200:]}")
        )
    for binary in [*BINARY_CASES, GUEST_MEMFD_TEST]:
        verdicts[binary] = exit_verdict(*run_c(binary, directory))
    return verdicts


def combine(verdicts: list[Verdict]) -> Verdict:
    """One case from its parts: a failure wins, then a skip, else a pass."""
    for kind in ("fail", "skip"):
        why = [v.why for v in verdicts if v.verdict == kind]
        if why:
            return Verdict(kind, "; ".join(why)[:300])
    return Verdict("pass")


@functools.cache
def _suite_runs() -> dict[str, Any]:
    """The suite's runs by name, parsed once (parsing it takes seconds under emulation)."""
    from guestmem.scenario import suite

    return {scenario.name: scenario for scenario in suite()}


def scenario_verdict(name: str) -> Verdict:
    """One scenario file of the port on this kernel, under v8's expectations."""
    from guestmem.backend.kernel import KernelBackend
    from guestmem.scenario.runner import run

    scenario = _suite_runs().get(name)
    if scenario is None:  # a run of a parametrised file is named with its value
        return Verdict("fail", f"{name}: no run of that name in the suite")
    result = run(scenario, "sw_protected", KernelBackend(), "v8")
    if result.skipped is not None:
        return Verdict("skip", f"{name}: {result.skipped}")
    if result.passed:
        return Verdict("pass")
    first = result.error or next(
        (
            f"step {f.step.index} ({f.step.op}): got {f.outcome.to_json() if f.outcome else None}"
            for f in result.failures
        ),
        "",
    )
    return Verdict("fail", f"{name}: {first}")


def guest_memfd_test_port() -> Verdict:
    """The kernel side of ``tests/test_guest_memfd_test.py`` (pytest, ``-k kernel``)."""
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"guest_memfd_test_port.{os.getpid()}.xml"
    try:
        _run_port_pytest(report)
    except subprocess.TimeoutExpired:
        return Verdict("fail", f"the port did not finish within {PORT_TIMEOUT:g} s")
    return junit_verdict(report.read_text())


def _run_port_pytest(report: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-k",
            "kernel",
            f"--junitxml={report}",
            PORT_OF_GUEST_MEMFD_TEST,
        ],
        cwd=ROOT,
        capture_output=True,
        check=False,
        timeout=PORT_TIMEOUT,
    )


def junit_verdict(xml: str) -> Verdict:
    parts = []
    for case in ET.fromstring(xml).iter("testcase"):
        name = case.get("name", "?")
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skipped = case.find("skipped")
        if bad is not None:
            parts.append(Verdict("fail", f"{name}: {(bad.get('message') or '')[:200]}"))
        elif skipped is not None:
            parts.append(Verdict("skip", f"{name}: {skipped.get('message') or ''}"))
        else:
            parts.append(Verdict("pass"))
    if not parts:
        return Verdict("fail", "no test of the port ran")
    return combine(parts)


def port_verdicts() -> dict[str, Verdict]:
    verdicts = {
        f"{CONVERSIONS}.{case}": combine([scenario_verdict(n) for n in names])
        for case, names in CONVERSION_CASES.items()
    }
    for binary, names in BINARY_CASES.items():
        verdicts[binary] = combine([scenario_verdict(n) for n in names])
    verdicts[GUEST_MEMFD_TEST] = guest_memfd_test_port()
    return verdicts


#: Reruns of a conversion case whose two sides disagree. RFC v5 scrambles a page on an
#: unspecified conversion and the cases check single bytes, so a scrambled byte equals the
#: expected one 1 time in 256: on the RFC v5 control a case that must fail passes now and
#: then, on either side. Two reruns make a chance disagreement about 1 in 65 536.
RERUNS = 2


def c_case(name: str) -> Verdict:
    """One case of guest_memfd_conversions_test again (the harness's ``-t``)."""
    status, output = run_c(CONVERSIONS, SELFTESTS, "-t", name)
    return parse_tap(output).get(name, Verdict("fail", f"no verdict for {name} (exit {status})"))


def port_case(name: str) -> Verdict:
    return combine([scenario_verdict(n) for n in CONVERSION_CASES[name]])


def rerun(
    found: list[Pair],
    c: Callable[[str], Verdict] = c_case,
    port: Callable[[str], Verdict] = port_case,
) -> list[Pair]:
    """Each conversion case whose sides disagree, run again on both sides, up to
    :data:`RERUNS` times, until they agree; the pair says how often it ran again."""
    out = []
    for pair in found:
        name = pair.case.removeprefix(f"{CONVERSIONS}.")
        while not pair.agree and name in CONVERSION_CASES and pair.reruns < RERUNS:
            pair = Pair(pair.case, c(name), port(name), pair.reruns + 1)
        out.append(pair)
    return out


def pairs(c: dict[str, Verdict], port: dict[str, Verdict]) -> list[Pair]:
    missing = Verdict("fail", "no verdict")
    return [Pair(case, c.get(case, missing), port.get(case, missing)) for case in all_cases()]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: selftest_pairs.py OUT.json", file=sys.stderr)
        return 2
    start = time.monotonic()
    c = c_verdicts()
    c_seconds = time.monotonic() - start
    port = port_verdicts()
    found = rerun(pairs(c, port))
    for pair in found:
        print(pair.line())
    record = {
        "pairs": [asdict(p) for p in found],
        "c_seconds": c_seconds,
        "port_seconds": time.monotonic() - start - c_seconds,
    }
    Path(argv[1]).write_text(json.dumps(record, indent=1))
    return 0 if all(p.agree for p in found) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

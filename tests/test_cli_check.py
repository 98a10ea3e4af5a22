"""``guestmem check``: the built-in suite, a line per case, a per-platform summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guestmem.cli import main
from guestmem.scenario import suite

ROOT = Path(__file__).resolve().parent.parent


def cases(platform: str) -> list[str]:
    return [s.name for s in suite() if platform in s.platforms]


def test_text_lines_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--platform", "snp"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    expected = cases("snp")
    assert [line for line in lines if line.startswith(("PASS", "FAIL", "SKIP"))] == [
        f"PASS  {name} [snp]" for name in expected
    ]
    summary = next(line for line in lines if line.startswith("snp "))
    assert summary.split() == ["snp", str(len(expected)), "0", "0", "0"]
    assert "not applicable" in next(line for line in lines if line.startswith("platform"))


def test_tap_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--platform", "pkvm", "--format", "tap"]) == 0
    lines = capsys.readouterr().out.splitlines()
    n = len(cases("pkvm"))
    assert lines[:2] == ["TAP version 13", f"1..{n}"]
    assert sum(line.startswith("ok ") for line in lines) == n
    assert lines[-1] == f"# Totals: pass:{n} fail:0 xfail:0 xpass:0 skip:0 error:0"


def test_json_summary_and_filter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-k", "selftest_", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is True
    assert {r["scenario"] for r in doc["runs"]} == {
        n for n in cases("sw_protected") if n.startswith("selftest_")
    }
    # 22 guest_memfd_conversions_test files (9 cases, 16 of them once per test_page), 2 of
    # private_mem_conversions_test, 1 of private_mem_kvm_exits_test, which the default VM runs too
    assert doc["summary"] == {
        "sw_protected": {"passed": 25, "failed": 0, "skipped": 0, "not applicable": 0},
        "default": {"passed": 1, "failed": 0, "skipped": 0, "not applicable": 0},
    }


def test_a_case_that_does_not_apply_is_neither_pass_nor_failure(capsys: pytest.CaptureFixture[str]) -> None:
    # The bounce buffer is a content-policy example; v8 has no policies and it does not list v8.
    # nothing ran: kselftest's KSFT_SKIP (4), never a pass
    assert main(["check", "-k", "review_bounce", "--abi", "v8", "--platform", "sw_protected"]) == 4
    out = capsys.readouterr().out
    assert "N/A   review_bounce_buffer [sw_protected]  # v8: its expectations hold for seed" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split() == ["total", "0", "0", "0", "1"]
    assert main(["check", "-k", "review_bounce", "--abi", "v8", "--format", "tap"]) == 4
    lines = capsys.readouterr().out.splitlines()
    assert "1..0" in lines and "# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:0 error:0" in lines
    assert "# not applicable to this revision: 5" in lines


@pytest.mark.parametrize("abi", ["seed", "iteration2", "rfc-v5", "v8"])
def test_check_passes_under_every_revision(abi: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`guestmem check --abi X` exits 0 on the model for every revision; a case that
    does not apply is N/A, and every revision runs cases on every platform."""
    assert main(["check", "--abi", abi, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for platform, counts in doc["summary"].items():
        assert counts["failed"] == 0 and counts["passed"] >= 3, (platform, counts)
    for run in doc["runs"]:
        assert run["abi"] == abi
        assert run["status"] in ("pass", "n/a")
        assert (run["status"] == "n/a") == (run["not_applicable"] is not None)


def test_bad_selection_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--platform", "tpm"]) == 2
    assert "unknown platform 'tpm'" in capsys.readouterr().err
    assert main(["check", "-k", "no-such-case"]) == 2


def test_kvm_backend_never_fakes_a_pass(capsys: pytest.CaptureFixture[str]) -> None:
    """On a kernel without the conversion ioctl every conversion case skips with a reason."""
    main(
        ["check", "--backend", "kvm", "--platform", "sw_protected", "-k", "selftest_init", "--format", "json"]
    )
    for run in json.loads(capsys.readouterr().out)["runs"]:
        assert run["skipped"] or run["passed"] is not None
        if run["skipped"]:
            assert run["passed"] is False and run["skipped"].strip()


def test_main_job_runs_with_the_standard_library_only() -> None:
    """``PYTHONPATH=src python3 -m guestmem check``: no site-packages (-S), so no rich."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(ROOT / "src")
    done = subprocess.run(
        [sys.executable, "-S", "-m", "guestmem", "check", "--format", "tap"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout[-2000:]
    assert done.stdout.startswith("TAP version 13\n")
    assert "not ok" not in done.stdout

"""``guestmem run``: text, JSON and TAP output; exit 0/1/2; bad input changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guestmem.cli import main
from guestmem.scenario import suite_dir

PAYLOAD = suite_dir() / "review_payload_injection.toml"
FAILING = """\
name = "wrong_on_purpose"
platforms = ["sw_protected", "tdx"]
pages = 1
init = "shared"

[[step]]
op = "host_write"
offset = 0
data = "4141"

[[step]]
op = "convert"
offset = 0
size = "4K"
to = "private"
policy = "zero"

[[step]]
op = "launch"

[[step]]
op = "guest_read"
offset = 0
size = 2
expect = "4141"
"""


def test_text_shows_what_each_side_read(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(PAYLOAD), "--platform", "tdx"]) == 0
    out = capsys.readouterr().out
    assert "review_payload_injection [tdx] abi=seed backend=model: PASS" in out
    lines = out.splitlines()
    host = next(line for line in lines if "host_read" in line)
    guest = next(line for line in lines if "guest_read" in line)
    assert "SIGBUS" in host and host.split()[1] == "host_read"  # the op names the side
    assert "efbe" in guest and guest.split()[1] == "guest_read"
    assert "[sw_protected]" not in out


def test_json_and_exit_1_on_a_failed_expectation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "f.toml"
    path.write_text(FAILING)
    assert main(["run", str(path), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is False
    assert [r["platform"] for r in doc["runs"]] == ["sw_protected", "tdx"]
    read = doc["runs"][1]["steps"][3]
    assert (read["op"], read["passed"], read["expect"], read["outcome"]["data"]) == (
        "guest_read",
        False,
        "4141",
        "0000",
    )
    assert doc["runs"][0]["file"] == str(path) and doc["runs"][0]["backend"] == "model"


def test_abi_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the payload example lists rfc-v5: TDX takes PRESERVE for to-private before launch
    assert main(["run", str(PAYLOAD), "--platform", "tdx", "--abi", "rfc-v5", "--format", "json"]) == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert (run["abi"], run["status"]) == ("rfc-v5", "pass")
    assert run["steps"][1]["outcome"]["errno"] is None


def test_a_revision_the_file_does_not_list_is_not_applicable(capsys: pytest.CaptureFixture[str]) -> None:
    # v8 has no content policies; the payload example does not list it
    # nothing ran: kselftest's KSFT_SKIP (4), never a pass
    assert main(["run", str(PAYLOAD), "--platform", "tdx", "--abi", "v8", "--format", "json"]) == 4
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert (run["abi"], run["status"], run["passed"]) == ("v8", "n/a", False)
    assert run["not_applicable"] == "its expectations hold for seed, iteration2, rfc-v5, not v8"
    assert all(step["outcome"] is None and step["passed"] is None for step in run["steps"])
    assert main(["run", str(PAYLOAD), "--platform", "tdx", "--abi", "v8"]) == 4
    out = capsys.readouterr().out
    assert "review_payload_injection [tdx] abi=v8 backend=model: N/A (not applicable: its" in out
    assert main(["run", str(PAYLOAD), "--platform", "all", "--abi", "v8", "--format", "tap"]) == 4
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "TAP version 13",
        "# N/A review_payload_injection [sw_protected] v8: its expectations "
        "hold for seed, iteration2, rfc-v5, not v8",
    ]
    assert "1..0" in lines and not any(line.startswith(("ok", "not ok")) for line in lines)


def test_tap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "f.toml"
    path.write_text(FAILING)
    assert main(["run", str(path), str(PAYLOAD), "--platform", "tdx", "--format", "tap"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["TAP version 13", "1..2"]
    assert lines[2] == "not ok 1 - wrong_on_purpose [tdx] seed"
    assert lines[3].startswith("# step 4 guest_read 0x0+0x2: expected 4141, saw zeros")
    assert lines[4] == "ok 2 - review_payload_injection [tdx] seed"


def test_tap_skip_carries_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    # sw_protected is not offered by this kernel (or there is no /dev/kvm): a skip, never a pass
    code = main(["run", str(PAYLOAD), "--platform", "sw_protected", "--backend", "kvm", "--format", "tap"])
    lines = capsys.readouterr().out.splitlines()
    if lines[2].startswith("ok 1 - review_payload_injection [sw_protected] seed # SKIP "):
        assert code == 4  # everything skipped: KSFT_SKIP
        assert len(lines[2]) > len("ok 1 - review_payload_injection [sw_protected] seed # SKIP ")
    else:  # a kernel with SW_PROTECTED_VM and in-place conversion really ran it
        assert lines[2].startswith(("ok 1", "not ok 1")) and "SKIP" not in lines[2]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (FAILING.replace('op = "launch"', 'op = "reboot"'), "step 3: field 'op': unknown op 'reboot'"),
        (FAILING.replace('data = "4141"', 'data = "41x1"'), "step 1: field 'data': bad hex '41x1'"),
        (FAILING.replace("size = 2\n", ""), "step 4: field 'size': required for op 'guest_read'"),
        (FAILING.replace('"tdx"]', '"tdx", "sev"]'), "field 'platforms': unknown platform 'sev'"),
        ('abi = "v99"\n' + FAILING, "field 'abi': unknown revision 'v99'"),
        (FAILING.replace("size = 2", 'size = "two"'), "step 4: field 'size': bad number 'two'"),
    ],
)
def test_bad_input_exits_2_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    assert main(["run", str(PAYLOAD), str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # the good file before it did not run either
    assert captured.err.startswith(f"guestmem: {bad}: {message}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--platform", "sev"], "--platform: unknown platform 'sev'"),
        (["--abi", "v9"], "--abi: unknown revision 'v9'"),
    ],
)
def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(["run", str(PAYLOAD), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "none.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "check", "fill", "consume", "report"])
def test_help_has_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"guestmem {command}" in out

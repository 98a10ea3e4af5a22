"""``guestmem fill`` / ``consume``: fixtures from the model, replayed without it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guestmem.cli import main
from guestmem.scenario import suite_dir
from kvm_support import needs

SUITE = suite_dir()


def test_fill_writes_one_fixture_per_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fx"
    files = [str(SUITE / "matrix_to_shared_none.toml"), str(SUITE / "errno_order.toml")]
    assert main(["fill", str(out), *files, "--platform", "snp"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "errno_order.snp.seed.json",
        "matrix_to_shared_none.snp.seed.json",
    ]
    doc = json.loads((out / "matrix_to_shared_none.snp.seed.json").read_text())
    assert (doc["scenario"], doc["platform"], doc["revision"]) == ("matrix_to_shared_none", "snp", "seed")
    steps = doc["document"]["step"]
    assert len(doc["model"]) == len(steps)
    # ciphertext depends on the model's key: the scenario's own expectation is kept
    assert steps[3]["expect"] == ["not:" + "f0" * 16]
    errno_steps = json.loads((out / "errno_order.snp.seed.json").read_text())["document"]["step"]
    assert errno_steps[3]["expect"] == ["EINVAL@none"]
    assert errno_steps[5]["expect"] == ["EOPNOTSUPP@0x2000"]


def test_fill_pins_the_models_outcome_where_the_scenario_did_not_care(tmp_path: Path) -> None:
    scenario = tmp_path / "loose.toml"
    scenario.write_text(
        'name = "loose"\nplatforms = ["sw_protected"]\npages = 1\ninit = "shared"\n'
        '[[step]]\nop = "host_write"\noffset = 0\ndata = "41"\n'
        '[[step]]\nop = "convert"\noffset = 0\nsize = "4K"\nto = "private"\npolicy = "none"\nexpect = "any"\n'
        '[[step]]\nop = "guest_read"\noffset = 0\nsize = 4\nexpect = "any"\n'
        '[[step]]\nop = "host_read"\noffset = 0\nsize = 4\nexpect = "any"\n'
    )
    assert main(["fill", str(tmp_path / "fx"), str(scenario)]) == 0
    doc = json.loads((tmp_path / "fx" / "loose.sw_protected.seed.json").read_text())
    assert [s["expect"] for s in doc["document"]["step"]] == [["ok"], ["ok"], ["fill:ab"], ["SIGBUS"]]


def test_consume_on_the_model_and_a_tampered_fixture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fx"
    assert main(["fill", str(out), str(SUITE / "selftest_truncate.toml")]) == 0
    # what the fixture pins is the upstream test's own expectations (stated there, not by
    # the model): zeros after each punch, A through the guest, SIGBUS for the host
    pinned = json.loads((out / "selftest_truncate.sw_protected.v8.json").read_text())
    reads = [(s["op"], s["expect"]) for s in pinned["document"]["step"] if s["op"].endswith("_read")]
    assert reads == [
        ("host_read", ["00"]),  # a fresh page
        ("host_read", ["00"]),  # after the first punch
        ("guest_read", ["41"]),  # 'A', carried into private memory (flags = 0, v8)
        ("host_read", ["SIGBUS"]),
        ("guest_read", ["00"]),  # after the second punch, still private
        ("host_read", ["SIGBUS"]),
    ]
    assert main(["consume", str(out), "--backend", "model"]) == 0
    assert "PASS  selftest_truncate [sw_protected]" in capsys.readouterr().out
    path = out / "selftest_truncate.sw_protected.v8.json"
    doc = json.loads(path.read_text())
    doc["document"]["step"][2]["expect"] = ["fill:ab"]
    path.write_text(json.dumps(doc))
    assert main(["consume", str(out), "--backend", "model", "--format", "tap"]) == 1
    assert "not ok 1 - selftest_truncate [sw_protected] v8" in capsys.readouterr().out


def test_fill_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "b"\npages = 1\ninit = "shared"\n[[step]]\nop = "nap"\n')
    out = tmp_path / "fx"
    assert main(["fill", str(out), str(SUITE / "pins.toml"), str(bad)]) == 2
    assert f"{bad}: step 1: field 'op': unknown op 'nap'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not valid JSON"),
        ('{"fixture": 7}', "not a guestmem fixture"),
        ('{"fixture": 1, "platform": "tdx", "revision": "seed"}', "field 'document': required"),
    ],
)
def test_consume_bad_fixture_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    (tmp_path / "x.json").write_text(content)
    assert main(["consume", str(tmp_path), "--backend", "model"]) == 2
    assert message in capsys.readouterr().err


def test_consume_empty_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["consume", str(tmp_path)]) == 2
    assert "no *.json fixtures" in capsys.readouterr().err


@pytest.mark.kvm
@needs("kvm", "guest_memfd", "guest_memfd_mmap", "guest_memfd_init_shared")
def test_consume_on_the_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The guest_memfd_test cases replay on the real kernel as a default VM; the
    conversion cases skip with the kernel's reason, never pass."""
    out = tmp_path / "fx"
    files = [str(SUITE / n) for n in ("gmem_punch_hole.toml", "gmem_sigbus_private.toml", "pins.toml")]
    assert main(["fill", str(out), *files, "--platform", "default"]) == 0
    assert main(["fill", str(out), str(SUITE / "pins.toml"), "--platform", "sw_protected"]) == 0
    capsys.readouterr()
    assert main(["consume", str(out), "--backend", "kvm", "--format", "json"]) == 0
    runs = {(r["scenario"], r["platform"]): r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert runs[("gmem_punch_hole", "default")]["passed"] is True
    assert runs[("gmem_sigbus_private", "default")]["passed"] is True
    pins = runs[("pins", "sw_protected")]
    assert pins["passed"] is True or (pins["passed"] is False and pins["skipped"])

"""Every JSON document guestmem prints is an object whose first key names its schema, and
the JSON Schema shipped for that kind accepts the real output of the command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from guestmem import schemas
from guestmem.backend.base import Outcome
from guestmem.checker import analyze
from guestmem.checker.explore import explore
from guestmem.checker.properties import Property
from guestmem.cli import analyze as analyze_cli
from guestmem.cli import main
from guestmem.scenario import suite_dir
from guestmem.scenario.runner import JSON_DATA_LIMIT, outcome_json
from guestmem.spec import platforms, revisions

jsonschema = pytest.importorskip("jsonschema")

PAYLOAD = str(suite_dir() / "review_payload_injection.toml")


def printed(
    capsys: pytest.CaptureFixture[str], argv: list[str], codes: tuple[int, ...] = (0,)
) -> dict[str, Any]:
    assert main(argv) in codes
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def valid(kind: str, doc: dict[str, Any]) -> None:
    assert isinstance(doc, dict) and next(iter(doc)) == "schema"
    assert doc["schema"] == f"guestmem.{kind}/1"
    jsonschema.Draft202012Validator(schemas.load(kind)).validate(doc)


@pytest.mark.parametrize("kind", schemas.KINDS)
def test_schema_files_are_valid_json_schema(kind: str) -> None:
    schema = schemas.load(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == f"guestmem.{kind}/1"
    assert schema["properties"]["schema"] == {
        "const": f"guestmem.{kind}/1",
        "description": "document kind and version",
    }


def test_results_of_check_run_and_consume(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    check = printed(capsys, ["check", "-k", "errno_", "--format", "json"])
    valid("results", check)
    assert check["exit_status"] == 0 and check["runs"]
    run = printed(capsys, ["run", PAYLOAD, "--abi", "all", "--format", "json"], (0, 1))  # written for seed
    valid("results", run)
    assert {r["abi"] for r in run["runs"]} == {"seed", "iteration2", "rfc-v5", "v8", "v13"}
    fill = printed(capsys, ["fill", str(tmp_path / "fx"), PAYLOAD, "--format", "json"], (0, 1))
    valid("fill", fill)
    assert fill["written"] and all(Path(p).is_file() for p in fill["written"])
    for path in fill["written"]:
        valid("fixture", json.loads(Path(path).read_text()))
    consume = printed(capsys, ["consume", str(tmp_path / "fx"), "--format", "json"])
    valid("results", consume)
    assert {r["backend"] for r in consume["runs"]} == {"model"}  # the default backend everywhere


def test_a_failing_run_still_validates(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    text = (
        Path(PAYLOAD).read_text().replace('expect = { default = "EINVAL", "*" = "ok" }', 'expect = "EPERM"')
    )
    bad.write_text(text)
    doc = printed(capsys, ["run", str(bad), "--format", "json"], (1,))
    valid("results", doc)
    assert doc["exit_status"] == 1 and doc["passed"] is False


def test_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    doc = printed(capsys, ["matrix", "--abi", "all", "--format", "json"])
    valid("matrix", doc)
    assert len(doc["revisions"]) == len(revisions.REVISIONS)


def test_explore(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["explore", "--platform", "sw_protected", "--depth", "3", "--workers", "1", "--format", "json"]
    doc = printed(capsys, [*argv, "--out", str(tmp_path)])
    valid("explore", doc)
    files = [v["file"] for r in doc["results"] for v in r["violations"]]
    assert files and all(Path(f).is_file() for f in files)


def test_explore_schema_names_every_property() -> None:
    schema = schemas.load("explore")
    assert schema["$defs"]["violation"]["properties"]["property"]["enum"] == [p.value for p in Property]


def test_analyze() -> None:
    """analyze's document, with shallow explorations (the real bounds take minutes)."""
    results = []
    for abi in ("seed", "v8"):
        flags_zero, policies = analyze.answers(abi)
        shallow = [explore(p, abi, depth=2, workers=1) for p in platforms.PLATFORMS]
        results.append(analyze.RevisionAnalysis(abi, "title", flags_zero, policies, shallow))
    valid("analyze", json.loads(json.dumps(analyze_cli.document(results))))


def test_bench(capsys: pytest.CaptureFixture[str]) -> None:
    doc = printed(capsys, ["bench", "--quick", "--only", "convert_1tib_vs_4k", "--format", "json"], (0, 1))
    valid("bench", doc)
    figure = doc["figures"]["convert_1tib_vs_4k"]
    assert figure["unit"] == "model time / baseline time" and figure["target_is"] == "ceiling"


def test_probe(capsys: pytest.CaptureFixture[str]) -> None:
    doc = printed(capsys, ["probe", "--format", "json"])  # 0 on every host: absences are findings
    valid("probe", doc)
    unusable = printed(capsys, ["probe", "--device", "/nonexistent/kvm", "--format", "json"])
    valid("probe", unusable)
    assert unusable["usable"] is False and "kvm" in unusable["missing"]
    # a missing feature must carry its reason, and only known features are named
    broken = {**unusable, "missing": {"kvm": ""}}
    with pytest.raises(jsonschema.ValidationError):
        valid("probe", broken)
    with pytest.raises(jsonschema.ValidationError):
        valid("probe", {**unusable, "missing": {"teleport": "no"}})
    assert unusable["usable"] is False and "reason" in unusable


def test_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = printed(capsys, ["report", "--out", str(tmp_path / "r.html"), PAYLOAD, "--format", "json"])
    valid("report", doc)
    assert doc["runs"] == doc["passed"] + doc["failed"] + doc["skipped"]


def test_schema_rejects_a_wrong_document() -> None:
    """The schemas say something: a bare list, a wrong kind, a missing key all fail."""
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], schemas.load("matrix"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": "guestmem.run/1", "passed": True}, schemas.load("results"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": "guestmem.results/1", "passed": True}, schemas.load("results"))
    with pytest.raises(KeyError, match="unknown document kind"):
        schemas.load("nothing")


def test_long_reads_are_abbreviated_in_results(capsys: pytest.CaptureFixture[str]) -> None:
    """A read over one page keeps its first 32 bytes, its size and its SHA-256; a read of
    one page stays whole (the selftests read megabytes; the suite's document stays small)."""
    doc = printed(capsys, ["check", "-k", "selftest_private_mem_conversions", "--format", "json"])
    valid("results", doc)
    outcomes = [
        s["outcome"] for r in doc["runs"] for s in r["steps"] if s["outcome"] and s["outcome"]["data"]
    ]
    long = [o for o in outcomes if "data_size" in o]
    whole = [o for o in outcomes if "data_size" not in o]
    assert long and whole
    for o in long:
        assert o["data_size"] > 4096 and len(o["data"]) == 64 and len(o["data_sha256"]) == 64
    assert all(len(o["data"]) <= 2 * 4096 for o in whole)
    assert len(json.dumps(doc)) < 2_000_000


def test_abbreviated_read_names_the_whole() -> None:
    data = bytes(range(256)) * (JSON_DATA_LIMIT // 256) + b"\x01"
    out = outcome_json(Outcome(data=data))
    assert out["data"] == data[:32].hex() and out["data_size"] == len(data)
    assert out["data_sha256"] == hashlib.sha256(data).hexdigest()
    assert outcome_json(Outcome(data=data[:-1])) == Outcome(data=data[:-1]).to_json()

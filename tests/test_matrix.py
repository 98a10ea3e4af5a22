"""``guestmem matrix`` and :func:`guestmem.report.matrix.compute`: every cell computed by the
model agrees with the documents' table (test_spec_cells.py), and docs/matrix.md is what the
command prints now."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest

from guestmem.backend.base import Outcome
from guestmem.cli import matrix as cli
from guestmem.report import matrix
from guestmem.spec import platforms
from guestmem.spec.terms import Direction, Effect, Phase, Policy, native
from test_spec_cells import expected

ABIS = ("seed", "iteration2", "rfc-v5", "v8", "v13")
DOC = Path(__file__).resolve().parent.parent / "docs" / "matrix.md"
RESULTS = {
    "zeros",
    "preserved",
    "fill:ab",
    "ciphertext",
    "garbage",
    "random",
    "EOPNOTSUPP",
    "EINVAL",
    "EPERM",
}


@pytest.fixture(scope="module")
def computed() -> dict[str, list[dict[str, str]]]:
    return {abi: matrix.compute(abi) for abi in ABIS}


@pytest.mark.parametrize("abi", ABIS)
def test_every_cell_matches_the_documents(computed: dict[str, list[dict[str, str]]], abi: str) -> None:
    rows = computed[abi]
    assert len(rows) == 6 * 2 * 4 * 2
    assert len({(r["platform"], r["direction"], r["policy"], r["phase"]) for r in rows}) == len(rows)
    wrong = [
        (r["platform"], r["direction"], r["policy"], r["phase"], r["result"], want)
        for r in rows
        if r["result"]
        != (want := expected(abi, r["platform"], Direction(r["direction"]), r["policy"], r["phase"]))
    ]
    assert wrong == []


@pytest.mark.parametrize("abi", ABIS)
def test_row_shape(computed: dict[str, list[dict[str, str]]], abi: str) -> None:
    for row in computed[abi]:
        assert tuple(row) == matrix.KEYS
        assert row["platform"] in platforms.PLATFORMS
        assert row["direction"] in ("to_shared", "to_private")
        assert row["policy"] in ("zero", "preserve", "none", "default")
        assert row["phase"] in ("pre_launch", "running")
        assert row["result"] in RESULTS
        assert row["guest_request"] in ("yes", "no")
        assert all(n in matrix.NOTES for n in row["notes"].split(",") if n)


@pytest.mark.parametrize("abi", ABIS)
def test_guest_requests_only_where_pkvm_consent_binds(
    computed: dict[str, list[dict[str, str]]], abi: str
) -> None:
    """semantics.md §3: running pkvm cells that pass the policy check need a guest request."""
    for row in computed[abi]:
        needs = row["platform"] == "pkvm" and row["phase"] == "running" and not row["result"].startswith("E")
        assert row["guest_request"] == ("yes" if needs else "no"), row
        assert ("consent" in row["notes"].split(",")) == needs


def test_assumption_notes(computed: dict[str, list[dict[str, str]]]) -> None:
    def notes(abi: str, platform: str, direction: str, policy: str, phase: str) -> list[str]:
        (row,) = [
            r
            for r in computed[abi]
            if (r["platform"], r["direction"], r["policy"], r["phase"])
            == (platform, direction, policy, phase)
        ]
        return row["notes"].split(",") if row["notes"] else []

    assert notes("seed", "tdx", "to_private", "preserve", "pre_launch") == ["after-launch"]
    assert notes("seed", "tdx", "to_private", "preserve", "running") == []  # EOPNOTSUPP: no note
    assert notes("seed", "sw_protected", "to_private", "preserve", "pre_launch") == []  # no launch phase
    assert notes("seed", "snp", "to_shared", "none", "pre_launch") == ["payload"]
    assert notes("rfc-v5", "cca", "to_shared", "none", "pre_launch") == ["unwritten"]
    assert notes("v8", "tdx", "to_private", "default", "pre_launch") == ["after-launch", "v8-populate"]
    assert notes("v8", "sw_protected", "to_private", "default", "pre_launch") == []


def test_cells_are_computed_not_typed_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Change one platform fact and the matrix follows."""
    snp = platforms.get("snp")
    policies = dict(snp.policies)
    policies[(Direction.TO_SHARED, Policy.NONE)] = native(Effect.ZEROS)
    monkeypatch.setitem(platforms.PLATFORMS, "snp", dataclasses.replace(snp, policies=policies))
    row = matrix.cell("snp", "seed", Direction.TO_SHARED, Policy.NONE, Phase.RUNNING)
    assert row["result"] == "zeros"


@pytest.mark.parametrize(
    ("data", "origins"),
    [
        (matrix.PATTERN, [(0, 4096, "ciphertext")]),  # keyed bytes equal to the plaintext
        (bytes(4096), [(0, 4096, "garbage")]),  # keyed bytes all zero
        (bytes(4096), [(0, 4096, "host")]),  # zeros the host wrote are not a zeroing
        (b"\xab" * 4096, [(0, 4096, "host")]),
        (matrix.PATTERN, [(0, 2048, "ciphertext"), (2048, 4096, "host")]),
    ],
)
def test_classify_refuses_inconsistent_reads(data: bytes, origins: list[tuple[int, int, str]]) -> None:
    with pytest.raises(matrix.MatrixError):
        matrix.classify(Outcome(data=data, origins=origins))


def test_classify_refuses_failed_reads() -> None:
    with pytest.raises(matrix.MatrixError):
        matrix.classify(Outcome(signal="SIGBUS"))


# --- the command ---------------------------------------------------------------------------------
def test_json(capsys: pytest.CaptureFixture[str], computed: dict[str, list[dict[str, str]]]) -> None:
    assert cli.main(["--abi", "rfc-v5", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "guestmem.matrix/1"
    assert [r["abi"] for r in doc["revisions"]] == ["rfc-v5"]
    assert doc["revisions"][0]["cells"] == computed["rfc-v5"]


def test_all_revisions(capsys: pytest.CaptureFixture[str], computed: dict[str, list[dict[str, str]]]) -> None:
    assert cli.main(["--abi", "all", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["abi"]: r["cells"] for r in doc["revisions"]} == {abi: computed[abi] for abi in ABIS}
    assert cli.main(["--abi", "all"]) == 0
    text = capsys.readouterr().out
    assert [line.split(":")[0] for line in text.splitlines() if line.startswith("Conversion matrix for")] == [
        f"Conversion matrix for {abi}" for abi in ABIS
    ]


@pytest.mark.parametrize("abi", ABIS)
def test_kind_of_every_cell(computed: dict[str, list[dict[str, str]]], abi: str) -> None:
    """An errno is unsupported; a success refused once running is pre-launch only; v8 and
    rfc-v5's unspecified mode promise nothing (native); seed's ZERO and PRESERVE are promises."""
    rows = computed[abi]
    running = {
        (r["platform"], r["direction"], r["policy"]): r["result"] for r in rows if r["phase"] == "running"
    }
    for r in rows:
        if r["result"].startswith("E"):
            assert r["kind"] == "unsupported", r
        elif r["phase"] == "pre_launch" and running[(r["platform"], r["direction"], r["policy"])].startswith(
            "E"
        ):
            assert r["kind"] == "prelaunch", r
        else:
            assert r["kind"] in ("guarantee", "native"), r
    kinds = {(r["platform"], r["direction"], r["policy"], r["phase"]): r["kind"] for r in rows}
    if abi == "v8":
        assert "guarantee" not in kinds.values()
    if abi == "seed":
        assert kinds[("tdx", "to_private", "preserve", "pre_launch")] == "prelaunch"
        assert kinds[("tdx", "to_shared", "none", "running")] == "native"
        assert kinds[("tdx", "to_shared", "zero", "running")] == "guarantee"
    if abi == "rfc-v5":
        assert kinds[("snp", "to_shared", "none", "running")] == "native"  # flags = 0: unspecified


def test_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "seed: P→S (to_shared), what the host reads next" in out
    assert "seed: S→P (to_private), what the guest reads next" in out
    assert re.search(r"^pkvm +running +zeros \[g\] +preserved \[g\]", out, re.M)
    assert "[g] needed a guest request first" in out
    assert "model assumption" in out


def test_markdown_lists_only_used_notes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--abi", "v8", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "| `tdx` | pre_launch | EINVAL | EINVAL | EINVAL | preserved [lv] |" in out
    assert "- [v] " in out and "- [g] " not in out  # no pkvm cell converts under v8


def test_bad_abi(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--abi", "v9"]) == 2
    assert "--abi: unknown revision 'v9'" in capsys.readouterr().err


def test_docs_match_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/matrix.md holds the output of each command line it shows."""
    text = DOC.read_text()
    blocks = re.findall(r"<!-- output: guestmem matrix (.*?) -->\n(.*?)<!-- end output -->", text, re.S)
    assert [args for args, _ in blocks] == [f"--abi {abi} --format markdown" for abi in ABIS]
    for args, body in blocks:
        assert f"```sh\nguestmem matrix {args}\n```" in text
        assert cli.main(args.split()) == 0
        assert capsys.readouterr().out == body, f"docs/matrix.md is stale for: guestmem matrix {args}"


def test_markers_survive_rich_on_a_terminal(computed: dict[str, list[dict[str, str]]]) -> None:
    """On a terminal the table goes through rich, whose markup must not eat ``[g]``."""
    pytest.importorskip("rich")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    cli.write_text("seed", computed["seed"], out)
    assert "zeros [g]" in out.getvalue() and "zeros [l]" in out.getvalue()

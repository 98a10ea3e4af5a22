"""Scenario files: every kind of bad input is named as FILE: step N: field 'x': reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestmem.backend.model import ModelBackend
from guestmem.ops import Convert, HostWrite
from guestmem.scenario import ScenarioError, load, run
from guestmem.scenario.format import parse_number
from guestmem.spec.terms import Direction, Policy

GOOD = """\
name = "t"
pages = 2
init = "shared"

[[step]]
op = "host_write"
offset = "page:1"
data = "beef"
repeat = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def step(body: str) -> str:
    return f'name = "t"\npages = 2\ninit = "shared"\n\n[[step]]\n{body}\n'


def test_good_file_parses(tmp_path: Path) -> None:
    scenario = load(write(tmp_path, GOOD))
    assert scenario.platforms == ("sw_protected", "pkvm", "tdx", "snp", "cca", "default")
    assert scenario.abi == "seed"
    (only,) = scenario.steps
    assert only.operation == HostWrite(4096, bytes.fromhex("beefbeef"))
    assert only.expect_for("tdx")[0].kind == "ok"


def test_convert_fields(tmp_path: Path) -> None:
    scenario = load(
        write(
            tmp_path,
            step(
                'op = "convert"\noffset = 0\nsize = "8K"\nto = "private"\npolicy = "preserve"\n'
                'reserved = [0, "0x10"]\nerror_offset_in = 4096\n'
                'expect = { tdx = "EOPNOTSUPP@0", "*" = ["ok", "EAGAIN"] }\nerror_offset = "0x1000"'
            ),
        )
    )
    parsed = scenario.steps[0]
    s = parsed.operation
    assert isinstance(s, Convert)
    assert (s.size, s.to, s.policy, s.flags, s.reserved, s.error_offset_in) == (
        8192,
        Direction.TO_PRIVATE,
        Policy.PRESERVE,
        None,
        (0, 16),
        4096,
    )
    (tdx,) = parsed.expect_for("tdx")
    assert (tdx.name, tdx.error_offset) == ("EOPNOTSUPP", 0)
    ok, eagain = parsed.expect_for("snp")
    assert ok.kind == "ok" and (eagain.name, eagain.error_offset) == ("EAGAIN", 0x1000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (step('op = "host_smash"\noffset = 0'), "step 1: field 'op': unknown op 'host_smash'"),
        (step('op = "host_read"\noffset = 0'), "step 1: field 'size': required for op 'host_read'"),
        (step('op = "host_read"\noffset = 0\nsize = 8\nfoo = 1'), "step 1: field 'foo': unknown field"),
        (
            step('op = "host_read"\noffset = true\nsize = 8'),
            "step 1: field 'offset': must be an integer or a string such as '4K', not a boolean",
        ),
        (step('op = "host_read"\noffset = "lots"\nsize = 8'), "step 1: field 'offset': bad number 'lots'"),
        (step('op = "host_read"\noffset = -1\nsize = 8'), "step 1: field 'offset': -1 does not fit in a u64"),
        (step('op = "host_write"\noffset = 0\ndata = "xyz"'), "step 1: field 'data': bad hex 'xyz'"),
        (step('op = "host_write"\noffset = 0\ndata = 12'), "step 1: field 'data': must be a hex string"),
        (
            step('op = "host_read"\noffset = 0\nsize = 8\nexpect = "0g"'),
            "step 1: field 'expect': '0g': bad hex",
        ),
        (
            step('op = "host_read"\noffset = 0\nsize = 8\nexpect = "ENOPE"'),
            "field 'expect': 'ENOPE' is not an",
        ),
        (
            step('op = "host_read"\noffset = 0\nsize = 8\nexpect = { tdx = "zeros" }'),
            "step 1: field 'expect': no entry for sw_protected, pkvm, snp, cca, default and no '*'",
        ),
        (
            step('op = "host_read"\noffset = 0\nsize = 8\nexpect = { tpm = "zeros", "*" = "ok" }'),
            "step 1: field 'expect.tpm': unknown platform 'tpm'",
        ),
        (step('op = "convert"\noffset = 0\nsize = 4096'), "step 1: field 'to': required for op 'convert'"),
        (
            step('op = "convert"\noffset = 0\nsize = 4096\nto = "private"\npolicy = "shred"'),
            "step 1: field 'policy': unknown policy 'shred'",
        ),
        (
            step('op = "convert"\noffset = 0\nsize = 4096\nto = "private"\npolicy = "zero"\nflags = 1'),
            "step 1: field 'flags': give 'policy' or raw 'flags', not both",
        ),
        (step('op = "convert"\noffset = 0\nsize = 4096\nto = "sideways"'), "step 1: field 'to': must be"),
        (
            step('op = "convert"\noffset = 0\nsize = 4096\nto = "private"\nreserved = [' + "0, " * 11 + "1]"),
            "step 1: field 'reserved': must be a list of at most 11",
        ),
        (
            step('op = "guest_read"\noffset = "page:2"\nsize = 1'),
            "step 1: field 'offset': guest access [0x2000, +0x1) is outside the guest_memfd",
        ),
        (step('op = "guest_read"\noffset = 0\nsize = 1\nas = "both"'), "step 1: field 'as': must be"),
        (
            step('op = "launch"\nerror_offset = 0'),
            "step 1: field 'error_offset': only meaningful with an errno",
        ),
        (step('op = "launch"\nexpect = []'), "step 1: field 'expect': an empty list allows nothing"),
        (
            step('op = "host_read"\noffset = 0\nsize = 8\nmapping = 2'),
            "step 1: field 'mapping': must be 0 (the VMM's mapping) or 1 (a second process's), not 2",
        ),
        (
            step('op = "host_read"\noffset = 0\nsize = 8\nmapping = true'),
            "step 1: field 'mapping': must be 0",
        ),
        (
            step('op = "guest_read"\noffset = 0\nsize = 8\nmapping = 1'),
            "step 1: field 'mapping': unknown field",
        ),
        (GOOD.replace('name = "t"', 'name = ""'), "field 'name': required"),
        (GOOD.replace("pages = 2", "pages = 0"), "field 'pages': required, a positive integer"),
        (GOOD.replace('init = "shared"', 'init = "both"'), "field 'init': required, 'shared' or 'private'"),
        (GOOD + 'abi = "v9"\n', ""),  # TOML: a key after [[step]] belongs to the step
        ('abi = "v9"\n' + GOOD, "field 'abi': unknown revision 'v9'"),
        ('abi = ["v8", "v9"]\n' + GOOD, "field 'abi': unknown revision 'v9'"),
        ('abi = ["v8", "v8"]\n' + GOOD, "field 'abi': lists a revision twice"),
        ("abi = []\n" + GOOD, "field 'abi': must be a revision name or a non-empty list"),
        (
            step('op = "host_read"\noffset = 0\nsize = 8\nexpect_abi = { v9 = "zeros" }'),
            "step 1: field 'expect_abi.v9': unknown revision 'v9'",
        ),
        (
            'abi = ["seed", "v8"]\n'
            + step('op = "host_read"\noffset = 0\nsize = 8\nexpect_abi = { rfc-v5 = "ok" }'),
            "step 1: field 'expect_abi.rfc-v5': the file does not apply to rfc-v5 (its 'abi' lists seed, v8)",
        ),
        (
            step('op = "host_read"\noffset = 0\nsize = 8\nexpect_abi = "zeros"'),
            "step 1: field 'expect_abi': must be a table of revision = expectation",
        ),
        (
            step('op = "host_read"\noffset = 0\nsize = 8\nexpect_abi = { v8 = { tdx = "0g", "*" = "ok" } }'),
            "step 1: field 'expect_abi.v8.tdx': '0g': bad hex",
        ),
        (
            step('op = "host_read"\noffset = 0\nsize = 8\nexpect_abi = { v8 = { tdx = "ok" } }'),
            "step 1: field 'expect_abi.v8': no entry for sw_protected",
        ),
        ('platforms = ["tdx", "tpm"]\n' + GOOD, "field 'platforms': unknown platform 'tpm'"),
        ('platforms = "tdx"\n' + GOOD, "field 'platforms': must be a non-empty list"),
        ('colour = "red"\n' + GOOD, "field 'colour': unknown field"),
        ('name = "t"\npages = 1\ninit = "shared"\n', "field 'step': at least one [[step]]"),
        ("name = ", "not valid TOML"),
    ],
)
def test_bad_input_names_file_step_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ")
    if message:
        assert message in str(info.value)
    else:  # the stray key lands in the step and is refused there
        assert "step 1: field 'abi': unknown field for op 'host_write'" in str(info.value)


def test_abi_lists_the_revisions_a_file_applies_to(tmp_path: Path) -> None:
    listed = load(write(tmp_path, 'abi = ["v8", "rfc-v5"]\n' + GOOD))
    assert (listed.abi, listed.revisions) == ("v8", ("v8", "rfc-v5"))
    assert listed.applies_to("rfc-v5") and not listed.applies_to("seed")
    one = load(write(tmp_path, 'abi = "iteration2"\n' + GOOD))
    assert (one.abi, one.revisions) == ("iteration2", ("iteration2",))
    unstated = load(write(tmp_path, GOOD))
    assert unstated.abi == "seed" and all(
        unstated.applies_to(r) for r in ("seed", "iteration2", "rfc-v5", "v8")
    )


def test_expect_abi_replaces_expect_under_its_revision(tmp_path: Path) -> None:
    text = 'abi = ["seed", "v8"]\n' + step(
        'op = "convert"\noffset = 0\nsize = 4096\nto = "private"\nerror_offset = 0\n'
        'expect = { tdx = "EOPNOTSUPP", "*" = "ok" }\nexpect_abi = { v8 = ["EINVAL", "EAGAIN"] }'
    )
    (s,) = load(write(tmp_path, text)).steps
    assert [str(e) for e in s.expect_for("tdx")] == ["EOPNOTSUPP@0x0"]
    assert [str(e) for e in s.expect_for("tdx", "seed")] == ["EOPNOTSUPP@0x0"]
    assert [str(e) for e in s.expect_for("snp", "v8")] == ["EINVAL@0x0", "EAGAIN@0x0"]
    # error_offset is meaningful when only a per-revision expectation is an errno
    only = 'abi = ["seed", "v8"]\n' + step(
        'op = "launch"\nerror_offset = "none"\nexpect_abi = { v8 = "EINVAL" }'
    )
    assert str(load(write(tmp_path, only)).steps[0].expect_for("tdx", "v8")[0]) == "EINVAL@none"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("value", "number"),
    [
        (4096, 4096),
        ("0x1000", 4096),
        ("4K", 4096),
        ("2M", 2 << 20),
        ("1G", 1 << 30),
        ("page:3", 12288),
        ("12", 12),
    ],
)
def test_numbers(value: int | str, number: int) -> None:
    assert parse_number(value) == number


@pytest.mark.parametrize("value", ["4k", "page:x", "0x", 1 << 64, 1.5, "-4"])
def test_bad_numbers(value: object) -> None:
    with pytest.raises(ValueError):
        parse_number(value)


def test_the_documented_example_holds_where_it_says(tmp_path: Path) -> None:
    """docs/scenarios.md's example parses, passes on the model under both revisions it
    lists, and is not applicable under the others."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "scenarios.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    scenario = load(write(tmp_path, example))
    assert scenario.revisions == ("seed", "rfc-v5")
    for abi in ("seed", "rfc-v5", "v8"):
        for platform in scenario.platforms:
            result = run(scenario, platform, ModelBackend(), abi)
            assert result.status == ("n/a" if abi == "v8" else "pass"), (abi, platform, result.failures)

"""Fuzzing every input path: generated scenario and fixture documents, most of them nearly
valid and some with damaged bytes, through ``guestmem run`` and ``guestmem consume``
in-process. Each must end in exit 0, 1 or 2, with no traceback, within a time bound and
under an address-space cap (docs/scenarios.md, *Limits*)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guestmem.cli
from guestmem.cli import main
from guestmem.ops import OPERATIONS, toml
from guestmem.spec import platforms, revisions
from memory_support import address_space_cap

pytestmark = pytest.mark.timeout(300)

EXAMPLES = 2000
#: Seconds one generated document may take (the default --timeout is far larger; a
#: document that needs more is a defect).
PER_EXAMPLE = 10.0

PLATFORMS = list(platforms.PLATFORMS)
REVISIONS = list(revisions.REVISIONS)
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
numbers = st.one_of(
    st.integers(0, 4 * 4096),
    st.sampled_from([0, 1, 4095, 4096, 8192, 1 << 30, (1 << 64) - 1, 1 << 64, -1, -(1 << 63)]),
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from(
        ["4K", "8K", "0x1000", "page:1", "page:2", "1G", "65G", "2M", "0x", "", "page:-1", "12Q"]
    ),
    st.booleans(),
    st.floats(),
    text,
)
hexdata = st.one_of(
    st.binary(min_size=1, max_size=16).map(bytes.hex),
    st.sampled_from(["", "4", "zz", "41 41", "0x41"]),
    text,
    st.integers(),
)
single_expect = st.one_of(
    st.sampled_from(
        [
            "ok",
            "any",
            "zeros",
            "fill:ab",
            "fill:zz",
            "SIGBUS",
            "SIGSEGV",
            "EINVAL",
            "EINVAL@0x0",
            "EOPNOTSUPP@none",
            "EPERM@0x1000",
            "EAGAIN@x",
            "MEMORY_FAULT",
            "MEMORY_FAULT:private",
            "MEMORY_FAULT:weird",
            "HYPERCALL",
            "not:00",
            "00000000",
            "bogus",
            "E2BIG",
        ]
    ),
    text,
    st.integers(),
)
expects = st.one_of(
    single_expect,
    st.lists(single_expect, max_size=3),
    st.dictionaries(st.sampled_from([*PLATFORMS, "*", "nowhere"]), single_expect | st.lists(single_expect)),
)
step_fields = {
    "offset": numbers,
    "size": numbers,
    "data": hexdata,
    "repeat": st.one_of(st.integers(-2, 8), st.sampled_from([1 << 16, 1 << 20, 1 << 24, 1 << 25]), text),
    "as": st.sampled_from(["private", "shared", "both", ""]),
    "to": st.sampled_from(["private", "shared", "sideways"]),
    "policy": st.sampled_from(["zero", "preserve", "none", "default", "ZERO", ""]),
    "flags": numbers,
    "attributes": numbers,
    "reserved": st.one_of(st.lists(numbers, max_size=13), numbers),
    "error_offset_in": numbers,
    "expect": expects,
    "error_offset": st.one_of(numbers, st.just("none")),
    "expect_abi": st.one_of(
        st.dictionaries(st.sampled_from([*REVISIONS, "v99"]), expects, max_size=2), single_expect
    ),
    "mapping": st.one_of(st.integers(-1, 3), text),
    "bogus": st.integers(),
    # parametrised files (docs/scenarios.md, *Parameters*)
    "when": st.one_of(
        st.sampled_from(["p == 0", "i != p", "1 +", "__import__('os')", "q"]), text, st.integers()
    ),
    "for": st.one_of(
        st.dictionaries(
            st.sampled_from(["i", "p", "pages"]),
            st.one_of(
                st.sampled_from(["range(3)", "range(100)", "(p, 1)", "range(0, 9, 0)"]), st.lists(numbers)
            ),
            max_size=2,
        ),
        text,
    ),
    "do": st.lists(
        st.fixed_dictionaries(
            {"op": st.sampled_from(["launch", "host_read", "pin"])},
            optional={
                "offset": st.sampled_from(["page:{i}", "{i * 4096}", "{p:02x}", "{1 // 0}", 0]),
                "size": st.sampled_from([1, "{i + 1}", "{z}"]),
            },
        ),
        max_size=3,
    ),
}
# every field an op takes is generated (a field added to the format joins in as a number)
for _operation in OPERATIONS.values():
    for _name in _operation.FIELDS:
        step_fields.setdefault(_name, numbers)
steps = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from([*OPERATIONS, "launch", "launch", "explode"]), st.integers())},
    optional=step_fields,
)
scenario_docs = st.fixed_dictionaries(
    {
        "name": st.one_of(
            st.sampled_from(["fz", "../../up", "a/b", "x" * 300, "fz{p}", "fz{p:q}", "{1 // 0}"]),
            text,
            st.integers(),
        ),
        "pages": st.one_of(
            st.integers(1, 4),
            st.sampled_from([0, -1, 1 << 31, (1 << 40) - 1, 1 << 40, 1 << 64]),
            st.booleans(),
            text,
        ),
        "init": st.sampled_from(["shared", "private", "neither"]),
        "step": st.one_of(st.lists(steps, max_size=6), st.just([]), st.integers(), steps),
    },
    optional={
        "platforms": st.one_of(
            st.lists(st.sampled_from([*PLATFORMS, "mainframe"]), min_size=1, max_size=2), text
        ),
        "abi": st.one_of(
            st.sampled_from([*REVISIONS, "v99"]),
            st.lists(st.sampled_from([*REVISIONS, "v99"]), max_size=3),
            st.integers(),
        ),
        "about": st.one_of(text, st.integers()),
        "color": text,
        "params": st.one_of(
            st.dictionaries(
                st.sampled_from(["p", "i", "pages", "1x"]),
                st.one_of(st.lists(st.integers(-1, 3), max_size=3), st.integers(), text),
                max_size=2,
            ),
            text,
        ),
    },
)


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` untouched (mostly), or cut short, with bytes inserted, or one byte changed."""
    how = draw(st.sampled_from(["keep", "keep", "keep", "cut", "insert", "flip"]))
    if how == "keep" or not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if how == "cut":
        return data[:at]
    if how == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]


@st.composite
def scenario_files(draw: st.DrawFn) -> bytes:
    return draw(damaged(toml.document(draw(scenario_docs)).encode("utf-8", "surrogatepass")))


@st.composite
def fixture_files(draw: st.DrawFn) -> bytes:
    document = draw(scenario_docs)
    platform = draw(st.one_of(st.sampled_from(PLATFORMS), st.integers(), st.lists(st.just("snp"))))
    revision = draw(st.one_of(st.sampled_from(REVISIONS), st.none(), st.lists(st.sampled_from(REVISIONS))))
    if draw(st.booleans()):  # consistent with its document, as 'fill' writes it
        document["platforms"] = [platform]
        document["abi"] = revision
    fixture: dict[str, Any] = {
        "fixture": draw(st.sampled_from([1, 1, 1, 2, True, "1"])),
        "scenario": "fz",
        "file": "fz.toml",
        "platform": platform,
        "revision": revision,
        "document": document,
        "model": [],
    }
    for key in draw(
        st.lists(st.sampled_from(["document", "platform", "revision", "model", "fixture"]), max_size=1)
    ):
        del fixture[key]
    if draw(st.booleans()) and draw(st.booleans()):
        fixture["extra"] = 1
    return draw(damaged(json.dumps(fixture).encode()))


@pytest.fixture(scope="module")
def one_parser() -> Iterator[None]:
    """``main`` builds its argument parser once for the whole run (building it is most of an
    in-process call's cost; parsing is unchanged)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(guestmem.cli, "build_parser", functools.cache(guestmem.cli.build_parser))
        yield


@pytest.fixture(scope="module")
def memory_cap() -> Iterator[None]:
    """At most 1 GiB more address space than the process had: a document that makes guestmem
    allocate more fails its example (MemoryError is a traceback)."""
    with address_space_cap():
        yield


def _exit_code(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in-process; any exception other than argparse's exit is a defect."""
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse: usage errors exit 2
            code = stop.code if isinstance(stop.code, int) else 2
    elapsed = time.monotonic() - start
    assert elapsed < PER_EXAMPLE, f"{argv}: {elapsed:.1f} s"
    assert "Traceback" not in err.getvalue()
    return code, err.getvalue()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(kind=st.sampled_from(["run", "consume"]), data=st.data())
def test_every_generated_document_ends_cleanly(
    kind: str,
    data: st.DataObject,
    tmp_path_factory: pytest.TempPathFactory,
    memory_cap: None,
    one_parser: None,
) -> None:
    work = tmp_path_factory.mktemp("fuzz", numbered=True)
    if kind == "run":
        path = work / "fz.toml"
        path.write_bytes(data.draw(scenario_files()))
        code, err = _exit_code(["run", str(path), "--format", "json", "--timeout", "5"])
        where = str(path)
    else:
        path = work / "fz.json"
        path.write_bytes(data.draw(fixture_files()))
        code, err = _exit_code(
            ["consume", str(work), "--backend", "model", "--format", "json", "--timeout", "5"]
        )
        where = str(path)
    assert code in (0, 1, 2), (code, err)
    if code == 2:  # bad input names the file and says what was wrong, on one line
        assert err.startswith(f"guestmem: {where}") or err.startswith("guestmem: no scenario runs"), err
        assert err.count("\n") == 1, err
    _cleanup(work)


def _cleanup(work: Path) -> None:
    for child in work.iterdir():
        child.unlink()
    work.rmdir()

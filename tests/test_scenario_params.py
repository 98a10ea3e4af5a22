"""Parametrised scenario files (docs/scenarios.md, *Parameters*): expansion into one run per
value, loops, conditions and expressions, and the errors a bad template gives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from guestmem.backend.model import ModelBackend
from guestmem.cli import main
from guestmem.ops import Convert, HostRead, HostWrite, Pin
from guestmem.scenario import ScenarioError, load, load_all, run, suite_dir
from guestmem.scenario.fixture import load as load_fixture
from guestmem.scenario.params import TemplateError, evaluate
from guestmem.spec.terms import Direction, Policy

DOCS = Path(__file__).resolve().parent.parent / "docs" / "scenarios.md"

TEMPLATE = """
name = "pinned_page{test_page}"
platforms = ["tdx"]
pages = 3
init = "shared"
params = { test_page = [0, 2] }

[[step]]
op = "pin"
offset = "page:{test_page}"
size = "4K"

[[step]]
for = { i = "range(pages)" }

[[step.do]]
when = "i != test_page"
op = "host_write"
offset = "page:{i}"
data = "{i * 16 + 1:02x}"

[[step.do]]
op = "host_read"
offset = "{i * 4096}"
size = 1
expect = "{'00' if i == test_page else 'any'}"

[[step.do]]
when = "i != test_page"
op = "host_read"
offset = "{i * 4096}"
size = 1
expect = "{i * 16 + 1:02x}"
"""


def write(tmp_path: Path, text: str, name: str = "t.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_template_expands_into_one_run_per_value(tmp_path: Path) -> None:
    runs = load_all(write(tmp_path, TEMPLATE))
    assert [r.name for r in runs] == ["pinned_page0", "pinned_page2"]
    assert [dict(r.params) for r in runs] == [{"test_page": 0}, {"test_page": 2}]
    first = [s.operation for s in runs[0].steps]
    assert first == [
        Pin(0, 4096),
        HostRead(0, 1),
        HostWrite(4096, b"\x11"),
        HostRead(4096, 1),
        HostRead(4096, 1),
        HostWrite(8192, b"\x21"),
        HostRead(8192, 1),
        HostRead(8192, 1),
    ]
    assert [s.index for s in runs[1].steps] == list(range(1, 9))
    assert runs[1].steps[0].operation == Pin(8192, 4096)


def test_expressions_choose_expectations_and_the_runs_pass(tmp_path: Path) -> None:
    for scenario in load_all(write(tmp_path, TEMPLATE)):
        result = run(scenario, "tdx", ModelBackend())
        assert result.status == "pass", [(f.step.index, f.outcome) for f in result.failures]
        reads = [str(s.expect_for("tdx")[0]) for s in scenario.steps if s.op == "host_read"]
        page = scenario.params["test_page"]
        written = [f"{i * 16 + 1:02x}" for i in range(3) if i != page]
        assert reads.count("00") == 1
        assert sorted(r for r in reads if r not in ("any", "00")) == written


def test_a_name_without_the_parameter_gets_it_appended(tmp_path: Path) -> None:
    text = TEMPLATE.replace('name = "pinned_page{test_page}"', 'name = "pinned"')
    assert [r.name for r in load_all(write(tmp_path, text))] == ["pinned[test_page=0]", "pinned[test_page=2]"]


def test_load_refuses_a_file_of_several_runs(tmp_path: Path) -> None:
    path = write(tmp_path, TEMPLATE)
    with pytest.raises(ScenarioError, match="gives 2 scenarios"):
        load(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 + 2", None),
        ("i * 16 + 3", None),
        ("(1, 2) if i else (3,)", None),
        ("range(3, -1, -1)", None),
        ("i in (1, 2) and not i == 3", None),
        ("__import__('os')", "only integers"),
        ("i.real", "only integers"),
        ("[x for x in (1,)]", "only integers"),
        ("2 ** 8", "only integers"),
        ("1 // 0", "division by zero"),
        ("'a' * 3", "not an integer"),
        ("j", "unknown name 'j'"),
        ("range(1000)", "more than 64"),
        ("1 +", "not an expression"),
        ("9" * 30, "too large"),
    ],
)
def test_expressions_are_a_small_safe_subset(text: str, message: str | None) -> None:
    if message is None:
        evaluate(text, {"i": 1})
    else:
        with pytest.raises(TemplateError, match=re.escape(message)):
            evaluate(text, {"i": 1})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("params = { test_page = [0, 2] }", "params = { test_page = [] }"), "list of 1 to 64 integers"),
        (("params = { test_page = [0, 2] }", "params = { test_page = [0, 0] }"), "lists a value twice"),
        (("params = { test_page = [0, 2] }", "params = { pages = [0] }"), "not a parameter name"),
        (("params = { test_page = [0, 2] }", "params = 3"), "table of name = [values]"),
        (
            (
                "params = { test_page = [0, 2] }",
                "params = { a = [1, 2, 3, 4, 5, 6, 7, 8], b = " + str(list(range(40))) + " }",
            ),
            "more than the limit of 256",
        ),
        (('for = { i = "range(pages)" }', 'for = { i = "range(pages)", j = "0" }'), "one name = values"),
        (('for = { i = "range(pages)" }', 'for = { test_page = "range(pages)" }'), "not a new name"),
        (('when = "i != test_page"', "when = 1"), "field 'when'"),
        (('offset = "{i * 4096}"', 'offset = "{k}"'), "unknown name 'k'"),
    ],
)
def test_a_bad_template_is_bad_input_naming_the_file(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    text = TEMPLATE.replace(*edit)
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError, match=re.escape(message)) as err:
        load_all(path)
    assert str(err.value).startswith(str(path))


def test_expansion_is_held_to_the_step_limit(tmp_path: Path) -> None:
    loops = '[[step]]\nfor = { a = "range(64)" }\n[[step.do]]\nfor = { b = "range(64)" }\n'
    loops += '[[step.do.do]]\nfor = { c = "range(64)" }\n[[step.do.do.do]]\nop = "launch"\n'
    text = 'name = "big{p}"\npages = 1\ninit = "shared"\nparams = { p = [1] }\n' + loops
    with pytest.raises(ScenarioError, match="more than the limit of 10000"):
        load_all(write(tmp_path, text))


def test_braces_are_plain_text_without_params(tmp_path: Path) -> None:
    text = 'name = "curly{x}"\npages = 1\ninit = "shared"\n[[step]]\nop = "launch"\n'
    assert load(write(tmp_path, text)).name == "curly{x}"
    looped = text + "[[step]]\nfor = { i = [1] }\n"
    with pytest.raises(ScenarioError, match="step 2: field 'op'"):
        load(write(tmp_path, looped, "l.toml"))


def test_each_run_reports_and_fixes_under_its_own_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = suite_dir() / "selftest_elevated_refcount.toml"
    assert main(["run", str(path), "--format", "json"]) == 0
    names = [r["scenario"] for r in json.loads(capsys.readouterr().out)["runs"]]
    assert names == [f"selftest_elevated_refcount_page{t}" for t in range(4)]
    out = tmp_path / "fixtures"
    assert main(["fill", str(out), str(path)]) == 0
    capsys.readouterr()
    fixtures = sorted(out.glob("*.json"))
    assert [f.name.split(".")[0] for f in fixtures] == names
    scenario, platform = load_fixture(fixtures[1])
    assert scenario.name == "selftest_elevated_refcount_page1" and platform == "sw_protected"
    assert scenario.steps[0].operation == Pin(4096, 4096)
    assert scenario.steps[21].operation == Convert(0, 16384, to=Direction.TO_PRIVATE, policy=Policy.DEFAULT)


def test_the_documented_example_expands_as_described(tmp_path: Path) -> None:
    section = DOCS.read_text().split("## Parameters", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    runs = load_all(write(tmp_path, example))
    assert [r.name for r in runs] == [f"selftest_elevated_refcount_page{t}" for t in range(4)]
    for scenario in runs:
        assert run(scenario, "sw_protected", ModelBackend(), "v8").status == "pass"

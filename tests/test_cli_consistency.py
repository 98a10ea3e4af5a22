"""One command line: every revision choice takes ``all``, the model is the default backend,
help texts are plain words with examples that parse, JUnit XML and exit status 4 (all
skipped) wherever scenarios run, and completion scripts generated from the parser."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from guestmem.backend.base import MAX_PAGES, Machine, Unavailable
from guestmem.cli import COMMANDS, build_parser, main
from guestmem.scenario import load, output, suite_dir
from guestmem.scenario.runner import RunResult, run, run_all
from guestmem.spec import platforms

PAYLOAD = str(suite_dir() / "review_payload_injection.toml")


class Nowhere:
    """A backend that can open no machine: every run is skipped with its reason."""

    name = "nowhere"

    def max_pages(self) -> tuple[int, str]:
        return MAX_PAGES, "it opens nothing"

    def open(self, platform: str, abi: str, size: int, flags: int) -> Machine:
        raise Unavailable("no machine here")


def skipped_runs() -> list[RunResult]:
    return [run(load(PAYLOAD), p, Nowhere()) for p in platforms.PLATFORMS]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def examples(sub: argparse.ArgumentParser) -> list[list[str]]:
    """Every ``guestmem ...`` command line of a help epilog, without comments and pipes."""
    found = []
    for line in (sub.epilog or "").splitlines():
        line = line.strip()
        if not line.startswith("guestmem "):
            continue
        words = shlex.split(line, comments=True)
        for stop in ("&&", "|", ">"):
            if stop in words:
                words = words[: words.index(stop)]
        found.append(words[1:])
    return found


@pytest.mark.parametrize("name", COMMANDS)
def test_help_is_plain_words_with_examples_that_parse(name: str) -> None:
    sub = subparsers()[name]
    description = sub.description or ""
    assert (
        description and "``" not in description and ":mod:" not in description and ":func:" not in description
    )
    runs = examples(sub)
    assert any(argv[0] == name for argv in runs), f"guestmem {name} --help has no example"
    for argv in runs:
        assert argv[0] in COMMANDS, argv
        build_parser().parse_args(argv)  # SystemExit (exit 2) if an example does not parse
    for line in (sub.epilog or "").splitlines():
        if line.startswith("  guestmem ") and "  " in line.strip():
            assert "#" in line, f"an example's comment lacks its '#': {line!r}"


@pytest.mark.parametrize("name", ["run", "check", "fill", "report", "matrix", "explore", "analyze"])
def test_every_revision_choice_takes_all(name: str) -> None:
    sub = subparsers()[name]
    action = next(a for a in sub._actions if "--abi" in a.option_strings)
    assert "all" in (action.help or ""), name


@pytest.mark.parametrize("name", ["run", "check", "consume"])
def test_the_model_is_the_default_backend(name: str) -> None:
    sub = subparsers()[name]
    action = next(a for a in sub._actions if "--backend" in a.option_strings)
    assert action.default == "model"


def test_exit_status_4_when_everything_was_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = load(PAYLOAD)
    skipped = skipped_runs()
    assert skipped and all(r.status == "skip" for r in skipped)
    assert output.exit_code(skipped) == output.EXIT_SKIP == 4
    passed = run_all([scenario], platform="tdx")
    assert output.exit_code([*passed, *skipped]) == 0  # a skip beside a pass is not a failure
    assert output.exit_code([]) == 0
    assert output.print_results(skipped, "text") == 4
    assert "nothing ran: every run was skipped or not applicable: exit status 4" in capsys.readouterr().out


def test_junit(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        Path(PAYLOAD).read_text().replace('expect = { default = "EINVAL", "*" = "ok" }', 'expect = "EPERM"')
    )
    assert main(["run", str(bad), PAYLOAD, "--platform", "snp", "--format", "junit"]) == 1
    text = capsys.readouterr().out
    assert text.startswith('<?xml version="1.0" encoding="utf-8"?>')
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.tag == "testsuites" and (root.get("tests"), root.get("failures")) == ("2", "1")
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "guestmem.snp"
    failed, passed = suite.findall("testcase")
    assert (
        failed.get("name") == "review_payload_injection [seed]" and failed.get("classname") == "guestmem.snp"
    )
    failure = failed.find("failure")
    assert failure is not None and "step 2 convert 0x0+0x1000 to private (preserve)" in (
        failure.get("message") or ""
    )
    assert "expected EPERM, saw ok" in (failure.text or "")
    assert passed.find("failure") is None and passed.find("skipped") is None


def test_junit_skips_and_check(capsys: pytest.CaptureFixture[str]) -> None:
    skipped = skipped_runs()
    root = output.junit(skipped)
    assert root.get("skipped") == root.get("tests") == str(len(skipped))
    assert all(c.find("skipped") is not None for c in root.iter("testcase"))
    assert main(["check", "-k", "gmem_", "--format", "junit"]) == 0
    checked = ET.fromstring(capsys.readouterr().out.split("\n", 1)[1])
    assert int(checked.get("tests") or 0) > 5 and checked.get("failures") == "0"


def test_consume_junit_and_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["fill", str(tmp_path), PAYLOAD, "--platform", "tdx"]) == 0
    capsys.readouterr()
    assert main(["consume", str(tmp_path), "--format", "junit"]) == 0
    root = ET.fromstring(capsys.readouterr().out.split("\n", 1)[1])
    assert root.get("tests") == "1" and root.get("failures") == "0"


def test_completion_fish_from_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "fish"]) == 0
    script = capsys.readouterr().out
    for name in COMMANDS:
        assert f"-n __fish_use_subcommand -a {name} " in script
    assert "__fish_seen_subcommand_from check' -l format -x -a 'text json tap junit'" in script
    assert "__fish_seen_subcommand_from explore' -l ablate -x -a consent" in script
    fish = shutil.which("fish")
    if fish is not None:
        done = subprocess.run(
            [fish, "--no-execute", "-c", script], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_bash_zsh(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("shtab")
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "junit" in script and "consume" in script and "--ablate" in script
    if shell == "bash" and shutil.which("bash"):
        done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr


def test_completion_without_shtab(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "shtab", None)
    assert main(["completion", "bash"]) == 2
    assert "pip install 'guestmem[completion]'" in capsys.readouterr().err


def test_fill_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["fill", str(tmp_path), PAYLOAD, "--abi", "all", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "guestmem.fill/1" and doc["exit_status"] == 0
    # the file lists neither v8 nor v13
    assert [(n["abi"], n["status"]) for n in doc["not_frozen"]] == [("v8", "n/a")] * 6 + [("v13", "n/a")] * 6
    assert doc["not_frozen"] and {Path(p).name.split(".")[2] for p in doc["written"]} <= {
        "seed",
        "iteration2",
        "rfc-v5",
        "v8",
    }


def test_readme_tour_parses_and_writes_only_to_its_temporary_directory() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    tour = readme.split("## A tour", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = [line for line in tour.splitlines() if line.strip()]
    assert lines[0].startswith("tmp=$(mktemp -d)")
    for line in lines[1:]:
        for command in line.split("#", 1)[0].split("&&"):
            argv = shlex.split(command.replace('"$tmp', '"/tmp/x'))
            assert argv[0] == "guestmem", line
            build_parser().parse_args(argv[1:])
            for option in ("--out", "fill"):
                if option in argv:
                    target = argv[argv.index(option) + 1]
                    assert target.startswith("/tmp/x/"), f"the tour writes outside $tmp: {line}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_fits_80_columns(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = subparsers()[name].format_help()
    assert max(len(line) for line in text.splitlines()) <= 80, [
        line for line in text.splitlines() if len(line) > 80
    ]


def test_a_command_line_builds_only_its_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing every command module costs seconds on an emulated test kernel: a command
    line that names its command imports that one; a mistyped command still lists them all."""
    import importlib

    imported: list[str] = []
    real = importlib.import_module

    def record(name: str, *args: Any) -> Any:
        imported.append(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", record)
    assert main(["matrix", "--format", "json"]) == 0
    assert imported == ["guestmem.cli.matrix"]
    imported.clear()
    with pytest.raises(SystemExit) as bad:
        main(["chekc"])
    assert bad.value.code == 2
    assert imported == [f"guestmem.cli.{name}" for name in COMMANDS]

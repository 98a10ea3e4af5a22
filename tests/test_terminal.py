"""What a person sees on a terminal: tables within 80 columns that keep every errno and
``error_offset`` whole, coloured verdicts, ``NO_COLOR`` respected, plain text when piped."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest

from guestmem import terminal
from guestmem.cli import main
from guestmem.scenario import load, output, suite_dir
from guestmem.scenario.runner import run_all

ERRNO_ORDER = str(suite_dir() / "errno_order.toml")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def shown(argv: list[str], stream: io.StringIO) -> tuple[int, str]:
    with contextlib.redirect_stdout(stream):
        code = main(argv)
    return code, stream.getvalue()


@pytest.fixture(params=["rich", "plain"])
def flavour(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a table reaches a terminal: rich, and plain text when rich is absent."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("NO_COLOR", raising=False)
    if request.param == "rich":
        pytest.importorskip("rich")
    else:
        monkeypatch.setitem(sys.modules, "rich", None)  # import rich -> ImportError
    assert terminal.use_rich(Terminal()) == (request.param == "rich")
    return str(request.param)


def test_run_fits_80_columns_and_keeps_error_offsets(flavour: str) -> None:
    code, out = shown(["run", ERRNO_ORDER, "--platform", "pkvm"], Terminal())
    assert code == 0
    lines = ANSI.sub("", out).splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    text = "\n".join(lines)
    for whole in ("EPERM", "(error_offset=0x1000)", "EOPNOTSUPP", "(error_offset=0x2000)", "EAGAIN"):
        assert whole in text, whole
    assert "\x1b[32mok" in out, "verdicts are green on a terminal"


def test_check_failure_fits_and_is_red(flavour: str, tmp_path: Path) -> None:
    failing = tmp_path / "errno_order.toml"
    failing.write_text(Path(ERRNO_ORDER).read_text().replace('"EPERM@0x1000"', '"EPERM@0x2000"'))
    stream = Terminal()
    results = run_all([load(str(failing))], platform="pkvm")
    output.print_cases(results, stream)
    assert output.exit_code(results) == 1
    out = stream.getvalue()
    plain = ANSI.sub("", out)
    assert "(error_offset=0x1000)" in plain
    assert max(len(line) for line in plain.splitlines()) <= 80
    assert "\x1b[1;31mFAIL" in out or "\x1b[1;31mFAIL\x1b[0m" in out
    assert "error_offset" not in plain or "(error_offset=0x" in plain


def test_no_color(flavour: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    _, out = shown(["run", ERRNO_ORDER, "--platform", "pkvm"], Terminal())
    assert "\x1b[" not in out.replace("\x1b[1m", "").replace("\x1b[0m", "").replace("\x1b[3m", "")
    assert "\x1b[32m" not in out and "\x1b[1;31m" not in out


def test_piped_output_is_plain_one_line_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    _, out = shown(["run", ERRNO_ORDER, "--platform", "pkvm"], io.StringIO())
    assert "\x1b[" not in out
    assert re.search(
        r"^5 +convert 0x1000\+0x1000 to shared \(preserve\) +EPERM \(error_offset=0x1000\)", out, re.M
    )


def test_wrapping_never_cuts_below_the_floor() -> None:
    stream = Terminal()
    rows = [["1", "convert 0x0+0x1000 to private (zero)", "EOPNOTSUPP (error_offset=0x0)", "ok"]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "50")
        mp.setitem(sys.modules, "rich", None)
        terminal.table(["#", "action", "saw", "result"], rows, stream=stream, verdicts=(3,), whole_words=(2,))
    plain = ANSI.sub("", stream.getvalue())
    assert "(error_offset=0x0)" in plain and max(map(len, plain.splitlines())) <= 50

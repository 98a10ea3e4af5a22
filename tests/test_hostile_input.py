"""Hostile input: every input path ends in exit 2 with a message naming what was wrong,
nothing is written outside the chosen directory, and a valid file cannot make a run
cost more than the pages it touches (docs/scenarios.md, *Limits*)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestmem.cli import main
from guestmem.scenario import suite_dir
from memory_support import address_space_cap

pytestmark = pytest.mark.timeout(60)

HEAD = 'name = "x"\nplatforms = ["sw_protected"]\npages = 1\ninit = "shared"\n'
READ = '[[step]]\nop = "host_read"\noffset = 0\nsize = 4\n'


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _bad(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """``argv`` is bad input: exit 2, one ``guestmem:`` line naming every needle."""
    code, _out, err = _run(argv, capsys)
    assert code == 2, err
    assert err.startswith("guestmem: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def _write(path: Path, text: str | bytes) -> str:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return str(path)


# --- encodings, number sizes, nesting: scenario files --------------------------------------
def test_scenario_not_utf8_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "latin.toml", b'name = "caf\xe9"\npages = 1\n')
    _bad(["run", path], capsys, "latin.toml", "line 1", "not UTF-8", "0xe9")


def test_scenario_with_a_utf16_bom_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "wide.toml", (HEAD + READ).encode("utf-16"))
    _bad(["run", path], capsys, "wide.toml", "UTF-16", "save it as UTF-8")


def test_scenario_with_a_utf8_bom_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "bom.toml", b"\xef\xbb\xbf" + (HEAD + READ).encode())
    assert _run(["run", path], capsys)[0] == 0


def test_scenario_with_a_5000_digit_integer_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "big.toml", HEAD.replace("pages = 1", "pages = " + "9" * 5000) + READ)
    _bad(["run", path], capsys, "big.toml", "line 3", "5000 characters")


def test_scenario_with_a_too_large_u64_field_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "u64.toml", HEAD + READ.replace("offset = 0", "offset = " + "9" * 30))
    _bad(["run", path], capsys, "u64.toml", "step 1", "field 'offset'", "does not fit in a u64")


@pytest.mark.parametrize("levels", [100, 50_000, 100_000])
def test_deeply_nested_scenario_is_bad_input(
    levels: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "deep.toml", HEAD + "about = " + "[" * levels + "]" * levels + "\n" + READ)
    _bad(["run", path], capsys, "deep.toml", "line 5", "nested more than 32 levels")


def test_50k_dotted_keys_are_refused_before_parsing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The TOML parser's memory grows with the square of a dotted key's length."""
    path = _write(tmp_path / "dots.toml", "a" + ".a" * 50_000 + " = 1\n")
    _bad(["run", path], capsys, "dots.toml", "line 1", "nested more than 32 levels")


def test_ordinary_nesting_and_floats_are_not_counted_as_deep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expect = 'expect = { sw_protected = ["zeros", "fill:00"], "*" = "ok" }\n'
    path = _write(tmp_path / "ok.toml", HEAD + READ + expect + "# [[[[ not counted ]]]] 1.2.3.4\n")
    assert _run(["run", path], capsys)[0] == 0


# --- special files, size cap, paths ----------------------------------------------------------
def _fifo(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    os.mkfifo(path)
    return str(path)


def test_fifo_scenario_does_not_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _bad(["run", _fifo(tmp_path, "pipe.toml")], capsys, "pipe.toml", "a FIFO, not a regular file")


def test_device_and_directory_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _bad(["run", "/dev/zero"], capsys, "/dev/zero", "a character device, not a regular file")
    _bad(["run", str(tmp_path)], capsys, str(tmp_path), "a directory, not a regular file")


def test_scenario_larger_than_the_cap_is_refused_unread(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.toml"
    with path.open("wb") as stream:  # sparse: 5 GiB that cost no disk
        stream.truncate(5 << 30)
    _bad(["run", str(path)], capsys, "huge.toml", "larger than the 1 MiB limit")


def test_paths_with_nul_or_missing_are_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _bad(["run", "a\0b.toml"], capsys, "NUL")
    _bad(["run", str(tmp_path / "none.toml")], capsys, "none.toml", "No such file")
    _bad(["consume", "a\0b", "--backend", "model"], capsys)
    _bad(["fill", "a\0b"], capsys, "NUL")
    long = "a" * 5000
    _bad(["run", long], capsys, "File name too long")
    _bad(["fill", long], capsys, "File name too long")
    _bad(["consume", long, "--backend", "model"], capsys, "File name too long")
    _bad(["report", "--out", long], capsys, "--out", "File name too long")


def test_report_output_paths_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = _write(tmp_path / "s.toml", HEAD + READ)
    _bad(["report", "--out", "r\0.html", scenario], capsys, "--out", "NUL")
    _bad(["report", "--out", _fifo(tmp_path, "pipe.html"), scenario], capsys, "--out", "not a regular file")
    _bad(["report", "--out", "/dev/full", scenario], capsys, "--out", "not a regular file")
    _bad(["report", "--out", "/proc/version", scenario], capsys, "--out", "/proc/version", "cannot write")


def test_explore_out_it_cannot_create_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = _write(tmp_path / "file", "x")
    explore = ["explore", "--platform", "pkvm", "--depth", "1", "--out"]
    _bad([*explore, f"{taken}/cx"], capsys, "--out", f"{taken}/cx", "Not a directory")
    _bad([*explore, "/proc/none/cx"], capsys, "--out", "/proc/none/cx", "No such file")
    _bad([*explore, "c\0x"], capsys, "--out", "NUL")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_bad_timeout_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit) as stop:
            main(["check", "--timeout", value])
        assert stop.value.code == 2
        assert "--timeout" in capsys.readouterr().err


# --- fixtures ----------------------------------------------------------------------------------
def _fixture(tmp_path: Path) -> Path:
    out = tmp_path / "fx"
    assert main(["fill", str(out), str(suite_dir() / "selftest_truncate.toml")]) == 0
    return out / "selftest_truncate.sw_protected.seed.json"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\xff\xfe{\x00}\x00", "UTF-16"),
        (b'{"fixture": 1, "x": "\xff"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 32 levels"),
        (b'{"fixture": ' + b"9" * 5000 + b"}", "5000 characters"),
        (b'{"fixture": 1, "platform": "x", "revision": "seed", "document": {}, "extra": 1}', "'extra'"),
        (b'{"fixture": 1, "platform": ["x"], "revision": "seed", "document": {}}', "'platform'"),
        (b'{"fixture": true}', "'fixture'"),
        (b"{", "not valid JSON"),
        (b'{"fixture": 1, "document": {"about": "\\ud800"}}', "lone UTF-16 surrogate"),
    ],
)
def test_malformed_fixture_is_bad_input(
    content: bytes, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _fixture(tmp_path)
    path.write_bytes(content)
    capsys.readouterr()
    _bad(["consume", str(path.parent), "--backend", "model"], capsys, path.name, needle)


def test_fifo_and_directory_fixtures_are_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _fixture(tmp_path).parent
    capsys.readouterr()
    _fifo(directory, "a_pipe.json")
    _bad(["consume", str(directory), "--backend", "model"], capsys, "a_pipe.json", "a FIFO")
    os.unlink(directory / "a_pipe.json")
    (directory / "a_dir.json").mkdir()
    _bad(["consume", str(directory), "--backend", "model"], capsys, "a_dir.json", "a directory")


# --- output paths ------------------------------------------------------------------------------
def _named(tmp_path: Path, file: str, name: str) -> str:
    text = HEAD.replace('name = "x"', f"name = {json.dumps(name)}") + READ
    return _write(tmp_path / file, text)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_fill_confines_traversal_and_separators_to_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    files = [
        _named(work, "1.toml", "../../pwned"),
        _named(work, "2.toml", "/etc/pwned"),
        _named(work, "3.toml", "sub/dir\\name"),
        _named(work, "4.toml", ".."),
        _named(work, "5.toml", "x" * 300),
        _named(work, "6.toml", "plain"),
    ]
    before = _tree(tmp_path)
    out = work / "out"
    code, out_text, err = _run(["fill", str(out), *files], capsys)
    assert code == 0, err
    written = sorted(p.name for p in out.iterdir())
    assert _tree(tmp_path) - before == {str((out / n).relative_to(tmp_path)) for n in written} | {
        str(out.relative_to(tmp_path))
    }
    assert len(written) == 6 and "plain.sw_protected.seed.json" in written
    for name in written:
        assert len(name.encode()) <= 255 and not name.startswith(".")
        assert (out / name).is_file() and "/" not in name
    assert "wrote 6 fixtures" in out_text
    # every fixture still replays
    assert main(["consume", str(out), "--backend", "model"]) == 0


def test_fill_keeps_colliding_names_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [_named(tmp_path, "1.toml", "same"), _named(tmp_path, "2.toml", "same")]
    files.append(_named(tmp_path, "3.toml", "a/b"))
    files.append(_named(tmp_path, "4.toml", "a_b"))
    out = tmp_path / "out"
    assert _run(["fill", str(out), *files], capsys)[0] == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 4
    assert "same.sw_protected.seed.json" in names and "same.sw_protected.seed-2.json" in names
    scenarios = sorted(json.loads((out / n).read_text())["scenario"] for n in names)
    assert scenarios == ["a/b", "a_b", "same", "same"]


def test_name_with_a_control_character_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("nul\0name", "esc\x1b[2Jname"):
        path = _named(tmp_path, "c.toml", name)
        _bad(["fill", str(tmp_path / "out"), path], capsys, "c.toml", "field 'name'", "control character")
    assert not (tmp_path / "out").exists()


def test_fill_does_not_follow_a_planted_symlink(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (out / "plain.sw_protected.seed.json").symlink_to(victim)
    err = _bad(["fill", str(out), _named(tmp_path, "p.toml", "plain")], capsys, "cannot write")
    assert "plain.sw_protected.seed.json" in err
    assert victim.read_text() == "keep"


# --- limits of a valid file ------------------------------------------------------------------
def test_steps_beyond_the_limit_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "long.toml", HEAD + '[[step]]\nop = "launch"\nexpect = "any"\n' * 10_001)
    _bad(["run", path], capsys, "long.toml", "field 'step'", "10001 steps", "10000")


def test_repeat_is_bounded_by_the_access_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write = f'[[step]]\nop = "host_write"\noffset = 0\ndata = "41"\nrepeat = {1 << 24}\n'
    path = _write(tmp_path / "rep.toml", HEAD + write)
    _bad(["run", path], capsys, "rep.toml", "step 1", "field 'repeat'", "1048576-byte limit")


def test_reads_are_bounded_by_the_access_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    read = '[[step]]\nop = "guest_read"\noffset = 0\nsize = "1G"\n'
    path = _write(tmp_path / "r.toml", HEAD.replace("pages = 1", "pages = 262144") + read)
    _bad(["run", path], capsys, "r.toml", "step 1", "field 'size'", "1048576-byte limit")


def test_a_guest_access_anywhere_in_the_guest_memfd_is_valid_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A guest read of the last page of a 1 TiB guest_memfd runs on the model. On the kernel
    it runs, or is skipped with the reason, or its size is refused by that backend's own
    limit on ``pages`` (docs/scenarios.md *Limits*), never by the other backend's."""
    from guestmem.backend.kernel import KernelBackend

    pages = 1 << 28
    last = (pages - 1) * 4096
    read = f'[[step]]\nop = "launch"\n[[step]]\nop = "guest_read"\noffset = {last}\nsize = 8\n'
    read += 'expect = "zeros"\n'
    head = HEAD.replace("pages = 1", f"pages = {pages}").replace('["sw_protected"]', '["default"]')
    path = _write(tmp_path / "far.toml", head + read)
    code, out, err = _run(["run", path, "--backend", "model"], capsys)
    assert code == 0, err
    assert "PASS" in out
    kernel_pages, why = KernelBackend().max_pages()
    if kernel_pages < pages:
        _bad(["run", path, "--backend", "kvm"], capsys, "far.toml", "field 'pages'", why)
        return
    code, out, err = _run(["run", path, "--backend", "kvm", "--format", "json"], capsys)
    assert code in (0, 4) and "Traceback" not in err, err
    runs = json.loads(out)["runs"]
    assert [r["status"] for r in runs] == ["pass" if code == 0 else "skip"]
    assert code == 0 or runs[0]["skipped"]


def test_pages_beyond_the_format_limit_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "p.toml", HEAD.replace("pages = 1", f"pages = {1 << 40}") + READ)
    _bad(["run", path], capsys, "p.toml", "field 'pages'", str(1 << 40))


@pytest.mark.parametrize("pages", [1 << 31, (1 << 31) - 1])
def test_kernel_backend_refuses_what_the_kernel_or_memory_cannot_hold(
    pages: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """2^31 pages: no memslot holds it (EINVAL); 2^31 - 1: the memslot would take 16 GiB of
    kernel memory. Both are refused before any VM is made, with the reason."""
    path = _write(tmp_path / "k.toml", HEAD.replace("pages = 1", f"pages = {pages}") + READ)
    _bad(["run", path, "--backend", "kvm"], capsys, "k.toml", "field 'pages'", "kvm backend accepts here")


@pytest.fixture
def memory_cap() -> Iterator[None]:
    """Fail a test that allocates more than 1 GiB more than it started with."""
    with address_space_cap():
        yield


@pytest.mark.timeout(30)
def test_huge_sparse_file_costs_what_its_touched_pages_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], memory_cap: None
) -> None:
    """2^40 - 1 pages, three steps: the run, the report's memory maps and the fixture
    cost only the pages touched (a per-page loop would not finish)."""
    steps = (
        '[[step]]\nop = "host_write"\noffset = "page:1000000000"\ndata = "41"\n'
        '[[step]]\nop = "convert"\noffset = 0\nsize = "page:2000000000"\nto = "private"\npolicy = "zero"\n'
        '[[step]]\nop = "host_read"\noffset = "page:1000000000"\nsize = 1\nexpect = "SIGBUS"\n'
    )
    path = _write(tmp_path / "huge.toml", HEAD.replace("pages = 1", f"pages = {(1 << 40) - 1}") + steps)
    assert _run(["run", path], capsys)[0] == 0
    report = tmp_path / "r.html"
    assert _run(["report", "--out", str(report), path], capsys)[0] == 0
    assert f"first 16 of {(1 << 40) - 1} pages shown" in report.read_text()
    assert _run(["fill", str(tmp_path / "fx"), path], capsys)[0] == 0
    assert _run(["consume", str(tmp_path / "fx"), "--backend", "model"], capsys)[0] == 0


def _slow(path: Path, converts: int) -> str:
    """A run whose every conversion takes seconds on the model (4096 written pages made
    ciphertext or garbage, each page's bytes derived anew) within every cost limit."""
    writes = "".join(
        f'[[step]]\nop = "host_write"\noffset = "{m}M"\ndata = "41"\nrepeat = 1048576\n' for m in range(16)
    )
    turn = '[[step]]\nop = "convert"\noffset = 0\nsize = "16M"\nto = "{}"\npolicy = "none"\n'
    converts_text = "".join(turn.format("private" if n % 2 == 0 else "shared") for n in range(converts))
    head = 'name = "slow"\nplatforms = ["snp"]\npages = 4096\ninit = "shared"\n'
    return _write(path, head + writes + converts_text)


def test_timeout_ends_a_slow_run_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run past its --timeout stops, within a long step if it is in one: no further step
    runs, the run fails as timed out (exit 1), the next run starts afresh."""
    path = _slow(tmp_path / "slow.toml", 400)
    code, out, _err = _run(["run", path, "--timeout", "0.05", "--format", "json"], capsys)
    assert code == 1
    (run,) = json.loads(out)["runs"]
    assert run["error"].startswith("timed out: the run took more than 0.05 s (--timeout), at step ")
    ran = [s for s in run["steps"] if s["outcome"] is not None]
    assert 1 <= len(ran) < 400
    assert all(s["passed"] is None for s in run["steps"][len(ran) + 1 :])
    assert _run(["run", _slow(tmp_path / "short.toml", 2), "--timeout", "0"], capsys)[0] == 0  # 0: no limit


def test_timeout_default_comes_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$GUESTMEM_TIMEOUT`` sets ``--timeout``'s default (``guestmem vm`` sets it under
    emulation); ``--timeout`` still wins; a bad value is bad input that names the variable
    and runs nothing."""
    path = _slow(tmp_path / "slow.toml", 400)
    monkeypatch.setenv("GUESTMEM_TIMEOUT", "0.05")
    code, out, _err = _run(["run", path, "--format", "json"], capsys)
    assert code == 1
    assert json.loads(out)["runs"][0]["error"].startswith("timed out: the run took more than 0.05 s")
    assert _run(["run", _slow(tmp_path / "short.toml", 2), "--timeout", "0"], capsys)[0] == 0
    for value in ("-1", "nan", "soon"):
        monkeypatch.setenv("GUESTMEM_TIMEOUT", value)
        code, out, err = _run(["run", path], capsys)
        assert code == 2 and out == ""
        assert f"$GUESTMEM_TIMEOUT: must be a finite number of seconds >= 0, not {value!r}" in err or (
            f"$GUESTMEM_TIMEOUT: not a number of seconds: {value!r}" in err
        )


def test_the_documented_limits_are_the_enforced_ones() -> None:
    from guestmem import inputs, progress
    from guestmem.backend.base import MAX_PAGES
    from guestmem.backend.kernel import MEMORY_SHARE, MEMSLOT_MAX_PAGES, SLOT_BYTES_PER_PAGE
    from guestmem.checker import explore
    from guestmem.cli.explore import MAX_WORKERS
    from guestmem.scenario import cost
    from guestmem.scenario.format import MAX_ACCESS, MAX_NAME_CHARS, MAX_STEPS
    from guestmem.scenario.runner import JSON_DATA_HEAD, KEPT, OBSERVED_PAGES, OBSERVED_STEPS, TIMEOUT

    doc = (Path(__file__).parent.parent / "docs" / "scenarios.md").read_text()
    limits = doc[doc.index("## Limits") : doc.index("## Fixtures")]
    stated = [
        f"{inputs.MAX_SCENARIO_BYTES >> 20} MiB for a scenario file",
        f"{inputs.MAX_FIXTURE_BYTES >> 20} MiB for a fixture",
        f"{inputs.MAX_DEPTH} levels",
        f"at most {inputs.MAX_NUMBER_CHARS} characters",
        f"{MAX_STEPS} per file",
        f"| one access | {MAX_ACCESS >> 20} MiB",
        "anywhere in the guest_memfd, on both backends",
        "2^40 − 1",
        "2^31 − 1",
        f"an eighth of `MemAvailable` at {SLOT_BYTES_PER_PAGE} bytes",
        f"default {TIMEOUT:g}",
        f"at most {MAX_NAME_CHARS} characters",
        f"| one run's accesses | {cost.MAX_MOVED >> 20} MiB",
        f"| one run's pins | {cost.MAX_PINNED} pages",
        f"what `consume` reads, {cost.MAX_FIXTURE >> 20} MiB",
        f"| a report | {cost.MAX_REPORT >> 20} MiB of HTML",
        f"the first {OBSERVED_PAGES} pages and the first {OBSERVED_STEPS} steps",
        f"short reads whole up to {KEPT >> 20} MiB per run",
        f"longer than a page is kept as its first {JSON_DATA_HEAD} bytes",
        f"`--pages` from 1 to {explore.MAX_PAGES}, `--depth` from 0 to {explore.MAX_DEPTH}",
        f"`--workers`\nfrom 1 to {MAX_WORKERS}",
        f"(default\n{explore.TIMEOUT:g} s for the whole command",
        f"exit status is {progress.TIMED_OUT}",
    ]
    assert cost.MAX_FIXTURE == inputs.MAX_FIXTURE_BYTES  # fill and consume: one limit
    for text in stated:
        assert text in limits, text
    assert (MAX_PAGES, MEMSLOT_MAX_PAGES, MEMORY_SHARE) == ((1 << 40) - 1, (1 << 31) - 1, 8)

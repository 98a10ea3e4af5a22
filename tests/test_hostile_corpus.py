"""The hostile-input corpus: every case a review of the input paths found, each run as the
command a user types, in a process of its own under an address-space cap and a time cap.

Each case asserts the exit status, that bad input (exit 2) and a timeout (124) print
exactly one line on stderr and no traceback, that nothing outside the chosen place was
written or changed, and that the process's peak RSS stayed under 512 MiB
(docs/scenarios.md, *Limits*). Accepted inputs at the limits are here too, with the same
memory bound. Where a case needs what root cannot be denied (an unreadable directory, a
read-only one) or a full disk, it is checked in-process instead, at the end.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from guestmem import outfile
from guestmem.cli import main
from guestmem.scenario import cost
from memory_support import address_space_cap

pytestmark = pytest.mark.timeout(300)

SRC = Path(__file__).resolve().parent.parent / "src"
#: The peak resident memory any case may reach.
RSS_LIMIT = 512 << 20
#: The address space a case's process may have (a runaway allocation fails there first).
ADDRESS_SPACE = 2 << 30
ONE = 'name = "x"\nplatforms = ["sw_protected"]\npages = {pages}\ninit = "shared"\n'
READ = '[[step]]\nop = "host_read"\noffset = 0\nsize = 4\n'


@dataclasses.dataclass
class Done:
    code: int
    out: str
    err: str
    rss: int
    seconds: float


def _caps() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def guestmem(argv: list[str], cwd: Path, limit: float = 60.0, env: dict[str, str] | None = None) -> Done:
    """``python -m guestmem ARGV`` in ``cwd``, killed after ``limit`` seconds (a failure)."""
    environ = {k: v for k, v in os.environ.items() if k != "GUESTMEM_TIMEOUT"}
    environ |= {"PYTHONPATH": str(SRC), "NO_COLOR": "1", **(env or {})}
    out_path, err_path = cwd / ".case-out", cwd / ".case-err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "guestmem", *argv],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=environ,
            preexec_fn=_caps, start_new_session=True,
        )  # fmt: skip
        killed: list[bool] = []

        def kill() -> None:
            killed.append(True)
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(limit, kill)
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    done = Done(
        proc.returncode,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
        usage.ru_maxrss * 1024,
        time.monotonic() - start,
    )
    out_path.unlink()
    err_path.unlink()
    assert not killed, f"{argv}: still running after {limit} s"
    assert "Traceback" not in done.err, done.err[-3000:]
    assert done.rss < RSS_LIMIT, f"{argv}: peak RSS {done.rss >> 20} MiB"
    return done


@pytest.fixture
def here(work: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Done]:
    """``guestmem ARGV`` in this process, in ``work``, under an address-space cap of 1 GiB
    more than the process has (a runaway allocation is a ``MemoryError``, a traceback):
    for the cases whose input is small; those that measure memory or time run apart."""
    monkeypatch.chdir(work)
    monkeypatch.delenv("GUESTMEM_TIMEOUT", raising=False)

    def call(
        argv: list[str], cwd: Path = work, limit: float = 60.0, env: dict[str, str] | None = None
    ) -> Done:
        assert cwd == work and env is None
        out, err = io.StringIO(), io.StringIO()
        start = time.monotonic()
        with address_space_cap(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 2
        seconds = time.monotonic() - start
        assert seconds < limit, f"{argv}: {seconds:.1f} s"
        assert "Traceback" not in err.getvalue()
        return Done(code, out.getvalue(), err.getvalue(), 0, seconds)

    return call


def one_line(done: Done, code: int, *needles: str) -> str:
    """Exit ``code`` with exactly one ``guestmem:`` line on stderr naming every needle."""
    assert done.code == code, (done.code, done.err[-2000:])
    assert done.err.startswith("guestmem") and done.err.count("\n") == 1, done.err[-2000:]
    for needle in needles:
        assert needle in done.err, (needle, done.err)
    return done.err


def tree(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` with its contents (a link: where it points)."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
        elif path.is_fifo():
            out[rel] = "fifo"
        else:
            out[rel] = "dir"
    return out


def scenario(path: Path, steps: str, pages: int = 1, head: str = ONE) -> str:
    path.write_text(head.format(pages=pages) + steps, encoding="utf-8")
    return str(path)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "victim").write_text("keep")
    return tmp_path


# --- writes outside the chosen place ---------------------------------------------------------
PLANTED: dict[str, Callable[[Path, Path], None]] = {
    "symlink": lambda at, victim: at.symlink_to(victim),
    "dangling symlink": lambda at, victim: at.symlink_to(victim.parent / "nowhere"),
    "hard link": lambda at, victim: os.link(victim, at),
    "fifo": lambda at, victim: os.mkfifo(at),
    "directory": lambda at, victim: at.mkdir(),
}
REASONS = {
    "symlink": "a symbolic link (never followed) is there",
    "dangling symlink": "a symbolic link (never followed) is there",
    "hard link": "2 hard links",
    "fifo": "a FIFO is there",
    "directory": "a directory is there",
}


@pytest.mark.parametrize("kind", list(PLANTED))
def test_report_out_never_writes_through_what_is_planted_there(
    kind: str, work: Path, here: Callable[..., Done]
) -> None:
    path = scenario(work / "s.toml", READ)
    PLANTED[kind](work / "r.html", work / "victim")
    before = tree(work)
    one_line(here(["report", "--out", "r.html", path], work), 2, "--out", "r.html", REASONS[kind])
    assert tree(work) == before


@pytest.mark.parametrize("kind", list(PLANTED))
def test_explore_out_never_writes_through_what_is_planted_there(
    kind: str, work: Path, here: Callable[..., Done]
) -> None:
    out = work / "cx"
    out.mkdir()
    PLANTED[kind](out / "sw_protected-seed-confidentiality.toml", work / "victim")
    before = tree(work)
    argv = ["explore", "--platform", "sw_protected", "--depth", "3", "--workers", "1", "--out", "cx"]
    one_line(here(argv, work), 2, "sw_protected-seed-confidentiality.toml", REASONS[kind])
    assert tree(work) == before


@pytest.mark.parametrize("kind", list(PLANTED))
def test_fill_never_writes_through_what_is_planted_there(
    kind: str, work: Path, here: Callable[..., Done]
) -> None:
    path = scenario(work / "s.toml", READ)
    out = work / "fx"
    out.mkdir()
    PLANTED[kind](out / "x.sw_protected.seed.json", work / "victim")
    before = tree(work)
    one_line(here(["fill", "fx", path], work), 2, "x.sw_protected.seed.json", REASONS[kind])
    assert tree(work) == before


def test_written_files_replace_regular_ones_and_leave_no_temporary(
    work: Path, here: Callable[..., Done]
) -> None:
    path = scenario(work / "s.toml", READ)
    (work / "r.html").write_text("old")
    assert here(["report", "--out", "r.html", path], work).code == 0
    assert (work / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert here(["fill", "fx", path], work).code == 0
    assert here(["fill", "fx", path], work).code == 0  # again, over its own files
    assert sorted(p.name for p in (work / "fx").iterdir()) == ["x.sw_protected.seed.json"]
    assert sorted(p.name for p in work.iterdir()) == ["fx", "r.html", "s.toml", "victim"]


@pytest.mark.parametrize(
    "argv",
    [["fill", ""], ["explore", "--depth", "1", "--out", ""], ["report", "--out", ""]],
    ids=["fill", "explore", "report"],
)
def test_an_empty_output_path_is_bad_input(argv: list[str], work: Path, here: Callable[..., Done]) -> None:
    before = tree(work)
    one_line(here(argv, work), 2, "an empty path")
    assert tree(work) == before


def test_output_paths_it_cannot_use_are_named(work: Path, here: Callable[..., Done]) -> None:
    path = scenario(work / "s.toml", READ)
    before = tree(work)
    one_line(here(["report", "--out", "no/r.html", path], work), 2, "no: the directory does not exist")
    one_line(here(["report", "--out", ".", path], work), 2, "names a directory")
    one_line(here(["fill", "victim", path], work), 2, "victim: not a directory")
    one_line(here(["explore", "--depth", "1", "--out", "victim/cx"], work), 2, "victim/cx: Not a directory")
    assert tree(work) == before


# --- the checker's bounds ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [["--depth", "700"], ["--pages", "3", "--depth", "30"]],
    ids=["depth-700", "pages-3-depth-30"],
)
def test_explore_beyond_what_time_allows_ends_with_the_timeout_status(argv: list[str], work: Path) -> None:
    done = guestmem(
        ["explore", "--platform", "tdx", "--workers", "1", "--timeout", "2", *argv], work, limit=30
    )
    err = one_line(done, 124, "explore timed out after 2 s (--timeout)", "tdx under seed explored depth")
    assert done.seconds < 20, err
    assert "tdx" in done.out  # what was explored is still reported


def test_checker_bounds_are_checked_before_anything_runs(work: Path, here: Callable[..., Done]) -> None:
    for argv, needle in (
        (["explore", "--depth", "1000000000"], "--depth: 1000000000 is out of range (0 to 1000)"),
        (["explore", "--pages", "9"], "--pages: 9 is out of range (1 to 8)"),
        (["explore", "--workers", "100000"], "--workers: 100000 is out of range (1 to 64)"),
        (["analyze", "--workers", "0"], "--workers: 0 is out of range (1 to 64)"),
    ):
        done = here(argv, work, limit=20)
        one_line(done, 2, needle)
        assert done.seconds < 10


def test_analyze_stops_at_its_timeout(work: Path) -> None:
    done = guestmem(["analyze", "--abi", "seed", "--workers", "1", "--format", "json"], work, limit=30,
                    env={"GUESTMEM_TIMEOUT": "0.5"})  # fmt: skip
    one_line(done, 124, "analyze timed out after 0.5 s (--timeout)")
    results = json.loads(done.out)["revisions"][0]["explore"]
    assert any(not r["complete"] for r in results)


# --- one run's cost --------------------------------------------------------------------------------
TIB = (1 << 40) // 4096


@pytest.mark.parametrize(
    ("steps", "pages", "needles"),
    [
        ('[[step]]\nop = "pin"\noffset = 0\nsize = "1024G"\n', TIB, ("step 1", "pin 268435456 pages")),
        (
            '[[step]]\nop = "pin"\noffset = 0\nsize = "page:10000000"\n',
            10_000_000,
            ("step 1", "10000000 pages"),
        ),
        (
            '[[step]]\nop = "host_read"\noffset = 0\nsize = "1M"\n' * 2000,
            256,
            ("step 65", "more than the limit"),
        ),
        (
            '[[step]]\nop = "host_write"\noffset = 0\ndata = "41"\nrepeat = 1048576\n' * 1000,
            256,
            ("step 65", "field 'repeat'", "64 MiB"),
        ),
    ],
    ids=["pin-1tib", "pin-10m-pages", "2000-reads-of-1mib", "1000-writes-of-1mib"],
)
@pytest.mark.parametrize("command", ["run", "report", "fill"])
def test_a_run_over_its_cost_limits_is_refused_before_it_runs(
    steps: str, pages: int, needles: tuple[str, ...], command: str, work: Path, here: Callable[..., Done]
) -> None:
    path = scenario(work / "big.toml", steps, pages)
    argv = {
        "run": ["run", path, "--timeout", "1"],
        "report": ["report", "--out", "r.html", path],
        "fill": ["fill", "fx", path],
    }[command]
    before = tree(work)
    done = here(argv, work, limit=30)
    one_line(done, 2, "big.toml", *needles)
    assert done.seconds < 15
    assert tree(work) == before


def test_fill_refuses_a_fixture_consume_would_refuse(work: Path, here: Callable[..., Done]) -> None:
    """Twenty 1 MiB reads of bytes the host wrote, each expecting only ``ok``: the fixture
    would hold every byte as hex (40 MiB), so fill refuses the run before it runs."""
    writes = '[[step]]\nop = "host_write"\noffset = "{m}M"\ndata = "0123456789abcdef"\nrepeat = 65536\n'
    reads = '[[step]]\nop = "host_read"\noffset = "{m}M"\nsize = "1M"\n'
    steps = "".join(writes.format(m=m) for m in range(20)) + "".join(reads.format(m=m) for m in range(20))
    path = scenario(work / "wide.toml", steps, 20 * 256)
    before = tree(work)
    one_line(here(["fill", "fx", path], work), 2, "wide.toml", "step 28", "16 MiB a fixture may have")
    assert tree(work) == before
    assert here(["run", path], work).code == 0  # a run alone is within its limits


def test_what_fill_writes_consume_reads(work: Path) -> None:
    """At the read limits: every fixture fill writes is one consume accepts and passes."""
    writes = '[[step]]\nop = "host_write"\noffset = "{m}M"\ndata = "0123456789abcdef"\nrepeat = 65536\n'
    reads = '[[step]]\nop = "host_read"\noffset = "{m}M"\nsize = "1M"\n'
    steps = "".join(writes.format(m=m) for m in range(5)) + "".join(reads.format(m=m) for m in range(5))
    path = scenario(work / "wide.toml", steps, 5 * 256)
    done = guestmem(["fill", "fx", path, "--platform", "all", "--abi", "all"], work)
    assert done.code == 0, done.err
    written = list((work / "fx").iterdir())
    assert written and all(p.stat().st_size <= cost.MAX_FIXTURE for p in written)
    assert guestmem(["consume", "fx"], work).code == 0


@pytest.mark.slow
def test_accepted_inputs_at_the_limits_stay_under_512_mib(work: Path) -> None:
    """The most a run may move (64 MiB of 1 MiB reads and writes of distinct bytes), the most
    steps a file may have, the most pages a run may pin: run, report, fill and consume on
    several platforms and revisions, each under the memory bound (a report it would refuse
    as too large is refused with one line)."""
    writes = '[[step]]\nop = "host_write"\noffset = "{m}M"\ndata = "0123456789abcdef"\nrepeat = 65536\n'
    reads = '[[step]]\nop = "host_read"\noffset = "{m}M"\nsize = "1M"\nexpect = "not:00"\n'
    moved = "".join(writes.format(m=m) for m in range(32)) + "".join(reads.format(m=m) for m in range(32))
    many = '[[step]]\nop = "host_read"\noffset = "page:1"\nsize = 4096\nexpect = "zeros"\n' * 10_000
    pins = '[[step]]\nop = "pin"\noffset = 0\nsize = "64M"\n'
    head = 'name = "{name}"\nplatforms = ["sw_protected"]\npages = {pages}\ninit = "shared"\n'
    files = [
        scenario(work / "moved.toml", moved, 32 * 256, head.replace("{name}", "moved")),
        scenario(work / "many.toml", many, 2, head.replace("{name}", "many")),
        scenario(work / "pins.toml", pins, 16384, head.replace("{name}", "pins")),
    ]

    def run(path: str, here: Path) -> None:
        assert guestmem(["run", path, "--abi", "all", "--format", "json"], here, limit=120).code in (0, 1)

    def report(path: str, here: Path) -> None:
        done = guestmem(["report", "--out", "r.html", path, "--abi", "all"], here, limit=120)
        if done.code == 2:
            one_line(done, 2, "could take", "more than its limit of 64 MiB")

    def fill_and_consume(path: str, here: Path) -> None:
        assert guestmem(["fill", "fx", path, "--abi", "all"], here, limit=120).code in (0, 1)
        assert guestmem(["consume", "fx", "--format", "json"], here, limit=120).code in (0, 1)

    # side by side, each in a directory of its own: every command is a process of its own,
    # held to the bound on its own
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        jobs = []
        for path in files:
            for job in (run, report, fill_and_consume):
                here = work / f"{Path(path).stem}-{job.__name__}"
                here.mkdir()
                jobs.append(pool.submit(job, path, here))
        for done in jobs:
            done.result()


def test_a_fixture_with_a_15_mib_text_costs_what_json_costs(work: Path) -> None:
    path = scenario(work / "s.toml", READ)
    assert guestmem(["fill", "fx", path], work).code == 0
    fixture_path = work / "fx" / "x.sw_protected.seed.json"
    doc = json.loads(fixture_path.read_text())
    doc["document"]["about"] = "a" * (15 << 20)
    fixture_path.write_text(json.dumps(doc))
    done = guestmem(["consume", "fx"], work)
    assert done.code == 0, done.err


# --- readers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("steps", "needles"),
    [
        (
            '[[step]]\nop = "host_read"\noffset = 0\nsize = 4\nmapping = 1.0\n',
            ("step 1", "field 'mapping'", "1.0"),
        ),
        (
            '[[step]]\nop = "host_read"\noffset = "٣"\nsize = 4\n',
            ("step 1", "field 'offset'", "ASCII digits"),
        ),
        ('[[step]]\nop = "host_read"\noffset = "page:٣"\nsize = 4\n', ("step 1", "field 'offset'", "ASCII")),
        ('[[step]]\nop = "host_read"\noffset = "٣K"\nsize = 4\n', ("step 1", "field 'offset'", "ASCII")),
        ('[[step]]\nop = "host_read"\noffset = 1.5\nsize = 4\n', ("field 'offset'", "not a float (1.5)")),
        (
            '[[step]]\nop = "host_read"\noffset = 0\nsize = 4\nexpect = "SIGFOO"\n',
            ("field 'expect'", "SIGFOO"),
        ),
        (
            '[[step]]\nop = "host_read"\noffset = 0\nsize = 4\nexpect = "SIGIOT"\n',
            ("field 'expect'", "SIGIOT"),
        ),
        (
            '[[step]]\nop = "convert"\noffset = 0\nsize = 4096\nto = "private"\nexpect = "EAGAIN@٣"\n',
            ("field 'expect'", "error_offset"),
        ),
    ],
    ids=[
        "mapping-float",
        "arabic-digit",
        "arabic-page",
        "arabic-size",
        "float",
        "sigfoo",
        "alias",
        "arabic-at",
    ],
)
def test_values_that_are_not_what_they_look_like_are_refused(
    steps: str, needles: tuple[str, ...], work: Path, here: Callable[..., Done]
) -> None:
    one_line(here(["run", scenario(work / "s.toml", steps)], work), 2, "s.toml", *needles)


def _fixture(work: Path, here: Callable[..., Done]) -> tuple[Path, dict[str, object]]:
    path = scenario(work / "s.toml", READ)
    assert here(["fill", "fx", path], work).code == 0
    fixture_path = work / "fx" / "x.sw_protected.seed.json"
    return fixture_path, json.loads(fixture_path.read_text())


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("model", "nope", "field 'model': must be a list of 1 outcomes"),
        ("model", [], "field 'model': must be a list of 1 outcomes, one per step, not a list of 0"),
        ("model", [{"errno": None}], "field 'model': step 1: not an outcome"),
        ("scenario", ["x"], "field 'scenario': must be a string"),
        ("scenario", "other", "field 'scenario': 'other' is not the document's name"),
        ("fixture", 1.0, "field 'fixture': not a guestmem fixture"),
        ("revision", "v8", "field 'revision': does not match"),
    ],
)
def test_fixture_fields_are_checked(
    field: str, value: object, needle: str, work: Path, here: Callable[..., Done]
) -> None:
    fixture_path, doc = _fixture(work, here)
    doc[field] = value
    fixture_path.write_text(json.dumps(doc))
    one_line(here(["consume", "fx"], work), 2, fixture_path.name, needle)


def test_names_that_rearrange_a_line_are_shown_escaped(work: Path, here: Callable[..., Done]) -> None:
    name = "safe\u202eelif\u2028next"
    head = ONE.replace('name = "x"', f"name = {json.dumps(name)}")
    path = scenario(work / "s.toml", READ, head=head)
    for fmt in ("text", "tap", "junit"):
        done = here(["run", path, "--format", fmt], work)
        assert done.code == 0
        assert "\u202e" not in done.out and "\u2028" not in done.out
        assert "safe\\u202eelif\\u2028next" in done.out
    assert here(["report", "--out", "r.html", path], work).code == 0
    html = (work / "r.html").read_text()
    assert "\u202e" not in html and "safe\\u202eelif\\u2028next" in html
    bidi = work / "evil\u202etxt.toml"
    bidi.write_text("not toml [")
    one_line(here(["run", str(bidi)], work), 2, "evil\\u202etxt.toml")


def test_vm_help_names_no_kernel_where_there_is_none(work: Path) -> None:
    done = guestmem(["vm", "--help"], work, env={"GUESTMEM_KERNEL": ""})
    assert done.code == 0
    assert "None" not in done.out


# --- the first round's cases, as commands ---------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\xff\xfe" + 'name = "x"'.encode("utf-16-le"), "UTF-16"),
        (b"a = " + b"[" * 100_000 + b"]" * 100_000, "nested more than 32 levels"),
        (b"a" + b".a" * 50_000 + b" = 1\n", "nested more than 32 levels"),
        (b"pages = " + b"9" * 5000 + b"\n", "5000 characters"),
        (b'name = "caf\xe9"\n', "not UTF-8"),
    ],
    ids=["utf16", "deep", "dotted", "digits", "latin1"],
)
def test_first_round_scenarios_are_still_refused(
    content: bytes, needle: str, work: Path, here: Callable[..., Done]
) -> None:
    (work / "bad.toml").write_bytes(content)
    one_line(here(["run", "bad.toml"], work), 2, "bad.toml", needle)


def test_first_round_special_files_are_still_refused(work: Path, here: Callable[..., Done]) -> None:
    os.mkfifo(work / "pipe.toml")
    one_line(here(["run", "pipe.toml"], work, limit=20), 2, "a FIFO, not a regular file")
    with (work / "huge.toml").open("wb") as stream:
        stream.truncate(5 << 30)
    one_line(here(["run", "huge.toml"], work), 2, "larger than the 1 MiB limit")
    one_line(here(["run", "missing.toml"], work), 2, "No such file")


# --- what root cannot be denied, in-process ----------------------------------------------------
def test_an_unreadable_directory_says_so(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (work / "fx").mkdir()

    def denied(path: object) -> object:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", denied)
    assert main(["consume", str(work / "fx")]) == 2
    err = capsys.readouterr().err
    assert "cannot list the directory: Permission denied" in err and err.count("\n") == 1


def test_a_fresh_directory_is_made_inside_or_refused_in_one_line(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ``guestmem vm`` keeps its own files in the scratch directory."""
    with outfile.Directory(work, what="--scratch") as directory:
        made = Path(directory.fresh(".runner-"))
        assert made.parent == work and made.name.startswith(".runner-") and made.is_dir()

        def read_only(*args: object, **kwargs: object) -> str:
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(tempfile, "mkdtemp", read_only)
        with pytest.raises(outfile.OutputError) as refused:
            directory.fresh(".runner-")
    assert (
        str(refused.value)
        == f"--scratch: {work}: cannot create a directory in it: the file system is read-only"
    )


@pytest.mark.parametrize(
    ("code", "reason"),
    [(errno.EROFS, "the file system is read-only"), (errno.ENOSPC, "no space left on the device")],
)
def test_a_write_the_file_system_refuses_leaves_the_old_file(
    code: int, reason: str, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (work / "r.html").write_text("old")

    def failing(fd: int, data: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing)
    with pytest.raises(outfile.OutputError, match=reason):
        outfile.write_file(str(work / "r.html"), "new", "--out")
    monkeypatch.undo()
    assert (work / "r.html").read_text() == "old"
    assert sorted(p.name for p in work.iterdir()) == ["r.html", "victim"]

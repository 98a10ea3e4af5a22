"""``guestmem fill DIR``: freeze scenario runs on the model as JSON fixtures."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from guestmem import schemas
from guestmem.cli import UsageError
from guestmem.cli.run import add_timeout, check_selection, execute, load_all
from guestmem.scenario import fixture, suite_files
from guestmem.scenario import output as show
from guestmem.spec import platforms, revisions

EXAMPLE = """\
example:
  guestmem fill /tmp/fixtures              # the built-in suite, every platform
  guestmem fill /tmp/fixtures my.toml --platform sw_protected --abi all
  # then, on the machine under test:
  guestmem consume /tmp/fixtures --backend kvm

Each fixture is DIR/<scenario>.<platform>.<abi>.json: the scenario, the platform, the
revision and the outcomes allowed at every step. A run that fails on the model is not
frozen (exit 1). Files are written only inside DIR: a scenario name that is not a safe
file name is rewritten (see docs/scenarios.md, Fixtures), and two runs that would share
a file name get -2, -3, ... suffixes."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "fill",
        help="write JSON fixtures (allowed outcomes per step) from the model",
        description="Run scenarios on the model and write one JSON fixture per scenario, "
        "platform and revision, to replay elsewhere with 'guestmem consume'.",
        epilog=EXAMPLE,
    )
    parser.add_argument("dir", metavar="DIR", help="output directory (created if missing)")
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="scenario files (default: the built-in suite)"
    )
    parser.add_argument("--platform", default="all", help=f"one of {', '.join(platforms.PLATFORMS)}, or all")
    parser.add_argument(
        "--abi",
        default=None,
        help=f"one of {', '.join(revisions.REVISIONS)}, or all (default: each file's own)",
    )
    parser.add_argument("--format", default="text", choices=("text", "json"), help="default: text")
    add_timeout(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_selection(args)
    out = Path(args.dir)
    if "\0" in args.dir:
        raise UsageError(f"{args.dir!r}: a path cannot contain a NUL byte")
    try:
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out}: not a directory")
    except OSError as err:
        raise UsageError(f"{_clip(args.dir)}: {err.strerror or err}") from None
    scenarios = load_all(args.files or [str(p) for p in suite_files()])
    results = execute(scenarios, args, backend="model")
    if not results:
        raise UsageError(f"no scenario runs on platform {args.platform!r}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{out}: cannot create the directory: {err.strerror or err}") from None
    written: list[str] = []
    not_frozen: list[dict[str, str]] = []
    used: set[str] = set()
    for result in results:
        if result.status != "pass":
            not_frozen.append(
                {"scenario": result.scenario.name, "platform": result.platform, "abi": result.abi}
                | {"status": result.status}
            )
            if args.format == "text":
                print(f"not frozen: {show.title(result)}: {result.status} on the model", file=sys.stderr)
            continue
        name = fixture.file_name(result)
        stem, count = name.removesuffix(".json"), 1
        while name in used:
            count += 1
            name = f"{stem}-{count}.json"
        used.add(name)
        text = json.dumps(fixture.freeze(result), indent=2) + "\n"
        try:
            _write(out, name, text)
        except OSError as err:
            raise UsageError(f"{out / name}: cannot write: {err.strerror or err}") from None
        written.append(str(out / name))
    code = show.exit_code(results)
    if args.format == "json":
        body = {"dir": str(out), "written": written, "not_frozen": not_frozen, "exit_status": code}
        schemas.dump("fill", body)
    else:
        print(f"wrote {len(written)} fixtures to {out}")
    return code


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _write(directory: Path, name: str, text: str) -> None:
    """Write ``directory/name``; ``name`` is one path component, and a symbolic link
    planted there is not followed."""
    if os.sep in name or name in (".", "..") or "\0" in name:
        raise AssertionError(f"not a plain file name: {name!r}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(directory / name, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(text)

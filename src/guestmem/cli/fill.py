"""``guestmem fill DIR``: freeze scenario runs on the model as JSON fixtures."""

from __future__ import annotations

import argparse
import json
import sys

from guestmem import outfile, schemas
from guestmem.cli import UsageError
from guestmem.cli.run import add_timeout, check_selection, execute, load_all
from guestmem.printable import printable
from guestmem.scenario import fixture, suite_files
from guestmem.scenario import output as show
from guestmem.scenario.runner import RunResult
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
    outfile.check_directory(args.dir)
    scenarios = load_all(args.files or [str(p) for p in suite_files()])
    results = execute(scenarios, args, backend="model")
    if not results:
        raise UsageError(f"no scenario runs on platform {args.platform!r}")
    written: list[str] = []
    not_frozen: list[dict[str, str]] = []
    frozen: dict[str, RunResult] = {}
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
        while name in frozen:
            count += 1
            name = f"{stem}-{count}.json"
        frozen[name] = result
    with outfile.Directory(args.dir, create=True) as out:
        for name in frozen:  # every name first: a target it refuses leaves the others unwritten
            out.check(name)
        for name, result in frozen.items():
            written.append(out.write(name, json.dumps(fixture.freeze(result), indent=2) + "\n"))
    code = show.exit_code(results)
    if args.format == "json":
        body = {"dir": args.dir, "written": written, "not_frozen": not_frozen, "exit_status": code}
        schemas.dump("fill", body)
    else:
        print(f"wrote {len(written)} fixtures to {printable(args.dir)}")
    return code

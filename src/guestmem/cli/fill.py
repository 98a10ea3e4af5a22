"""``guestmem fill DIR``: freeze scenario runs on the model as JSON fixtures."""

from __future__ import annotations

import argparse
import json
import sys

from guestmem import outfile, schemas
from guestmem.cli import UsageError
from guestmem.cli.run import add_timeout, check_selection, execute, load_all, planned
from guestmem.printable import printable
from guestmem.scenario import cost, fixture, suite_files
from guestmem.scenario import output as show
from guestmem.scenario.runner import RunResult, select_platforms
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
    if not any(select_platforms(s, args.platform) for s in scenarios):
        raise UsageError(f"no scenario runs on platform {args.platform!r}")
    names: dict[tuple[int, str, str], str] = {}  # every run's file, before anything runs
    for scenario, platform, abi in planned(scenarios, args):
        try:
            cost.check_fixture(scenario, platform, abi)
        except cost.CostError as err:
            raise UsageError(str(err)) from None
        name = fixture.file_name_of(scenario.name, platform, abi)
        stem, count = name.removesuffix(".json"), 1
        while name in names.values():
            count += 1
            name = f"{stem}-{count}.json"
        names[id(scenario), platform, abi] = name
    written: list[str] = []
    not_frozen: list[dict[str, str]] = []
    with outfile.Directory(args.dir, create=True) as out:
        for name in names.values():  # a target it refuses is refused before anything runs
            out.check(name)

        def freeze(result: RunResult) -> None:
            """Write the fixture of a passing run as soon as it ends (then the run is made compact)."""
            if result.status != "pass":
                not_frozen.append(
                    {"scenario": result.scenario.name, "platform": result.platform, "abi": result.abi}
                    | {"status": result.status}
                )
                if args.format == "text":
                    print(f"not frozen: {show.title(result)}: {result.status} on the model", file=sys.stderr)
                return
            name = names[id(result.scenario), result.platform, result.abi]
            text = json.dumps(fixture.freeze(result), indent=2) + "\n"
            if len(text) > cost.MAX_FIXTURE:  # the estimate bounds it; never write what consume refuses
                raise UsageError(
                    f"{printable(result.scenario.file)}: the fixture of the run on {result.platform} "
                    f"({result.abi}) is {len(text)} bytes, more than the {cost.MAX_FIXTURE >> 20} MiB "
                    "a fixture may have"
                )
            written.append(out.write(name, text))

        results = execute(scenarios, args, backend="model", each=freeze)
    code = show.exit_code(results)
    if args.format == "json":
        body = {"dir": args.dir, "written": written, "not_frozen": not_frozen, "exit_status": code}
        schemas.dump("fill", body)
    else:
        print(f"wrote {len(written)} fixtures to {printable(args.dir)}")
    return code

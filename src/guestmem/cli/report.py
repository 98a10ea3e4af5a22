"""``guestmem report --out FILE.html``: the matrix, the suite results and memory maps."""

from __future__ import annotations

import argparse

from guestmem import outfile, schemas
from guestmem.cli import UsageError
from guestmem.cli.run import add_timeout, check_selection, execute, load_all, planned, selected_revisions
from guestmem.printable import printable
from guestmem.report import html, matrix
from guestmem.scenario import cost, suite_files
from guestmem.scenario import output as show
from guestmem.scenario.runner import OBSERVED_PAGES, OBSERVED_STEPS
from guestmem.spec import platforms, revisions

EXAMPLE = """\
example:
  guestmem report --out report.html      # the built-in suite, every platform
  guestmem report --out snp.html --platform snp --abi all

The file is self-contained (no scripts, no external resources); open it in any browser or
print it. Exit status as for 'guestmem check'."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "report",
        help="write one self-contained HTML report",
        description="Run scenarios on the model and write an HTML report: the conversion matrix, "
        "the results per scenario and platform, and a memory map per run (pages across, steps "
        "down).",
        epilog=EXAMPLE,
    )
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="scenario files (default: the built-in suite)"
    )
    parser.add_argument("--out", required=True, metavar="FILE.html", help="where to write the report")
    parser.add_argument("--platform", default="all", help=f"one of {', '.join(platforms.PLATFORMS)}, or all")
    parser.add_argument(
        "--abi",
        default=None,
        help=f"one of {', '.join(revisions.REVISIONS)}, or all (default: each file's own; the matrix "
        f"shows {revisions.DEFAULT})",
    )
    parser.add_argument("--format", default="text", choices=("text", "json"), help="default: text")
    add_timeout(parser)
    parser.set_defaults(func=run, backend="model")


def run(args: argparse.Namespace) -> int:
    check_selection(args)
    outfile.check_file(args.out, "--out")  # before running: a path it cannot write is bad input
    scenarios = load_all(args.files or [str(p) for p in suite_files()])
    size = cost.report_bound(planned(scenarios, args), OBSERVED_STEPS, OBSERVED_PAGES)
    if size > cost.MAX_REPORT:
        raise UsageError(
            f"--out: the report of these {len(scenarios)} file(s) could take {size} bytes, more than "
            f"its limit of {cost.MAX_REPORT >> 20} MiB (run fewer files, platforms or revisions at once)"
        )
    results = execute(scenarios, args, backend="model", observe=True)
    if not results:
        raise UsageError(f"no scenario runs on platform {args.platform!r}")
    chosen = [a for a in selected_revisions(args) if a is not None] or [revisions.DEFAULT]
    matrices = {abi: matrix.compute(abi) for abi in chosen}
    revision = "each scenario's own" if args.abi is None else ", ".join(chosen)
    outfile.write_file(args.out, html.render(results, matrices, revision=revision), "--out")
    code = show.exit_code(results)
    if args.format == "json":
        counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
        body = {
            "out": args.out,
            "runs": len(results),
            "passed": counts["pass"],
            "failed": counts["fail"],
            "skipped": counts["skip"],
            "revisions": chosen,
            "exit_status": code,
        }
        schemas.dump("report", body)
    else:
        print(f"wrote {printable(args.out)} ({len(results)} runs)")
    return code

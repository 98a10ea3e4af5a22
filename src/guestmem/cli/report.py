"""``guestmem report --out FILE.html``: the matrix, the suite results and memory maps."""

from __future__ import annotations

import argparse
from pathlib import Path

from guestmem.cli import UsageError
from guestmem.cli.run import check_selection, load_all
from guestmem.report import html
from guestmem.scenario import output as show
from guestmem.scenario import suite_files
from guestmem.scenario.runner import run_all
from guestmem.spec import platforms, revisions

EXAMPLE = """\
example:
  guestmem report --out report.html                 # the built-in suite, every platform
  guestmem report --out snp.html --platform snp my.toml

The file is self-contained (no scripts, no external resources); open it in any browser."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "report",
        help="write one self-contained HTML report",
        description="Run scenarios on the model and write an HTML report: the conversion matrix, "
        "the results, and an SVG memory map per run (pages across, steps down).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="scenario files (default: the built-in suite)"
    )
    parser.add_argument("--out", required=True, metavar="FILE.html", help="where to write the report")
    parser.add_argument("--platform", default="all", help=f"one of {', '.join(platforms.PLATFORMS)}, or all")
    parser.add_argument(
        "--abi", default=None, help=f"one of {', '.join(revisions.REVISIONS)} (the matrix uses seed if unset)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_selection(args)
    out = Path(args.out)
    if "\0" in args.out:
        raise UsageError(f"--out: {args.out!r}: a path cannot contain a NUL byte")
    try:
        if out.is_dir():
            raise UsageError(f"--out: {out} is a directory")
        if out.exists() and not out.is_file():
            raise UsageError(f"--out: {out} is not a regular file")
        if not out.parent.is_dir():
            raise UsageError(f"--out: directory {out.parent} does not exist")
    except OSError as err:
        shown = args.out if len(args.out) <= 80 else args.out[:79] + "…"
        raise UsageError(f"--out: {shown}: {err.strerror or err}") from None
    scenarios = load_all(args.files or [str(p) for p in suite_files()])
    results = run_all(scenarios, platform=args.platform, abi=args.abi, backend="model", observe=True)
    if not results:
        raise UsageError(f"no scenario runs on platform {args.platform!r}")
    abi = args.abi or revisions.DEFAULT
    matrix: list[dict[str, str]] | None = None
    matrix_error = None
    try:
        from guestmem.report.matrix import compute

        matrix = compute(abi)
    except ImportError as err:
        matrix_error = f"guestmem.report.matrix is missing ({err})"
    try:
        out.write_text(html.render(results, matrix, abi=abi, matrix_error=matrix_error), encoding="utf-8")
    except OSError as err:
        raise UsageError(f"--out: {out}: cannot write: {err.strerror or err}") from None
    print(f"wrote {out} ({len(results)} runs)")
    return show.exit_code(results)

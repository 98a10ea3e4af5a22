"""``guestmem bench``: time the model against the kernel and the machine (docs/bench.md).

Exit status: 0 when every measured figure meets its target (a figure this machine cannot
measure is listed as skipped with the reason and counts neither way), 1 when a measured
figure misses its target, 2 for bad input.
"""

from __future__ import annotations

import argparse
import os
import platform
from typing import TextIO

from guestmem import progress, schemas
from guestmem.bench import suite
from guestmem.bench.figure import NAMES, Figure
from guestmem.cli import UsageError
from guestmem.terminal import table

EPILOG = """\
examples:
  guestmem bench                      # full run, a few minutes (docs/bench.md)
  guestmem bench --quick --format json
  guestmem bench --only host_access_vs_mmap --only convert_1tib_vs_4k

exit status: 0 when every measured figure meets its target; a figure this machine cannot
measure (e.g. no guest_memfd) is listed as skipped with the reason and counts neither way;
1 when a measured figure misses its target; 2 on bad input.

figures: """ + ", ".join(NAMES)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "bench",
        help="time the model against the kernel and raw memory (ratios vs targets)",
        description="Time each model operation side by side with a kernel or memory "
        "baseline (interleaved repetitions, medians) and report ratio model/baseline "
        "against its target, plus absolute figures.",
        epilog=EPILOG,
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 5 repetitions (seconds)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    parser.add_argument(
        "--only", action="append", metavar="FIGURE", default=None, help="measure only FIGURE (repeatable)"
    )
    parser.set_defaults(func=run)


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def render_text(figures: list[Figure], stream: TextIO | None = None) -> None:
    """The figures as a table: model, baseline, ratio or value, target, met."""
    rows = []
    for f in figures:
        if f.is_ratio:
            measured = "-" if f.ratio is None else f"{f.ratio:.2f}"
        else:
            measured = "-" if f.value is None else f"{f.value:g}"
        target = f"{'≥' if f.at_least else '≤'} {f.target:g}"
        met = "skipped" if f.skipped is not None else ("yes" if f.met else "NO")
        rows.append([f.name, _fmt(f.model), _fmt(f.baseline), measured, target, met, f.skipped or f.note])
    table(
        ["figure", "model", "baseline", "ratio/value", "target", "met", "note"],
        rows,
        title=f"guestmem bench on {machine()}",
        stream=stream,
        verdicts=(5,),
    )


def run(args: argparse.Namespace) -> int:
    names: list[str] = args.only or list(NAMES)
    for name in names:
        if name not in suite.FIGURES:
            raise UsageError(f"--only: unknown figure {name!r} (choose from {', '.join(NAMES)})")
    with progress.Status("bench", enabled=args.format == "text") as status:

        def measuring(name: str) -> None:
            if status.current:
                status.finish(status.current.split(" ", 1)[0])
            status.update(f"{name} ({len(status.finished) + 1}/{len(names)})", force=True)

        figures = suite.run(quick=args.quick, names=names, progress=measuring)
    if args.format == "json":
        schemas.dump("bench", {"machine": machine(), "figures": {f.name: f.to_json() for f in figures}})
    else:
        render_text(figures)
    return 1 if any(f.met is False for f in figures) else 0

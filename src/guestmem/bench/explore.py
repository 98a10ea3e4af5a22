"""The checker's figures, all in CPU seconds of the processes doing the work (so a busy
machine slows them less than wall time would):

- ``explore_states_per_cpu_s``: what ``guestmem explore`` searches by default (every
  platform, ``seed``, 2 pages, depth 6) on one worker, states generated (one per
  operation applied) per CPU-second; the note and the JSON also give distinct states;
- ``analyze_all_cpu_s``: the whole of ``guestmem analyze --abi all`` (every revision,
  every platform, over the CPU count of workers), CPU seconds of all its processes;
- ``explore_3_pages_cpu_s``: ``guestmem explore --pages 3 --depth 6`` on every platform,
  the largest CPU time of one platform; the note lists each and says whether the verdicts
  (violated properties) are those at 2 pages.
"""

from __future__ import annotations

import os
from typing import Any

from guestmem.bench.figure import Figure

QUICK_DEPTH = 3


def explore_states_per_cpu_s(reps: int, quick: bool) -> Figure:
    """One search per platform; the full one generates over a million states, so it is
    long enough to measure once (``reps`` is not used)."""
    del reps
    from guestmem.checker.explore import DEFAULT_DEPTH, DEFAULT_PAGES, explore
    from guestmem.spec import platforms, revisions

    depth = QUICK_DEPTH if quick else DEFAULT_DEPTH
    generated = distinct = 0
    seconds = 0.0
    for name in platforms.PLATFORMS:
        result = explore(name, revisions.DEFAULT, pages=DEFAULT_PAGES, depth=depth, workers=1)
        generated += result.generated
        distinct += result.distinct
        seconds += result.cpu_seconds
    extra: dict[str, Any] = {
        "generated": generated,
        "distinct": distinct,
        "cpu_seconds": round(seconds, 2),
        "distinct_per_cpu_s": round(distinct / seconds) if seconds > 0 else None,
    }
    return Figure(
        "explore_states_per_cpu_s",
        value=round(generated / seconds) if seconds > 0 else None,
        note=f"all {len(platforms.PLATFORMS)} platforms, {revisions.DEFAULT}, {DEFAULT_PAGES} pages, "
        f"depth {depth}, 1 worker: {generated} states generated ({distinct} distinct, "
        f"{extra['distinct_per_cpu_s']}/CPU-s) in {seconds:.1f} CPU-s",
        extra=extra,
    )


def analyze_all_cpu_s(reps: int, quick: bool) -> Figure:
    """``analyze --abi all`` once, in this process and its forked workers."""
    del reps
    from guestmem.checker import analyze
    from guestmem.checker.explore import cpu_time
    from guestmem.spec import revisions

    abis = [revisions.DEFAULT] if quick else list(revisions.REVISIONS)
    workers = os.cpu_count() or 1
    start = cpu_time()
    results = analyze.analyze(abis, workers=workers)
    seconds = cpu_time() - start
    runs = len({id(e) for r in results for e in r.explorations})
    return Figure(
        "analyze_all_cpu_s",
        value=round(seconds, 1),
        note=f"analyze --abi {'seed (quick)' if quick else 'all'}, {workers} workers: "
        f"{sum(len(r.explorations) for r in results)} explorations, {runs} run",
        extra={"workers": workers, "revisions": abis},
    )


def explore_3_pages_cpu_s(reps: int, quick: bool) -> Figure:
    """Every platform at 3 pages, one worker each; the verdicts compared with 2 pages."""
    del reps
    from guestmem.checker.explore import DEFAULT_DEPTH, DEFAULT_PAGES, explore
    from guestmem.spec import platforms, revisions

    depth = QUICK_DEPTH if quick else DEFAULT_DEPTH
    per: dict[str, float] = {}
    changed: list[str] = []
    for name in platforms.PLATFORMS:
        three = explore(name, revisions.DEFAULT, pages=3, depth=depth, workers=1)
        two = explore(name, revisions.DEFAULT, pages=DEFAULT_PAGES, depth=depth, workers=1)
        per[name] = round(three.cpu_seconds, 1)
        if set(three.counterexamples) != set(two.counterexamples):
            changed.append(name)
    worst = max(per, key=per.__getitem__)
    verdicts = (
        f"verdicts differ from 2 pages on {', '.join(changed)}" if changed else "same verdicts as 2 pages"
    )
    return Figure(
        "explore_3_pages_cpu_s",
        value=per[worst],
        note=f"{revisions.DEFAULT}, 3 pages, depth {depth}, 1 worker: largest {worst}; "
        + ", ".join(f"{n} {s:g}" for n, s in per.items())
        + f" CPU-s; {verdicts}",
        extra={"per_platform": per, "verdicts_differ": changed},
    )

"""The checker's figures, all in CPU seconds of the processes doing the work (so a busy
machine slows them less than wall time would):

- ``explore_states_per_cpu_s``: what ``guestmem explore`` searches by default (every
  platform, ``seed``, 2 pages, depth 6; depth 5 with ``--quick``) on one worker, states
  generated (one per operation applied) per CPU-second, over at least
  :data:`MIN_RATE_CPU_S` CPU seconds (the sweep is repeated until then, so start-up does
  not dominate); the note and the JSON give the run's size and distinct states;
- ``analyze_all_cpu_s``: the whole of ``guestmem analyze --abi all`` (every revision,
  every platform, over the CPU count of workers), CPU seconds of all its processes;
- ``explore_3_pages_cpu_s``: ``guestmem explore --pages 3 --depth 6`` on every platform,
  the largest CPU time of one platform; the note lists each and says whether the verdicts
  (violated properties) are those at 2 pages;
- ``explore_ray_efficiency``: states per CPU-second of ``--engine ray`` over those of the
  local engine, both with 2 workers, at snp, 3 pages, depth 7 (5 with ``--quick``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from guestmem.bench.figure import Figure

QUICK_DEPTH = 3
#: ``explore_states_per_cpu_s`` with ``--quick``: a sweep of about 3 CPU seconds.
RATE_QUICK_DEPTH = 5
#: The least CPU time ``explore_states_per_cpu_s`` is measured over.
MIN_RATE_CPU_S = 3.0


def explore_states_per_cpu_s(reps: int, quick: bool) -> Figure:
    """One search per platform, the sweep repeated until it has taken
    :data:`MIN_RATE_CPU_S` (the full one generates over a million states in one sweep;
    ``reps`` is not used)."""
    del reps
    from guestmem.checker.explore import DEFAULT_DEPTH, DEFAULT_PAGES, explore
    from guestmem.spec import platforms, revisions

    depth = RATE_QUICK_DEPTH if quick else DEFAULT_DEPTH
    generated = distinct = sweeps = 0
    seconds = 0.0
    while seconds < MIN_RATE_CPU_S:
        sweeps += 1
        for name in platforms.PLATFORMS:
            result = explore(name, revisions.DEFAULT, pages=DEFAULT_PAGES, depth=depth, workers=1)
            generated += result.generated
            distinct += result.distinct
            seconds += result.cpu_seconds
    extra: dict[str, Any] = {
        "generated": generated,
        "distinct": distinct,
        "cpu_seconds": round(seconds, 4),
        "distinct_per_cpu_s": round(distinct / seconds) if seconds > 0 else None,
        "platforms": len(platforms.PLATFORMS),
        "pages": DEFAULT_PAGES,
        "depth": depth,
        "sweeps": sweeps,
    }
    return Figure(
        "explore_states_per_cpu_s",
        value=round(generated / seconds) if seconds > 0 else None,
        note=f"all {len(platforms.PLATFORMS)} platforms, {revisions.DEFAULT}, {DEFAULT_PAGES} pages, "
        f"depth {depth}, 1 worker{f', {sweeps} sweeps' if sweeps > 1 else ''}: {generated} states "
        f"generated ({distinct} distinct, {extra['distinct_per_cpu_s']}/CPU-s) in {seconds:.1f} CPU-s",
        extra=extra,
    )


def analyze_all_cpu_s(reps: int, quick: bool) -> Figure:
    """``analyze --abi all`` once, in this process and its forked workers."""
    del reps
    from guestmem.checker import analyze
    from guestmem.checker.explore import DEFAULT_DEPTH, cpu_time
    from guestmem.spec import revisions

    abis = list(revisions.REVISIONS)
    depth = QUICK_DEPTH if quick else DEFAULT_DEPTH
    workers = os.cpu_count() or 1
    start = cpu_time()
    ran: list[str] = []
    results = analyze.analyze(abis, workers=workers, depth=depth, done=lambda s, _: ran.append(s.label))
    seconds = cpu_time() - start
    runs = len(ran)
    return Figure(
        "analyze_all_cpu_s",
        value=round(seconds, 1),
        note=f"analyze --abi all{f' (quick: depth {depth})' if quick else ''}, {workers} workers: "
        f"{sum(len(r.explorations) for r in results)} explorations, {runs} run",
        extra={"workers": workers, "revisions": abis, "depth": depth},
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


#: ``explore_ray_efficiency``: the search both engines run (snp, seed, 3 pages).
RAY_DEPTH = 7
RAY_QUICK_DEPTH = 5
RAY_WORKERS = 2


def explore_ray_efficiency(reps: int, quick: bool) -> Figure:
    """States per CPU-second on Ray ÷ the same on the local engine, both with 2 workers,
    one after the other in this run. Ray's side counts the CPU of every process of the
    Ray instance it starts here (the actors, raylet, the GCS and the other daemons) and
    of this process; its start-up is not counted (the note gives it)."""
    del reps
    from guestmem.checker.distributed import EngineUnavailable, RayEngine
    from guestmem.checker.explore import explore
    from guestmem.checker.schedule import Search
    from guestmem.spec import platforms, revisions

    depth = RAY_QUICK_DEPTH if quick else RAY_DEPTH
    name = "explore_ray_efficiency"
    local = explore("snp", revisions.DEFAULT, pages=3, depth=depth, workers=RAY_WORKERS)
    search = Search(platforms.get("snp"), revisions.DEFAULT, 3, depth)
    try:
        started = time.process_time() + descendants_cpu()
        with RayEngine(workers=RAY_WORKERS) as engine:
            if not engine.started:
                why = "Ray was already running in this process: its CPU cannot be counted"
                return Figure(name, skipped=why)
            before = time.process_time() + descendants_cpu()
            result = engine.explore(search)
            spent = time.process_time() + descendants_cpu() - before
    except EngineUnavailable as err:
        return Figure(name, skipped=str(err))
    same = result.to_json(timing=False) == local.to_json(timing=False)
    ray_rate = result.generated / spent if spent > 0 else 0.0
    extra: dict[str, Any] = {
        "depth": depth,
        "pages": 3,
        "workers": RAY_WORKERS,
        "generated": result.generated,
        "distinct": result.distinct,
        "ray_cpu_seconds": round(spent, 3),
        "ray_actor_cpu_seconds": round(result.cpu_seconds, 3),
        "ray_start_cpu_seconds": round(before - started, 3),
        "local_cpu_seconds": round(local.cpu_seconds, 3),
        "same_result": same,
    }
    return Figure(
        name,
        value=round(ray_rate / local.rate, 3) if same and local.rate > 0 and ray_rate > 0 else None,
        note=f"snp, {revisions.DEFAULT}, 3 pages, depth {depth}, {RAY_WORKERS} workers each: "
        f"{result.generated} states generated ({result.distinct} distinct); Ray {spent:.1f} CPU-s "
        f"({result.cpu_seconds:.1f} in this process and the actors, the rest Ray's daemons; start-up "
        f"{before - started:.1f} more), local {local.cpu_seconds:.1f} CPU-s; "
        + ("same result" if same else "RESULTS DIFFER"),
        extra=extra,
    )


def descendants_cpu() -> float:
    """CPU seconds (user + system) of every live process descended from this one, from
    ``/proc`` (0 where there is none): a Ray instance started here runs in them."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    spent: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                text = stat.read()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rindex(b")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
        spent[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        total += spent[pid]
        todo += children.get(pid, [])
    return total

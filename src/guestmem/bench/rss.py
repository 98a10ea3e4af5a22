"""Peak resident memory of a fresh process that converts a 1 TiB model guest_memfd.

``python -m guestmem.bench.rss [CONVERSIONS]`` creates a 1 TiB ``sw_protected``
guest_memfd in the model and, as many times, writes one random page (4 KiB of bytes of
its own: the host writes a shared page, the guest a private one) and performs one random
page-aligned conversion (random range, random direction, 4 KiB to 4 GiB, policy left at
the default); it prints ``{"peak_kib": …, "runs": …, "pages": …}``: the process's
high-water mark (``VmHWM``, else ``ru_maxrss``), how many attribute runs the conversions
left and how many pages hold data at the end. The parent (:func:`rss_1tib_mib`) runs it
in a subprocess so that nothing else it did counts.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import resource
import subprocess
import sys
from pathlib import Path

from guestmem.bench.figure import Figure

TiB = 1 << 40
CONVERSIONS = 10_000


def peak_kib() -> int:
    """This process's peak resident set size in KiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def convert_randomly(conversions: int, random_seed: int = 0) -> tuple[int, int]:
    """The child's work; returns the attribute runs and the allocated pages left."""
    from guestmem.model import Vm
    from guestmem.spec.terms import Direction
    from guestmem.uapi.kvm import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, PAGE_SHIFT, PAGE_SIZE

    gmem = Vm("sw_protected").create_guest_memfd(TiB, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED)
    host = gmem.mmap()
    rng = random.Random(random_seed)
    npages = TiB >> PAGE_SHIFT
    for _ in range(conversions):
        page = rng.randrange(npages)
        data = rng.randbytes(PAGE_SIZE)
        if gmem.is_private(page << PAGE_SHIFT):
            gmem.guest_write(page << PAGE_SHIFT, data)
        else:
            host.write(page << PAGE_SHIFT, data)
        lo = rng.randrange(npages)
        hi = min(npages, lo + rng.randrange(1, 1 << rng.randrange(1, 21)))  # 1 page to 4 GiB
        to = rng.choice((Direction.TO_PRIVATE, Direction.TO_SHARED))
        gmem.convert(lo << PAGE_SHIFT, (hi - lo) << PAGE_SHIFT, to)
    return len(gmem.attributes.starts), len(gmem.pages)


def _child(conversions: int, seed: int) -> tuple[int, int, int]:
    """Run the workload in a fresh interpreter: (peak KiB, runs left, pages left)."""
    src = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "guestmem.bench.rss", str(conversions), str(seed)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise OSError(f"the rss child failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    result = json.loads(proc.stdout)
    return int(result["peak_kib"]), int(result["runs"]), int(result["pages"])


def rss_1tib_mib(reps: int, quick: bool) -> Figure:
    """The median peak of ``reps`` children (seeds 0..reps-1), and for scale the peak of
    one that creates the guest_memfd and converts nothing. The children run side by side,
    one per CPU: each one's peak is its own."""
    del quick
    jobs = [(CONVERSIONS, seed) for seed in range(reps)] + [(0, 0)]
    with concurrent.futures.ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
        *measured, (idle, _, _) = pool.map(lambda job: _child(*job), jobs)
    peak, runs, pages = sorted(measured)[len(measured) // 2]
    return Figure(
        "rss_1tib_mib",
        value=round(peak / 1024, 1),
        note=f"VmHWM of a fresh interpreter after {CONVERSIONS} random conversions of a 1 TiB "
        f"guest_memfd and {CONVERSIONS} random pages written ({runs} attribute runs and {pages} "
        f"written pages left; {idle / 1024:.1f} MiB with none), median of {reps}",
        extra={"conversions": CONVERSIONS, "pages_written": CONVERSIONS, "runs_left": runs},
    )


def main(argv: list[str]) -> int:
    conversions = int(argv[0]) if argv else CONVERSIONS
    seed = int(argv[1]) if len(argv) > 1 else 0
    runs, pages = convert_randomly(conversions, seed)
    print(json.dumps({"peak_kib": peak_kib(), "runs": runs, "pages": pages}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

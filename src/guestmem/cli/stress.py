"""``guestmem stress``: many threads on guest_memfds at once, checked against the model
(:mod:`guestmem.stress`)."""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import random
import sys
from pathlib import Path
from typing import Any

from guestmem import progress
from guestmem.backend.base import Backend, Unavailable
from guestmem.cli import UsageError
from guestmem.spec import revisions
from guestmem.stress.engine import INVARIANTS, KNOWN_FINDINGS, Report, Settings, Stress
from guestmem.stress.inject import Injector
from guestmem.stress.kmsg import KernelLog
from guestmem.stress.poison import MemoryErrors


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be finite and > 0: {text!r}")
        return value

    return parse


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "stress",
        help="hammer guest_memfds from several threads, checked against the model",
        description="Run host threads and vCPU threads at once on one or more guest_memfds of a "
        "sw_protected VM: conversions both ways over overlapping and mixed ranges, host reads and "
        "writes through mmap, guest reads and writes, long-term pins, vmsplice references, punch "
        "holes, memslot changes, closing and reopening. Every operation is checked against the "
        "model; the kernel log is read for KASAN, lockdep, WARNING, BUG, RCU stall and hung-task "
        "reports; conversions may get an allocation failure injected (failslab, fail_page_alloc) "
        "and punch holes may follow a memory error on a shared page (madvise(MADV_HWPOISON)) where "
        "the kernel offers it. A seed makes every thread's schedule reproducible. The first "
        "violation stops the run and prints the seed, the threads' last operations and a minimal "
        "sequential reproducer when one replays it. Exit status: 0 clean, 1 a violation, 4 the "
        "kernel cannot run it (no conversion ioctl), 130 Ctrl-C (143 SIGTERM, 129 SIGHUP).",
        epilog="examples:\n"
        "  guestmem stress --seconds 60\n"
        "  guestmem stress --seed 7 --operations 500 --threads 6 --gmems 3\n"
        "  guestmem vm --kernel v8-debug/bzImage -- guestmem stress --seconds 600\n"
        "  guestmem stress --backend model --seconds 5 --format json",
    )
    parser.add_argument("--seconds", type=_positive(float), default=None, help="time budget (default 60 s)")
    parser.add_argument(
        "--operations",
        type=_positive(int),
        default=None,
        help="operations per thread (instead of or with --seconds)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="the schedules' seed (default: random, printed)"
    )
    parser.add_argument("--threads", type=_positive(int), default=4, help="host threads (default 4)")
    parser.add_argument("--vcpus", type=int, default=1, help="vCPU threads, one per guest_memfd (default 1)")
    parser.add_argument("--gmems", type=_positive(int), default=2, help="guest_memfds (default 2)")
    parser.add_argument("--pages", type=_positive(int), default=16, help="pages per guest_memfd (default 16)")
    parser.add_argument(
        "--abi", default=None, help="the kernel's revision (default: what it answers; v8 or rfc-v5)"
    )
    parser.add_argument("--backend", choices=("kvm", "model"), default="kvm", help="what is under test")
    parser.add_argument(
        "--op-limit", type=_positive(float), default=60.0, help="seconds one operation may take (default 60)"
    )
    parser.add_argument(
        "--no-inject",
        action="store_true",
        help="no fault injection: no allocation failures, no memory errors",
    )
    parser.add_argument(
        "--minimize-seconds", type=float, default=120.0, help="time for shrinking a reproducer (default 120)"
    )
    parser.add_argument(
        "--save",
        default=None,
        metavar="DIR",
        help="where a failing run's report and kernel log go (default $GUESTMEM_SCRATCH, else .)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    parser.set_defaults(func=run)


def _abi(args: argparse.Namespace) -> str:
    if args.abi is not None:
        if args.abi not in revisions.REVISIONS:
            raise UsageError(f"--abi: unknown revision {args.abi!r}")
        return str(args.abi)
    if args.backend == "model":
        return "v8"
    from guestmem.kvm import facts
    from guestmem.kvm.system import DEVICE

    try:
        series = facts.cached(DEVICE).series
    except Exception as err:  # no usable /dev/kvm
        raise Unavailable(f"cannot probe the kernel: {err}") from None
    if series not in ("v8", "rfc-v5"):
        raise Unavailable(f"this kernel has no conversion series guestmem knows ({series or 'none'})")
    return str(series)


def run(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    seconds = args.seconds if args.seconds is not None or args.operations is not None else 60.0
    if args.vcpus < 0 or args.vcpus > args.gmems:
        raise UsageError(f"--vcpus: 0 to --gmems ({args.gmems}); one vCPU drives one guest_memfd")
    if args.backend == "kvm" and args.vcpus > 1:
        raise UsageError("--vcpus: the kernel backend runs one vCPU (its time limit needs the main thread)")
    try:
        abi = _abi(args)
    except Unavailable as why:
        print(f"guestmem stress: skipped: {why}", file=sys.stderr)
        return 4
    settings = Settings(
        seed=seed,
        seconds=seconds,
        operations=args.operations,
        threads=args.threads,
        vcpus=args.vcpus,
        targets=args.gmems,
        pages=args.pages,
        abi=abi,
        op_limit=args.op_limit,
        inject=not args.no_inject,
        minimize_seconds=args.minimize_seconds,
    )
    backend: Backend
    if args.backend == "model":
        from guestmem.backend.model import ModelBackend

        backend = ModelBackend()
        log, injector, poisoner = None, None, None
    else:
        from guestmem.backend.kernel import KernelBackend

        # a crash of the tool itself names where each thread was (stderr): the kernel
        # backend calls into memory shared with the kernel through ctypes
        faulthandler.enable(all_threads=True)
        backend = KernelBackend()
        log, injector, poisoner = KernelLog(), Injector(), MemoryErrors()
    print(
        f"guestmem stress: seed {seed}, {settings.threads} host threads, {settings.vcpus} vCPU, "
        f"{settings.targets} guest_memfds of {settings.pages} pages, {abi} on {args.backend}, "
        + (f"{seconds:g} s" if seconds is not None else f"{args.operations} operations per thread"),
        file=sys.stderr,
    )
    with progress.Status("stress", enabled=args.format != "json") as status:
        try:
            report = Stress(
                settings, backend, log=log, injector=injector, poisoner=poisoner, progress=status.update
            ).run()
        except Unavailable as why:
            print(f"guestmem stress: skipped: {why}", file=sys.stderr)
            return 4
        finally:
            if log is not None:
                log.close()
    if report.interrupted:
        print(
            f"guestmem: stress interrupted after {report.operations} operations (seed {seed})",
            file=sys.stderr,
        )
        return report.interrupt_status
    if args.format == "json":
        json.dump(report.to_json(), sys.stdout, indent=1)
        print(flush=True)  # written before anything at exit could lose it
    else:
        print(text(report))
    if report.violation is not None:
        saved = save(report, log, args.save)
        print(f"guestmem stress: report and kernel log saved in {saved}", file=sys.stderr)
        return 1
    return 0


def text(report: Report) -> str:
    s = report.settings
    lines = [
        f"seed {s.seed}: {report.operations} operations in {report.seconds:.1f} s "
        f"({report.ops_per_second:.1f} ops/s) by {s.threads} host threads and {s.vcpus} vCPU",
        "operations: " + ", ".join(f"{k} {v}" for k, v in sorted(report.kinds.items())),
        "invariant checks: " + ", ".join(f"{k} {report.checks.get(k, 0)}" for k in INVARIANTS),
        "injected faults: "
        + (
            f"none ({report.injection})"
            if report.injection
            else ", ".join(
                f"{k} {v} of {report.injection_attempts.get(k, 0)} armed" for k, v in report.injected.items()
            )
        ),
        "memory errors: "
        + (
            f"none ({report.memory_errors_unavailable})"
            if report.memory_errors == 0 and report.memory_errors_unavailable
            else f"{report.memory_errors} injected, each followed by a punch hole"
            + (
                f" (then unavailable: {report.memory_errors_unavailable})"
                if report.memory_errors_unavailable
                else ""
            )
        )
        + (
            "; plain punch holes instead: "
            + ", ".join(f"{k} {v}" for k, v in sorted(report.memory_errors_plain.items()))
            if report.memory_errors_plain
            else ""
        ),
        f"transient references: {report.transient} conversions refused with EAGAIN on a page "
        "the model holds no reference to, then given the model's answer on a retry",
        "known kernel answers (docs/stress.md, Findings): "
        + ", ".join(f"{k} {report.known.get(k, 0)}" for k in KNOWN_FINDINGS),
    ]
    if report.log_watched:
        lines.append(f"kernel log not watched: {report.log_watched}")
    violation = report.violation
    if violation is None:
        lines.append("no violation")
        return "\n".join(lines)
    lines += ["", f"FAILED (seed {s.seed}) " + violation.describe(), "", "last operations of each thread:"]
    for thread, ops in report.last.items():
        lines.append(f"  thread {thread}:")
        lines += [f"    {op}" for op in ops]
    for splat in violation.splats:
        lines += ["", f"kernel log ({splat.kind}):", splat.text]
    if report.reproducer_toml:
        lines += [
            "",
            f"a sequential reproducer ({len(report.reproducer or [])} steps):",
            report.reproducer_toml,
        ]
    else:
        lines += ["", "no sequential replay reproduced it (a race, or a kernel report)"]
    lines.append(
        f"replay the same schedules: guestmem stress --seed {s.seed} --threads {s.threads} --vcpus {s.vcpus} "
        f"--gmems {s.targets} --pages {s.pages}"
        + (f" --operations {s.operations}" if s.operations else f" --seconds {s.seconds:g}")
    )
    return "\n".join(lines)


def save(report: Report, log: KernelLog | None, where: str | None) -> Path:
    directory = Path(where or os.environ.get("GUESTMEM_SCRATCH") or ".")
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"stress-{report.settings.seed}"
    stem.with_suffix(".json").write_text(json.dumps(report.to_json(), indent=1))
    if log is not None:
        stem.with_suffix(".kmsg").write_text(log.all())
    return directory

"""``guestmem stress``: several threads at once on one or more guest_memfds, every
operation checked against the model while it runs.

Each guest_memfd under test (a :class:`Target`) has an oracle beside it: a model machine of
the same platform, revision, size and flags. A thread's operation locks the pages it
touches (whole-file operations lock them all), runs on the machine under test, then on the
oracle, and the two outcomes must agree (:func:`guestmem.backend.compare.agree`). Page locks
make the oracle exact — no other thread changes those pages meanwhile — while the kernel
still sees every thread at once: conversions, faults, pins and guest accesses on the other
pages of the same file and on the other files run concurrently, through the same
invalidate lock, filemap and MMU notifier.

Invariants (docs/stress.md; docs/semantics.md where each rule is stated):

- ``private_host_access``: a host access (read, write, pin, vmsplice) to a page that is
  private at that moment returns no data: ``SIGBUS`` (``EFAULT`` for a pin or splice);
- ``failed_conversion_atomic``: a conversion that failed left every page's attribute as it
  was (probed by a host access to each page of its range after the call);
- ``error_offset``: a failed conversion's ``error_offset`` lies in the request, on a page
  boundary, on the page the model says failed (an ``ENOMEM`` from injection: the start);
  an ``EAGAIN`` on a page the model holds no reference to is a transient reference (the
  kernel counts every reference to a folio, and the memory manager takes short-lived ones
  the model cannot see) only if a retry of the same conversion soon gives the model's
  answer: :data:`TRANSIENT_RETRIES` tries within about a second, as a VMM retries
  (docs/semantics.md, the ``EAGAIN`` row); a reference that outlasts them is a violation;
- ``shared_bytes``: what a shared page holds changes only by a write, a punch hole or a
  conversion's content rule (every read is compared with the model's bytes);
- ``memory_error``: after a memory error on a shared page that no pin or splice holds
  (a punch hole drawn with :attr:`~guestmem.stress.schedule.Op.memory_error`; docs/semantics.md
  §3 *Memory errors*), a host read of the page faults with ``SIGBUS`` and the other pages
  of the range read as before; a to-private conversion of the page fails with ``EAGAIN``
  at the page; the punch hole of the range gives the model's answer, and then every page
  of the range reads as the model says: the poisoned one as zeros, which also shows it
  stayed shared through the refused conversion (a host read cannot tell a poisoned page
  from a private one before). The guest's ``EHWPOISON`` is not checked here (the vCPU is
  another thread's); tests/hwpoison_inside.py checks it, one operation after another.
  See :meth:`Stress.punch_after_memory_error`;
- ``model_agreement``: every other answer — errno, exits, the guest's bytes — is the model's;
  two known kernel answers are set apart and counted instead (:data:`KNOWN_FINDINGS`:
  :func:`stale_mmio_fault`, and :meth:`Stress.host_access` for a stale hwpoison entry);
- ``no_hang``: no operation runs past ``op_limit`` seconds;
- ``kernel_log``: the kernel logs no KASAN, KFENCE, lockdep, ``WARNING``, ``BUG``, RCU
  stall or hung-task report (:mod:`guestmem.stress.kmsg`).

The first violation stops the run; the report names the seed, the invariant, the
operation, both outcomes, each thread's last operations, and a minimal sequential
reproducer when one replays it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from guestmem import progress
from guestmem.backend.base import Backend, Outcome
from guestmem.backend.compare import agree, observed
from guestmem.backend.model import ModelBackend, ModelMachine
from guestmem.errors import IoctlError
from guestmem.model.vm import GPA_BASE
from guestmem.ops import (
    Convert,
    DeleteMemslot,
    GuestRead,
    GuestWrite,
    HostRead,
    HostWrite,
    Operation,
    Pin,
    PunchHole,
    RestoreMemslot,
    Unpin,
    expectation,
    toml,
)
from guestmem.spec.terms import Direction
from guestmem.stress.inject import Injector
from guestmem.stress.kmsg import Splat, find_splats
from guestmem.stress.poison import LIMIT, Injection
from guestmem.stress.schedule import Op, schedule
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    PAGE_SIZE,
)

INVARIANTS = (
    "private_host_access",
    "failed_conversion_atomic",
    "error_offset",
    "shared_bytes",
    "memory_error",
    "model_agreement",
    "no_hang",
    "kernel_log",
)
FLAGS = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
#: Each revision's ``flags`` for a content mode (v8 has only 0).
MODE_FLAGS: dict[str, dict[str, int]] = {
    "v8": {"default": 0, "preserve": 0, "zero": 0},
    "rfc-v5": {"default": 0, "zero": 1, "preserve": 2},
}
#: How many operations of each thread the report shows.
LAST_OPS = 6
#: How many operations on the failing guest_memfd the report keeps (JSON, ``--save``).
HISTORY_KEPT = 400
#: Kernel answers that differ from the model for a known cause outside the conversion
#: series (docs/stress.md, *Findings*): counted, and the model kept in step, not failed.
KNOWN_FINDINGS = ("stale_mmio_private_access", "stale_hwpoison_entry")
#: Retries of a conversion that met a reference the model does not hold, and the pause
#: before each (doubling from 1 ms to at most 200 ms: about a second in all).
TRANSIENT_RETRIES = 12
TRANSIENT_PAUSE = (0.001, 0.2)


class LogSource(Protocol):
    """Where the kernel's log comes from (:class:`guestmem.stress.kmsg.KernelLog`)."""

    unavailable: str | None

    def read(self) -> str: ...
    def close(self) -> None: ...


class Poisoner(Protocol):
    """What injects memory errors (:class:`guestmem.stress.poison.MemoryErrors`)."""

    reason: str | None

    def inject(self, machine: Any, offset: int) -> Injection: ...


@dataclass(frozen=True)
class Action:
    """What a thread did: the drawn operation resolved against the state it met
    (``pin`` → ``pin`` or ``unpin``, ``memslot`` → ``delete_memslot`` or ``restore_memslot``)."""

    op: Op
    kind: str
    offset: int
    size: int
    #: The guest_memfd it ran on (an unpin runs where the pin was taken), and which
    #: opening of it (a reopen starts the next).
    target: int = -1
    generation: int = 0
    #: The page a memory error was injected on before a punch hole (-1: none).
    poisoned: int = -1
    #: Whether the conversion ran with the allocation failure it asks for armed.
    armed: bool = False

    def describe(self) -> str:
        """What was done: a fault the operation asks for is named only where it was made."""
        drawn = self.op.describe(faults=self.armed or self.poisoned >= 0)
        error = f" (at {self.poisoned:#x})" if self.poisoned >= 0 else ""
        if self.kind == self.op.kind and self.target in (-1, self.op.target):
            return drawn + error
        where = f"gmem{self.target} " if self.target not in (-1, self.op.target) else ""
        return f"{drawn} -> {self.kind} {where}[{self.offset:#x}, +{self.size:#x})"


@dataclass
class Violation:
    invariant: str
    message: str
    action: Action | None = None
    got: Outcome | None = None
    want: Outcome | None = None
    splats: list[Splat] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"violation of {self.invariant}: {self.message}"]
        if self.action is not None:
            lines.append(f"  operation: {self.action.describe()}")
        if self.got is not None and self.want is not None:
            lines.append(f"  kernel: {_short(self.got)}")
            lines.append(f"  model:  {_short(self.want)}")
        for splat in self.splats:
            lines.append(f"  {splat.kind}: {splat.line}")
        return "\n".join(lines)


def _short(outcome: Outcome) -> str:
    seen = {k: v for k, v in observed(outcome).items() if v is not None}
    if isinstance(seen.get("data"), bytes):
        data: bytes = seen["data"]
        seen["data"] = data[:16].hex() + (f"… ({len(data)} bytes)" if len(data) > 16 else "")
    return str(seen or "ok")


class Stop(Exception):
    """Raised in a worker when the run has a violation (its own or another thread's)."""


class Target:
    """One guest_memfd under test (``sut``) and its oracle, with one lock per page."""

    def __init__(
        self, index: int, backend: Backend, platform: str, abi: str, pages: int, stop: threading.Event
    ) -> None:
        self.index = index
        self.stop = stop
        self.backend = backend
        self.platform = platform
        self.abi = abi
        self.pages = pages
        self.size = pages * PAGE_SIZE
        self.locks = [threading.Lock() for _ in range(pages)]
        #: Taken before the page locks by the operations that decide on shared state
        #: (pin, splice, memslot, reopen).
        self.meta = threading.Lock()
        self.oracle_lock = threading.Lock()
        self.splices: dict[int, tuple[int, int, Any]] = {}
        #: The references held on this file (``"pin"``, ``("splice", thread)``): their range
        #: and the pages punched out while held, whose old folios they keep (the model
        #: needs to be told which pin an unpin drops: ``GuestMemfd.unpin``).
        self.held: dict[Any, tuple[int, int, set[int]]] = {}
        self.memslot = True
        #: Pages the guest touched while the memslot was gone and has not mapped since:
        #: KVM left an MMIO entry for each (:func:`stale_mmio_fault`).
        self.stale_mmio: set[int] = set()
        self.sut: Any = None
        self.oracle: ModelMachine | None = None
        self.generation = 0
        #: The pages of this opening that had a memory error, and the operation that
        #: injected it (named when a later answer on the page is a violation).
        self.memory_errors: dict[int, str] = {}
        #: Per host thread, the pages its process may still hold a stale hwpoison entry
        #: for: a memory error hit them while the process lived (docs/stress.md,
        #: *Findings*). The process's death clears them (:meth:`Stress.host_access`).
        self.stale_hwpoison: dict[int, set[int]] = {}
        #: Pages the stress process itself may have mapped: ``gup_test`` pins and
        #: ``vmsplice`` fault pages in through its own mapping, and only a punch hole or a
        #: to-private conversion of the page unmaps it. No memory error goes there: a
        #: stale hwpoison entry in this process would fail later pins of a healthy page.
        self.self_mapped: set[int] = set()

    def open(self, mappings: list[int]) -> None:
        self.sut = self.backend.open(self.platform, self.abi, self.size, FLAGS)
        if isinstance(self.sut, ModelMachine):  # the model is one thread's at a time
            self.sut = Serialized(self.sut, self.stop)
        self.oracle = ModelBackend().open(self.platform, self.abi, self.size, FLAGS)
        self.memslot = True
        self.stale_mmio = set()
        self.held = {}
        self.memory_errors = {}
        self.stale_hwpoison = {}
        self.self_mapped = set()
        self.generation += 1
        for which in mappings:  # each host thread's own process and mapping, made now
            self.sut.host_read(0, 1, mapping=which)
            self.oracle.host_read(0, 1, mapping=which)

    def close(self) -> None:
        if self.sut is not None:
            self.sut.close()
        if self.oracle is not None:
            self.oracle.close()
        for _offset, _size, ref in self.splices.values():
            release_splice(ref)
        self.splices.clear()
        self.sut = self.oracle = None

    def punched(self, offset: int, size: int) -> None:
        """A punch hole of ``[offset, +size)``: each held reference now keeps the old folio
        of the pages it covers there."""
        self.unmapped(offset, size)
        lo, hi = offset // PAGE_SIZE, (offset + size) // PAGE_SIZE
        for start, length, pages in self.held.values():
            first, last = start // PAGE_SIZE, (start + length) // PAGE_SIZE
            pages.update(range(max(first, lo), min(last, hi)))

    def guest_accessed(self, action: Action, got: Outcome) -> None:
        """What a guest access left in KVM's page table: an MMIO exit an entry for its
        page (:func:`stale_mmio_fault`); the pages it did are mapped for real."""
        first = action.offset // PAGE_SIZE
        last = (action.offset + action.size - 1) // PAGE_SIZE
        exit_ = got.exit or {}
        if exit_.get("reason") in ("MMIO", "MEMORY_FAULT"):
            stopped = (int(exit_.get("gpa", 0)) - GPA_BASE) // PAGE_SIZE
            self.stale_mmio.difference_update(range(first, stopped))
            if exit_["reason"] == "MMIO":
                self.stale_mmio.add(stopped)
        elif got.exit is None and got.errno is None and got.skipped is None:
            self.stale_mmio.difference_update(range(first, last + 1))

    def unmapped(self, offset: int, size: int) -> None:
        """A punch hole or a to-private conversion of ``[offset, +size)`` removed every host
        mapping of those pages."""
        self.self_mapped.difference_update(_pages(offset, size, self.pages))

    @contextmanager
    def pages_locked(self, offset: int, size: int) -> Iterator[None]:
        first = max(offset // PAGE_SIZE, 0)
        last = min((offset + max(size, 1) - 1) // PAGE_SIZE, self.pages - 1)
        with ExitStack() as stack:
            for page in range(first, last + 1):
                stack.enter_context(locked(self.locks[page], self.stop))
            yield


def _pages(offset: int, size: int, pages: int) -> range:
    """The pages of the file that ``[offset, +size)`` touches."""
    first = max(offset // PAGE_SIZE, 0)
    last = min((offset + max(size, 1) - 1) // PAGE_SIZE, pages - 1)
    return range(first, last + 1)


@contextmanager
def locked(lock: threading.Lock, stop: threading.Event) -> Iterator[None]:
    """``lock`` held; waiting for it ends with :class:`Stop` once the run stops (a thread
    stuck in the kernel while holding it must not hold up the others' end)."""
    while not lock.acquire(timeout=0.1):
        if stop.is_set():
            raise Stop
    try:
        yield
    finally:
        lock.release()


class Serialized:
    """A machine under test that is not thread-safe (a model machine, in the tool's own
    tests), called by one thread at a time."""

    def __init__(self, inner: ModelMachine, stop: threading.Event) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.stop = stop

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with locked(self.lock, self.stop):
                return method(*args, **kwargs)

        return call


def stale_mmio_fault(target: Target, oracle: ModelMachine, action: Action, got: Outcome) -> int | None:
    """The page of a known x86 KVM answer, else None: a guest access to a page that is
    private, made after the guest touched that page while the memslot was gone, exits with
    ``KVM_EXIT_MEMORY_FAULT`` as a *shared* access (``flags`` 0) on that page.

    Why (arch/x86/kvm/mmu/mmu.c, ``kvm_mmu_page_fault``): the access with no memslot left an
    MMIO entry in the nested page table; the memslot's return makes it stale but does not
    remove it (it is not a present entry, so no zap touches it); the next access faults as
    a reserved-bit fault, and for those ``KVM_X86_SW_PROTECTED_VM`` does not set the
    private-access flag from the page's attribute. The fault is then shared on a private
    page, which KVM reports to userspace, and nothing replaces the entry until a shared
    access maps the page. The conversion series does not touch that code."""
    exit_ = got.exit
    if exit_ is None or exit_.get("reason") != "MEMORY_FAULT":
        return None
    if exit_.get("flags") != 0 or exit_.get("size") != PAGE_SIZE:
        return None
    offset = int(exit_.get("gpa", -1)) - GPA_BASE
    page = offset // PAGE_SIZE
    first, last = action.offset // PAGE_SIZE, (action.offset + action.size - 1) // PAGE_SIZE
    if offset % PAGE_SIZE or not first <= page <= last:
        return None
    if page not in target.stale_mmio or not oracle.gmem.is_private(offset) or not target.memslot:
        return None
    return page


def transient_reference(got: Outcome, want: Outcome) -> bool:
    """The kernel refused a conversion with ``EAGAIN`` on a page before any the model
    refuses (or where the model converts): a reference the model does not hold."""
    if got.errno != "EAGAIN" or got.error_offset is None:
        return False
    if want.errno is None:
        return True
    return want.errno == "EAGAIN" and want.error_offset is not None and got.error_offset < want.error_offset


def take_splice(machine: Any, offset: int, size: int) -> tuple[Outcome, Any]:
    """A ``vmsplice`` reference to the range through the machine's mapping (the model: a
    pin, which is what the model counts an extra reference as)."""
    if isinstance(machine, Serialized | ModelMachine):
        return machine.pin(offset, size), (machine, offset, size)
    from guestmem.kvm.pins import SpliceRef

    if machine.mapping is None:
        return Outcome(errno="ENODEV"), None
    try:
        ref = SpliceRef(machine.mapping.address + offset, size)
    except IoctlError as err:
        return Outcome(errno=err.name), None
    return Outcome(), ref


def release_splice(ref: Any, punched: set[int] | None = None) -> None:
    if isinstance(ref, tuple):
        machine, offset, size = ref
        machine.unpin(offset, size, punched=punched or set())
    elif ref is not None:
        ref.release()


def unpin(machine: Any, offset: int, size: int, punched: set[int]) -> Outcome:
    """A release of the ``gup_test`` pin; a model under test is told, as the oracle is,
    which of its pages the holder saw punched out (``GuestMemfd.unpin``)."""
    if isinstance(machine, Serialized | ModelMachine):
        result: Outcome = machine.unpin(offset, size, punched=punched)
        return result
    result = machine.unpin(offset, size)
    return result


@dataclass
class Settings:
    seed: int
    seconds: float | None = 60.0
    operations: int | None = None
    threads: int = 4
    vcpus: int = 1
    targets: int = 2
    pages: int = 16
    platform: str = "sw_protected"
    abi: str = "v8"
    op_limit: float = 60.0
    inject: bool = True
    minimize_seconds: float = 120.0
    #: The first and the longest pause before a retry of a conversion that met a transient
    #: reference (:data:`TRANSIENT_PAUSE`).
    transient_pause: tuple[float, float] = TRANSIENT_PAUSE
    #: The most memory errors the run injects (each poisoned page is lost for good).
    memory_errors: int = LIMIT


@dataclass
class Report:
    settings: Settings
    operations: int = 0
    seconds: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    injected: dict[str, int] = field(default_factory=dict)
    #: Conversions made with an allocation failure armed, per kind (a call that allocates
    #: nothing, e.g. one that finds its range already converted, is not failed).
    injection_attempts: dict[str, int] = field(default_factory=dict)
    #: Conversions that met a transient reference and gave the model's answer on a retry.
    transient: int = 0
    #: How often each of :data:`KNOWN_FINDINGS` was met.
    known: Counter[str] = field(default_factory=Counter)
    injection: str | None = None
    #: Memory errors injected; why none could be; the punch holes drawn with one that were
    #: made plain, by reason (``private``, ``held``, ``self_mapped``, ``limit``, ``unavailable``).
    memory_errors: int = 0
    memory_errors_unavailable: str | None = None
    memory_errors_plain: Counter[str] = field(default_factory=Counter)
    log_watched: str | None = None
    violation: Violation | None = None
    last: dict[int, list[str]] = field(default_factory=dict)
    #: After a violation: the failing guest_memfd's operations since it was opened (the
    #: last :data:`HISTORY_KEPT`), every thread's, in the order the oracle saw them, each
    #: with its answer; what happened to a page before the failing operation.
    target_history: list[str] = field(default_factory=list)
    reproducer: list[Action] | None = None
    reproducer_toml: str | None = None
    interrupted: bool = False
    #: The exit status the interruption asks for (Ctrl-C 130, SIGTERM 143: progress.exit_status).
    interrupt_status: int = 0

    @property
    def ops_per_second(self) -> float:
        return self.operations / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "schema": "guestmem.stress/1",
            "seed": s.seed,
            "platform": s.platform,
            "abi": s.abi,
            "threads": s.threads,
            "vcpus": s.vcpus,
            "targets": s.targets,
            "pages": s.pages,
            "seconds": round(self.seconds, 3),
            "operations": self.operations,
            "ops_per_second": round(self.ops_per_second, 2),
            "kinds": dict(sorted(self.kinds.items())),
            "checks": {k: self.checks.get(k, 0) for k in INVARIANTS},
            "injected_faults": self.injected,
            "injection_attempts": self.injection_attempts,
            "transient_references": self.transient,
            "known_findings": {k: self.known.get(k, 0) for k in KNOWN_FINDINGS},
            "injection_unavailable": self.injection,
            "memory_errors": self.memory_errors,
            "memory_errors_unavailable": self.memory_errors_unavailable,
            "memory_errors_plain": dict(sorted(self.memory_errors_plain.items())),
            "kernel_log_unwatched": self.log_watched,
            "violation": None
            if self.violation is None
            else {
                "invariant": self.violation.invariant,
                "message": self.violation.message,
                "operation": None if self.violation.action is None else self.violation.action.describe(),
                "kernel": None if self.violation.got is None else self.violation.got.to_json(),
                "model": None if self.violation.want is None else self.violation.want.to_json(),
                "splats": [{"kind": x.kind, "line": x.line, "text": x.text} for x in self.violation.splats],
            },
            "last_operations": {str(t): ops for t, ops in sorted(self.last.items())},
            "target_history": self.target_history,
            "reproducer": self.reproducer_toml,
            "interrupted": self.interrupted,
        }


class Stress:
    """One run: ``settings``, the backend under test, a kernel log source and an injector."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        *,
        log: LogSource | None = None,
        injector: Injector | None = None,
        poisoner: Poisoner | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.s = settings
        self.backend = backend
        self.log = log
        self.injector = injector if settings.inject else None
        self.poisoner = poisoner if settings.inject else None
        #: Memory errors injected or being injected (held to ``settings.memory_errors``).
        self.poison_slots = 0
        self.progress = progress or (lambda _text: None)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.report = Report(settings)
        #: (target, generation, action, the action with its answer), in the oracle's order
        self.history: list[tuple[int, int, Action, str]] = []
        self.recent: dict[int, deque[str]] = {}
        self.running: dict[int, tuple[Action | Op, float]] = {}
        self.log_text: list[str] = []
        self.targets = [
            Target(i, backend, settings.platform, settings.abi, settings.pages, self.stop)
            for i in range(settings.targets)
        ]
        self.host_threads = list(range(settings.vcpus, settings.vcpus + settings.threads))
        if settings.vcpus > settings.targets:
            raise ValueError(f"one vCPU per guest_memfd: {settings.vcpus} vCPUs need as many guest_memfds")
        self.flags = MODE_FLAGS.get(settings.abi, MODE_FLAGS["v8"])
        self.finishing = threading.Condition()
        self.active = settings.vcpus + settings.threads
        #: The one range ``gup_test`` holds pinned (target, offset, size): the module keeps a
        #: single pinned range for the whole system, so pins are taken one at a time.
        self.pinned: tuple[int, int, int] | None = None
        self.pin_lock = threading.Lock()

    # --- bookkeeping -----------------------------------------------------------------------
    def check(self, invariant: str, count: int = 1) -> None:
        with self.lock:
            self.report.checks[invariant] += count

    def fail(self, violation: Violation) -> None:
        with self.lock:
            if self.report.violation is None:
                self.report.violation = violation
        self.stop.set()
        raise Stop

    def record(self, thread: int, target: Target, action: Action, outcome: Outcome) -> None:
        started = self.running.get(thread)
        if started is not None and time.monotonic() - started[1] <= self.s.op_limit:
            self.check("no_hang")
        answered = f"{action.describe()}: {_short(outcome)}"
        with self.lock:
            self.history.append((target.index, target.generation, action, answered))
            self.report.operations += 1
            self.report.kinds[action.kind] += 1
            self.recent.setdefault(thread, deque(maxlen=LAST_OPS)).append(answered)

    # --- comparing --------------------------------------------------------------------------
    def compare(self, action: Action, got: Outcome, want: Outcome) -> None:
        kind = action.kind
        host = kind in ("host_read", "host_write", "pin", "splice")
        if host and (want.signal or want.errno == "EFAULT"):
            self.check("private_host_access")
            if got.ok or got.data is not None:
                self.fail(
                    Violation(
                        "private_host_access", "a host access to a private page succeeded", action, got, want
                    )
                )
        if kind in ("host_read", "guest_read") and want.data is not None:
            self.check("shared_bytes" if kind == "host_read" else "model_agreement")
            if got.data is not None and not agree(got, want):
                invariant = "shared_bytes" if kind == "host_read" else "model_agreement"
                self.fail(
                    Violation(invariant, f"{kind} returned other bytes than the model", action, got, want)
                )
        self.check("model_agreement")
        if not agree(got, want):
            self.fail(
                Violation(
                    "model_agreement",
                    f"{kind} answered otherwise than the model" + self._after_memory_error(action, got),
                    action,
                    got,
                    want,
                )
            )

    def _after_memory_error(self, action: Action, got: Outcome) -> str:
        """A fault on a page that had a memory error earlier, punched out since: say so
        (docs/stress.md *Findings*: a process that had the page mapped then may still fault)."""
        if got.signal is None and got.errno not in ("EFAULT", "EHWPOISON"):
            return ""
        if not 0 <= action.target < len(self.targets):
            return ""
        errors = self.targets[action.target].memory_errors
        first, last = action.offset // PAGE_SIZE, (action.offset + max(action.size, 1) - 1) // PAGE_SIZE
        hit = [f"page {p} ({errors[p]})" for p in range(first, last + 1) if p in errors]
        if not hit:
            return ""
        return (
            f"; a memory error was injected on {', '.join(hit)} and punched out since: a stale "
            "hwpoison entry in this thread's process? (docs/stress.md, Findings)"
        )

    def host_access(
        self, target: Target, thread: int, offset: int, size: int, data: bytes | None = None
    ) -> Outcome:
        """A host read of ``size`` bytes, or a write of ``data``, through ``thread``'s
        process. One that the kernel kills with ``SIGBUS`` on a page that process may hold
        a stale hwpoison entry for is a known kernel answer (docs/stress.md, *Findings*):
        counted, and made again by the new process, whose answer counts. The first try did
        part of what the second does again (a write of the same bytes, a fault of the same
        pages), so the state is as after one access. Any death of the process clears its
        stale entries."""

        def call() -> Outcome:
            if data is None:
                read: Outcome = target.sut.host_read(offset, size, mapping=thread)
                return read
            written: Outcome = target.sut.host_write(offset, data, mapping=thread)
            return written

        got = call()
        if got.signal is None:
            return got
        with target.oracle_lock:
            stale = target.stale_hwpoison.pop(thread, set())
        if got.signal == "SIGBUS" and stale.intersection(_pages(offset, size, target.pages)):
            with self.lock:
                self.report.known["stale_hwpoison_entry"] += 1
            got = call()
        return got

    def probe_attributes(self, thread: int, target: Target, action: Action, why: str) -> None:
        """After a failed conversion: each page of its range has the attribute the model
        says (a host read faults exactly on the private ones)."""
        assert target.oracle is not None
        first = action.offset // PAGE_SIZE
        last = min((action.offset + action.size - 1) // PAGE_SIZE, target.pages - 1)
        for page in range(first, last + 1):
            got = self.host_access(target, thread, page * PAGE_SIZE, 1)
            with target.oracle_lock:
                want = target.oracle.host_read(page * PAGE_SIZE, 1, mapping=thread)
            self.check("failed_conversion_atomic")
            if (got.signal is None) != (want.signal is None):
                self.fail(
                    Violation(
                        "failed_conversion_atomic",
                        f"{why}; page {page} is now {'shared' if got.signal is None else 'private'}, "
                        f"the model says {'shared' if want.signal is None else 'private'}",
                        action,
                        got,
                        want,
                    )
                )

    def check_error_offset(self, action: Action, got: Outcome, want: Outcome | None) -> None:
        self.check("error_offset")
        eo = got.error_offset
        start, end = action.offset, action.offset + action.size
        if eo is None or not start <= eo < end or eo % PAGE_SIZE:
            self.fail(
                Violation(
                    "error_offset",
                    f"{got.errno} with error_offset {eo if eo is None else hex(eo)} outside "
                    f"[{start:#x}, {end:#x}) or off a page boundary",
                    action,
                    got,
                    want or Outcome(),
                )
            )
        if want is not None and want.errno == got.errno and want.error_offset != eo:
            self.fail(
                Violation(
                    "error_offset", "error_offset is not on the page the model says failed", action, got, want
                )
            )

    def retry_transient(self, got: Outcome, want: Outcome, again: Callable[[], Outcome]) -> Outcome:
        """The conversion again, while the kernel still refuses it on a page the model
        holds no reference to: the answer of the last try (a reference that outlasts every
        try is the caller's violation)."""
        pause, most = self.s.transient_pause
        for _ in range(TRANSIENT_RETRIES):
            if self.stop.wait(pause):
                raise Stop
            pause = min(pause * 2, most)
            got = again()
            if not transient_reference(got, want):
                if agree(got, want):
                    with self.lock:
                        self.report.transient += 1
                return got
        return got

    # --- one operation ----------------------------------------------------------------------
    def perform(self, thread: int, op: Op) -> None:
        target = self.targets[op.target]
        if op.kind in ("pin", "reopen"):
            with locked(self.pin_lock, self.stop), locked(target.meta, self.stop):
                self._stateful(thread, target, op)
            return
        if op.kind in ("splice", "memslot"):
            with locked(target.meta, self.stop):
                self._stateful(thread, target, op)
            return
        action = Action(op, op.kind, op.offset, op.size)
        with target.pages_locked(op.offset, op.size):
            if op.memory_error:
                self.punch_after_memory_error(thread, target, action)
            else:
                self._run(thread, target, action)

    def _poison_page(self, target: Target, action: Action) -> tuple[int | None, str]:
        """The page of the range to inject a memory error on: the first the oracle has
        shared that no pin or splice holds and this process has not mapped
        (:attr:`Target.self_mapped`); else None and why not."""
        assert target.oracle is not None
        first = action.offset // PAGE_SIZE
        last = min((action.offset + action.size - 1) // PAGE_SIZE, target.pages - 1)
        why = "private"
        with target.oracle_lock:
            for page in range(first, last + 1):
                offset = page * PAGE_SIZE
                if target.oracle.gmem.is_private(offset):
                    continue
                if any(start <= offset < start + length for start, length, _ in target.held.values()):
                    why = "held"
                    continue
                if page in target.self_mapped:
                    why = "self_mapped"
                    continue
                return page, ""
        return None, why

    def _plain(self, thread: int, target: Target, action: Action, why: str) -> Outcome:
        with self.lock:
            self.report.memory_errors_plain[why] += 1
        return self._run(thread, target, action)

    def punch_after_memory_error(self, thread: int, target: Target, action: Action) -> Outcome:
        """A punch hole drawn after a memory error, under the locks of its pages: a memory
        error on the first page of the range that is shared and held by no pin or splice,
        the ``memory_error`` checks (module docstring), then the punch hole on both. Where
        there is no such page, no injector, or the run's :attr:`Settings.memory_errors` are
        used up, a plain punch hole (counted by reason)."""
        if self.poisoner is None or self.poisoner.reason is not None:
            return self._plain(thread, target, action, "unavailable")
        page, why = self._poison_page(target, action)
        if page is None:
            return self._plain(thread, target, action, why)
        with self.lock:
            if self.poison_slots >= self.s.memory_errors:
                self.report.memory_errors_plain["limit"] += 1
                full = True
            else:
                self.poison_slots += 1
                full = False
        if full:
            return self._run(thread, target, action)
        poisoned = page * PAGE_SIZE
        action = replace(action, target=target.index, generation=target.generation, poisoned=poisoned)
        self.running[thread] = (action, time.monotonic())
        sut = target.sut
        assert target.oracle is not None
        oracle: ModelMachine = target.oracle
        injection = self.poisoner.inject(sut, poisoned)
        if not injection.done:
            with self.lock:
                self.poison_slots -= 1
            if injection.faulted:
                with target.oracle_lock:
                    want = oracle.host_read(poisoned, 1, mapping=thread)
                self.fail(
                    Violation(
                        "model_agreement",
                        f"the page at {poisoned:#x}, shared for the model, faulted when the process "
                        f"injecting a memory error touched it: {injection.why}",
                        action,
                        Outcome(signal="SIGBUS"),
                        want,
                    )
                )
            return self._plain(thread, target, replace(action, poisoned=-1), "unavailable")
        with self.lock:
            self.report.memory_errors += 1
        with target.oracle_lock:
            target.memory_errors[page] = action.describe()

        def expect(ok: bool, message: str, got: Outcome, want: Outcome) -> None:
            self.check("memory_error")
            if not ok:
                self.fail(Violation("memory_error", message, action, got, want))

        first = action.offset // PAGE_SIZE
        last = min((action.offset + action.size - 1) // PAGE_SIZE, target.pages - 1)

        def read_pages(when: str, skip: int) -> None:
            for other in range(first, last + 1):
                if other == skip:
                    continue
                got = self.host_access(target, thread, other * PAGE_SIZE, PAGE_SIZE)
                with target.oracle_lock:
                    want = oracle.host_read(other * PAGE_SIZE, PAGE_SIZE, mapping=thread)
                page_only = replace(action, offset=other * PAGE_SIZE, size=PAGE_SIZE)
                expect(
                    agree(got, want),
                    f"{when}, a host read of page {other} answered otherwise than the model"
                    + ("" if other == page else self._after_memory_error(page_only, got)),
                    got,
                    want,
                )

        with target.oracle_lock:  # every other host thread's process may have had it mapped
            for other in self.host_threads:
                if other != thread:
                    target.stale_hwpoison.setdefault(other, set()).add(page)
        got = sut.host_read(poisoned, 1, mapping=thread)
        if got.signal is not None:  # this thread's process died of it: a new one starts clean
            with target.oracle_lock:
                target.stale_hwpoison.pop(thread, None)
        expect(
            got.signal == "SIGBUS",
            f"a host read of the page at {poisoned:#x} after its memory error did not fault with SIGBUS",
            got,
            Outcome(signal="SIGBUS"),
        )
        read_pages(f"after a memory error on page {page}", page)
        refused = Outcome(errno="EAGAIN", error_offset=poisoned)
        got = sut.convert(poisoned, PAGE_SIZE, KVM_MEMORY_ATTRIBUTE_PRIVATE, self.flags["default"])
        expect(
            (got.errno, got.error_offset) == (refused.errno, refused.error_offset),
            "a to-private conversion of a page with a memory error must fail with EAGAIN at the page "
            "(the memory-failure code keeps a reference to its folio)",
            got,
            refused,
        )
        got = sut.punch_hole(action.offset, action.size)
        with target.oracle_lock:
            want = oracle.punch_hole(action.offset, action.size)
            if got.ok and want.ok:
                target.punched(action.offset, action.size)
        expect(
            agree(got, want),
            "the punch hole after a memory error answered otherwise than the model",
            got,
            want,
        )
        punched: Outcome = got
        read_pages(f"after the punch hole that discarded the memory error on page {page}", -1)
        self.record(thread, target, action, punched)
        return punched

    def _run(self, thread: int, target: Target, action: Action) -> Outcome:
        action = replace(action, target=target.index, generation=target.generation)
        self.running[thread] = (action, time.monotonic())
        op, sut = action.op, target.sut
        assert target.oracle is not None
        oracle: ModelMachine = target.oracle
        injected = False
        if action.kind == "convert":
            attributes = KVM_MEMORY_ATTRIBUTE_PRIVATE if op.to == "private" else 0
            flags = self.flags[op.mode]

            def convert(machine: Any, mark: int | None = None) -> Outcome:
                marked = {} if mark is None else {"mark": mark}
                result: Outcome = machine.convert(action.offset, action.size, attributes, flags, **marked)
                return result

            if op.inject and self.injector is not None and op.inject in self.injector.available:
                action = replace(action, armed=True)
                got, injected = self.injector.during(op.inject, lambda mark: convert(sut, mark))
            else:
                got = convert(sut)
            if injected and got.errno == "ENOMEM":
                # the model's ENOMEM rule: nothing changes, error_offset at the start; an
                # injected failure the kernel absorbed gives the model's answer (below)
                want = Outcome(errno="ENOMEM", error_offset=action.offset)
                self.check("error_offset")
                if got.error_offset != action.offset:
                    self.fail(
                        Violation(
                            "error_offset",
                            f"an injected {op.inject} failure: ENOMEM must be at the start",
                            action,
                            got,
                            want,
                        )
                    )
                self.probe_attributes(thread, target, action, f"an injected {op.inject} failure")
                self.record(thread, target, action, got)
                return got
            with target.oracle_lock:
                want = convert(oracle)
            if transient_reference(got, want):
                got = self.retry_transient(got, want, lambda: convert(sut))
            if got.ok and attributes:
                with target.oracle_lock:
                    target.unmapped(action.offset, action.size)
            if got.errno is not None:
                self.check_error_offset(action, got, want)
                if want.errno is None:  # the model converted: undo nothing, compare below
                    pass
                else:
                    self.probe_attributes(thread, target, action, f"a conversion failed with {got.errno}")
        elif action.kind == "host_read":
            got = self.host_access(target, thread, action.offset, action.size)
            with target.oracle_lock:
                want = oracle.host_read(action.offset, action.size, mapping=thread)
        elif action.kind == "host_write":
            got = self.host_access(target, thread, action.offset, action.size, op.data)
            with target.oracle_lock:
                want = oracle.host_write(action.offset, op.data, mapping=thread)
        elif action.kind in ("guest_read", "guest_write"):
            write = action.kind == "guest_write"
            offset, size = action.offset, action.size
            got = sut.guest_write(offset, op.data) if write else sut.guest_read(offset, size)
            with target.oracle_lock:
                stale = stale_mmio_fault(target, oracle, action, got)
                if stale is None:
                    want = oracle.guest_write(offset, op.data) if write else oracle.guest_read(offset, size)
                else:  # the kernel did the pages before the stale one: so does the model
                    done = stale * PAGE_SIZE - action.offset
                    if done > 0:  # a read of them allocates them too (rfc-v5's scramble shows it)
                        if write:
                            oracle.guest_write(action.offset, op.data[:done])
                        else:
                            oracle.guest_read(action.offset, done)
                    want = got
                    with self.lock:
                        self.report.known["stale_mmio_private_access"] += 1
            target.guest_accessed(action, got)
        elif action.kind == "punch_hole":
            got = sut.punch_hole(action.offset, action.size)
            with target.oracle_lock:
                want = oracle.punch_hole(action.offset, action.size)
                if got.ok and want.ok:
                    target.punched(action.offset, action.size)
        elif action.kind == "pin":
            got = sut.pin(action.offset, action.size)
            with target.oracle_lock:
                target.self_mapped.update(_pages(action.offset, action.size, target.pages))
                want = oracle.pin(action.offset, action.size)
                if got.ok and want.ok:
                    target.held["pin"] = (action.offset, action.size, set())
        elif action.kind == "unpin":
            with target.oracle_lock:
                punched = target.held.pop("pin", (0, 0, set()))[2]
            got = unpin(sut, action.offset, action.size, punched)
            with target.oracle_lock:
                want = oracle.unpin(action.offset, action.size, punched=punched)
        elif action.kind == "splice":
            got, ref = take_splice(sut, action.offset, action.size)
            with target.oracle_lock:
                target.self_mapped.update(_pages(action.offset, action.size, target.pages))
                want = oracle.pin(action.offset, action.size)
                if got.ok and want.ok:
                    target.splices[thread] = (action.offset, action.size, ref)
                    target.held[("splice", thread)] = (action.offset, action.size, set())
            if got.ok and not want.ok:
                release_splice(ref)
        elif action.kind == "unsplice":
            _offset, _size, ref = target.splices.pop(thread)
            with target.oracle_lock:
                punched = target.held.pop(("splice", thread), (0, 0, set()))[2]
            release_splice(ref, punched)
            got = Outcome()
            with target.oracle_lock:
                want = oracle.unpin(action.offset, action.size, punched=punched)
        elif action.kind in ("delete_memslot", "restore_memslot"):
            got = getattr(sut, action.kind)()
            with target.oracle_lock:
                want = getattr(oracle, action.kind)()
            if got.ok:
                target.memslot = action.kind == "restore_memslot"
        else:
            raise ValueError(f"unknown action {action.kind}")
        if got.skipped is None:
            self.compare(action, got, want)
        self.record(thread, target, action, got)
        return got

    def _stateful(self, thread: int, target: Target, op: Op) -> None:
        if op.kind == "reopen":
            with ExitStack() as stack:
                for lock in target.locks:
                    stack.enter_context(locked(lock, self.stop))
                self.running[thread] = (op, time.monotonic())
                if self.pinned is not None and self.pinned[0] == target.index:
                    self.pinned = None  # closing the machine releases its pin
                target.close()
                target.open(self.host_threads)
                action = Action(op, "reopen", 0, target.size)
                self.record(thread, target, action, Outcome())
            return
        if op.kind == "memslot":
            kind = "delete_memslot" if target.memslot else "restore_memslot"
            with target.pages_locked(0, target.size):
                self._run(thread, target, Action(op, kind, 0, target.size))
            return
        if op.kind == "pin":  # gup_test holds one pinned range in the whole system
            holder = self.pinned
            if holder is None:
                owner, action = target, Action(op, "pin", op.offset, op.size, target.index)
            else:
                owner = self.targets[holder[0]]
                action = Action(op, "unpin", holder[1], holder[2], owner.index)
            with ExitStack() as stack:
                if owner is not target:
                    stack.enter_context(locked(owner.meta, self.stop))
                stack.enter_context(owner.pages_locked(action.offset, action.size))
                got = self._run(thread, owner, action)
            if action.kind == "unpin":
                self.pinned = None
            elif got.ok:
                self.pinned = (owner.index, action.offset, action.size)
            return
        # splice: a reference held by this thread's pipe, dropped at its next splice
        held = target.splices.get(thread)
        action = (
            Action(op, "splice", op.offset, op.size)
            if held is None
            else Action(op, "unsplice", held[0], held[1])
        )
        with target.pages_locked(action.offset, action.size):
            self._run(thread, target, action)

    # --- threads ----------------------------------------------------------------------------
    def worker(self, thread: int, deadline: float | None, budget: int | None) -> None:
        try:
            self._work(thread, deadline, budget)
        finally:
            # a host helper process dies with the thread that forked it (PR_SET_PDEATHSIG
            # names the thread), and a reopen forks them on whichever thread runs it: no
            # thread ends while another may still use its helpers
            with self.finishing:
                self.active -= 1
                self.finishing.notify_all()
                while self.active > 0 and not self.stop.is_set():
                    self.finishing.wait(0.25)

    def _work(self, thread: int, deadline: float | None, budget: int | None) -> None:
        ops = schedule(self.s.seed, thread, vcpus=self.s.vcpus, targets=self.s.targets, pages=self.s.pages)
        try:
            for op in ops:
                if self.stop.is_set():
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return
                if budget is not None and op.index >= budget:
                    return
                self.running[thread] = (op, time.monotonic())
                self.perform(thread, op)
                self.running.pop(thread, None)
        except Stop:
            return
        except Exception as err:  # a bug of the tool or the bindings: stop with it
            with self.lock:
                if self.report.violation is None:
                    self.report.violation = Violation(
                        "model_agreement", f"thread {thread} raised {type(err).__name__}: {err}"
                    )
            self.stop.set()

    def watch(self) -> None:
        """The kernel log and the operations' time limits, until the workers stop."""
        now = time.monotonic()
        for thread, (what, started) in list(self.running.items()):
            if now - started > self.s.op_limit:
                action = what if isinstance(what, Action) else Action(what, what.kind, what.offset, what.size)
                with self.lock:
                    if self.report.violation is None:
                        self.report.violation = Violation(
                            "no_hang",
                            f"thread {thread} has run one operation for {now - started:.1f} s "
                            f"(limit {self.s.op_limit:g} s)",
                            action,
                        )
                self.stop.set()
        self.read_log()

    def read_log(self) -> None:
        if self.log is None:
            return
        text = self.log.read()
        if text:
            self.log_text.append(text)
        self.check("kernel_log")
        splats = find_splats(text) if text else []
        if splats:
            with self.lock:
                if self.report.violation is None:
                    self.report.violation = Violation(
                        "kernel_log",
                        f"the kernel logged {len(splats)} report(s): {splats[0].kind}",
                        splats=splats,
                    )
            self.stop.set()

    def run(self) -> Report:
        s, report = self.s, self.report
        if self.log is not None and self.log.unavailable:
            report.log_watched = self.log.unavailable
        elif self.log is None:
            report.log_watched = "no kernel log source"
        if self.injector is None:
            report.injection = "fault injection was turned off" if not s.inject else "no injector"
        else:
            report.injection = self.injector.reason
        start = time.monotonic()
        deadline = None if s.seconds is None else start + s.seconds
        # vCPU thread 0 runs in the main thread: the guest's time limit needs it there
        # (guestmem.kvm.watchdog); the others, and the watcher, in threads of their own
        first = 1 if s.vcpus else 0
        threads = [
            threading.Thread(
                target=self.worker, args=(t, deadline, s.operations), name=f"stress-{t}", daemon=True
            )
            for t in range(first, s.vcpus + s.threads)
        ]
        done = threading.Event()

        def watcher() -> None:
            while not done.wait(0.25):
                self.watch()
                self.progress(
                    f"{report.operations} operations, {sum(report.checks.values())} checks"
                    + (f", {self.injector.total} injected faults" if self.injector else "")
                )

        monitor = threading.Thread(target=watcher, name="stress-watch", daemon=True)
        hung = False
        try:
            for target in self.targets:
                target.open(self.host_threads)
            monitor.start()
            for t in threads:
                t.start()
            if first:
                self.worker(0, deadline, s.operations)
            for t in threads:
                while t.is_alive() and not hung:
                    t.join(timeout=0.25)
                    hung = report.violation is not None and report.violation.invariant == "no_hang"
        except KeyboardInterrupt as stop:
            report.interrupted = True
            report.interrupt_status = progress.exit_status(stop)
            self.stop.set()
            for t in threads:
                if t.ident is not None:  # started
                    t.join(timeout=s.op_limit)
        finally:
            done.set()
            if monitor.ident is not None:
                monitor.join(timeout=s.op_limit)
        hung = report.violation is not None and report.violation.invariant == "no_hang"
        report.seconds = time.monotonic() - start
        if not hung:
            self.read_log()
        report.last = {t: list(q) for t, q in sorted(self.recent.items())}
        failed = report.violation
        if failed is not None and failed.action is not None:
            where = (failed.action.target, failed.action.generation)
            report.target_history = [answer for t, g, _a, answer in self.history if (t, g) == where]
            del report.target_history[:-HISTORY_KEPT]
            got = "(running)" if failed.got is None else _short(failed.got)  # a violation stops
            report.target_history.append(f"{failed.action.describe()}: {got}")
        if self.injector is not None:
            report.injected = dict(self.injector.injected)
            report.injection_attempts = dict(self.injector.attempts)
        if self.poisoner is not None:
            report.memory_errors_unavailable = self.poisoner.reason
        elif not s.inject:
            report.memory_errors_unavailable = "fault injection was turned off"
        elif isinstance(self.backend, ModelBackend):
            report.memory_errors_unavailable = "the model backend has no poisoned pages"
        else:
            report.memory_errors_unavailable = "no memory-error injector"
        if not hung:
            for target in self.targets:
                try:
                    target.close()
                except Exception as err:  # closing is an operation too
                    if report.violation is None:
                        report.violation = Violation("model_agreement", f"closing gmem{target.index}: {err}")
            if not hung and report.violation is None:
                self.read_log()
        if (
            report.violation is not None
            and report.violation.action is not None
            and report.violation.invariant not in ("no_hang", "kernel_log")
            and not report.interrupted
        ):
            self.minimize(report.violation)
        return report

    # --- a sequential reproducer ------------------------------------------------------------
    def sequence_for(self, violation: Violation) -> list[Action]:
        """The failing target's actions since it was last opened, in the oracle's order,
        ending with the failing one."""
        assert violation.action is not None
        index, generation = violation.action.target, violation.action.generation
        seq = [a for t, g, a, _ in self.history if t == index and g == generation and a.kind != "reopen"]
        if not seq or seq[-1] != violation.action:
            seq.append(violation.action)
        return seq

    def replay(self, actions: list[Action], deadline: float) -> Violation | None:
        """``actions`` one after another on a fresh target and oracle; the first violation
        (None also when ``deadline`` passes first: a long history replays for minutes)."""
        quiet = Stress(
            Settings(
                seed=self.s.seed,
                threads=self.s.threads,
                vcpus=self.s.vcpus,
                targets=1,
                pages=self.s.pages,
                platform=self.s.platform,
                abi=self.s.abi,
                inject=False,
                transient_pause=self.s.transient_pause,
            ),
            self.backend,
        )
        quiet.host_threads = self.host_threads
        target = quiet.targets[0]
        target.open(self.host_threads)
        try:
            for action in actions:
                if time.monotonic() > deadline:
                    return None
                thread = action.op.thread
                if action.kind == "unsplice" and thread not in target.splices:
                    continue  # its splice was dropped from the sequence
                try:
                    quiet._run(thread, target, action)
                except Stop:
                    return quiet.report.violation
        finally:
            target.close()
        return None

    def minimize(self, violation: Violation) -> None:
        """A short sequence that still breaks the same invariant, within
        ``minimize_seconds`` (every replay included): runs of actions are dropped while it
        still fails, halving the run's length after each pass and ending with a pass over
        single actions, so a history of thousands shrinks in few replays. The failing
        action stays last."""
        seq = self.sequence_for(violation)
        deadline = time.monotonic() + self.s.minimize_seconds
        found = self.replay(seq, deadline)
        if found is None or found.invariant != violation.invariant:
            return
        run = max(1, (len(seq) - 1) // 2)
        while time.monotonic() < deadline:
            i = 0
            while i < len(seq) - 1 and time.monotonic() < deadline:
                end = min(i + run, len(seq) - 1)
                shorter = seq[:i] + seq[end:]
                again = self.replay(shorter, deadline)
                if again is not None and again.invariant == violation.invariant:
                    seq = shorter
                else:
                    i = end
            if run == 1:
                break
            run = max(1, run // 2)
        self.report.reproducer = seq
        self.report.reproducer_toml = reproducer_toml(seq, self.s, violation)


def reproducer_toml(actions: list[Action], settings: Settings, violation: Violation) -> str:
    """The sequence as a scenario file (docs/scenarios.md) expecting what the model says;
    a ``vmsplice`` reference is written as the pin it is counted as."""
    head: dict[str, Any] = {
        "name": f"stress_{settings.seed}_{violation.invariant}",
        "about": f"guestmem stress --seed {settings.seed}: a sequential replay that breaks "
        f"{violation.invariant} ({violation.message}); expectations are the model's.",
        "platforms": [settings.platform],
        "abi": settings.abi,
        "pages": settings.pages,
        "init": "shared",
    }
    oracle = ModelBackend().open(settings.platform, settings.abi, settings.pages * PAGE_SIZE, FLAGS)
    flags = MODE_FLAGS.get(settings.abi, MODE_FLAGS["v8"])
    steps: list[dict[str, Any]] = []
    try:
        for action in actions:
            op = action.op
            kind = {"splice": "pin", "unsplice": "unpin"}.get(action.kind, action.kind)
            operation: Operation
            if kind == "host_write":
                operation = HostWrite(action.offset, op.data)
            elif kind == "guest_write":
                operation = GuestWrite(action.offset, op.data)
            elif kind == "host_read":
                operation = HostRead(action.offset, action.size)
            elif kind == "guest_read":
                operation = GuestRead(action.offset, action.size)
            elif kind in ("punch_hole", "pin", "unpin"):
                ranged = {"punch_hole": PunchHole, "pin": Pin, "unpin": Unpin}[kind]
                operation = ranged(action.offset, action.size)
            elif kind == "convert":
                to = Direction(f"to_{op.to}")
                operation = Convert(action.offset, action.size, to=to, flags=flags[op.mode])
            elif kind == "delete_memslot":
                operation = DeleteMemslot()
            else:
                assert kind == "restore_memslot", kind
                operation = RestoreMemslot()
            steps.append({**operation.fields(), "expect": expectation(operation.apply(oracle))})
    finally:
        oracle.close()
    return toml.document({**head, "step": steps})


__all__ = [
    "INVARIANTS",
    "Action",
    "Report",
    "Settings",
    "Stress",
    "Target",
    "Violation",
]

"""The conversion matrix (docs/semantics.md §2) for one ABI revision, computed by running the model.

Every cell is measured, never looked up: a fresh one-page model VM, a known pattern
written by the side that owns the page, one ``KVM_SET_MEMORY_ATTRIBUTES2`` with the
revision's ``flags`` for the policy, and a read from the other side (the host after P→S,
the guest after S→P). What was read is classified by its provenance
(:meth:`guestmem.model.GuestMemfd.origins`), which tells ciphertext, garbage and random
bytes apart, and checked against the bytes themselves.

How a cell is set up where the model needs help, each kept visible as a note:

- ``consent``: once running, pKVM converts only pages the guest asked for (docs/semantics.md §3,
  a *model assumption*). A cell that fails with ``EPERM`` without a guest request is run
  again on a fresh VM after the guest's share (P→S) or unshare (S→P) request.
- ``after-launch``: the guest cannot run before launch on ``tdx``, ``snp`` and ``cca``
  (model assumption of :meth:`guestmem.model.Vm.run_guest`), so a pre-launch S→P cell is
  read by the guest after launch; on ``pkvm`` the read itself is the launch.
- ``payload`` / ``unwritten``: for a pre-launch P→S cell where the guest cannot write yet,
  the pattern enters private memory as a pre-launch S→P payload; ``unwritten`` when no
  conversion of the revision carries it (the page is then private from creation, never
  written).
- ``v8-populate``: ``v8`` and ``v13`` have no content flags; a pre-launch to-private
  conversion that keeps its bytes does so by the model assumption in
  :mod:`guestmem.spec.revisions.v8` (the in-place populate of v8 22/46 and 23/46).
"""

from __future__ import annotations

from dataclasses import dataclass

from guestmem.backend.base import Outcome
from guestmem.backend.model import ModelMachine
from guestmem.model.provenance import KEYED_LABELS
from guestmem.spec import platforms, revisions
from guestmem.spec.terms import Direction, Phase, Policy
from guestmem.uapi.kvm import (
    GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP,
    KVM_MEMORY_ATTRIBUTE_PRIVATE,
    PAGE_SIZE,
)

#: The known pattern: printable, never zero, never 0xab.
PATTERN = bytes(0x21 + i % 0x5E for i in range(PAGE_SIZE))
POLICIES = (Policy.ZERO, Policy.PRESERVE, Policy.NONE, Policy.DEFAULT)
PHASES = (Phase.PRE_LAUNCH, Phase.RUNNING)
KEYS = ("platform", "direction", "policy", "phase", "result", "guest_request", "notes", "kind")


@dataclass(frozen=True)
class Kind:
    """What kind of answer a cell is: shown as a colour in the report, a word in JSON."""

    prefix: str
    words: str
    sample: str


#: Cell kinds (the ``kind`` key of a row), from the revision's rules, not the result alone.
KINDS: dict[str, Kind] = {
    "guarantee": Kind(
        "", "guarantee: the policy promises this result (docs/semantics.md §5 Policy)", "zeros"
    ),
    "native": Kind(
        "native: ",
        "native: no promise; the platform's own effect of the conversion (docs/semantics.md §2 'native: X')",
        "native",
    ),
    "prelaunch": Kind(
        "pre-launch only: ",
        "pre-launch only: this succeeds before launch; the same call once running is refused",
        "pre-launch",
    ),
    "unsupported": Kind(
        "", "unsupported: the conversion fails with this errno and changes nothing", "EINVAL"
    ),
}

#: Notes a cell can carry: short marker and text (shown as footnotes in text/markdown).
NOTES: dict[str, tuple[str, str]] = {
    "consent": (
        "g",
        "needed a guest request first: pKVM converts only pages the guest asked to share (P→S) "
        "or unshare (S→P) once running, else EPERM (docs/semantics.md §3, model assumption)",
    ),
    "after-launch": (
        "l",
        "the guest read the page after launch: it cannot run before launch "
        "(model assumption: KVM_RUN before finalize is EINVAL)",
    ),
    "payload": (
        "p",
        "the guest cannot write before launch: the pattern entered private memory as a "
        "pre-launch S→P payload",
    ),
    "unwritten": (
        "u",
        "nothing converts to private before launch here: the page was private from creation "
        "and never written",
    ),
    "v8-populate": (
        "v",
        "v8 and v13 have no content flags; the bytes survive by the model assumption that a "
        "pre-launch to-private conversion feeds the in-place populate (v8 22/46, 23/46)",
    ),
}

#: Notes on whole columns, shown with text/markdown output of every revision.
GENERAL = (
    "`none` asks for no guarantee: its cells show the platform's native effect (docs/semantics.md §2 "
    "'native: X'). `default` is flags = 0: ZERO under seed and iteration2, 'unspecified' under "
    "rfc-v5, the only legal value under v8 and v13.",
    "ciphertext and garbage are the model's deterministic per-VM-key bytes (never the plaintext, "
    "never all zero); random stands for rfc-v5's get_random_bytes() scramble, also keyed and "
    "deterministic in the model.",
    "several cca cells are inferred (docs/semantics.md §8: no arm64 code has content policies).",
)
#: Notes for some revisions only.
REVISION_NOTES: dict[str, str] = {
    "seed": "the flag values (ZERO 1<<0, PRESERVE 1<<1, NONE 1<<2) are the project's encoding: "
    "the text names no values (docs/semantics.md §1).",
    "iteration2": "the flag values (ZERO 1<<0, PRESERVE 1<<1, NONE 1<<2) are the project's encoding: "
    "the text names no values (docs/semantics.md §1).",
    "rfc-v5": "`none` passes flags = 0 (MODE_UNSPECIFIED): RFC v3-v5 have no NONE flag "
    "(docs/semantics.md §1).",
    "v8": "`zero`, `preserve` and `none` pass seed's flag values, which v8 refuses: flags must be 0 "
    "(docs/semantics.md §1).",
    "v13": "`zero`, `preserve` and `none` pass seed's flag values, which v13 refuses: flags must be 0 "
    "(docs/semantics.md §1). The cells are v8's; what changed is in docs/semantics.md §1a.",
}

_PRESERVED_ORIGINS = frozenset({"host", "guest_private", "guest_shared", "disclosed", "payload", "accepted"})


class MatrixError(RuntimeError):
    """The model did something the matrix cannot classify (a bug, never a cell value)."""


def _attributes(direction: Direction) -> int:
    return KVM_MEMORY_ATTRIBUTE_PRIVATE if direction is Direction.TO_PRIVATE else 0


def _require(outcome: Outcome, what: str) -> None:
    if not outcome.ok:
        raise MatrixError(f"{what} failed: {outcome.to_json()}")


def classify(outcome: Outcome, pattern: bytes = PATTERN) -> str:
    """What a read returned: ``zeros``, ``preserved``, ``fill:ab``, ``ciphertext``,
    ``garbage`` or ``random``, from its provenance, checked against its bytes."""
    data, origins = outcome.data, outcome.origins
    if not outcome.ok or data is None or origins is None:
        raise MatrixError(f"read failed or has no provenance: {outcome.to_json()}")
    kinds = {origin for _start, _end, origin in origins}
    if kinds <= {"zeroed", "init_zero"} and not any(data):
        return "zeros"
    if kinds == {"fill"} and data == b"\xab" * len(data):
        return "fill:ab"
    if len(kinds) == 1 and (kind := next(iter(kinds))) in KEYED_LABELS:
        if data == pattern or not any(data):
            raise MatrixError(f"{kind} bytes equal the plaintext or are all zero")
        return kind
    if kinds <= _PRESERVED_ORIGINS and data == pattern:
        return "preserved"
    raise MatrixError(f"unclassifiable read: origins {sorted(kinds)}, {data[:16].hex()}…")


class _Cell:
    """One measurement on a fresh VM."""

    def __init__(self, platform: str, abi: str, direction: Direction, policy: Policy, phase: Phase) -> None:
        self.platform, self.abi = platform, abi
        self.direction, self.policy, self.phase = direction, policy, phase
        self.flags = revisions.get(abi).encode(policy)
        self.notes: list[str] = []

    def _open(self, shared: bool) -> ModelMachine:
        flags = GUEST_MEMFD_FLAG_MMAP | (GUEST_MEMFD_FLAG_INIT_SHARED if shared else 0)
        return ModelMachine(self.platform, self.abi, PAGE_SIZE, flags)

    def run(self, request: bool) -> str:
        if self.direction is Direction.TO_SHARED:
            return self._to_shared(request)
        return self._to_private(request)

    def _convert(self, m: ModelMachine, request: bool) -> Outcome:
        if request:
            asked = m.guest_request(0, PAGE_SIZE, self.direction)
            if asked.errno is not None:  # success carries the HYPERCALL exit the VMM sees
                raise MatrixError(f"guest request failed: {asked.to_json()}")
        return m.convert(0, PAGE_SIZE, _attributes(self.direction), self.flags)

    def _to_private(self, request: bool) -> str:
        m = self._open(shared=True)
        _require(m.host_write(0, PATTERN), "host write")
        if self.phase is Phase.RUNNING:
            _require(m.launch(), "launch")
        done = self._convert(m, request)
        if not done.ok:
            return done.errno or "unexpected"
        read = m.guest_read(0, PAGE_SIZE, "private")
        if self.phase is Phase.PRE_LAUNCH and read.errno == "EINVAL":
            _require(m.launch(), "launch")
            read = m.guest_read(0, PAGE_SIZE, "private")
            self.notes.append("after-launch")
        return classify(read)

    def _private_pattern_before_launch(self) -> ModelMachine:
        """A pre-launch VM whose page is private and, if anything allows it, holds PATTERN."""
        m = self._open(shared=False)
        if not platforms.get(self.platform).launch and m.guest_write(0, PATTERN, "private").ok:
            return m  # no launch phase: the guest writes any time (on pKVM it would launch)
        revision = revisions.get(self.abi)
        flags_tried: set[int] = set()
        for policy in (Policy.PRESERVE, Policy.DEFAULT, Policy.NONE):
            flags = revision.encode(policy)
            if flags in flags_tried:
                continue
            flags_tried.add(flags)
            m = self._open(shared=True)
            _require(m.host_write(0, PATTERN), "host write")
            if (
                m.convert(0, PAGE_SIZE, KVM_MEMORY_ATTRIBUTE_PRIVATE, flags).ok
                and m.gmem.peek(0, PAGE_SIZE) == PATTERN
            ):
                self.notes.append("payload")
                return m
        self.notes.append("unwritten")
        return self._open(shared=False)  # nothing converts: the cell's own call will say why

    def _to_shared(self, request: bool) -> str:
        if self.phase is Phase.RUNNING:
            m = self._open(shared=False)
            _require(m.launch(), "launch")
            written = m.guest_write(0, PATTERN, "private")
        else:
            m = self._private_pattern_before_launch()
            written = Outcome()
        done = self._convert(m, request)
        if not done.ok:
            return done.errno or "unexpected"
        _require(written, "guest write")
        return classify(m.host_read(0, PAGE_SIZE))


def cell(platform: str, abi: str, direction: Direction, policy: Policy, phase: Phase) -> dict[str, str]:
    """Measure one cell; see the module docstring for the setup."""
    probe = _Cell(platform, abi, direction, policy, phase)
    result = probe.run(request=False)
    request = False
    if result == "EPERM":
        probe = _Cell(platform, abi, direction, policy, phase)
        result = probe.run(request=True)
        request = True
        probe.notes.insert(0, "consent")
    if result.startswith("E"):  # the call failed: how the page was prepared does not matter
        probe.notes = [n for n in probe.notes if n == "consent"]
    revision = revisions.get(abi)
    decoded = revision.decode(revision.encode(policy))
    if (
        decoded is not None
        and not revision.guaranteed(platforms.get(platform), direction, decoded)
        and direction is Direction.TO_PRIVATE
        and phase is Phase.PRE_LAUNCH
        and result == "preserved"
        and platforms.get(platform).payload_in_place
    ):
        probe.notes.append("v8-populate")
    return {
        "platform": platform,
        "direction": direction.value,
        "policy": policy.value,
        "phase": phase.value,
        "result": result,
        "guest_request": "yes" if request else "no",
        "notes": ",".join(probe.notes),
    }


def compute(abi: str) -> list[dict[str, str]]:
    """docs/semantics.md §2 for revision ``abi``: one row per platform, direction, policy and
    phase, each measured on a fresh model VM, with its :data:`KINDS` key. ``KeyError``
    names the revisions."""
    revisions.get(abi)
    rows = [
        cell(platform, abi, direction, policy, phase)
        for platform in platforms.PLATFORMS
        for direction in (Direction.TO_SHARED, Direction.TO_PRIVATE)
        for policy in POLICIES
        for phase in PHASES
    ]
    results = {(r["platform"], r["direction"], r["policy"], r["phase"]): r["result"] for r in rows}
    for r in rows:
        running = results[(r["platform"], r["direction"], r["policy"], Phase.RUNNING.value)]
        r["kind"] = kind(abi, r, running)
    return rows


def kind(abi: str, row: dict[str, str], running: str) -> str:
    """The :data:`KINDS` key of a measured cell; ``running`` is the same cell's result once
    running (a pre-launch success refused once running is *pre-launch only*)."""
    if row["result"].startswith("E"):
        return "unsupported"
    if row["phase"] == Phase.PRE_LAUNCH.value and running.startswith("E"):
        return "prelaunch"
    revision = revisions.get(abi)
    decoded = revision.decode(revision.encode(Policy(row["policy"])))
    if decoded is None:  # not reached: such a call fails (EINVAL)
        return "unsupported"
    direction = Direction(row["direction"])
    return (
        "guarantee" if revision.guaranteed(platforms.get(row["platform"]), direction, decoded) else "native"
    )


def general_notes(abis: list[str]) -> list[str]:
    """The notes on whole columns for the revisions ``abis`` (text and markdown output)."""
    return [*GENERAL, *(REVISION_NOTES[a] for a in dict.fromkeys(abis) if a in REVISION_NOTES)]


def marked(row: dict[str, str]) -> str:
    """A cell's result with the markers of its notes, e.g. ``preserved [g]``."""
    marks = "".join(NOTES[n][0] for n in row["notes"].split(",") if n)
    return f"{row['result']} [{marks}]" if marks else row["result"]


def grid(rows: list[dict[str, str]], direction: Direction) -> tuple[list[str], list[list[str]]]:
    """Headers and rows (platform × phase, one column per policy) for one direction."""
    headers = ["platform", "phase", *(p.value for p in POLICIES)]
    index = {(r["platform"], r["phase"], r["policy"]): r for r in rows if r["direction"] == direction.value}
    table: list[list[str]] = []
    for platform in dict.fromkeys(r["platform"] for r in rows):
        for phase in PHASES:
            cells = [marked(index[(platform, phase.value, p.value)]) for p in POLICIES]
            table.append([platform, phase.value, *cells])
    return headers, table


def used_notes(rows: list[dict[str, str]]) -> list[str]:
    """Note keys that occur in ``rows``, in :data:`NOTES` order."""
    present = {n for r in rows for n in r["notes"].split(",") if n}
    return [n for n in NOTES if n in present]


def title(abi: str, direction: Direction) -> str:
    reader = "host" if direction is Direction.TO_SHARED else "guest"
    return f"{abi}: {direction.arrow} ({direction.value}), what the {reader} reads next"

"""What a UAPI reviewer reads (``guestmem analyze``): per ABI revision, what the model
answers to every conversion a VMM can ask for, and what the checker finds.

Every cell is measured by running the model, never read from the spec tables:

- **flags = 0**: a one-page conversion with ``flags`` 0 of an allocated page, per
  platform, direction and phase (docs/semantics.md §1 "flags = 0 means"); running
  conversions are preceded by the guest's request, so pKVM's consent rule does not hide
  the answer;
- **policies**: the same call with each explicit policy, giving the ``EOPNOTSUPP`` map
  (docs/semantics.md §2, §4 step 9);
- **violations**: :func:`~guestmem.checker.explore.explore` on every platform with the
  default bounds, each violated property with its shortest counterexample; a platform
  whose transition relation is the same under two revisions is explored once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from guestmem.backend.model import ModelMachine
from guestmem.checker.explore import DEFAULT_DEPTH, DEFAULT_PAGES, Exploration
from guestmem.checker.properties import open_machine
from guestmem.checker.schedule import Engine, Search, relabel, relation, run_searches
from guestmem.spec import platforms, revisions
from guestmem.spec.terms import Direction, Phase, Policy
from guestmem.uapi.kvm import KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE

CELLS = tuple((d, ph) for d in (Direction.TO_SHARED, Direction.TO_PRIVATE) for ph in Phase)
EXPLICIT = (Policy.ZERO, Policy.PRESERVE, Policy.NONE)


def cell_name(direction: Direction, phase: Phase) -> str:
    return f"{direction.arrow} {'pre-launch' if phase is Phase.PRE_LAUNCH else 'running'}"


def convert_once(platform: str, abi: str, direction: Direction, phase: Phase, flags: int) -> str:
    """``ok`` or the errno of converting one allocated page with raw ``flags``."""
    init = "shared" if direction is Direction.TO_PRIVATE else "private"
    machine: ModelMachine = open_machine(platform, abi, 1, init)
    if direction is Direction.TO_PRIVATE:
        machine.host_write(0, b"\x11" * PAGE_SIZE)
    if phase is Phase.RUNNING:
        machine.launch()
        if direction is Direction.TO_SHARED:
            machine.guest_write(0, b"\x22" * PAGE_SIZE)
        machine.guest_request(0, PAGE_SIZE, direction)
    else:
        machine.gmem.fallocate(1, 0, PAGE_SIZE)  # KEEP_SIZE: allocate without touching
    attributes = KVM_MEMORY_ATTRIBUTE_PRIVATE if direction is Direction.TO_PRIVATE else 0
    outcome = machine.convert(0, PAGE_SIZE, attributes, flags)
    return outcome.errno or "ok"


@dataclass
class RevisionAnalysis:
    """One revision: the flags = 0 answers, the per-policy answers, the explorations."""

    abi: str
    title: str
    flags_zero: dict[str, dict[str, str]]
    policies: dict[str, dict[str, dict[str, str]]]
    explorations: list[Exploration]

    def eopnotsupp(self, platform: str, cell: str) -> list[str]:
        return [p for p, answers in self.policies[platform].items() if answers[cell] == "EOPNOTSUPP"]

    def to_json(self) -> dict[str, Any]:
        return {
            "abi": self.abi,
            "title": self.title,
            "flags_zero": self.flags_zero,
            "policies": self.policies,
            "eopnotsupp": {
                p: {c: self.eopnotsupp(p, c) for c in self.flags_zero[p]} for p in self.flags_zero
            },
            "explore": [e.to_json(timing=False) for e in self.explorations],
        }


def answers(abi: str) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, dict[str, str]]]]:
    """The flags = 0 answers and the per-policy answers of one revision, per platform."""
    revision = revisions.get(abi)
    flags_zero: dict[str, dict[str, str]] = {}
    policies: dict[str, dict[str, dict[str, str]]] = {}
    for name in platforms.PLATFORMS:
        flags_zero[name] = {cell_name(d, ph): convert_once(name, abi, d, ph, 0) for d, ph in CELLS}
        policies[name] = {
            policy.value: {
                cell_name(d, ph): convert_once(name, abi, d, ph, revision.encode(policy)) for d, ph in CELLS
            }
            for policy in EXPLICIT
        }
    return flags_zero, policies


def explorations(
    abis: Sequence[str],
    workers: int = 1,
    done: Callable[[Search, Exploration], None] | None = None,
    depth: int = DEFAULT_DEPTH,
    engine: Engine | None = None,
    deadline: float | None = None,
) -> dict[str, list[Exploration]]:
    """Every platform explored under every revision in ``abis`` (default bounds), each
    distinct transition relation (:func:`~guestmem.checker.schedule.relation`) once."""
    unique: dict[tuple[str, Hashable], Search] = {}
    plan: dict[str, list[tuple[str, Hashable]]] = {}
    for abi in abis:
        plan[abi] = []
        for platform in platforms.PLATFORMS.values():
            key = (platform.name, relation(platform, revisions.get(abi)))
            unique.setdefault(key, Search(platform, abi, DEFAULT_PAGES, depth, deadline=deadline))
            plan[abi].append(key)
    searches = list(unique.values())
    found = dict(zip(unique, run_searches(searches, workers, done=done, engine=engine), strict=True))
    return {
        abi: [found[key] if found[key].abi == abi else relabel(found[key], abi) for key in plan[abi]]
        for abi in abis
    }


def analyze(
    abis: Iterable[str],
    *,
    workers: int = 1,
    done: Callable[[Search, Exploration], None] | None = None,
    depth: int = DEFAULT_DEPTH,
    engine: Engine | None = None,
    deadline: float | None = None,
) -> list[RevisionAnalysis]:
    """Measure each revision in ``abis``; explorations run over ``workers`` processes (or
    on ``engine``) and stop past ``deadline`` (``time.monotonic()``; their ``timed_out``
    says so)."""
    abis = list(abis)
    explored = explorations(abis, workers, done, depth, engine, deadline)
    out = []
    for abi in abis:
        flags_zero, policies = answers(abi)
        out.append(RevisionAnalysis(abi, revisions.get(abi).title, flags_zero, policies, explored[abi]))
    return out


# --- rendering -----------------------------------------------------------------------------------
Block = tuple[str, list[str], list[list[str]]]  # a heading or paragraph, table headers, rows


def blocks(results: list[RevisionAnalysis]) -> list[Block]:
    """The report as headings, paragraphs and tables (rendered as text or markdown)."""
    cells = [cell_name(d, ph) for d, ph in CELLS]
    out: list[Block] = [
        ("# guestmem analyze", [], []),
        (
            "Generated by `guestmem analyze --abi all --format markdown`; every cell is a run of "
            f"the model. Exploration bounds: {DEFAULT_PAGES} pages, depth {DEFAULT_DEPTH}, both "
            "initial states. Distinct states count states that differ only by a permutation of "
            "the pages as one (ciphertext, garbage and scrambled pages compared by how they were "
            "made, since their bytes mix in the page's offset).",
            [],
            [],
        ),
        (
            "Properties (docs/semantics.md §5): *isolation* (the host never reads or writes a private "
            "page, nor keeps a pin on one), *confidentiality* and *integrity* (claimed by pkvm, tdx, "
            "snp and cca only), *policy* (every §2 guarantee holds for the next reader), *atomicity* "
            "(a failed call changes nothing) and *reporting* (the §4 `error_offset`). Each "
            "counterexample is the shortest sequence found; every step shows what the model gave, "
            "except the step marked *fails on replay*, which shows what the property demands. "
            "`guestmem explore --out DIR` writes them as scenario files for `guestmem run`.",
            [],
            [],
        ),
    ]
    if len(results) > 1:
        out += _changes(results, cells)
    for r in results:
        out.append((f"## {r.abi}: {r.title}", [], []))
        out.append(("### flags = 0 (one allocated page; running calls follow the guest's request)", [], []))
        out.append(("", ["platform", *cells], [[p, *r.flags_zero[p].values()] for p in r.flags_zero]))
        out.append(
            ("### EOPNOTSUPP map (policies refused with EOPNOTSUPP; other answers in brackets)", [], [])
        )
        rows = []
        for p in r.policies:
            row = [p]
            for c in cells:
                refused = r.eopnotsupp(p, c)
                other = sorted({a[c] for a in r.policies[p].values()} - {"ok", "EOPNOTSUPP"})
                text = ", ".join(refused) or "none"
                row.append(text + (f" [{', '.join(other)}]" if other else ""))
            rows.append(row)
        out.append(("", ["platform", *cells], rows))
        out.append(("### Property violations found by explore", [], []))
        rows = [
            [
                e.label,
                str(e.distinct),
                ", ".join(
                    f"{p.value}{'' if c.claimed else ' (not claimed)'}" for p, c in e.counterexamples.items()
                )
                or "none",
            ]
            for e in r.explorations
        ]
        out.append(("", ["platform", "distinct states", "violated"], rows))
        for e in r.explorations:
            for prop, cx in e.counterexamples.items():
                claim = "claimed" if cx.claimed else f"not claimed by {cx.platform}"
                out.append((f"#### {e.label}: {prop.value} ({claim}), from init {cx.init}", [], []))
                out.append((cx.message + ".", [], []))
                steps = [
                    [str(n), str(op), expect if len(expect) <= 40 else expect[:37] + "...", _mark(cx, n)]
                    for n, (op, expect) in enumerate(zip(cx.ops, cx.expects, strict=True), start=1)
                ]
                out.append(("", ["step", "operation", "expect", ""], steps))
    return out


def _steps(cx: Any) -> str:
    return "; ".join(str(op) for op in cx.ops)


def _mark(cx: Any, number: int) -> str:
    return "fails on replay" if number == cx.fails_at + 1 else ""


def _changes(results: list[RevisionAnalysis], cells: list[str]) -> list[Block]:
    """What differs from the first revision: flags = 0 answers, violated properties and
    the counterexamples that show them."""
    base = results[0]
    rows = []
    for r in results[1:]:
        for p in r.flags_zero:
            for c in cells:
                if r.flags_zero[p][c] != base.flags_zero[p][c]:
                    rows.append([r.abi, p, f"flags = 0, {c}", base.flags_zero[p][c], r.flags_zero[p][c]])
        for e, b in zip(r.explorations, base.explorations, strict=True):
            now = sorted(p.value for p in e.counterexamples)
            before = sorted(p.value for p in b.counterexamples)
            if now != before:
                rows.append(
                    [r.abi, e.label, "violations", ", ".join(before) or "none", ", ".join(now) or "none"]
                )
            for prop, cx in e.counterexamples.items():
                was = b.counterexamples.get(prop)
                if was is not None and was.ops != cx.ops:
                    rows.append([r.abi, e.label, f"{prop.value} counterexample", _steps(was), _steps(cx)])
    title = f"## What changes from {base.abi}"
    return [(title, [], []), ("", ["revision", "platform", "what", base.abi, "this revision"], rows)]


def markdown(results: list[RevisionAnalysis]) -> str:
    lines: list[str] = []
    for text, headers, rows in blocks(results):
        if not headers:
            lines += [text, ""]
            continue
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
